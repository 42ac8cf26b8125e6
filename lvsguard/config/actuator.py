"""Section ``actuator``: the actuator's settings, frozen values with safe defaults (docs/actuator.md).

They live in the core so that the config builds them without importing the
app; ``actuator.settings`` re-exports them for the actuator's modules. With
no section the defaults apply: act only on real servers that exist in the
kernel table, on alerts that carry an ``lvsguard_action`` label, never take
the last real server of a service out, and accept no mutating call until a
token is configured (there is no default token).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from yaml.nodes import Node, ScalarNode

from lvsguard.config.cluster import ClusterConfig
from lvsguard.config.schema import (
    FAILED,
    Context,
    Invalid,
    Key,
    Parser,
    Recorded,
    Schema,
    boolean,
    choice,
    duration_range,
    file_path,
    http_url,
    integer,
    join,
    kind_of,
    list_of,
    listen,
    parse_data,
    records,
    scalar,
    scalar_text,
    seconds,
    section,
    text,
)
from lvsguard.config.services import NameIndex, ServiceConfig
from lvsguard.defaults import ACTUATOR_LISTEN, LEDGER_PATH
from lvsguard.model import RealServerKey, ServiceKey
from lvsguard.secretfile import read_secret
from lvsguard.table.desired import DesiredTable
from lvsguard.table.load import TableSettings

ACTIONS = ("quarantine", "drain", "restore", "failover", "none")
"""What an alert can ask for (rules' ``action`` and the ``lvsguard_action`` label)."""


@dataclass(frozen=True, slots=True)
class Quorum:
    """How many real servers of a service must keep a non-zero weight.

    A count (``2``) or a fraction of the service's real servers (``0.5`` or
    ``"50%"``, rounded up): an action that would leave fewer is refused.
    """

    value: float
    fraction: bool = False

    @classmethod
    def parse(cls, value: int | float | str) -> Quorum:
        """Accept ``2``, ``0.5`` or ``"50%"``; raise ValueError naming the bad value."""
        if isinstance(value, bool):
            raise ValueError(f"min_healthy must be a count or a fraction, got {value!r}")
        if isinstance(value, str):
            text = value.strip()
            if not text.endswith("%"):
                raise ValueError(f"min_healthy must be a count, a fraction or a percentage, got {value!r}")
            try:
                percent = float(text[:-1])
            except ValueError:
                raise ValueError(f"min_healthy: {value!r} is not a percentage") from None
            if not 0 <= percent <= 100:
                raise ValueError(f"min_healthy must be 0%..100%, got {value!r}")
            return cls(percent / 100, True)
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"min_healthy must be >= 0, got {value}")
            return cls(float(value), False)
        if isinstance(value, float) and 0 <= value <= 1:
            return cls(value, True)
        raise ValueError(f"min_healthy must be a count (int >= 0) or a fraction 0..1, got {value!r}")

    def required(self, total: int) -> int:
        """Healthy real servers needed in a service of ``total`` real servers."""
        if self.fraction:
            return math.ceil(self.value * total - 1e-9)
        return int(self.value)

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.fraction else str(int(self.value))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``actions`` capacity-removing kernel writes in any ``per`` seconds (0 = no limit)."""

    actions: int = 60
    per: float = 60.0


@dataclass(frozen=True, slots=True)
class Rule:
    """Alert labels -> action. ``match`` compares exactly, ``match_re`` with a full regex match."""

    action: str
    match: tuple[tuple[str, str], ...] = ()
    match_re: tuple[tuple[str, re.Pattern[str]], ...] = ()
    drain_timeout: float | None = None  # seconds; None = ActuatorSettings.drain_timeout
    drain_delete: bool = False  # delete the real server once its connections reach 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r} ({', '.join(ACTIONS)})")

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when every ``match`` and ``match_re`` label agrees (a missing label is "")."""
        return all(labels.get(name, "") == value for name, value in self.match) and all(
            pattern.fullmatch(labels.get(name, "")) is not None for name, pattern in self.match_re
        )


@dataclass(frozen=True, slots=True)
class Names:
    """Operator names from the config: ``service`` and ``real_server`` labels resolve through these."""

    services: Mapping[str, ServiceKey] = field(default_factory=dict)
    real_servers: Mapping[ServiceKey, Mapping[str, RealServerKey]] = field(default_factory=dict)
    _names: NameIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Looked up per service and real server of every table the API, the console and the metrics show:
        # a scan of ``services`` per lookup made GET /api/v1/services take 49 s at 10 000 services.
        services, real_servers = self.services, self.real_servers
        index = NameIndex(
            lambda: services.items(),
            lambda: ((key, name, rs) for key, named in real_servers.items() for name, rs in named.items()),
        )
        object.__setattr__(self, "_names", index)

    def service_name(self, key: ServiceKey) -> str:
        return self._names.service_name(key)

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str:
        return self._names.real_server_name(service, key)

    def describe_service(self, key: ServiceKey) -> str:
        """``web`` when the config names it, else ``TCP 192.0.2.10:80``: what refusals print."""
        return self.service_name(key) or str(key)


@dataclass(frozen=True, slots=True)
class ActuatorSettings:
    """Everything the actuator needs besides the kernel and the ledger file."""

    rules: tuple[Rule, ...] = ()
    min_healthy: Quorum = Quorum(1)
    service_min_healthy: Mapping[ServiceKey, Quorum] = field(default_factory=dict)
    rate_limit: RateLimit = RateLimit()
    hold_down: float = 30.0  # seconds between two weight changes of one real server
    dry_run: bool = False
    tokens: Mapping[str, str] = field(default_factory=dict)  # token name -> secret
    read_only_open: bool | None = None  # GET endpoints need no token; None: only when bound to loopback
    slow_start: float = 0.0  # seconds to ramp a restored weight up; 0 = restore at once
    slow_start_steps: int = 10
    drain_timeout: float = 300.0  # seconds a drain waits for active connections to reach 0
    job_poll_interval: float = 1.0  # seconds between two steps of a drain or slow-start job
    retry_interval: float = 5.0  # seconds between two retries of refused alert actions
    names: Names = Names()
    real_servers_allowed: Mapping[ServiceKey, frozenset[RealServerKey]] = field(default_factory=dict)
    """Real servers the config declares per service; ``add`` of another one is refused there."""
    role_file: str = (
        ""  # this director's VRRP state (MASTER, BACKUP, FAULT, STOP), copied from keepalived's notify FIFO
    )
    failover_track_file: str = ""  # keepalived track_file the ``failover`` action writes ("1" = give the VIPs up)
    failover_peer_url: str = ""  # the other director's actuator; a failover is refused unless it is a healthy backup
    ledger_path: str = LEDGER_PATH
    listen: str = ACTUATOR_LISTEN  # where `lvsguard actuator` serves when --listen is not given
    exporter_url: str = ""  # the local exporter's /metrics: probe state for the console and /api/v1/services; "" = none
    exporter_timeout: float = 2.0  # seconds one read of exporter_url may take before the probe state reads "unknown"
    session_secret: bytes = field(default=b"", repr=False)
    """Signing key of the console's session cookie (from ``session_secret_file``); b"" = random per process."""
    secure_cookie: bool = False  # the console is reached over HTTPS (a TLS proxy): its session cookie is marked Secure
    trusted_hosts: tuple[str, ...] = ()
    """Host names clients may reach the actuator by, besides IP addresses, localhost and this host's name; "*": any."""
    table: TableSettings = TableSettings()
    """Section ``table`` of the config: whether the actuator owns the IPVS table (not an ``actuator`` key)."""
    desired: DesiredTable = field(default=DesiredTable(), compare=False)
    """The table the config's ``services`` describe; the actuator applies it with ``table.manage``."""
    cluster: ClusterConfig = ClusterConfig()
    """Section ``cluster`` of the config: where holds shared by several directors live (not an ``actuator`` key)."""

    def quorum_for(self, service: ServiceKey) -> Quorum:
        return self.service_min_healthy.get(service, self.min_healthy)

    def action_for(self, labels: Mapping[str, str]) -> tuple[str, Rule | None]:
        """The first matching rule's action, else the ``lvsguard_action`` label, else ``none``."""
        for rule in self.rules:
            if rule.matches(labels):
                return rule.action, rule
        label = labels.get("lvsguard_action", "")
        if label in ACTIONS:
            return label, None
        return "none", None


MIN_SESSION_SECRET = 32  # bytes in session_secret_file (surrounding whitespace not counted)


def parse_duration(value: object) -> float:
    """Seconds (at least 0) from a number or a Prometheus-style ``30s`` / ``5m`` / ``250ms`` / ``1h``."""
    result = seconds(value)
    if result < 0:
        raise ValueError(f"must be a duration such as 1s, 500ms or 2m, got {value!r}")
    return result


# --- value parsers -------------------------------------------------------------------

span = duration_range(math.inf, zero=True)
"""A duration of 0 seconds or more (``0``: at once, or never waits)."""


def quorum(node: Node, path: str, ctx: Context) -> Quorum:
    if not isinstance(node, ScalarNode):
        raise Invalid(f"min_healthy must be a count, a fraction or a percentage, got {kind_of(node)}")
    try:
        return Quorum.parse(scalar(node))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def quorums(node: Node, path: str, ctx: Context) -> dict[ServiceKey, Quorum]:
    """Service name (from ``services``) or ``TCP 192.0.2.10:80`` -> ``min_healthy`` of that service."""
    pairs = ctx.pairs(node, path)
    if pairs is None:
        raise Recorded()
    out: dict[ServiceKey, Quorum] = {}
    ok = True
    for name, (_, value_node) in pairs.items():
        where = join(path, name)
        service = ctx.service_names.get(name)
        if service is None:
            try:
                service = ServiceKey.parse(name)
            except ValueError:
                ctx.problem(
                    value_node, where, "neither a service name from the config nor a service like 'TCP 192.0.2.10:80'"
                )
                ok = False
                continue
        value = ctx.parse(quorum, value_node, where)
        if value is FAILED:
            ok = False
        else:
            out[service] = value
    if not ok:
        raise Recorded()
    return out


def labels(node: Node, path: str, ctx: Context) -> tuple[tuple[str, str], ...]:
    """Label name -> the exact value an alert must have."""
    return _label_map(node, path, ctx, text)


def label_patterns(node: Node, path: str, ctx: Context) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """Label name -> a regular expression the alert's value must match in full."""
    return _label_map(node, path, ctx, pattern)


def _label_map(node: Node, path: str, ctx: Context, value: Parser) -> tuple[tuple[str, Any], ...]:
    """A mapping of label names to what ``value`` parses, as pairs; every problem recorded before it fails."""
    pairs = ctx.pairs(node, path)
    if pairs is None:
        raise Recorded()
    values = [(name, ctx.parse(value, value_node, join(path, name))) for name, (_, value_node) in pairs.items()]
    if any(parsed is FAILED for _, parsed in values):
        raise Recorded()
    return tuple(values)


def pattern(node: Node, path: str, ctx: Context) -> re.Pattern[str]:
    value = scalar_text(node)
    try:
        return re.compile(value)
    except re.error as exc:
        raise Invalid(f"invalid regex {value!r}: {exc}") from None


def host_name(node: Node, path: str, ctx: Context) -> str:
    """A DNS name as a Host header carries it (without port), or ``*``; kept in lower case."""
    value = scalar_text(node).strip().lower().rstrip(".")
    if value != "*" and not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*", value):
        raise Invalid(f"must be a host name like lvs1.example.org (no port, no scheme) or *, got {value!r}")
    return value


def secret_file(node: Node, path: str, ctx: Context) -> bytes:
    """The bytes of a session secret file: read at load, so a missing or short file is a config error at its line."""
    name = scalar_text(node)
    try:
        secret = read_secret(name, 4096).strip()
    except OSError as exc:
        raise Invalid(f"{name}: cannot read the session secret: {exc.strerror}") from None
    except ValueError as exc:  # others may read it
        raise Invalid(str(exc)) from None
    if len(secret) < MIN_SESSION_SECRET:
        raise Invalid(
            f"{name}: the session secret must be at least {MIN_SESSION_SECRET} bytes, got {len(secret)}"
            " (make one with: head -c 32 /dev/urandom | base64 > FILE)"
        )
    return secret


# --- the schema ----------------------------------------------------------------------

RATE_LIMIT = Schema(
    RateLimit,
    {
        "actions": Key(
            integer(0, 1_000_000), doc="Capacity-removing kernel writes allowed in one window; 0: no limit."
        ),
        "per": Key(duration_range(math.inf), doc="The window."),
    },
)

RULE = Schema(
    Rule,
    {
        "match": Key(labels, doc="Labels the alert must have, compared exactly (a missing label is empty)."),
        "match_re": Key(label_patterns, doc="Labels the alert must match in full."),
        "action": Key(choice(ACTIONS), required=True, doc="What a matching alert asks for."),
        "drain_timeout": Key(span, doc="This rule's drain timeout; absent: `actuator.drain_timeout`."),
        "drain_delete": Key(boolean, doc="Delete the real server once its connections reach 0."),
    },
)

ACTUATOR = Schema(
    ActuatorSettings,
    {
        "ledger": Key(
            file_path,
            doc="The SQLite ledger (holds, jobs, audit); its directory must be writable (SQLite writes `-wal` and `-shm` files beside it).",
        ),
        "dry_run": Key(boolean, doc="Decide and record everything, write nothing to the kernel."),
        "read_only_open": Key(
            boolean,
            doc="GET endpoints and the console's pages need no token (mutating calls always need one). Absent: open when the actuator listens on loopback, closed elsewhere.",
        ),
        "min_healthy": Key(
            quorum,
            doc="Real servers of a service that must keep a non-zero weight (a fraction is rounded up); an action that would leave fewer is refused.",
        ),
        "quorum": Key(quorums, doc="`min_healthy` of single services."),
        "rate_limit": Key(
            section(RATE_LIMIT), doc="At most `actions` capacity-removing kernel writes in any `per` seconds."
        ),
        "hold_down": Key(span, doc="Least time between two weight changes of one real server."),
        "slow_start": Key(span, doc="Time to ramp a restored weight up; 0: restore at once."),
        "slow_start_steps": Key(integer(1, 1000), doc="Steps of a slow start."),
        "drain_timeout": Key(span, doc="How long a drain waits for the active connections to reach 0."),
        "job_poll_interval": Key(span, doc="Time between two steps of a drain or slow-start job."),
        "retry_interval": Key(span, doc="Time between two retries of alert actions a safety rule refused."),
        "role_file": Key(
            file_path,
            doc="This director's VRRP state (MASTER, BACKUP, FAULT, STOP), copied from keepalived's notify FIFO (docs/ha.md); empty, missing or anything else: unknown.",
        ),
        "failover_track_file": Key(
            file_path,
            doc="The keepalived `track_file` the `failover` action writes (`1` gives the VIPs up); empty: failover is not configured.",
        ),
        "failover_peer_url": Key(
            text,
            doc="The other director's actuator (`http://` URL): a failover is refused unless it reports a healthy backup; empty: not checked.",
        ),
        "rules": Key(
            records(RULE),
            doc="Alert labels -> action; the first matching rule wins, else the alert's `lvsguard_action` label, else none.",
        ),
        "listen": Key(
            listen,
            doc="Address of the actuator's HTTP server (API, webhook, console), read by the CLI; `--listen` wins.",
        ),
        "exporter_url": Key(
            http_url,
            doc="The local exporter's `/metrics`: probe state for the console and `/api/v1/services`; empty: none.",
        ),
        "exporter_timeout": Key(
            duration_range(60.0),
            doc="How long one read of `exporter_url` may take before the probe state reads unknown.",
        ),
        "session_secret_file": Key(
            secret_file,
            doc="A file holding the signing key of the console's session cookie (at least 32 bytes, private to the service); absent: a random key per process.",
        ),
        "trusted_hosts": Key(
            list_of(host_name),
            doc="Names clients reach the actuator by (`lvs1.example.org`), besides any IP address, `localhost` and this host's name; another `Host` header is refused (400) against DNS rebinding; `*`: any.",
        ),
        "secure_cookie": Key(
            boolean,
            doc="The console is reached over HTTPS (through a TLS reverse proxy): its session cookie is marked `Secure`, so a browser never sends it over plain HTTP.",
        ),
    },
    fields={"ledger": "ledger_path", "quorum": "service_min_healthy", "session_secret_file": "session_secret"},
)
KEYS = tuple(ACTUATOR.keys)
"""Keys of the config's ``actuator:`` section."""


def _with_names(settings: ActuatorSettings, ctx: Context) -> ActuatorSettings:
    """The names of ``services`` (targets resolve through them) and the real servers it declares per service."""
    names = Names(
        services=dict(ctx.service_names),
        real_servers={s.service: {rs.name: rs.address for rs in s.real_servers} for s in ctx.services},
    )
    return replace(settings, names=names, real_servers_allowed=_Declared(ctx.services))


class _Declared(Mapping[ServiceKey, frozenset[RealServerKey]]):
    """The real servers ``services`` declare, per service that declares any; made at the first lookup.

    Not on a reload's way to the kernel: 0.1 s for 100 000 real servers (``NameIndex`` says why).
    """

    def __init__(self, services: tuple[ServiceConfig, ...]) -> None:
        self._services = services
        self._built: list[dict[ServiceKey, frozenset[RealServerKey]]] = []

    def _index(self) -> dict[ServiceKey, frozenset[RealServerKey]]:
        if not self._built:
            self._built.append(
                {s.service: frozenset(rs.address for rs in s.real_servers) for s in self._services if s.real_servers}
            )
        return self._built[0]

    def __getitem__(self, key: ServiceKey) -> frozenset[RealServerKey]:
        return self._index()[key]

    def __iter__(self) -> Iterator[ServiceKey]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())


SECTION = Key(
    section(ACTUATOR, _with_names),
    doc="The actuator, `lvsguard actuator` (docs/actuator.md); absent: its safe defaults.",
)


def from_mapping(
    data: Mapping[str, object] | None,
    *,
    names: Names = Names(),
    real_servers_allowed: Mapping[ServiceKey, frozenset[RealServerKey]] | None = None,
    tokens: Mapping[str, str] | None = None,
) -> ActuatorSettings:
    """Build the settings from an ``actuator:`` section given as data (what ``yaml.safe_load`` returns).

    The same schema as the config file; every problem is raised at once as a
    ``ConfigError`` keyed by its path in the section (``rules[0].action``).
    ``names`` and ``real_servers_allowed`` stand for the config's
    ``services``, ``tokens`` for LVSGUARD_TOKEN / --token-file.
    """
    ctx = Context("")
    ctx.service_names.update(names.services)
    settings: ActuatorSettings = parse_data(section(ACTUATOR), data, context=ctx)
    return replace(
        settings, names=names, real_servers_allowed=dict(real_servers_allowed or {}), tokens=dict(tokens or {})
    )
