"""``ipvsadm-save -n`` / ``ipvsadm -Sn`` (the rules ``ipvsadm-restore`` reads) → an lvsguard config.

One rule a line: ``-A`` adds a service, ``-a`` a real server of a service
added above it (``-E``/``-e`` are read the same way, ``-C`` is ignored).
Every option ipvsadm writes is understood, in its short and long form:
scheduler and its flags (``-b mh-fallback,mh-port``), persistence (``-p``,
``-M``, ``--pe``), one-packet scheduling (``-o``), forwarding (``-g``, ``-m``,
``-i`` with ``--tun-type``, ``--tun-port``, ``--tun-[no|rem]csum``), weight
and thresholds (``-w``, ``-x``, ``-y``). Defaults are ipvsadm's (scheduler
wlc, forwarding route, weight 1, persistence 300 s).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace

from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, VirtualService, parse_endpoint
from lvsguard.table.desired import (
    TUNNEL_CHECKSUMS,
    TUNNEL_TYPES,
    check_engine,
    check_scheduler,
    check_thresholds,
    make_real_server,
    make_service,
    parse_netmask,
    parse_scheduler_flag,
)
from lvsguard.table.importers._emit import Imported, ImportedService

DEFAULT_PERSISTENCE = 300  # ipvsadm's -p without a timeout

SERVICE_OPTIONS = {
    "-t": "TCP",
    "--tcp-service": "TCP",
    "-u": "UDP",
    "--udp-service": "UDP",
    "--sctp-service": "SCTP",
    "-f": "FWM",
    "--fwmark-service": "FWM",
}
VALUED = {
    "-s": "scheduler",
    "--scheduler": "scheduler",
    "-M": "netmask",
    "--netmask": "netmask",
    "--pe": "pe",
    "-b": "flags",
    "--sched-flags": "flags",
    "-r": "real",
    "--real-server": "real",
    "-w": "weight",
    "--weight": "weight",
    "-x": "upper",
    "--u-threshold": "upper",
    "-y": "lower",
    "--l-threshold": "lower",
    "--tun-type": "tun_type",
    "--tun-port": "tun_port",
}
FORWARD_OPTIONS = {
    "-g": Forward.ROUTE,
    "--gatewaying": Forward.ROUTE,
    "-m": Forward.MASQ,
    "--masquerading": Forward.MASQ,
    "-i": Forward.TUNNEL,
    "--ipip": Forward.TUNNEL,
}
CHECKSUM_OPTIONS = {"--tun-nocsum": "nocsum", "--tun-csum": "csum", "--tun-remcsum": "remcsum"}
COMMANDS = {
    "-A": "service",
    "--add-service": "service",
    "-E": "service",
    "--edit-service": "service",
    "-a": "server",
    "--add-server": "server",
    "-e": "server",
    "--edit-server": "server",
}


class _Bad(ValueError):
    """A rule is malformed; the message is reported at its line."""


@dataclass
class _Rule:
    command: str
    protocol: str = ""
    target: str = ""
    ipv6: bool = False
    values: dict[str, str] = field(default_factory=dict)
    persistent: str | None = None  # "" when -p had no timeout
    one_packet: bool = False
    forward: Forward | None = None
    checksum: str = ""


def _tokens(line: str) -> list[str]:
    words: list[str] = []
    for word in shlex.split(line, comments=True):
        if word.startswith("--") and "=" in word:
            words += word.split("=", 1)
        else:
            words.append(word)
    return words


def _parse_rule(words: list[str]) -> _Rule | None:
    if not words:
        return None
    if words[0] in ("-C", "--clear", "-Z", "--zero"):
        return None
    if words[0] not in COMMANDS:
        raise _Bad(f"unknown rule {words[0]!r} (ipvsadm-save writes -A and -a rules)")
    rule = _Rule(COMMANDS[words[0]])
    i = 1
    while i < len(words):
        word = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if word in SERVICE_OPTIONS or word in VALUED:
            if nxt is None:
                raise _Bad(f"{word} needs a value")
            if word in SERVICE_OPTIONS:
                rule.protocol, rule.target = SERVICE_OPTIONS[word], nxt
            else:
                rule.values[VALUED[word]] = nxt
            i += 2
            continue
        if word in ("-p", "--persistent"):
            if nxt is not None and nxt.isdigit():
                rule.persistent = nxt
                i += 2
            else:
                rule.persistent = ""
                i += 1
            continue
        if word in ("-6", "--ipv6"):
            rule.ipv6 = True
        elif word in ("-o", "--ops"):
            rule.one_packet = True
        elif word in FORWARD_OPTIONS:
            rule.forward = FORWARD_OPTIONS[word]
        elif word in CHECKSUM_OPTIONS:
            rule.checksum = CHECKSUM_OPTIONS[word]
        else:
            raise _Bad(f"unknown option {word!r}")
        i += 1
    if not rule.protocol:
        raise _Bad("no service (-t, -u, --sctp-service or -f)")
    return rule


def _number(rule: _Rule, name: str, option: str, top: int) -> int | None:
    text = rule.values.get(name)
    if text is None:
        return None
    if not text.isdigit() or int(text) > top:
        raise _Bad(f"{option} must be 0..{top}, got {text!r}")
    return int(text)


def _service_key(rule: _Rule) -> ServiceKey:
    if rule.protocol == "FWM":
        if not rule.target.isdigit() or not 1 <= int(rule.target) <= 0xFFFFFFFF:
            raise _Bad(f"-f needs a firewall mark 1..4294967295, got {rule.target!r}")
        return ServiceKey("FWM", "", 0, int(rule.target), 6 if rule.ipv6 else 4)
    try:
        address, port, family = parse_endpoint(rule.target)
    except ValueError as exc:
        raise _Bad(f"{exc} (numeric addresses only: save with ipvsadm-save -n)") from None
    return ServiceKey(rule.protocol, address, port, 0, family)


def _service(rule: _Rule) -> VirtualService:
    key = _service_key(rule)
    try:
        scheduler = check_scheduler(rule.values.get("scheduler", "wlc"))
        engine = check_engine(rule.values["pe"]) if "pe" in rule.values else ""
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    flags = 0
    for name in filter(None, rule.values.get("flags", "").split(",")):
        try:
            flags |= parse_scheduler_flag(scheduler, name)
        except ValueError as exc:
            raise _Bad(f"-b: {exc}") from None
    timeout = 0
    if rule.persistent is not None:
        timeout = int(rule.persistent) if rule.persistent else DEFAULT_PERSISTENCE
    netmask = 0
    if "netmask" in rule.values:
        try:
            netmask = parse_netmask(key.family, rule.values["netmask"])
        except ValueError as exc:
            raise _Bad(f"-M: {exc}") from None
    return make_service(
        key,
        scheduler,
        scheduler_flags=flags,
        persistence=timeout,
        netmask=netmask,
        pe_name=engine,
        one_packet=rule.one_packet,
    )


def _real_server(rule: _Rule, service: ServiceKey) -> RealServer:
    text = rule.values.get("real")
    if text is None:
        raise _Bad("no real server (-r)")
    try:
        if text.startswith("[") or text.count(":") == 1:
            address, port, family = parse_endpoint(text)
        else:  # no port: the service's (ipvsadm's own default)
            address, port, family = parse_endpoint(
                f"[{text}]:{service.port}" if ":" in text else f"{text}:{service.port}"
            )
    except ValueError as exc:
        raise _Bad(f"-r: {exc} (numeric addresses only: save with ipvsadm-save -n)") from None
    forward = rule.forward or Forward.ROUTE
    kind = rule.values.get("tun_type", "ipip")
    if kind not in TUNNEL_TYPES:
        raise _Bad(f"--tun-type must be one of {', '.join(TUNNEL_TYPES)}, got {kind!r}")
    if rule.checksum in ("csum", "remcsum") and kind == "ipip" or rule.checksum == "remcsum" and kind != "gue":
        raise _Bad(f"--tun-{rule.checksum} does not apply to a {kind} tunnel")
    if kind == "gue" and "tun_port" not in rule.values:
        raise _Bad("a gue tunnel needs --tun-port")
    upper = _number(rule, "upper", "-x", 0xFFFFFFFF) or 0
    lower = _number(rule, "lower", "-y", 0xFFFFFFFF) or 0
    try:
        check_thresholds(upper, lower)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return make_real_server(
        RealServerKey(address, port, family),
        forward,
        1 if (w := _number(rule, "weight", "-w", 65535)) is None else w,
        upper_threshold=upper,
        lower_threshold=lower,
        tunnel_type=TUNNEL_TYPES[kind],
        tunnel_port=_number(rule, "tun_port", "--tun-port", 65535) or 0,
        tunnel_flags=TUNNEL_CHECKSUMS[rule.checksum or "nocsum"],
    )


def parse(text: str, file: str = "<stdin>") -> Imported:
    """The services of an ``ipvsadm-save -n`` dump; ConfigError with every malformed line."""
    services: dict[ServiceKey, VirtualService] = {}
    problems: list[ConfigProblem] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            rule = _parse_rule(_tokens(line))
            if rule is None:
                continue
            if rule.command == "service":
                svc = _service(rule)
                old = services.get(svc.key)
                services[svc.key] = replace(svc, real_servers=old.real_servers) if old is not None else svc
                continue
            key = _service_key(rule)
            owner = services.get(key)
            if owner is None:
                raise _Bad(f"real server of {key}, which no -A rule above adds")
            rs = _real_server(rule, key)
            kept = tuple(r for r in owner.real_servers if r.key != rs.key)
            services[key] = replace(owner, real_servers=(*kept, rs))
        except _Bad as exc:
            problems.append(ConfigProblem(file, lineno, 0, "", str(exc)))
        except ValueError as exc:  # shlex: an unclosed quote
            problems.append(ConfigProblem(file, lineno, 0, "", f"cannot split the line: {exc}"))
    if problems:
        raise ConfigError(problems)
    return Imported("ipvsadm", file, [ImportedService(svc) for svc in services.values()])
