"""ldirectord.cf → an lvsguard config.

The file is read as ldirectord reads it: ``key = value`` lines, ``#``
comments, a ``virtual=`` (``virtual6=`` for IPv6) line at the left margin
opening a virtual service whose settings are the indented lines below it
(four spaces or a tab). ``virtual=`` takes ``ADDRESS:PORT`` or a firewall mark;
``real=ADDRESS[->LAST][:PORT] gate|masq|ipip [WEIGHT] ["request", "receive"]
[l:LOWER] [u:UPPER]``. Defaults are ldirectord's: scheduler ``wrr``, protocol
``tcp`` (``udp`` for port 53), weight 1, a real server without a port on the
service's port (port 0, the client's destination port, when NAT), ``ops``
on UDP services only.

Checks: ``checktype=connect`` is a ``tcp`` probe, ``ping`` an ``icmp`` one,
``external`` a ``script`` (``checkcommand`` with the virtual and real
addresses and ports, as ldirectord passes them), ``negotiate`` (the default)
by ``service`` (the default from the port): ``http``/``https`` with
``request`` as the path, ``receive`` as the body regex, ``virtualhost`` and
``httpmethod``; ``dns`` with ``request`` as the name asked and ``receive`` as
the answer; other services a ``tcp`` probe, with a comment. A real server's
own ``"request", "receive"`` replaces the virtual's whole (an empty receive:
any answer), unless its request begins with "/": ldirectord 4.12 then checks
the virtual's, and so does the import, with a comment. ``off`` and ``on``
make no probe. ``checkinterval``, ``checktimeout``/``negotiatetimeout``
and ``failurecount`` become ``interval``, ``timeout`` and ``fall``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, parse_endpoint
from lvsguard.table.desired import (
    check_scheduler,
    check_thresholds,
    make_real_server,
    make_service,
    parse_netmask,
    parse_scheduler_flag,
)
from lvsguard.table.importers._emit import Imported, ImportedCheck, ImportedService, Note
from lvsguard.table.load import real_server_name, service_name

DEFAULTS = {"checkinterval": 10, "checktimeout": 5, "negotiatetimeout": 30, "failurecount": 1}
FORWARDS = {"gate": Forward.ROUTE, "masq": Forward.MASQ, "ipip": Forward.TUNNEL}
HTTP_2XX = [200, 201, 202, 203, 204, 205, 206, 207, 208, 226]
PORT_SERVICES = {
    21: "ftp",
    25: "smtp",
    53: "dns",
    80: "http",
    110: "pop",
    119: "nntp",
    143: "imap",
    389: "ldap",
    443: "https",
    587: "submission",
    636: "ldaps",
    993: "imaps",
    995: "pops",
    1521: "oracle",
    1812: "radius",
    3128: "http_proxy",
    3306: "mysql",
    5060: "sip",
    5432: "pgsql",
}
SERVICES = (*PORT_SERVICES.values(), "none", "simpletcp")
CHECKTYPES = ("connect", "negotiate", "ping", "off", "on", "external", "external-perl")
GLOBAL_UNTRANSLATED = {
    "fallback": "lvsguard has no fallback (sorry) server",
    "fallback6": "lvsguard has no fallback (sorry) server",
    "fallbackcommand": "lvsguard has no fallback command",
    "emailalert": "lvsguard alerts through Prometheus and Alertmanager",
    "emailalertfreq": "lvsguard alerts through Prometheus and Alertmanager",
    "emailalertstatus": "lvsguard alerts through Prometheus and Alertmanager",
    "emailalertfrom": "lvsguard alerts through Prometheus and Alertmanager",
    "smtp": "lvsguard alerts through Prometheus and Alertmanager",
    "callback": "lvsguard has no config callback",
    "cleanstop": "lvsguard's prune policy says what leaves the table",
    "maintenancedir": "take a real server out with 'lvsguard drain' or 'lvsguard quarantine'",
    "readdquiescent": "lvsguard keeps a failed real server at weight 0",
    "monitorfile": "lvsguard logs and exports every check result",
}
GLOBAL_IGNORED = ("autoreload", "logfile", "execute", "fork", "supervised", "quiescent", "timeout", "checkcount")
VIRTUAL_UNTRANSLATED = {
    **GLOBAL_UNTRANSLATED,
    "login": "lvsguard has no login check",
    "passwd": "lvsguard has no login check",
    "database": "lvsguard has no database check",
    "secret": "lvsguard has no radius check",
    "load": "lvsguard has no SNMP load check",
    "servicename": "the service's name is its config name",
    "comment": "",
}
VIRTUAL_KEYS = (
    "real",
    "real6",
    "request",
    "receive",
    "checktype",
    "checkcommand",
    "checktimeout",
    "negotiatetimeout",
    "checkcount",
    "failurecount",
    "checkinterval",
    "checkport",
    "scheduler",
    "persistent",
    "schedflags",
    "netmask",
    "protocol",
    "ops",
    "service",
    "httpmethod",
    "virtualhost",
    "quiescent",
    *VIRTUAL_UNTRANSLATED,
)
_LINE = re.compile(r"([A-Za-z0-9_]+)\s*=\s*(.*)")
_REAL = re.compile(
    r"(?P<first>\[[0-9A-Fa-f:.]+\]|[0-9.]+)(?:->(?P<last>\[[0-9A-Fa-f:.]+\]|[0-9.]+))?(?::(?P<port>\d+))?"
    r"(?:\s+(?P<flags>.*))?$"
)


_Pair = tuple[str, str, int] | None
"""A real server's own ``"request", "receive"`` and its line; None: the virtual service's."""


class _Bad(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


def _unquote(value: str) -> str:
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


@dataclass
class _Virtual:
    line: int
    six: bool
    target: str
    settings: dict[str, tuple[str, int]] = field(default_factory=dict)
    reals: list[tuple[str, int]] = field(default_factory=list)


def _read(text: str, file: str) -> tuple[dict[str, tuple[str, int]], list[_Virtual], list[ConfigProblem]]:
    globals_: dict[str, tuple[str, int]] = {}
    virtuals: list[_Virtual] = []
    current: _Virtual | None = None
    problems: list[ConfigProblem] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        line = raw.split("#", 1)[0] if '"' not in raw else raw
        indented = raw[:1] in (" ", "\t")
        match = _LINE.match(line.strip())
        if not match:
            problems.append(ConfigProblem(file, lineno, 0, "", f"not a 'key = value' line: {raw.strip()!r}"))
            continue
        key, value = match.group(1), match.group(2).strip()
        if indented and current is not None:
            if key not in VIRTUAL_KEYS:
                problems.append(ConfigProblem(file, lineno, 0, "", f"unknown setting {key!r} of a virtual service"))
            elif key in ("real", "real6"):
                if (key == "real6") != current.six:
                    want = "real6" if current.six else "real"
                    problems.append(
                        ConfigProblem(
                            file, lineno, 0, "", f"{key} in a {'virtual6' if current.six else 'virtual'}: write {want}"
                        )
                    )
                current.reals.append((value, lineno))
            else:
                current.settings[key] = (value, lineno)
            continue
        current = None
        if key in ("virtual", "virtual6"):
            current = _Virtual(lineno, key == "virtual6", value)
            virtuals.append(current)
        elif indented:
            problems.append(ConfigProblem(file, lineno, 0, "", f"indented {key!r} outside a virtual service"))
        else:
            globals_[key] = (value, lineno)
    return globals_, virtuals, problems


class _Translator:
    def __init__(self, file: str, globals_: dict[str, tuple[str, int]]):
        self.file = file
        self.globals = globals_
        self.imported = Imported("ldirectord", file)

    def note(self, line: int, message: str, translated: bool = False) -> Note:
        return Note(self.file, line, message, translated)

    def number(self, key: str, value: str, line: int, low: int = 0, high: int = 0xFFFFFFFF) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise _Bad(line, f"{key} must be {low}..{high}, got {value!r}")
        return int(value)

    def count(self, virtual: _Virtual, key: str) -> int:
        """A whole number of seconds or checks, the virtual service's, else the global one, else ldirectord's."""
        found = self.setting(virtual, key)
        return DEFAULTS[key] if found is None else self.number(key, found[0], found[1], 1, 86400)

    def setting(self, virtual: _Virtual, key: str) -> tuple[str, int] | None:
        return virtual.settings.get(key) or self.globals.get(key)

    def run(self, virtuals: list[_Virtual]) -> list[ConfigProblem]:
        problems = []
        for key, (value, line) in self.globals.items():
            if key in GLOBAL_UNTRANSLATED:
                self.imported.general.append(self.note(line, f"{key} = {value}: {GLOBAL_UNTRANSLATED[key]}"))
            elif key not in GLOBAL_IGNORED and key not in DEFAULTS:
                problems.append(ConfigProblem(self.file, line, 0, "", f"unknown global setting {key!r}"))
        for virtual in virtuals:
            try:
                self.virtual(virtual)
            except _Bad as exc:
                problems.append(ConfigProblem(self.file, exc.line, 0, "", str(exc)))
        return problems

    def virtual(self, v: _Virtual) -> None:
        notes: list[Note] = []
        target = v.target.strip()
        protocol = "TCP"
        port = 0
        if target.isdigit():
            key = ServiceKey("FWM", "", 0, self.number("virtual", target, v.line, 1), 6 if v.six else 4)
        else:
            try:
                address, port, family = parse_endpoint(target)
            except ValueError as exc:
                raise _Bad(v.line, f"virtual: {exc}") from None
            if (family == 6) != v.six:
                raise _Bad(v.line, f"an IPv{family} address: write {'virtual6' if family == 6 else 'virtual'}")
            protocol = "UDP" if port == 53 else "TCP"
            if "protocol" in v.settings:
                value, line = v.settings["protocol"]
                if value.lower() not in ("tcp", "udp"):
                    raise _Bad(line, f"protocol must be tcp or udp for an address:port service, got {value!r}")
                protocol = value.upper()
            key = ServiceKey(protocol, address, port, 0, family)
        if key.is_fwmark and "protocol" in v.settings and v.settings["protocol"][0] != "fwm":
            raise _Bad(v.settings["protocol"][1], "protocol must be fwm for a fwmark service")
        scheduler, line = v.settings.get("scheduler", ("wrr", v.line))
        try:
            check_scheduler(scheduler)
        except ValueError as exc:
            raise _Bad(line, f"scheduler: {exc}") from None
        flags = 0
        if "schedflags" in v.settings:
            value, line = v.settings["schedflags"]
            for name in value.split(","):
                try:
                    flags |= parse_scheduler_flag(scheduler, name)
                except ValueError as exc:
                    raise _Bad(line, f"schedflags: {exc}") from None
        timeout = 0
        if "persistent" in v.settings:
            timeout = self.number("persistent", *v.settings["persistent"], low=1)
        netmask = 0
        if "netmask" in v.settings:
            value, line = v.settings["netmask"]
            try:
                netmask = parse_netmask(key.family, value)
            except ValueError as exc:
                raise _Bad(line, f"netmask: {exc}") from None
        ops, line = v.settings.get("ops", ("no", 0))
        if ops == "yes" and key.protocol != "UDP":
            notes.append(
                self.note(line, "ops = yes: ldirectord schedules one packet at a time on UDP services only", True)
            )
        for name, (value, line) in v.settings.items():
            if name in VIRTUAL_UNTRANSLATED and VIRTUAL_UNTRANSLATED[name]:
                notes.append(self.note(line, f"{name} = {value}: {VIRTUAL_UNTRANSLATED[name]}"))
        servers: list[tuple[RealServer, _Pair]] = []
        for text, line in v.reals:
            servers += self.reals(text, line, key)
        svc = make_service(
            key,
            scheduler,
            scheduler_flags=flags,
            persistence=timeout,
            netmask=netmask if timeout else 0,
            one_packet=ops == "yes" and key.protocol == "UDP",
            real_servers=[rs for rs, _ in servers],
        )
        names = {rs.key: real_server_name(rs.key) for rs in svc.real_servers}
        imported = ImportedService(svc, service_name(key), names, notes)
        self.imported.services.append(imported)
        for rs, pair in servers:
            self.check(v, imported, rs, pair)

    def reals(self, text: str, line: int, service: ServiceKey) -> list[tuple[RealServer, _Pair]]:
        match = _REAL.match(text.strip())
        if not match:
            raise _Bad(line, f"real: not ADDRESS[->LAST][:PORT] METHOD ...: {text!r}")
        rest = (match.group("flags") or "").strip()
        method = re.match(r"(\w+)\s*(.*)", rest)
        if not method or method.group(1) not in FORWARDS:
            raise _Bad(line, "real: the forwarding method must be gate, masq or ipip")
        forward, rest = FORWARDS[method.group(1)], method.group(2)
        weight = 1
        number = re.match(r"(\d+)\s*(.*)", rest)
        if number:
            weight = self.number("weight", number.group(1), line, 0, 65535)
            rest = number.group(2)
        pair: _Pair = None
        quoted = re.match(r'"([^"]*)"\s*[, ]\s*"([^"]*)"\s*(.*)', rest)
        if quoted:
            pair, rest = (quoted.group(1), quoted.group(2), line), quoted.group(3)
        elif rest.startswith('"'):
            raise _Bad(line, 'real: expected "request", "receive"')
        lower = upper = 0
        for word in rest.split():
            if word.startswith("l:") and word[2:].isdigit():
                lower = int(word[2:])
            elif word.startswith("u:") and word[2:].isdigit():
                upper = int(word[2:])
            else:
                raise _Bad(line, f"real: unexpected {word!r}")
        try:
            check_thresholds(upper, lower)
        except ValueError as exc:
            raise _Bad(line, f"real: {exc}") from None
        # No port: ldirectord passes :0, which the kernel replaces by the service's port unless NAT
        port = int(match.group("port")) if match.group("port") else 0 if forward is Forward.MASQ else service.port
        if port > 65535:
            raise _Bad(line, f"real: port must be 0..65535, got {port}")
        out = []
        for address in _range(match.group("first"), match.group("last"), line):
            rs = make_real_server(
                RealServerKey(address.compressed, port, address.version),
                forward,
                weight,
                upper_threshold=upper,
                lower_threshold=lower,
            )
            out.append((rs, pair))
        return out

    def check(self, v: _Virtual, svc: ImportedService, rs: RealServer, pair: _Pair) -> None:
        checktype, line = self.setting(v, "checktype") or ("negotiate", v.line)
        if checktype.isdigit():
            svc.notes.append(self.note(line, f"checktype = {checktype}: lvsguard negotiates on every check"))
            checktype = "negotiate"
        if checktype not in CHECKTYPES:
            raise _Bad(line, f"checktype must be one of {', '.join(CHECKTYPES)} or a number, got {checktype!r}")
        if checktype in ("off", "on"):
            return
        interval = self.count(v, "checkinterval")
        timeout_key = "negotiatetimeout" if checktype == "negotiate" else "checktimeout"
        timeout = self.count(v, timeout_key)
        fall = self.count(v, "failurecount")
        notes: list[Note] = []
        if timeout > interval:
            notes.append(self.note(line, f"{timeout_key} {timeout} s cut to the interval, {interval} s", True))
            timeout = interval
        entry: dict[str, Any] = {
            "service": svc.config_name,
            "real_server": svc.names[rs.key],
            "type": "tcp",
            "interval": f"{interval}s",
            "timeout": f"{timeout}s",
            "rise": 1,
            "fall": fall,
        }
        port = svc.service.key.port if rs.key.port == 0 else rs.key.port  # ldirectord's ld_checkport
        if "checkport" in v.settings:
            port = self.number("checkport", *v.settings["checkport"], low=1, high=65535)
        if port != rs.key.port:
            entry["port"] = port
        if checktype == "connect":
            pass
        elif checktype == "ping":
            entry["type"] = "icmp"
            entry.pop("port", None)
        elif checktype in ("external", "external-perl"):
            if checktype == "external-perl":
                notes.append(
                    self.note(line, "checktype = external-perl: run as an external command, not in ldirectord's perl")
                )
            command = (self.setting(v, "checkcommand") or ("/bin/true", 0))[0]
            key = svc.service.key
            vip = str(key.fwmark) if key.is_fwmark else key.address
            argv = [*_unquote(command).split(), vip, str(key.port), "{address}", "{port}"]
            entry.update(type="script", command=["/bin/sh", "-c", '"$@" || exit 1', "sh", *argv])
        else:
            self.negotiate(v, svc, entry, notes, pair, line)
        self.imported.checks.append(ImportedCheck(entry, notes))

    def negotiate(
        self,
        v: _Virtual,
        svc: ImportedService,
        entry: dict[str, Any],
        notes: list[Note],
        pair: _Pair,
        line: int,
    ) -> None:
        """``pair``: the real server's own quoted request and receive, as ldirectord 4.12 reads them.

        Taken whole, an empty receive included (any answer), unless the request
        begins with "/": ldirectord then loses the receive (a regex match between
        reading it and storing it resets Perl's ``$2``) and checks the virtual's
        request (HTTP) and receive.
        """
        key = svc.service.key
        service = v.settings.get("service", (PORT_SERVICES.get(key.port, "none") if not key.is_fwmark else "none", 0))[
            0
        ]
        if service not in SERVICES:
            raise _Bad(
                v.settings["service"][1], f"service must be one of {', '.join(sorted(SERVICES))}, got {service!r}"
            )
        request = _unquote(v.settings.get("request", ("/", 0))[0])
        receive = _unquote(v.settings.get("receive", ("", 0))[0])
        if pair is not None and pair[0].startswith("/"):
            own = f'"{pair[0]}", "{pair[1]}"'
            notes.append(
                self.note(
                    pair[2],
                    f"real {own}: ldirectord ignores a real server's request and receive when the request begins with"
                    f' "/" and checks the virtual\'s; write "{pair[0][1:]}" to have it checked',
                )
            )
            request = request if service in ("http", "https") else pair[0]
        elif pair is not None:
            request, receive = pair[0], pair[1]
        if service in ("http", "https"):
            path = request if request.startswith("/") else "/" + request
            entry.update(type=service, path=path, statuses=HTTP_2XX)
            method = v.settings.get("httpmethod", ("GET", 0))[0].upper()
            if method != "GET":
                entry["method"] = method
            if "virtualhost" in v.settings:
                entry["host"] = _unquote(v.settings["virtualhost"][0])
            if receive:
                entry["body"] = receive
            if service == "https":
                entry["tls_verify"] = False  # ldirectord does not verify the certificate
        elif service == "dns":
            name = request.lstrip("/") or "."
            entry.update(type="dns", query_name=name)
            if receive:
                entry["answer"] = receive
        elif service == "none":
            entry["type"] = "tcp"
        else:
            notes.append(
                self.note(line, f"service = {service}: lvsguard has no {service} dialogue; a tcp check instead")
            )


def _range(first: str, last: str | None, line: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        start = ipaddress.ip_address(first.strip("[]"))
        end = ipaddress.ip_address(last.strip("[]")) if last else start
    except ValueError as exc:
        raise _Bad(line, f"real: {exc}") from None
    if end.version != start.version or int(end) < int(start) or int(end) - int(start) > 65535:
        raise _Bad(line, f"real: {first}->{last} is not a range")
    return [ipaddress.ip_address(int(start) + i) for i in range(int(end) - int(start) + 1)]


def parse(text: str, file: str = "<stdin>") -> Imported:
    """The lvsguard translation of ldirectord.cf ``text``; ConfigError with file:line when malformed."""
    globals_, virtuals, problems = _read(text, file)
    translator = _Translator(file, globals_)
    problems += translator.run(virtuals)
    if problems:
        raise ConfigError(problems)
    imported = translator.imported
    imported.default_tcp = False  # ldirectord checks only what checktype says
    return imported
