"""keepalived.conf (its ``virtual_server`` and ``virtual_server_group`` blocks) → an lvsguard config.

The file is read as keepalived reads it: words separated by blanks, ``"``
quoting, ``#`` and ``!`` comments, ``{`` ``}`` blocks (a ``{`` may open on the
next line), ``\\`` continuing a line, and ``include`` with glob patterns
(a relative pattern is taken from the including file's directory). Only the
checker's blocks are translated; VRRP, ``global_defs`` and the rest stay
keepalived's and are skipped.

The table built is the one keepalived itself builds (check_data.c and
ipvswrapper.c of keepalived 2.2): scheduler ``wlc`` and forwarding NAT when
none is set, UDP when a service has no ``protocol``, persistence 360 s for a
bare ``persistence_timeout`` or a port-0 service, the real server's port
forced to the service's (0 for a fwmark service) unless NAT, one-packet
scheduling only for UDP and fwmark services, each ``virtual_server_group``
entry a service of its own with the same real servers.

Checks become probes: TCP_CHECK ``tcp``, HTTP_GET/SSL_GET one ``http``/``https``
per ``url`` (its ``digest`` the check's MD5), DNS_CHECK ``dns``, MISC_CHECK ``script`` (``misc_dynamic``'s exit
codes are lvsguard's own; without it any failure is made exit 1), PING_CHECK
``icmp``, UDP_CHECK ``udp``. keepalived's ``delay_loop``, ``connect_timeout``
and ``retry`` become ``interval``, ``timeout`` and ``fall`` (``rise`` is 1, as
in keepalived). Whatever has no lvsguard meaning (``sorry_server``,
``quorum``, ``notify_up``...) becomes a comment that says so.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from lvsguard.config.probes import MD5_HEX
from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, VirtualService
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
from lvsguard.table.importers._emit import Imported, ImportedCheck, ImportedService, Note
from lvsguard.table.load import real_server_name, service_name

DEFAULT_SCHEDULER = "wlc"  # IPVS_DEF_SCHED
DEFAULT_PERSISTENCE = 360  # IPVS_SVC_PERSISTENT_TIMEOUT
DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
MAX_INCLUDE_DEPTH = 16
HTTP_2XX = [200, 201, 202, 203, 204, 205, 206, 207, 208, 226]  # keepalived's default: any 2xx

FORWARDS = {"NAT": Forward.MASQ, "DR": Forward.ROUTE, "TUN": Forward.TUNNEL}
SCHED_FLAG_WORDS = ("flag-1", "flag-2", "flag-3", "sh-port", "sh-fallback", "mh-port", "mh-fallback")
CHECK_DEFAULT_WORDS = ("delay_loop", "connect_timeout", "retry", "delay_before_retry", "warmup")
# keywords with no lvsguard meaning: what the comment says about each
UNTRANSLATED_VS = {
    "sorry_server": "lvsguard has no sorry server: while every real server is out the service has none",
    "sorry_server_inhibit": "lvsguard has no sorry server",
    "sorry_server_lvs_method": "lvsguard has no sorry server",
    "quorum": "the nearest is the actuator's quorum rule (min_healthy real servers per service, docs/actuator.md)",
    "hysteresis": "the nearest is the actuator's quorum rule (min_healthy real servers per service, docs/actuator.md)",
    "quorum_up": "no quorum scripts in lvsguard: alert on lvs_service_healthy instead",
    "quorum_down": "no quorum scripts in lvsguard: alert on lvs_service_healthy instead",
    "alpha": "lvsguard starts every real server as the kernel has it, not down until its first check passes",
    "omega": "no quorum scripts in lvsguard",
    "ha_suspend": "lvsguard checks on every director, whatever its VRRP state",
    "smtp_alert": "lvsguard alerts through Prometheus and Alertmanager",
    "snmp_name": "lvsguard names come from the service's name",
}
UNTRANSLATED_RS = {
    "notify_up": "no notify scripts in lvsguard: alert on lvs_backend_healthy, or use an Alertmanager receiver",
    "notify_down": "no notify scripts in lvsguard: alert on lvs_backend_healthy, or use an Alertmanager receiver",
    "alpha": UNTRANSLATED_VS["alpha"],
    "smtp_alert": UNTRANSLATED_VS["smtp_alert"],
    "snmp_name": "lvsguard names come from the real server's name",
    "track_file": "lvsguard does not track files for a real server's weight",
    "track_bfd": "lvsguard has no BFD check",
}
UNTRANSLATED_CHECK = {
    "connect_ip": "lvsguard checks the real server's own address",
    "bindto": "lvsguard checks from the director's default source address",
    "bind_port": "lvsguard checks from an ephemeral port",
    "bind_if": "lvsguard checks through the routing table",
    "fwmark": "lvsguard's checks are not marked",
    "warmup": "lvsguard jitters the first check over one interval instead",
    "delay_before_retry": "lvsguard retries a failed check at its interval",
    "alpha": UNTRANSLATED_VS["alpha"],
    "log_all_failures": "lvsguard logs every transition",
    "user": "lvsguard runs scripts as its own user",
    "http_protocol": "lvsguard's http check speaks HTTP/1.1",
    "fast_recovery": "lvsguard's rise applies",
}


class _Bad(Exception):
    def __init__(self, file: str, line: int, message: str):
        super().__init__(message)
        self.problem = ConfigProblem(file, line, 0, "", message)


# --- reading the file into a tree ------------------------------------------------------------


@dataclass
class _Token:
    text: str
    file: str
    line: int
    row: int  # one number per source line (across includes): a statement ends where the row changes


@dataclass
class Node:
    """One statement: its words, where it is, and its block (None when it has none)."""

    words: list[str]
    file: str
    line: int
    children: list[Node] | None = None

    @property
    def keyword(self) -> str:
        return self.words[0]

    @property
    def args(self) -> list[str]:
        return self.words[1:]


def _split(line: str, file: str, lineno: int) -> list[str]:
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
        elif c in "#!":
            break
        elif c in "{}":
            words.append(c)
            i += 1
        elif c == '"':
            end = line.find('"', i + 1)
            if end < 0:
                raise _Bad(file, lineno, "unclosed quote")
            words.append(line[i + 1 : end])
            i = end + 1
        else:
            j = i
            while j < n and not line[j].isspace() and line[j] not in '{}"':
                j += 1
            words.append(line[i:j])
            i = j
    return words


class _Reader:
    def __init__(self) -> None:
        self.tokens: list[_Token] = []
        self.rows = 0
        self.files: list[str] = []

    def read(self, text: str, file: str, depth: int = 0) -> None:
        self.files.append(file)
        pending = ""
        start = 0
        for lineno, raw in enumerate(text.splitlines(), 1):
            if pending == "":
                start = lineno
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            line, pending = pending + raw, ""
            words = _split(line, file, start)
            if not words:
                continue
            if words[0] == "include":
                self._include(words, file, start, depth)
                continue
            self.rows += 1
            self.tokens += [_Token(w, file, start, self.rows) for w in words]

    def _include(self, words: list[str], file: str, lineno: int, depth: int) -> None:
        if len(words) != 2:
            raise _Bad(file, lineno, "include takes one file name or glob pattern")
        if depth >= MAX_INCLUDE_DEPTH:
            raise _Bad(file, lineno, f"includes nested deeper than {MAX_INCLUDE_DEPTH} (an include loop?)")
        pattern = words[1]
        if not os.path.isabs(pattern):
            base = os.path.dirname(file) if file not in ("", "<stdin>") else os.getcwd()
            pattern = os.path.join(base, pattern)
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise _Bad(file, lineno, f"include {words[1]}: no such file")
        for path in matches:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise _Bad(file, lineno, f"include {path}: {reason}") from None
            self.read(text, path, depth + 1)


def _tree(tokens: list[_Token]) -> list[Node]:
    pos = 0

    def block(opener: _Token | None) -> list[Node]:
        nonlocal pos
        nodes: list[Node] = []
        while pos < len(tokens):
            tok = tokens[pos]
            if tok.text == "}":
                if opener is None:
                    raise _Bad(tok.file, tok.line, "'}' closes no block")
                pos += 1
                return nodes
            if tok.text == "{":
                if not nodes or nodes[-1].children is not None:
                    raise _Bad(tok.file, tok.line, "'{' opens a block with no keyword")
                pos += 1
                nodes[-1].children = block(tok)
                continue
            words = [tok.text]
            pos += 1
            while pos < len(tokens) and tokens[pos].row == tok.row and tokens[pos].text not in "{}":
                words.append(tokens[pos].text)
                pos += 1
            node = Node(words, tok.file, tok.line)
            nodes.append(node)
            if pos < len(tokens) and tokens[pos].text == "{" and tokens[pos].row == tok.row:
                pos += 1
                node.children = block(tokens[pos - 1])
        if opener is not None:
            raise _Bad(opener.file, opener.line, "'{' is never closed")
        return nodes

    return block(None)


def read_tree(text: str, file: str) -> list[Node]:
    """The statements of ``text`` and its includes; raises ConfigError."""
    reader = _Reader()
    try:
        reader.read(text, file)
        return _tree(reader.tokens)
    except _Bad as exc:
        raise ConfigError([exc.problem]) from None


# --- translating ----------------------------------------------------------------------------------


@dataclass
class _CheckDefaults:
    delay_loop: float = DEFAULT_DELAY_LOOP
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    retry: int | None = None
    host: str = ""


@dataclass
class _RealServer:
    node: Node
    address: str
    port: int
    family: int
    weight: int | None = None
    forward: tuple[Forward, int, int, int] | None = None
    upper: int = 0
    lower: int = 0
    defaults: _CheckDefaults = field(default_factory=_CheckDefaults)
    checks: list[Node] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


class _Translator:
    def __init__(self, file: str) -> None:
        self.imported = Imported("keepalived", file)
        self.problems: list[ConfigProblem] = []
        self.groups: dict[str, list[tuple[str, Any, Node]]] = {}

    def bad(self, node: Node, message: str) -> None:
        self.problems.append(ConfigProblem(node.file, node.line, 0, "", message))

    def note(self, node: Node, message: str, translated: bool = False) -> Note:
        return Note(node.file, node.line, message, translated)

    def number(self, node: Node, low: float = 0, high: float = 0xFFFFFFFF, index: int = 0, real: bool = False) -> Any:
        if len(node.args) <= index:
            raise _Bad(node.file, node.line, f"{node.keyword} needs a value")
        text = node.args[index]
        try:
            value: float = float(text) if real else int(text)
        except ValueError:
            raise _Bad(node.file, node.line, f"{node.keyword}: not a number: {text!r}") from None
        if not low <= value <= high:
            raise _Bad(node.file, node.line, f"{node.keyword} must be {low:g}..{high:g}, got {text}")
        return value

    # virtual_server_group

    def group(self, node: Node) -> None:
        if len(node.args) != 1:
            raise _Bad(node.file, node.line, "virtual_server_group needs one name")
        entries: list[tuple[str, Any, Node]] = []
        for child in node.children or []:
            if child.keyword == "fwmark":
                mark = self.number(child, 1, 0xFFFFFFFF)
                family = {"inet": 4, "inet6": 6}.get(child.args[1], 0) if len(child.args) > 1 else 0
                entries.append(("fwmark", (mark, family), child))
                continue
            port = 0
            if len(child.args) == 1:
                port = self.number(child, 0, 65535)
            elif child.args:
                raise _Bad(child.file, child.line, "a group entry is ADDRESS[-LAST] PORT or fwmark MARK")
            for address in _address_range(child):
                entries.append(("address", (address, port), child))
        if not entries:
            raise _Bad(node.file, node.line, f"virtual_server_group {node.args[0]} has no entries")
        self.groups[node.args[0]] = entries

    # virtual_server

    def virtual_server(self, node: Node) -> None:
        args = node.args
        if not args or node.children is None:
            raise _Bad(
                node.file, node.line, "virtual_server needs ADDRESS PORT, fwmark MARK or group NAME, and a block"
            )
        notes: list[Note] = []
        protocol = ""
        scheduler = ""
        flags_words: list[Node] = []
        forward: tuple[Forward, int, int, int] | None = None
        persistence: int | None = None
        granularity: Node | None = None
        engine = ""
        one_packet: Node | None = None
        family_word = 0
        default_weight = 1
        defaults = _CheckDefaults()
        servers: list[_RealServer] = []
        for child in node.children:
            kw = child.keyword
            if kw in ("lb_algo", "lvs_sched"):
                scheduler = self.checked(child, check_scheduler)
            elif kw in ("lb_kind", "lvs_method"):
                forward = self.forwarding(child)
            elif kw == "protocol":
                protocol = self.word(child).upper()
                if protocol not in ("TCP", "UDP", "SCTP"):
                    raise _Bad(child.file, child.line, f"protocol must be TCP, UDP or SCTP, got {child.args[0]!r}")
            elif kw == "persistence_timeout":
                persistence = self.number(child, 1, 0xFFFFFFFF) if child.args else DEFAULT_PERSISTENCE
            elif kw == "persistence_granularity":
                granularity = child
            elif kw == "persistence_engine":
                engine = self.checked(child, check_engine)
            elif kw == "ops":
                one_packet = child
            elif kw in SCHED_FLAG_WORDS:
                flags_words.append(child)
            elif kw == "hashed":
                continue  # the kernel's own bookkeeping
            elif kw == "ip_family":
                family_word = {"inet": 4, "inet6": 6}.get(self.word(child), -1)
                if family_word < 0:
                    raise _Bad(child.file, child.line, "ip_family is inet or inet6")
            elif kw == "weight":
                default_weight = self.number(child, 1, 65535)
            elif kw == "virtualhost":
                defaults.host = self.word(child)
            elif kw in CHECK_DEFAULT_WORDS:
                self.check_default(child, defaults, notes)
            elif kw == "inhibit_on_failure":
                notes.append(
                    self.note(child, "inhibit_on_failure: lvsguard always keeps a failed real server at weight 0", True)
                )
            elif kw in UNTRANSLATED_VS:
                notes.append(self.note(child, f"{' '.join(child.words)}: {UNTRANSLATED_VS[kw]}"))
            elif kw == "real_server":
                servers.append(self.real_server(child, defaults))
            else:
                raise _Bad(child.file, child.line, f"unknown keyword {kw!r} in virtual_server")
        if not servers:
            notes.append(self.note(node, "a virtual_server with no real_server: keepalived ignores it, so does this"))
            self.imported.general += notes
            return
        forward = forward or (Forward.MASQ, 0, 0, 0)
        for rs in servers:
            rs.forward = rs.forward or forward
        keys = self.service_keys(node, protocol, family_word, servers, notes)
        scheduler = scheduler or DEFAULT_SCHEDULER
        for key, group_note in keys:
            svc_notes = [group_note] if group_note else []
            timeout = persistence or 0
            if not timeout and not key.is_fwmark and key.port == 0:
                timeout = DEFAULT_PERSISTENCE
                svc_notes.append(self.note(node, "port 0: persistent for 360 s, as keepalived makes it", True))
            flags = 0
            for word in flags_words:
                try:
                    flags |= parse_scheduler_flag(scheduler, word.keyword)
                except ValueError:
                    svc_notes.append(
                        self.note(word, f"{word.keyword} is not a flag of {scheduler}: ignored, as keepalived does")
                    )
            ops = bool(one_packet) and (key.is_fwmark or key.protocol == "UDP")
            if one_packet is not None and not ops:
                svc_notes.append(
                    self.note(
                        one_packet,
                        f"ops: one-packet scheduling is for UDP: keepalived drops it for {key.protocol} too",
                        True,
                    )
                )
            netmask = 0
            if granularity is not None and timeout:
                try:
                    netmask = parse_netmask(key.family, self.word(granularity))
                except ValueError as exc:
                    raise _Bad(granularity.file, granularity.line, f"persistence_granularity: {exc}") from None
            svc = make_service(
                key,
                scheduler,
                scheduler_flags=flags,
                persistence=timeout,
                netmask=netmask,
                pe_name=engine if timeout else "",
                one_packet=ops,
                real_servers=[self.kernel_real_server(rs, key, default_weight) for rs in servers],
            )
            names = {r.key: real_server_name(r.key) for r in svc.real_servers}
            imported = ImportedService(svc, service_name(key), names, svc_notes + notes)
            self.imported.services.append(imported)
            for rs, kernel_rs in zip(servers, svc.real_servers, strict=True):
                self.checks(imported, rs, kernel_rs)
            notes = []  # a group's other services: the notes once, on the first

    def service_keys(
        self, node: Node, protocol: str, family_word: int, servers: list[_RealServer], notes: list[Note]
    ) -> list[tuple[ServiceKey, Note | None]]:
        args = node.args
        untunnelled = [rs.family for rs in servers if rs.forward is None or rs.forward[0] is not Forward.TUNNEL]
        fwm_family = family_word or (untunnelled[0] if untunnelled else 4)
        if not protocol and args[0] != "fwmark":
            protocol = "UDP"
            notes.append(self.note(node, "no protocol: UDP, as keepalived defaults to (write protocol TCP)", True))
        if args[0] == "fwmark":
            if len(args) != 2:
                raise _Bad(node.file, node.line, "virtual_server fwmark needs one mark")
            mark = self.number(Node(["fwmark", args[1]], node.file, node.line), 1, 0xFFFFFFFF)
            return [(ServiceKey("FWM", "", 0, mark, fwm_family), None)]
        if args[0] == "group":
            if len(args) != 2 or args[1] not in self.groups:
                raise _Bad(
                    node.file,
                    node.line,
                    f"virtual_server group {' '.join(args[1:])}: no such virtual_server_group above",
                )
            out: list[tuple[ServiceKey, Note | None]] = []
            for kind, value, entry in self.groups[args[1]]:
                note = self.note(entry, f"from virtual_server_group {args[1]}", True)
                if kind == "fwmark":
                    out.append((ServiceKey("FWM", "", 0, value[0], value[1] or fwm_family), note))
                else:
                    address = ipaddress.ip_address(value[0])
                    out.append((ServiceKey(protocol, address.compressed, value[1], 0, address.version), note))
            return out
        if len(args) > 2:
            raise _Bad(node.file, node.line, "virtual_server takes ADDRESS PORT")
        try:
            address = ipaddress.ip_address(args[0])
        except ValueError:
            raise _Bad(node.file, node.line, f"virtual_server: {args[0]!r} is not an IP address") from None
        port = self.number(Node(["port", args[1]], node.file, node.line), 0, 65535) if len(args) == 2 else 0
        return [(ServiceKey(protocol, address.compressed, port, 0, address.version), None)]

    def kernel_real_server(self, rs: _RealServer, service: ServiceKey, default_weight: int) -> RealServer:
        """The real server as keepalived writes it: the port forced unless NAT."""
        assert rs.forward is not None
        forward, tun_type, tun_port, tun_flags = rs.forward
        port = rs.port
        if forward is not Forward.MASQ:
            port = service.port  # 0 for a fwmark service
        elif port == 0 and not service.is_fwmark:
            port = service.port
        return make_real_server(
            RealServerKey(rs.address, port, rs.family),
            forward,
            default_weight if rs.weight is None else rs.weight,
            upper_threshold=rs.upper,
            lower_threshold=rs.lower,
            tunnel_type=tun_type,
            tunnel_port=tun_port,
            tunnel_flags=tun_flags,
        )

    def checked(self, node: Node, check: Callable[[str], str]) -> str:
        try:
            return check(self.word(node))
        except ValueError as exc:
            raise _Bad(node.file, node.line, f"{node.keyword}: {exc}") from None

    def word(self, node: Node) -> str:
        if not node.args:
            raise _Bad(node.file, node.line, f"{node.keyword} needs a value")
        return node.args[0]

    def forwarding(self, node: Node) -> tuple[Forward, int, int, int]:
        method = self.word(node)
        if method not in FORWARDS:
            raise _Bad(node.file, node.line, f"{node.keyword} must be NAT, DR or TUN, got {method!r}")
        tun_type, tun_port, tun_flags = 0, 0, 0
        words = node.args[1:]
        i = 0
        while i < len(words):
            word = words[i]
            if word in ("type", "port") and i + 1 < len(words):
                if word == "type":
                    if words[i + 1] not in TUNNEL_TYPES:
                        raise _Bad(node.file, node.line, f"tunnel type must be ipip, gue or gre, got {words[i + 1]!r}")
                    tun_type = TUNNEL_TYPES[words[i + 1]]
                else:
                    tun_port = self.number(Node(["port", words[i + 1]], node.file, node.line), 1, 65535)
                i += 2
            elif word in TUNNEL_CHECKSUMS:
                tun_flags = TUNNEL_CHECKSUMS[word]
                i += 1
            else:
                raise _Bad(node.file, node.line, f"{node.keyword}: unexpected {word!r}")
        if method != "TUN" and words:
            raise _Bad(node.file, node.line, f"{node.keyword} {method} takes no tunnel options")
        if tun_flags and tun_type == TUNNEL_TYPES["ipip"]:
            raise _Bad(node.file, node.line, f"{node.keyword}: checksum options are for gue and gre tunnels")
        if tun_flags == TUNNEL_CHECKSUMS["remcsum"] and tun_type != TUNNEL_TYPES["gue"]:
            raise _Bad(node.file, node.line, f"{node.keyword}: remcsum is for gue tunnels only")
        if tun_type == TUNNEL_TYPES["gue"] and not tun_port:
            raise _Bad(node.file, node.line, f"{node.keyword}: a gue tunnel needs its port")
        return FORWARDS[method], tun_type, tun_port, tun_flags

    def check_default(self, node: Node, defaults: _CheckDefaults, notes: list[Note]) -> None:
        kw = node.keyword
        if kw == "delay_loop":
            defaults.delay_loop = self.number(node, 0.001, 86400, real=True)
        elif kw == "connect_timeout":
            defaults.connect_timeout = self.number(node, 0.001, 86400, real=True)
        elif kw == "retry":
            defaults.retry = self.number(node, 0, 99)
        else:
            notes.append(self.note(node, f"{' '.join(node.words)}: {UNTRANSLATED_CHECK[kw]}"))

    # real_server

    def real_server(self, node: Node, vs_defaults: _CheckDefaults) -> _RealServer:
        args = node.args
        if not 1 <= len(args) <= 2:
            raise _Bad(node.file, node.line, "real_server takes ADDRESS [PORT]")
        try:
            address = ipaddress.ip_address(args[0])
        except ValueError:
            raise _Bad(node.file, node.line, f"real_server: {args[0]!r} is not an IP address") from None
        port = self.number(Node(["port", args[1]], node.file, node.line), 0, 65535) if len(args) == 2 else 0
        rs = _RealServer(node, address.compressed, port, address.version, defaults=replace(vs_defaults))
        for child in node.children or []:
            kw = child.keyword
            if kw == "weight":
                rs.weight = self.number(child, 0, 65535)
            elif kw == "lvs_method":
                rs.forward = self.forwarding(child)
            elif kw == "uthreshold":
                rs.upper = self.number(child)
            elif kw == "lthreshold":
                rs.lower = self.number(child)
            elif kw == "virtualhost":
                rs.defaults.host = self.word(child)
            elif kw in CHECK_DEFAULT_WORDS:
                self.check_default(child, rs.defaults, rs.notes)
            elif kw == "inhibit_on_failure":
                continue  # what lvsguard does anyway (noted once per virtual_server)
            elif kw in UNTRANSLATED_RS:
                rs.notes.append(self.note(child, f"{' '.join(child.words)}: {UNTRANSLATED_RS[kw]}"))
            elif kw.endswith("_CHECK") or kw in ("HTTP_GET", "SSL_GET"):
                rs.checks.append(child)
            else:
                raise _Bad(child.file, child.line, f"unknown keyword {kw!r} in real_server")
        try:
            check_thresholds(rs.upper, rs.lower)
        except ValueError as exc:
            raise _Bad(node.file, node.line, f"real_server: {exc}") from None
        return rs

    # checks

    def checks(self, svc: ImportedService, rs: _RealServer, kernel_rs: RealServer) -> None:
        if rs.notes:
            svc.notes += rs.notes
            rs.notes = []
        used: dict[str, int] = {}
        for node in rs.checks:
            for check, notes in self.check(node, rs, kernel_rs):
                kind = check["type"]
                used[kind] = used.get(kind, 0) + 1
                entry = {"service": svc.config_name, "real_server": svc.names[kernel_rs.key], "type": kind}
                if used[kind] > 1:
                    entry["name"] = f"{kind}-{used[kind]}"
                entry.update(check)
                self.imported.checks.append(ImportedCheck(entry, notes))

    def check(self, node: Node, rs: _RealServer, kernel_rs: RealServer) -> Iterator[tuple[dict[str, Any], list[Note]]]:
        kind = node.keyword
        defaults = replace(rs.defaults)
        notes: list[Note] = []
        port: int | None = None
        specific: list[Node] = []
        misc_timeout: float | None = None
        for child in node.children or []:
            kw = child.keyword
            if kw == "connect_port":
                port = self.number(child, 1, 65535)
            elif kw in ("retry", "nb_get_retry"):
                defaults.retry = self.number(child, 0, 99)
            elif kw in ("delay_loop", "connect_timeout"):
                self.check_default(child, defaults, notes)
            elif kw == "misc_timeout":
                misc_timeout = self.number(child, 0.001, 86400, real=True)
            elif kw == "virtualhost":
                defaults.host = self.word(child)
            elif kw in UNTRANSLATED_CHECK:
                notes.append(self.note(child, f"{kind} {' '.join(child.words)}: {UNTRANSLATED_CHECK[kw]}"))
            else:
                specific.append(child)
        timing: dict[str, Any] = {}
        interval = defaults.delay_loop
        timeout = misc_timeout if misc_timeout is not None else defaults.connect_timeout
        if kind == "MISC_CHECK" and misc_timeout is None:
            timeout = interval
        if timeout > interval:
            notes.append(self.note(node, f"{kind}: timeout {timeout:g} s cut to the interval, {interval:g} s", True))
            timeout = interval
        timing = {"interval": f"{interval:g}s", "timeout": f"{timeout:g}s", "rise": 1}
        if defaults.retry is not None:
            timing["fall"] = defaults.retry + 1
        base: dict[str, Any] = {}
        if port is not None and port != kernel_rs.key.port:
            base["port"] = port
        if kind == "TCP_CHECK":
            self.no_extra(specific, kind)
            yield {"type": "tcp", **timing, **base}, notes
        elif kind in ("HTTP_GET", "SSL_GET"):
            yield from self.http(node, specific, defaults, timing, base, notes)
        elif kind == "DNS_CHECK":
            query = {"type": "SOA", "name": "."}
            for child in specific:
                if child.keyword not in query:
                    raise _Bad(child.file, child.line, f"unknown keyword {child.keyword!r} in DNS_CHECK")
                query[child.keyword] = self.word(child)
            if query["type"].upper() not in ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT"):
                notes.append(self.note(node, f"DNS_CHECK type {query['type']}: lvsguard asks SOA instead"))
                query["type"] = "SOA"
            if port is None and kernel_rs.key.port != 53:
                base["port"] = 53
            yield (
                {"type": "dns", **timing, **base, "query_name": query["name"], "query_type": query["type"].upper()},
                notes,
            )
        elif kind == "MISC_CHECK":
            yield self.misc(node, specific, timing), notes
        elif kind == "PING_CHECK":
            self.no_extra(specific, kind)
            yield {"type": "icmp", **timing}, notes
        elif kind == "UDP_CHECK":
            for child in specific:
                if child.keyword not in ("payload", "require_reply"):
                    raise _Bad(child.file, child.line, f"unknown keyword {child.keyword!r} in UDP_CHECK")
                notes.append(self.note(child, f"UDP_CHECK {child.keyword}: lvsguard sends its own payload"))
            yield {"type": "udp", **timing, **base}, notes
        elif kind == "SMTP_CHECK":
            notes.append(self.note(node, "SMTP_CHECK: lvsguard has no SMTP dialogue; a tcp check on port 25 instead"))
            if port is None and kernel_rs.key.port != 25:
                base["port"] = 25
            yield {"type": "tcp", **timing, **base}, notes
        elif kind in ("FILE_CHECK", "BFD_CHECK"):
            self.imported.general.append(self.note(node, f"{kind}: lvsguard has no such check; none is made"))
        else:
            raise _Bad(node.file, node.line, f"unknown check {kind!r}")

    def no_extra(self, nodes: list[Node], kind: str) -> None:
        for child in nodes:
            raise _Bad(child.file, child.line, f"unknown keyword {child.keyword!r} in {kind}")

    def http(
        self,
        node: Node,
        specific: list[Node],
        defaults: _CheckDefaults,
        timing: dict[str, Any],
        base: dict[str, Any],
        notes: list[Note],
    ) -> Iterator[tuple[dict[str, Any], list[Note]]]:
        kind = "https" if node.keyword == "SSL_GET" else "http"
        sni = False
        urls: list[Node] = []
        for child in specific:
            if child.keyword == "url":
                urls.append(child)
            elif child.keyword == "enable_sni":
                sni = True
            else:
                raise _Bad(child.file, child.line, f"unknown keyword {child.keyword!r} in {node.keyword}")
        if not urls:
            raise _Bad(node.file, node.line, f"{node.keyword} has no url block")
        for n, url in enumerate(urls):
            check: dict[str, Any] = {"type": kind, **timing, **base}
            url_notes = notes if n == 0 else []
            statuses: list[int] = []
            host = defaults.host
            for child in url.children or []:
                kw = child.keyword
                if kw == "path":
                    check["path"] = self.word(child)
                elif kw == "status_code":
                    statuses += self.statuses(child)
                elif kw == "digest":
                    check["digest"] = self.digest(child)
                elif kw == "regex":
                    check["body"] = self.word(child)
                elif kw == "virtualhost":
                    host = self.word(child)
                elif kw in ("regex_no_match", "regex_options", "regex_stack", "regex_min_offset", "regex_max_offset"):
                    url_notes.append(self.note(child, f"{node.keyword} {kw}: lvsguard's body regex has no such option"))
                else:
                    raise _Bad(child.file, child.line, f"unknown keyword {kw!r} in url")
            check.setdefault("path", "/")
            if host:
                check["host"] = host
            check["statuses"] = sorted(set(statuses)) if statuses else HTTP_2XX
            if kind == "https":
                check["tls_verify"] = False  # keepalived does not verify the certificate
                if sni and host:
                    check["sni"] = host
            yield check, url_notes

    def digest(self, node: Node) -> str:
        value = self.word(node)
        if not MD5_HEX.fullmatch(value):
            raise _Bad(node.file, node.line, f"digest: not an MD5 (32 hex digits): {value!r}")
        return value.lower()

    def statuses(self, node: Node) -> list[int]:
        out: list[int] = []
        for word in node.args:
            low, _, high = word.partition("-")
            try:
                first, last = int(low), int(high or low)
            except ValueError:
                raise _Bad(node.file, node.line, f"status_code: not a status or range: {word!r}") from None
            if not 100 <= first <= last <= 599:
                raise _Bad(node.file, node.line, f"status_code: {word} is not within 100..599")
            out += range(first, last + 1)
        if not out:
            raise _Bad(node.file, node.line, "status_code needs a value")
        return out

    def misc(self, node: Node, specific: list[Node], timing: dict[str, Any]) -> dict[str, Any]:
        path = ""
        dynamic = False
        for child in specific:
            if child.keyword == "misc_path":
                path = " ".join(child.args)
            elif child.keyword == "misc_dynamic":
                dynamic = True
            else:
                raise _Bad(child.file, child.line, f"unknown keyword {child.keyword!r} in MISC_CHECK")
        if not path:
            raise _Bad(node.file, node.line, "MISC_CHECK has no misc_path")
        try:
            argv = shlex.split(path)
        except ValueError as exc:
            raise _Bad(node.file, node.line, f"misc_path: {exc}") from None
        if not dynamic:  # keepalived: any non-zero exit is down; lvsguard reads 2..255 as up with a weight
            argv = ["/bin/sh", "-c", '"$@" || exit 1', "sh", *argv]
        return {"type": "script", **timing, "command": argv}


def _address_range(node: Node) -> list[str]:
    """``192.0.2.1-10`` (the last byte) or ``2001:db8::1-a`` (the last group, in hex) as addresses."""
    text = node.keyword
    first, dash, last = text.rpartition("-") if "-" in text else (text, "", "")
    try:
        start = ipaddress.ip_address(first if dash else text)
    except ValueError:
        raise _Bad(node.file, node.line, f"virtual_server_group: {text!r} is not an address or range") from None
    if not dash:
        return [start.compressed]
    try:
        end_part = int(last, 16 if start.version == 6 else 10)
    except ValueError:
        raise _Bad(node.file, node.line, f"virtual_server_group: bad range end {last!r}") from None
    unit = 0xFF if start.version == 4 else 0xFFFF
    low = int(start) & unit
    if not low <= end_part <= unit:
        raise _Bad(node.file, node.line, f"virtual_server_group: range {text} runs backwards or past the last group")
    return [ipaddress.ip_address(int(start) - low + i).compressed for i in range(low, end_part + 1)]


def parse(text: str, file: str = "<stdin>") -> Imported:
    """The lvsguard translation of keepalived.conf ``text`` (its includes read from disk); ConfigError when malformed."""
    nodes = read_tree(text, file)
    translator = _Translator(file)
    for node in nodes:
        try:
            if node.keyword == "virtual_server_group":
                translator.group(node)
            elif node.keyword == "virtual_server":
                translator.virtual_server(node)
        except _Bad as exc:
            translator.problems.append(exc.problem)
    if translator.problems:
        raise ConfigError(translator.problems)
    imported = translator.imported
    _check_duplicates(imported)
    if imported.checks or imported.services:
        imported.default_tcp = False  # keepalived: a real server with no checker is always up
    return imported


def _check_duplicates(imported: Imported) -> None:
    seen: dict[ServiceKey, VirtualService] = {}
    for svc in imported.services:
        if svc.service.key in seen:
            raise ConfigError([ConfigProblem(imported.file, 0, 0, "", f"{svc.service.key} is defined twice")])
        seen[svc.service.key] = svc.service
