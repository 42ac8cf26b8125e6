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
from dataclasses import dataclass, field
from typing import Mapping

from lvsguard.model import RealServerKey, ServiceKey

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
        for name, value in self.match:
            if labels.get(name, "") != value:
                return False
        for name, pattern in self.match_re:
            if pattern.fullmatch(labels.get(name, "")) is None:
                return False
        return True


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
    role_file: str = ""  # where keepalived's notify script writes this director's state (MASTER, BACKUP, FAULT)
    ledger_path: str = "/var/lib/lvsguard/actuator.db"

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
