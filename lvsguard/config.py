"""The config file: YAML in, frozen validated objects out.

Everything is checked at load, before any socket opens, and every problem is
reported at once, sorted, in one ``ConfigError``; each names the file, line,
column and key::

    lvsguard.yaml:14:7: services[0].real_servers[2].adress: unknown key; did you mean 'address'?

The YAML is composed into nodes (which keep their marks) rather than loaded
into dicts, so a position is known for every value, and duplicate keys, which
YAML loaders silently drop, are errors. Nothing reads raw YAML after
``load``: the result is a ``Config`` of frozen dataclasses.

Each mapping of the file is described once, by a ``Schema``: the dataclass it
becomes and a parser per key. The same driver walks every schema, so adding a
section (``actuator``, ``probes``, ``snmp``) is a dataclass, a schema and a
line in ``SECTIONS``. The YAML keys are the dataclass field names.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from os import PathLike
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.ipvs import SOURCES
from lvsguard.labels import BACKEND_LABELS, UnknownBackendLabels, parse_backend_labels
from lvsguard.model import FWM, PROTOCOLS, RealServerKey, ServiceKey

if TYPE_CHECKING:
    from actuator.settings import ActuatorSettings
    from exporter.snmp.settings import AgentSettings

DEFAULT_LISTEN = "127.0.0.1:9910"

# --- the result ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectorConfig:
    """Section ``director``: where this director's IPVS table is."""

    netns: str | None = None  # network namespace name (as `ip netns`) or path; None: our own
    keepalived_fifo: str | None = None  # keepalived's notify FIFO, for the exporter's VRRP state (docs/ha.md)


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    """Section ``exporter``: the Prometheus exporter."""

    listen: str = DEFAULT_LISTEN  # HOST:PORT, [IPv6]:PORT or :PORT
    ipvs_source: str = "auto"  # auto (netlink, procfs when not permitted), netlink or procfs
    backend_labels: tuple[str, ...] = BACKEND_LABELS  # labels kept on ipvs_backend_* series, in output order
    services: tuple[ServiceKey, ...] = ()  # allow-list of services to export; () exports every service


@dataclass(frozen=True, slots=True)
class RealServerConfig:
    """A named real server of a service (``services[].real_servers[]``)."""

    name: str
    address: RealServerKey


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A named virtual service (``services[]``) and the names of its real servers."""

    name: str
    service: ServiceKey
    real_servers: tuple[RealServerConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """One health check (``probes.checks[]``): which real servers, the type, its timing and type-specific keys."""

    type: str
    service: ServiceKey | None = None  # None: every service
    real_server: RealServerKey | None = None  # None: every real server of the service(s)
    name: str = ""  # the ``check`` label; "" = the type
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    port: int | None = None  # None: the real server's own port
    method: str = "GET"  # http, https
    path: str = "/"
    host: str = ""  # Host header; "" = the real server's address
    statuses: tuple[int, ...] = ()  # () = 200-399
    body: str = ""  # regex the body must match; "" = any body
    tls_verify: bool = True  # https
    sni: str = ""  # https: TLS server name; "" = host, else the address
    payload: str = "lvsguard-probe\n"  # udp
    expect: str = ""  # udp: regex the reply must match; "" = any reply
    query_name: str = ""  # dns
    query_type: str = "A"
    rcode: str = "NOERROR"
    answer: str = ""  # dns: regex one answer must match; "" = any
    command: tuple[str, ...] = ()  # script
    send: str = ""  # agent: a line sent before reading the reply
    url: str = ""  # prometheus: base URL of the Prometheus server
    query: str = ""  # prometheus: PromQL; its value is a weight percentage

    @property
    def label(self) -> str:
        return self.name or self.type


@dataclass(frozen=True, slots=True)
class PublishConfig:
    """``probes.publish``: where health transitions and weight changes go (never to IPVS directly)."""

    mode: str = "actuator"  # actuator (its webhook and API: the fast path) or alertmanager (its /api/v2/alerts)
    url: str = "http://127.0.0.1:9911"
    token_file: str = ""  # the actuator token (NAME:SECRET or SECRET); "" = $LVSGUARD_TOKEN


@dataclass(frozen=True, slots=True)
class ProbesConfig:
    """Section ``probes``: health checks of the real servers (DESIGN §5)."""

    enabled: bool = True
    default_tcp: bool = True  # a tcp check on every real server of a TCP/SCTP service that no check names
    refresh: float = 2.0  # seconds between two reads of the kernel table (the checked set follows it)
    default_rate: int = 1000  # default tcp probes per second at most, all together (their interval stretches beyond)
    weight_min_step: int = 1  # damping of agent/prometheus/script weights: smallest change published
    weight_min_interval: float = 10.0  # and seconds between two published changes of one real server
    publish: PublishConfig | None = None  # None: transitions are only exported as metrics
    checks: tuple[CheckConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """A whole config. ``Config()`` is the config of no file: every default, no names."""

    director: DirectorConfig = DirectorConfig()
    exporter: ExporterConfig = ExporterConfig()
    services: tuple[ServiceConfig, ...] = ()
    actuator: ActuatorSettings | None = None  # section ``actuator`` (validated by actuator.settings); None: defaults
    probes: ProbesConfig = ProbesConfig()
    snmp: AgentSettings | None = None  # section ``snmp`` (validated by exporter.snmp.settings); None: no SNMP agent
    file: str = ""  # where it was loaded from ("" for Config())
    _service_names: Mapping[ServiceKey, str] = field(init=False, repr=False, compare=False)
    _real_server_names: Mapping[tuple[ServiceKey, RealServerKey], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_service_names", MappingProxyType({s.service: s.name for s in self.services}))
        real_servers = {(s.service, rs.address): rs.name for s in self.services for rs in s.real_servers}
        object.__setattr__(self, "_real_server_names", MappingProxyType(real_servers))

    def service_name(self, key: ServiceKey) -> str:
        """The configured name of service ``key``; "" when it has none."""
        return self._service_names.get(key, "")

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str:
        """The configured name of real server ``key`` of ``service``; "" when it has none."""
        return self._real_server_names.get((service, key), "")


# --- the schema machinery ------------------------------------------------------


class Invalid(ValueError):
    """A value is wrong: the driver records the message at the value's position."""


class _Recorded(Exception):
    """A value failed and its problems are already recorded at their own positions."""


Parser = Callable[[Node, str, "_Context"], Any]


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a mapping: how its value is parsed, whether it must be given, and what it means.

    ``doc`` is the key's line in docs/configuration-reference.md, which
    ``lvsguard.configdoc`` generates from these schemas.
    """

    parse: Parser
    required: bool = False
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Schema:
    """One mapping of the file: the frozen class it becomes and its keys (named as that class's fields).

    ``unique`` names keys whose values must differ between the items of a
    list of these mappings.
    """

    build: Callable[..., Any]
    keys: Mapping[str, Key]
    unique: tuple[str, ...] = ()


_FAILED: Any = object()  # a value that could not be parsed; its problem is already recorded
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_TYPE_NAMES = {
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:timestamp": "a date",
    _NULL: "nothing",
    _STR: "a string",
}

Pairs = dict[str, tuple[Node, Node]]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _suggest(word: str, choices: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest choice, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    shown = f" {node.value!r}" if node.tag != _NULL else ""
    return _TYPE_NAMES.get(node.tag, f"a {node.tag!r} value") + shown


class _Context:
    """One load: the file name, the problems found so far, and what later sections look up."""

    def __init__(self, file: str, loader: yaml.SafeLoader):
        self.file = file
        self.loader = loader
        self.problems: list[ConfigProblem] = []
        self.service_names: dict[str, ServiceKey] = {}  # filled by `services`, read by `exporter.services`
        self.services: tuple[ServiceConfig, ...] = ()  # filled by `services`, read by `actuator`
        self.service_names_complete = True  # False when `services` had problems: a name may be in a broken entry

    def problem(self, node: Node | None, key: str, message: str) -> None:
        line, column = (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (0, 0)
        self.problems.append(ConfigProblem(self.file, line, column, key, message))

    def parse(self, parser: Parser, node: Node, path: str) -> Any:
        """``parser(node)``, or _FAILED with the problem recorded."""
        try:
            return parser(node, path, self)
        except _Recorded:
            return _FAILED
        except Invalid as exc:
            self.problem(node, path, str(exc))
            return _FAILED

    def pairs(self, node: Node, path: str) -> Pairs | None:
        """The keys of a mapping node with their key and value nodes; None (recorded) when it is no mapping."""
        if _is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.problem(node, path, f"must be a mapping, got {_kind(node)}")
            return None
        seen: dict[str, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            if not _is_text(key_node):
                self.problem(key_node, path, f"keys must be strings, got {_kind(key_node)}")
            elif key_node.value in seen:
                first = seen[key_node.value].start_mark.line + 1
                self.problem(key_node, _join(path, key_node.value), f"duplicate key (first given on line {first})")
            else:
                seen[key_node.value] = key_node
        try:
            self.loader.flatten_mapping(node)  # `<<: *anchor` merge keys; explicit keys win
        except yaml.MarkedYAMLError as exc:
            self.problem(node, path, f"bad merge key: {exc.problem}")
            return None
        # After a problem above, go on with the last value of each string key so
        # that the rest of the mapping is still checked; the load fails anyway.
        return {k.value: (k, v) for k, v in node.value if _is_text(k)}


def _record(node: Node, path: str, schema: Schema, ctx: _Context) -> tuple[Any, Pairs, dict[str, Any]]:
    """Build ``schema``'s class from a mapping node.

    Returns (object or _FAILED, the key/value nodes, the values that parsed):
    the last two let a list check its ``unique`` keys even on items with a
    problem elsewhere.
    """
    pairs = ctx.pairs(node, path)
    if pairs is None:
        return _FAILED, {}, {}
    values: dict[str, Any] = {}
    ok = True
    for key_name, (key_node, _) in pairs.items():
        if key_name not in schema.keys:
            hint = _suggest(key_name, schema.keys) or f" (known keys: {', '.join(schema.keys)})"
            ctx.problem(key_node, _join(path, key_name), f"unknown key{hint}")
            ok = False
    for key_name, key in schema.keys.items():  # in schema order: a key may refer to one parsed before it
        value_node = pairs[key_name][1] if key_name in pairs else None
        if value_node is None or _is_null(value_node):  # absent, or `key:` with no value: the default
            if key.required:
                missing = value_node is None
                ctx.problem(
                    node if missing else value_node,
                    _join(path, key_name),
                    "required key is missing" if missing else "must not be empty",
                )
                ok = False
            continue
        value = ctx.parse(key.parse, value_node, _join(path, key_name))
        if value is _FAILED:
            ok = False
        else:
            values[key_name] = value
    return (schema.build(**values) if ok else _FAILED), pairs, values


def section(schema: Schema) -> Parser:
    """A parser of one mapping (a section, or a record inside one)."""

    def parse(node: Node, path: str, ctx: _Context) -> Any:
        value, _, _ = _record(node, path, schema, ctx)
        if value is _FAILED:
            raise _Recorded()
        return value

    return parse


def records(schema: Schema) -> Parser:
    """A parser of a list of ``schema`` mappings; values of ``schema.unique`` keys must differ between items."""

    def parse(node: Node, path: str, ctx: _Context) -> tuple[Any, ...]:
        built = [_record(item, f"{path}[{i}]", schema, ctx) for i, item in enumerate(_items(node))]
        failed = any(value is _FAILED for value, _, _ in built)
        for key in schema.unique:
            first: dict[Any, int] = {}
            for i, (_, pairs, values) in enumerate(built):
                if key not in values:
                    continue
                seen_at = first.setdefault(values[key], i)
                if seen_at != i:
                    shown = str(values[key])
                    ctx.problem(
                        pairs[key][1], f"{path}[{i}].{key}", f"duplicate {key} {shown!r} (first in {path}[{seen_at}])"
                    )
                    failed = True
        if failed:
            raise _Recorded()
        return tuple(value for value, _, _ in built)

    return parse


def list_of(parser: Parser) -> Parser:
    """A parser of a list whose items ``parser`` parses; every bad item is reported."""

    def parse(node: Node, path: str, ctx: _Context) -> tuple[Any, ...]:
        values = tuple(ctx.parse(parser, item, f"{path}[{i}]") for i, item in enumerate(_items(node)))
        if any(v is _FAILED for v in values):
            raise _Recorded()
        return values

    return parse


def _items(node: Node) -> list[Node]:
    if not isinstance(node, SequenceNode):
        raise Invalid(f"must be a list, got {_kind(node)}")
    return list(node.value)


def _is_text(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _STR


def _text(node: Node) -> str:
    """The value of a string scalar (quoted or plain); a number or boolean is refused."""
    if not _is_text(node):
        quote = " (quote it to make it a string)" if isinstance(node, ScalarNode) else ""
        raise Invalid(f"must be a string, got {_kind(node)}{quote}")
    return node.value


# --- value parsers ---------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def text(node: Node, path: str, ctx: _Context) -> str:
    return _text(node)


def name(node: Node, path: str, ctx: _Context) -> str:
    """A name of a service or real server: it becomes a label value and is typed on command lines."""
    value = _text(node)
    if not _NAME.fullmatch(value):
        raise Invalid(
            f"must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit, got {value!r}"
        )
    return value


def service_key(node: Node, path: str, ctx: _Context) -> ServiceKey:
    try:
        return ServiceKey.parse(_text(node))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def real_server_key(node: Node, path: str, ctx: _Context) -> RealServerKey:
    try:
        return RealServerKey.parse(_text(node))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def netns(node: Node, path: str, ctx: _Context) -> str:
    """A name under /run/netns (as `ip netns`) or an absolute path to a namespace file."""
    value = _text(node)
    if "/" in value:
        if not value.startswith("/"):
            raise Invalid(f"a namespace path must be absolute, got {value!r}")
    elif not value or value in (".", "..") or len(value) > 255 or any(c.isspace() or c == "\0" for c in value):
        raise Invalid(f"must be a network namespace name (as 'ip netns') or an absolute path, got {value!r}")
    return value


def absolute_path(node: Node, path: str, ctx: _Context) -> str:
    value = _text(node)
    if not value.startswith("/"):
        raise Invalid(f"must be an absolute path, got {value!r}")
    return value


def listen(node: Node, path: str, ctx: _Context) -> str:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (every IPv4 address); port 0 picks a free port."""
    value = _text(node)
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise Invalid(f"must be HOST:PORT, [IPv6]:PORT or :PORT with a port 0..65535, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        _address(host[1:-1], ipaddress.IPv6Address, "an IPv6 address")
    elif ":" in host:
        raise Invalid(f"write an IPv6 address in brackets, as [::1]:{port}, got {value!r}")
    elif re.fullmatch(r"[0-9.]+", host):
        _address(host, ipaddress.IPv4Address, "an IPv4 address")
    elif host and not _HOSTNAME.fullmatch(host):
        raise Invalid(f"{host!r} is not an IP address or host name")
    return value


def _address(text: str, kind: Callable[[str], object], what: str) -> None:
    try:
        kind(text)
    except ValueError:
        raise Invalid(f"{text!r} is not {what}") from None


def choice(values: Sequence[str]) -> Parser:
    """One of ``values``, with a "did you mean" for a near miss."""

    def parse(node: Node, path: str, ctx: _Context) -> str:
        value = _text(node)
        if value not in values:
            raise Invalid(f"must be one of {', '.join(values)}, got {value!r}{_suggest(value, values)}")
        return value

    return parse


def backend_labels(node: Node, path: str, ctx: _Context) -> tuple[str, ...]:
    """A list of label names, or one comma-separated string as node_exporter's ``--collector.ipvs.backend-labels``.

    Validated by the exporter's own ``parse_backend_labels``, so the config
    accepts what the exporter does, with node_exporter's error message.
    """
    if isinstance(node, SequenceNode):
        labels: Sequence[str] = list_of(text)(node, path, ctx)
    elif _is_text(node):
        labels = node.value.split(",")
    else:
        raise Invalid(f"must be a list of label names or one comma-separated string, got {_kind(node)}")
    try:
        return parse_backend_labels(labels)
    except UnknownBackendLabels as exc:
        raise Invalid(str(exc)) from None


def service_refs(node: Node, path: str, ctx: _Context) -> tuple[ServiceKey, ...]:
    """Services given by name (from ``services``) or by key (``TCP 192.0.2.10:80``); repeats are dropped."""
    return tuple(dict.fromkeys(list_of(_service_ref)(node, path, ctx)))


def _service_ref(node: Node, path: str, ctx: _Context) -> ServiceKey:
    value = _text(node)
    words = value.split()
    if len(words) > 1 and words[0].upper() in (*PROTOCOLS, FWM):
        return service_key(node, path, ctx)
    if value in ctx.service_names:
        return ctx.service_names[value]
    if not ctx.service_names_complete:
        raise _Recorded()  # the name may be that of a service entry with a problem of its own
    known = (
        f" (named services: {', '.join(sorted(ctx.service_names))})"
        if ctx.service_names
        else " (no service is named in 'services')"
    )
    raise Invalid(
        f"{value!r} is neither a service name nor a service like 'TCP 192.0.2.10:80'{_suggest(value, ctx.service_names) or known}"
    )


def _named_services(parser: Parser) -> Parser:
    """Parse ``services`` and remember its names for the sections that refer to them."""

    def parse(node: Node, path: str, ctx: _Context) -> tuple[ServiceConfig, ...]:
        try:
            services = parser(node, path, ctx)
        except (Invalid, _Recorded):
            ctx.service_names_complete = False
            raise
        ctx.service_names.update((s.name, s.service) for s in services)
        ctx.services = services
        return services

    return parse


def actuator_section(node: Node, path: str, ctx: _Context) -> ActuatorSettings:
    """Section ``actuator``: validated by the actuator's own settings module.

    ``actuator.settings.from_mapping`` owns the keys (docs/actuator.md); this
    hands it the section as plain data with the names of ``services``, and puts
    each of its problems back at its position in the file.
    """
    from actuator.settings import Names, SettingsError, from_mapping  # the actuator owns its section

    if not isinstance(node, MappingNode):
        raise Invalid(f"must be a mapping, got {_kind(node)}")
    data = ctx.loader.construct_document(node)
    names = Names(
        services=dict(ctx.service_names),
        real_servers={s.service: {rs.name: rs.address for rs in s.real_servers} for s in ctx.services},
    )
    allowed = {s.service: frozenset(rs.address for rs in s.real_servers) for s in ctx.services if s.real_servers}
    try:
        return from_mapping(data, names=names, real_servers_allowed=allowed)
    except SettingsError as exc:
        for key_path, message in exc.problems:
            unknown = message.startswith("unknown key")
            target = _node_at(node, key_path, key=unknown)
            if unknown:
                known = [k.value for k, _ in node.value if _is_text(k)]
                message += _suggest(key_path.rsplit(".", 1)[-1], _settings_keys()) if key_path in known else ""
            ctx.problem(target, _join(path, key_path), message)
        raise _Recorded() from None


SNMP_KEY_DOCS: Mapping[str, tuple[str, str]] = {
    "listen": ("`HOST:PORT` or `[IPv6]:PORT`", "UDP address of the agent."),
    "communities": (
        "list of strings",
        "SNMPv2c read-only communities; empty: v2c off. A community or a user is required.",
    ),
    "users": ("list of users", "SNMPv3 authPriv users (see `snmp.users[]`); empty: v3 off."),
    "base_oid": ("OID", "Where LVSGUARD-MIB's tables are served; absent: its registered OID."),
    "max_age": (
        "number (seconds, > 0)",
        "How long one read of the kernel table answers requests before the next request re-reads it.",
    ),
    "max_response_size": ("integer 484..65507", "Bytes of one answer; a GETBULK answer is cut to fit."),
    "engine_id": ("hexadecimal string, 5..32 octets", "snmpEngineID; absent: pysnmp's default."),
    "trap_targets": (
        "list of `HOST:PORT`",
        "Receivers of notifications (real server up/down, weight changes); empty: none sent.",
    ),
    "trap_community": (
        "string",
        "Community of v2c notifications; required with `trap_targets` unless `trap_user` is set.",
    ),
    "trap_user": ("user", "Send SNMPv3 authPriv notifications as this user instead of v2c."),
    "inform": ("boolean", "Send informs (acknowledged, re-sent) instead of traps."),
}
"""Keys of section ``snmp``: (type, meaning); the agent's ``build_settings`` checks the values."""
SNMP_USER_KEY_DOCS: Mapping[str, tuple[str, str]] = {
    "name": ("string", "The USM user name; unique."),
    "auth_key": ("string, at least 8 characters", "Authentication pass phrase."),
    "priv_key": ("string, at least 8 characters", "Privacy (encryption) pass phrase."),
    "auth_protocol": ("SHA, SHA-224, SHA-256, SHA-384 or SHA-512", "Authentication protocol."),
    "priv_protocol": ("AES, AES-192 or AES-256", "Privacy protocol."),
}
"""Keys of an SNMPv3 user (``snmp.users[]``, ``snmp.trap_user``): (type, meaning)."""
SNMP_KEYS = tuple(SNMP_KEY_DOCS)
SNMP_USER_KEYS = tuple(SNMP_USER_KEY_DOCS)


def snmp_section(node: Node, path: str, ctx: _Context) -> AgentSettings:
    """Section ``snmp``: the exporter's SNMP agent, validated by ``exporter.snmp.settings.build_settings``.

    The agent owns the meaning of its keys (docs/snmp.md); this checks the
    shape (known keys, types), hands the values over, and puts each problem
    back at its place in the file.
    """
    from exporter.snmp.settings import SnmpSettingsError, V3User, build_settings  # the agent owns its section

    pairs = ctx.pairs(node, path)
    if pairs is None:
        raise _Recorded()
    data = ctx.loader.construct_document(node)
    ok = True
    for key_name, (key_node, _) in pairs.items():
        if key_name not in SNMP_KEYS:
            ctx.problem(
                key_node,
                _join(path, key_name),
                f"unknown key{_suggest(key_name, SNMP_KEYS) or ' (known keys: ' + ', '.join(SNMP_KEYS) + ')'}",
            )
            ok = False

    def user(value: Any, where: str) -> V3User | None:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            ctx.problem(
                _node_at(node, where.removeprefix(path + ".")),
                where,
                "must be a mapping of strings (name, auth_key, priv_key, auth_protocol, priv_protocol)",
            )
            return None
        unknown = sorted(set(value) - set(SNMP_USER_KEYS))
        missing = [k for k in ("name", "auth_key", "priv_key") if k not in value]
        if unknown or missing:
            what = "; ".join(
                filter(None, [f"unknown keys {unknown}" if unknown else "", f"missing {missing}" if missing else ""])
            )
            ctx.problem(_node_at(node, where.removeprefix(path + ".")), where, what)
            return None
        return V3User(**value)

    options: dict[str, Any] = {}
    for key_name, value in (data or {}).items():
        if key_name not in SNMP_KEYS:
            continue
        if key_name in ("communities", "trap_targets"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                ctx.problem(pairs[key_name][1], _join(path, key_name), "must be a list of strings")
                ok = False
                continue
            value = tuple(value)
        elif key_name == "users":
            if not isinstance(value, list):
                ctx.problem(pairs[key_name][1], _join(path, key_name), "must be a list of users")
                ok = False
                continue
            users = [user(v, f"{path}.users[{i}]") for i, v in enumerate(value)]
            ok = ok and None not in users
            value = tuple(u for u in users if u is not None)
        elif key_name == "trap_user":
            value = user(value, f"{path}.trap_user")
            ok = ok and value is not None
        elif key_name == "inform" and not isinstance(value, bool):
            ctx.problem(pairs[key_name][1], _join(path, key_name), f"must be true or false, got {value!r}")
            ok = False
            continue
        elif key_name in ("max_age", "max_response_size") and (
            isinstance(value, bool) or not isinstance(value, (int, float))
        ):
            ctx.problem(pairs[key_name][1], _join(path, key_name), f"must be a number, got {value!r}")
            ok = False
            continue
        elif key_name in ("listen", "base_oid", "engine_id", "trap_community") and not isinstance(value, str):
            ctx.problem(pairs[key_name][1], _join(path, key_name), f"must be a string, got {value!r}")
            ok = False
            continue
        options[key_name] = value
    if not ok:
        raise _Recorded()
    try:
        return build_settings(**options)
    except SnmpSettingsError as exc:
        for problem in exc.problems:
            key_path, _, message = problem.partition(": ")
            key_path = re.sub(r" \([^)]*\)", "", key_path)  # "users[0] (nms).auth_key" -> "users[0].auth_key"
            where = _node_at(node, key_path.split("/", 1)[0])  # "communities/users": at the first of them
            ctx.problem(where, _join(path, key_path), message)
        raise _Recorded() from None


def _settings_keys() -> tuple[str, ...]:
    from actuator.settings import KEYS

    return KEYS


def _node_at(node: Node, key_path: str, *, key: bool = False) -> Node:
    """The value node at ``rules[0].action`` inside ``node`` (as deep as it exists); its key node with ``key``."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", key_path)
    for i, part in enumerate(parts):
        if part.startswith("[") and isinstance(node, SequenceNode) and int(part[1:-1]) < len(node.value):
            node = node.value[int(part[1:-1])]
        elif isinstance(node, MappingNode):
            found = [(k, v) for k, v in node.value if _is_text(k) and k.value == part]
            if not found:
                break
            node = found[-1][0] if key and i == len(parts) - 1 else found[-1][1]
        else:
            break
    return node


# --- the schema ------------------------------------------------------------------

REAL_SERVER = Schema(
    RealServerConfig,
    {
        "name": Key(
            name, required=True, doc="The real server's name (the `real_server` label); unique within its service."
        ),
        "address": Key(
            real_server_key,
            required=True,
            doc='The real server as the kernel knows it (`10.0.1.2:80`, `"[2001:db8:1::2]:80"`); unique within its service.',
        ),
    },
    unique=("name", "address"),
)

SERVICE = Schema(
    ServiceConfig,
    {
        "name": Key(name, required=True, doc="The service's name (the `service` label); unique among services."),
        "service": Key(
            service_key,
            required=True,
            doc='The virtual service: `TCP 192.0.2.10:80`, `"UDP [2001:db8::10]:53"`, `FWM 1`; unique among services.',
        ),
        "real_servers": Key(records(REAL_SERVER), doc="Names of this service's real servers."),
    },
    unique=("name", "service"),
)

DIRECTOR = Schema(
    DirectorConfig,
    {
        "netns": Key(
            netns,
            doc="The network namespace whose IPVS table is read and written: a name of `ip netns` or an absolute path (`/proc/1234/ns/net`); `--netns` wins.",
        ),
        "keepalived_fifo": Key(
            absolute_path,
            doc="keepalived's notify FIFO, read by the exporter alone for the VRRP state series (docs/ha.md).",
        ),
    },
)

EXPORTER = Schema(
    ExporterConfig,
    {
        "listen": Key(
            listen,
            doc="Address of the HTTP server (`/metrics`): `HOST:PORT`, `[IPv6]:PORT` or `:PORT`; port 0 picks a free port; `--listen` wins.",
        ),
        "ipvs_source": Key(
            choice(SOURCES),
            doc="How the table is read: netlink (needs CAP_NET_ADMIN, everything), procfs (world-readable, fewer fields) or auto (netlink, procfs when not permitted).",
        ),
        "backend_labels": Key(
            backend_labels,
            doc="Labels kept on the `ipvs_backend_*` series, as node_exporter's `--collector.ipvs.backend-labels`; real servers with equal kept labels are summed.",
        ),
        "services": Key(
            service_refs,
            doc="Allow-list: only these services are exported, by name (from `services`) or as `TCP 192.0.2.10:80`; empty exports every service.",
        ),
    },
)

# --- probes ------------------------------------------------------------------------

CHECK_TYPES = ("tcp", "http", "https", "udp", "icmp", "dns", "script", "agent", "prometheus")
_CHECK_COMMON = ("type", "service", "real_server", "name", "interval", "timeout", "rise", "fall", "port")
CHECK_KEYS: Mapping[str, tuple[str, ...]] = {
    "tcp": (),
    "http": ("method", "path", "host", "statuses", "body"),
    "https": ("method", "path", "host", "statuses", "body", "tls_verify", "sni"),
    "udp": ("payload", "expect"),
    "icmp": (),
    "dns": ("query_name", "query_type", "rcode", "answer"),
    "script": ("command",),
    "agent": ("send",),
    "prometheus": ("url", "query"),
}
"""The keys each check type takes besides the common ones."""
CHECK_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "dns": ("query_name",),
    "script": ("command",),
    "agent": ("port",),
    "prometheus": ("url", "query"),
}
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?")


def integer(low: int, high: int) -> Parser:
    def parse(node: Node, path: str, ctx: _Context) -> int:
        if not (isinstance(node, ScalarNode) and node.tag == _INT):
            raise Invalid(f"must be an integer {low}..{high}, got {_kind(node)}")
        value = int(node.value.replace("_", ""), 0)
        if not low <= value <= high:
            raise Invalid(f"must be {low}..{high}, got {value}")
        return value

    return parse


def boolean(node: Node, path: str, ctx: _Context) -> bool:
    if not (isinstance(node, ScalarNode) and node.tag == _BOOL):
        raise Invalid(f"must be true or false, got {_kind(node)}")
    return node.value.lower() in ("true", "yes", "on")


def duration(node: Node, path: str, ctx: _Context) -> float:
    """Seconds: a number, or a string with a unit (``500ms``, ``1.5s``, ``2m``); more than 0, at most 1 day."""
    if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT):
        value = float(node.value)
    else:
        match = _DURATION.fullmatch(_text(node).strip())
        if match is None:
            raise Invalid(f"must be a duration such as 1s, 500ms or 2m, got {node.value!r}")
        value = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
    if not 0 < value <= 86400:
        raise Invalid(f"must be more than 0 and at most 86400 seconds, got {value:g}")
    return value


def regex(node: Node, path: str, ctx: _Context) -> str:
    value = _text(node)
    try:
        re.compile(value)
    except re.error as exc:
        raise Invalid(f"is not a regular expression: {exc}") from None
    return value


def http_url(node: Node, path: str, ctx: _Context) -> str:
    value = _text(node)
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", value):
        raise Invalid(f"must be an http:// or https:// URL, got {value!r}")
    return value


def statuses(node: Node, path: str, ctx: _Context) -> tuple[int, ...]:
    return tuple(sorted(set(list_of(integer(100, 599))(node, path, ctx))))


def command(node: Node, path: str, ctx: _Context) -> tuple[str, ...]:
    """A list of arguments, or one string split as a shell would (no shell runs it)."""
    import shlex

    if isinstance(node, SequenceNode):
        argv = tuple(list_of(text)(node, path, ctx))
    else:
        try:
            argv = tuple(shlex.split(_text(node)))
        except ValueError as exc:
            raise Invalid(f"cannot be split into arguments: {exc}") from None
    if not argv:
        raise Invalid("must name a program")
    return argv


def _real_server_ref(node: Node, path: str, ctx: _Context) -> str:
    return _text(node)  # resolved in check_entry, once the entry's service is known


CHECK = Schema(
    CheckConfig,
    {
        "type": Key(choice(CHECK_TYPES), required=True, doc="The check type; keys of another type are refused."),
        "service": Key(
            _service_ref,
            doc="Which service's real servers: a name from `services` or `TCP 192.0.2.10:80`; absent: every service.",
        ),
        "real_server": Key(
            _real_server_ref,
            doc="Which real server: a name from `services[].real_servers` or `ADDRESS:PORT`; absent: every real server.",
        ),
        "name": Key(
            name,
            doc="The `check` label; two checks of one type on one real server need different names. Absent: the type.",
        ),
        "interval": Key(duration, doc="Time between two checks (the first is jittered over one interval)."),
        "timeout": Key(duration, doc="A check that takes longer fails; at most `interval`."),
        "rise": Key(integer(1, 100), doc="Consecutive successes that make an unhealthy real server healthy."),
        "fall": Key(integer(1, 100), doc="Consecutive failures that make a healthy real server unhealthy."),
        "port": Key(
            integer(1, 65535),
            doc="The port to check; absent: the real server's own port (an agent check must give the agent's port).",
        ),
        "method": Key(choice(("GET", "HEAD", "POST", "OPTIONS")), doc="The request method."),
        "path": Key(text, doc="The request path."),
        "host": Key(text, doc="The Host header; empty: the real server's address."),
        "statuses": Key(statuses, doc="The statuses that pass; empty: 200..399."),
        "body": Key(regex, doc="A regular expression the body (first 64 KiB) must match; empty: any body."),
        "tls_verify": Key(boolean, doc="Verify the real server's certificate (false for self-signed real servers)."),
        "sni": Key(text, doc="The TLS server name; empty: `host`, else none."),
        "payload": Key(text, doc="The datagram sent."),
        "expect": Key(regex, doc="A regular expression the reply must match; empty: any reply."),
        "query_name": Key(text, doc="The name asked."),
        "query_type": Key(
            choice(("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT")), doc="The record type asked."
        ),
        "rcode": Key(
            choice(("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")),
            doc="The expected response code.",
        ),
        "answer": Key(regex, doc="A regular expression one answer must match; empty: any."),
        "command": Key(
            command,
            doc="The program and its arguments (`{address}`, `{port}` replaced; no shell): exit 0 up, 1 down, 2..255 up with weight code - 2.",
        ),
        "send": Key(text, doc="A line sent before reading the reply (HAProxy's `agent-send`)."),
        "url": Key(http_url, doc="Base URL of the Prometheus server."),
        "query": Key(text, doc="PromQL giving one sample: the weight percentage (`{address}`, `{port}` replaced)."),
    },
)


def check_entry(node: Node, path: str, ctx: _Context) -> CheckConfig:
    """One check: the common keys, then only the keys of its type; a real server by name or address."""
    value, pairs, values = _record(node, path, CHECK, ctx)
    kind = values.get("type")
    ok = value is not _FAILED
    if kind is not None:
        allowed = set(_CHECK_COMMON) | set(CHECK_KEYS[kind])
        for key_name, (key_node, _) in pairs.items():
            if key_name in CHECK.keys and key_name not in allowed:
                takes = ", ".join(CHECK_KEYS[kind]) or "only the common keys"
                ctx.problem(key_node, _join(path, key_name), f"does not apply to a {kind} check (it takes {takes})")
                ok = False
        for key_name in CHECK_REQUIRED.get(kind, ()):
            if key_name not in pairs:
                ctx.problem(node, _join(path, key_name), f"required for a {kind} check")
                ok = False
    if not ok:
        raise _Recorded()
    if values.get("timeout", value.timeout) > values.get("interval", value.interval):
        raise Invalid(f"timeout ({value.timeout:g} s) must not exceed interval ({value.interval:g} s)")
    ref = values.get("real_server")
    if ref is None:
        return value
    try:
        return replace(value, real_server=RealServerKey.parse(ref))
    except ValueError:
        pass
    for svc in ctx.services:
        if value.service in (None, svc.service):
            for rs in svc.real_servers:
                if rs.name == ref:
                    return replace(value, real_server=rs.address)
    ctx.problem(
        pairs["real_server"][1],
        _join(path, "real_server"),
        f"{ref!r} is neither an address:port nor the name of a real server of {value.service or 'a named service'}",
    )
    raise _Recorded()


PUBLISH = Schema(
    PublishConfig,
    {
        "mode": Key(
            choice(("actuator", "alertmanager")),
            doc="actuator: the fast path, to the actuator's webhook and `POST /api/v1/weight`; alertmanager: alerts to its `/api/v2/alerts` (weights are not published).",
        ),
        "url": Key(http_url, doc="Base URL of the actuator or the Alertmanager."),
        "token_file": Key(
            text,
            doc="A file holding the actuator token (`NAME:SECRET` or `SECRET`, first line); empty: `$LVSGUARD_TOKEN`.",
        ),
    },
)

PROBES = Schema(
    ProbesConfig,
    {
        "enabled": Key(boolean, doc="Run health checks at all."),
        "default_tcp": Key(
            boolean, doc="A tcp check on every real server of a TCP/SCTP service that no entry of `checks` names."
        ),
        "refresh": Key(duration, doc="How often the kernel table is re-read to follow real servers that come and go."),
        "default_rate": Key(
            integer(1, 1000000),
            doc="The most default tcp probes a second, all real servers together: above it their interval stretches to checks / rate (logged once per change); configured checks keep theirs.",
        ),
        "weight_min_step": Key(
            integer(1, 65535),
            doc="Damping of agent/prometheus/script weights: a smaller change is not published (a move to or from 0 always is).",
        ),
        "weight_min_interval": Key(
            duration,
            doc="Damping: the least time between two published weight changes of one real server (keep it at or above the actuator's `hold_down`).",
        ),
        "publish": Key(
            section(PUBLISH),
            doc="Where health transitions and weight changes go; absent: they are only exported as metrics.",
        ),
        "checks": Key(
            list_of(check_entry),
            doc="Health checks; each applies to the real servers its `service` and `real_server` match.",
        ),
    },
)


SECTIONS: Mapping[str, Key] = {
    "director": Key(section(DIRECTOR), doc="Which IPVS table this director is."),
    "services": Key(
        _named_services(records(SERVICE)),
        doc="Names for virtual services and their real servers (labels, status, actuator targets).",
    ),  # before `exporter`, whose allow-list names them
    "exporter": Key(section(EXPORTER), doc="The Prometheus exporter, `lvsguard exporter` (docs/metrics.md)."),
    "actuator": Key(
        actuator_section, doc="The actuator, `lvsguard actuator` (docs/actuator.md); absent: its safe defaults."
    ),  # after `services`, whose names it resolves
    "snmp": Key(snmp_section, doc="The exporter's SNMP agent (docs/snmp.md); absent: no SNMP agent."),
    "probes": Key(
        section(PROBES), doc="Health checks of the real servers (docs/probes.md)."
    ),  # after `services`, whose names its checks use
}
"""The top-level sections, in the order they are parsed (a section may refer to one parsed before it)."""


# --- loading -----------------------------------------------------------------------


def loads(text: str, filename: str = "<string>") -> Config:
    """Parse and validate a config; raises ConfigError with every problem found."""
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters before any parsing
    except yaml.reader.ReaderError as exc:
        raise ConfigError([_reader_problem(filename, text, exc)]) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([_syntax_problem(filename, exc)]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([ConfigProblem(filename, 0, 0, "", f"YAML error: {exc}")]) from None
        if root is None or _is_null(root):
            return Config(file=filename)
        ctx = _Context(filename, loader)
        if isinstance(root, MappingNode):
            config, _, _ = _record(root, "", Schema(partial(Config, file=filename), SECTIONS), ctx)
        else:
            ctx.problem(root, "", f"a config is a mapping of sections ({', '.join(SECTIONS)}), got {_kind(root)}")
    finally:
        loader.dispose()
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return config


def _reader_problem(filename: str, text: str, exc: yaml.reader.ReaderError) -> ConfigProblem:
    """A character YAML does not allow (NUL, other control characters), at its line and column."""
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - text.rfind("\n", 0, exc.position)
    shown = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
    return ConfigProblem(filename, line, column, "", f"character {shown} is not allowed in YAML ({exc.reason})")


def _syntax_problem(filename: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    message = f"YAML syntax error: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
    return ConfigProblem(filename, line, column, "", message)


def load(path: str | PathLike[str]) -> Config:
    """Read and validate the config file at ``path``; every failure is a ConfigError naming the file."""
    filename = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError([ConfigProblem(filename, 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [ConfigProblem(filename, line, 0, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        ) from None
    return loads(text, filename)
