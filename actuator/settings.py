"""The actuator's settings: frozen values with safe defaults.

``lvsguard/config.py`` builds an :class:`ActuatorSettings` from the ``actuator:``
section of the YAML config (validated there, with file and line in every error);
with no config the defaults apply: act only on real servers that exist in the
kernel table, on alerts that carry an ``lvsguard_action`` label, never take the
last real server of a service out, and accept no mutating call until a token is
configured (there is no default token).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lvsguard.model import RealServerKey, ServiceKey
from lvsguard.secretfile import read_secret

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

    def service_name(self, key: ServiceKey) -> str:
        for name, svc in self.services.items():
            if svc == key:
                return name
        return ""

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str:
        for name, rs in self.real_servers.get(service, {}).items():
            if rs == key:
                return name
        return ""

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
    read_only_open: bool = True  # GET endpoints need no token
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
    ledger_path: str = "/var/lib/lvsguard/actuator.db"
    exporter_url: str = ""  # the local exporter's /metrics: probe state for the console and /api/v1/services; "" = none
    exporter_timeout: float = 2.0  # seconds one read of exporter_url may take before the probe state reads "unknown"
    session_secret: bytes = field(default=b"", repr=False)
    """Signing key of the console's session cookie (from ``session_secret_file``); b"" = random per process."""
    secure_cookie: bool = False  # the console is reached over HTTPS (a TLS proxy): its session cookie is marked Secure

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


KEYS = (
    "ledger",
    "dry_run",
    "read_only_open",
    "min_healthy",
    "quorum",
    "rate_limit",
    "hold_down",
    "slow_start",
    "slow_start_steps",
    "drain_timeout",
    "job_poll_interval",
    "retry_interval",
    "role_file",
    "failover_track_file",
    "failover_peer_url",
    "rules",
    "listen",
    "exporter_url",
    "exporter_timeout",
    "session_secret_file",
    "secure_cookie",
)
"""Keys of the config's ``actuator:`` section (``listen`` is the CLI's default address, read by the CLI)."""

KEY_DOCS: Mapping[str, tuple[str, str]] = {
    "ledger": (
        "path",
        "The SQLite ledger (holds, jobs, audit); its directory must be writable (SQLite writes `-wal` and `-shm` files beside it).",
    ),
    "dry_run": ("boolean", "Decide and record everything, write nothing to the kernel."),
    "read_only_open": ("boolean", "GET endpoints need no token (mutating calls always need one)."),
    "min_healthy": (
        'count, fraction 0..1 or percentage (`"50%"`)',
        "Real servers of a service that must keep a non-zero weight (a fraction is rounded up); an action that would leave fewer is refused.",
    ),
    "quorum": (
        "mapping of service name (or `TCP 192.0.2.10:80`) to `min_healthy`",
        "`min_healthy` of single services.",
    ),
    "rate_limit": ("mapping", "At most `actions` capacity-removing kernel writes in any `per` seconds."),
    "hold_down": ("duration", "Least time between two weight changes of one real server."),
    "slow_start": ("duration", "Time to ramp a restored weight up; 0: restore at once."),
    "slow_start_steps": ("integer 1..1000", "Steps of a slow start."),
    "drain_timeout": ("duration", "How long a drain waits for the active connections to reach 0."),
    "job_poll_interval": ("duration", "Time between two steps of a drain or slow-start job."),
    "retry_interval": ("duration", "Time between two retries of alert actions a safety rule refused."),
    "role_file": (
        "path",
        "This director's VRRP state (MASTER, BACKUP, FAULT, STOP), copied from keepalived's notify FIFO (docs/ha.md); empty, missing or anything else: unknown.",
    ),
    "failover_track_file": (
        "path",
        "The keepalived `track_file` the `failover` action writes (`1` gives the VIPs up); empty: failover is not configured.",
    ),
    "failover_peer_url": (
        "`http://` URL",
        "The other director's actuator: a failover is refused unless it reports a healthy backup; empty: not checked.",
    ),
    "rules": (
        "list of mappings",
        "Alert labels -> action; the first matching rule wins, else the alert's `lvsguard_action` label, else none.",
    ),
    "listen": (
        "`HOST:PORT`",
        "Address of the actuator's HTTP server (API, webhook, console), read by the CLI; `--listen` wins.",
    ),
    "exporter_url": (
        "`http://` or `https://` URL",
        "The local exporter's `/metrics`: probe state for the console and `/api/v1/services`; empty: none.",
    ),
    "exporter_timeout": (
        "duration, more than 0, at most 60 s",
        "How long one read of `exporter_url` may take before the probe state reads unknown.",
    ),
    "session_secret_file": (
        "path",
        "A file holding the signing key of the console's session cookie (at least 32 bytes); absent: a random key per process.",
    ),
    "secure_cookie": (
        "boolean",
        "The console is reached over HTTPS (through a TLS reverse proxy): its session cookie is marked `Secure`, so a browser never sends it over plain HTTP.",
    ),
}
"""(type, meaning) of each key in KEYS; docs/configuration-reference.md is generated from it (lvsguard/configdoc.py)."""
RULE_KEY_DOCS: Mapping[str, tuple[str, str]] = {
    "match": (
        "mapping of label names to strings",
        "Labels the alert must have, compared exactly (a missing label is empty).",
    ),
    "match_re": ("mapping of label names to regular expressions", "Labels the alert must match in full."),
    "action": ("one of " + ", ".join(f"`{a}`" for a in ACTIONS), "What a matching alert asks for."),
    "drain_timeout": ("duration", "This rule's drain timeout; absent: `actuator.drain_timeout`."),
    "drain_delete": ("boolean", "Delete the real server once its connections reach 0."),
}
RATE_LIMIT_KEY_DOCS: Mapping[str, tuple[str, str]] = {
    "actions": ("integer 0..1000000", "Capacity-removing kernel writes allowed in one window; 0: no limit."),
    "per": ("duration, more than 0", "The window."),
}
RULE_KEYS = tuple(RULE_KEY_DOCS)
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MIN_SESSION_SECRET = 32  # bytes in session_secret_file (surrounding whitespace not counted)


class SettingsError(ValueError):
    """The ``actuator:`` section is invalid: ``problems`` is every (key path, message), sorted."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = sorted(problems)
        super().__init__("; ".join(f"{key}: {message}" for key, message in self.problems))


def parse_duration(value: object) -> float:
    """Seconds from a number or a Prometheus-style ``30s`` / ``5m`` / ``250ms`` / ``1h``."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration (seconds, or like 30s, 5m), got {value!r}")
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = DURATION.fullmatch(value.strip())
        if m:
            return float(m.group(1)) * UNITS[m.group(2)]
    raise ValueError(f"must be a duration (seconds, or like 30s, 5m), got {value!r}")


def from_mapping(
    data: Mapping[str, object] | None,
    *,
    names: Names = Names(),
    real_servers_allowed: Mapping[ServiceKey, frozenset[RealServerKey]] | None = None,
    tokens: Mapping[str, str] | None = None,
) -> ActuatorSettings:
    """Build the settings from the config's ``actuator:`` section (already YAML-decoded).

    ``names`` and ``real_servers_allowed`` come from the config's ``services``,
    ``tokens`` from LVSGUARD_TOKEN / --token-file. Every problem is collected
    and raised at once as SettingsError, keyed by its path in the section
    (``rules[0].action``), so that the config loader can add file and line.
    """
    data = data or {}
    problems: list[tuple[str, str]] = []
    values: dict[str, object] = {
        "names": names,
        "real_servers_allowed": dict(real_servers_allowed or {}),
        "tokens": dict(tokens or {}),
    }
    if not isinstance(data, Mapping):
        raise SettingsError([("", f"must be a mapping, got {type(data).__name__}")])
    for key in data:
        if key not in KEYS:
            problems.append((str(key), f"unknown key (known: {', '.join(sorted(KEYS))})"))

    def take(key: str, convert: Callable[[object], object], target: str | None = None) -> None:
        if key in data:
            try:
                values[target or key] = convert(data[key])
            except ValueError as exc:
                problems.append((key, str(exc)))

    take("ledger", _text, "ledger_path")
    take("role_file", _text)
    take("failover_track_file", _text)
    take("failover_peer_url", _text)
    take("exporter_url", _http_url)
    take("exporter_timeout", _positive_duration)
    take("session_secret_file", _secret_file, "session_secret")
    take("secure_cookie", _flag)
    take("dry_run", _flag)
    take("read_only_open", _flag)
    take("min_healthy", lambda v: Quorum.parse(v))  # type: ignore[arg-type]
    take("hold_down", parse_duration)
    take("slow_start", parse_duration)
    take("drain_timeout", parse_duration)
    take("job_poll_interval", parse_duration)
    take("retry_interval", parse_duration)
    take("slow_start_steps", lambda v: _int(v, 1, 1000))
    if "rate_limit" in data:
        values["rate_limit"] = _rate_limit(data["rate_limit"], problems)
    if "quorum" in data:
        values["service_min_healthy"] = _quorums(data["quorum"], names, problems)
    if "rules" in data:
        values["rules"] = _rules(data["rules"], problems)
    if problems:
        raise SettingsError(problems)
    return ActuatorSettings(**values)  # type: ignore[arg-type]


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _http_url(value: object) -> str:
    text = _text(value).strip()
    scheme, sep, rest = text.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or rest.startswith("/") or any(c.isspace() for c in text):
        raise ValueError(f"must be an http:// or https:// URL like http://127.0.0.1:9910/metrics, got {value!r}")
    return text


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if not 0 < seconds <= 60:
        raise ValueError(f"must be more than 0 and at most 60 seconds, got {value!r}")
    return seconds


def _secret_file(value: object) -> bytes:
    """The bytes of a session secret file: read at load, so a missing or short file is a config error at its line."""
    path = _text(value)
    try:
        secret = read_secret(path, 4096).strip()  # ValueError when others may read it
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the session secret: {exc.strerror}") from None
    if len(secret) < MIN_SESSION_SECRET:
        raise ValueError(
            f"{path}: the session secret must be at least {MIN_SESSION_SECRET} bytes, got {len(secret)}"
            " (make one with: head -c 32 /dev/urandom | base64 > FILE)"
        )
    return secret


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _int(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be an integer {low}..{high}, got {value!r}")
    return value


def _rate_limit(value: object, problems: list[tuple[str, str]]) -> RateLimit:
    if not isinstance(value, Mapping):
        problems.append(("rate_limit", f"must be a mapping with actions and per, got {value!r}"))
        return RateLimit()
    for key in value:
        if key not in RATE_LIMIT_KEY_DOCS:
            problems.append((f"rate_limit.{key}", f"unknown key (known: {', '.join(RATE_LIMIT_KEY_DOCS)})"))
    actions, per = RateLimit().actions, RateLimit().per
    try:
        actions = _int(value.get("actions", actions), 0, 1_000_000)
    except ValueError as exc:
        problems.append(("rate_limit.actions", str(exc)))
    try:
        per = parse_duration(value.get("per", per))
        if per <= 0:
            raise ValueError("must be more than 0 seconds")
    except ValueError as exc:
        problems.append(("rate_limit.per", str(exc)))
    return RateLimit(actions, per)


def _quorums(value: object, names: Names, problems: list[tuple[str, str]]) -> dict[ServiceKey, Quorum]:
    if not isinstance(value, Mapping):
        problems.append(("quorum", f"must map service names (or 'TCP 192.0.2.10:80') to min_healthy, got {value!r}"))
        return {}
    out: dict[ServiceKey, Quorum] = {}
    for name, q in value.items():
        key = f"quorum.{name}"
        if name in names.services:
            service = names.services[name]
        else:
            try:
                service = ServiceKey.parse(str(name))
            except ValueError:
                problems.append((key, "neither a service name from the config nor a service like 'TCP 192.0.2.10:80'"))
                continue
        try:
            out[service] = Quorum.parse(q)  # type: ignore[arg-type]
        except ValueError as exc:
            problems.append((key, str(exc)))
    return out


def _labels(value: object, key: str, problems: list[tuple[str, str]]) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        problems.append((key, f"must map label names to strings, got {value!r}"))
        return {}
    return dict(value)


def _rules(value: object, problems: list[tuple[str, str]]) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        problems.append(("rules", f"must be a list, got {value!r}"))
        return ()
    rules = []
    for i, item in enumerate(value):
        where = f"rules[{i}]"
        if not isinstance(item, Mapping):
            problems.append((where, f"must be a mapping, got {item!r}"))
            continue
        for key in item:
            if key not in RULE_KEYS:
                problems.append((f"{where}.{key}", f"unknown key (known: {', '.join(RULE_KEYS)})"))
        action = item.get("action")
        if action not in ACTIONS:
            problems.append((f"{where}.action", f"must be one of {', '.join(ACTIONS)}, got {action!r}"))
            continue
        match = _labels(item.get("match", {}), f"{where}.match", problems)
        patterns = []
        for name, text in _labels(item.get("match_re", {}), f"{where}.match_re", problems).items():
            try:
                patterns.append((name, re.compile(text)))
            except re.error as exc:
                problems.append((f"{where}.match_re.{name}", f"invalid regex {text!r}: {exc}"))
        timeout = None
        if "drain_timeout" in item:
            try:
                timeout = parse_duration(item["drain_timeout"])
            except ValueError as exc:
                problems.append((f"{where}.drain_timeout", str(exc)))
        delete = item.get("drain_delete", False)
        if not isinstance(delete, bool):
            problems.append((f"{where}.drain_delete", f"must be true or false, got {delete!r}"))
            delete = False
        rules.append(Rule(str(action), tuple(match.items()), tuple(patterns), timeout, delete))
    return tuple(rules)
