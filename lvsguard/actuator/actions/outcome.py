"""What the action layer works with and answers: who asked (:class:`Actor`), what happened
(:class:`Outcome`), and the two things it drives (:class:`Kernel`, :class:`Recorder`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from lvsguard.actuator.states import HoldKind, Result, Source
from lvsguard.actuator.targets import Target
from lvsguard.model import RealServer, RealServerKey, ServiceKey, Table, VirtualService


class Kernel(Protocol):
    """The part of ``lvsguard.ipvs.netlink.NetlinkIPVS`` the actuator uses (``tests/fakes.py`` has the fake)."""

    def read(self) -> Table: ...
    def read_service(self, key: ServiceKey) -> VirtualService: ...
    def read_real_servers(self, key: ServiceKey) -> tuple[RealServer, ...]: ...
    def edit_real_server(self, service: ServiceKey, rs: RealServer) -> None: ...
    def edit_real_servers(self, service: ServiceKey, servers: Iterable[RealServer]) -> int: ...
    def add_real_server(self, service: ServiceKey, rs: RealServer) -> None: ...
    def delete_real_server(self, service: ServiceKey, key: RealServerKey) -> None: ...

    # the table reconciler's writes (``lvsguard.table.apply.TableWriter``)
    def add_services(self, services: Iterable[VirtualService]) -> int: ...
    def edit_service(self, svc: VirtualService) -> None: ...
    def delete_service(self, key: ServiceKey) -> None: ...
    def add_real_servers_to(self, servers: Iterable[tuple[ServiceKey, RealServer]]) -> int: ...
    def edit_real_servers_to(self, servers: Iterable[tuple[ServiceKey, RealServer]]) -> int: ...


class Recorder(Protocol):
    """Where outcomes are counted (``actuator.metrics.ActuatorMetrics``)."""

    def action(self, action: str, result: str, source: str) -> None: ...
    def refusal(self, action: str, reason: str) -> None: ...
    def failover(self) -> None: ...


class NoMetrics:
    def action(self, action: str, result: str, source: str) -> None:
        return None

    def refusal(self, action: str, reason: str) -> None:
        return None

    def failover(self) -> None:
        return None


class Holder(Protocol):
    """A hold on a real server or a failover request, as the ledger has it."""

    @property
    def kind(self) -> str: ...
    @property
    def holder(self) -> str: ...
    @property
    def alertname(self) -> str: ...
    @property
    def source(self) -> str: ...


def alert_text(alertname: str, fingerprint: str) -> str:
    return f"alert {alertname or '?'} ({fingerprint})"


def holder_text(hold: Holder) -> str:
    """A holder as replies and messages name it: ``alert BackendDown (fp)`` or ``manual (api alice)``."""
    if hold.source == Source.CLUSTER:
        return f"cluster ({hold.holder})"
    if hold.kind == HoldKind.ALERT:
        return alert_text(hold.alertname, hold.holder)
    return f"manual ({hold.source} {hold.holder})"


ALERT_SOURCES = (Source.ALERTMANAGER, Source.PASSIVE, Source.CLUSTER)
"""Sources whose hold is held as an alert's: the holder's own, released only by it, waiting when refused."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked: an alert (``name`` = fingerprint), an API token or the CLI (``name`` = token name)."""

    source: Source
    name: str
    alertname: str = ""

    @property
    def hold_kind(self) -> HoldKind:
        return HoldKind.ALERT if self.source in ALERT_SOURCES else HoldKind.MANUAL

    @property
    def audit_name(self) -> str:
        """The audit trail's ``actor``: ``alertname/fingerprint`` for an alert, else the name."""
        return self.name if not self.alertname else f"{self.alertname}/{self.name}"

    def __str__(self) -> str:
        if self.source == Source.CLUSTER:
            return f"cluster {self.name}"
        if self.source in ALERT_SOURCES:
            return alert_text(self.alertname, self.name)
        return f"{self.source} {self.name}"


ACTUATOR = Actor(Source.ACTUATOR, "actuator")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one action did, for the API reply, the webhook reply, the audit trail and the metrics."""

    action: str
    target: Target | None
    result: Result
    message: str
    reason: str = ""  # refusal reason (policy.REASONS) or error class
    weight: int | None = None  # the real server's kernel weight afterwards, when known
    job_id: int | None = None
    holders: tuple[str, ...] = ()
    retry_after: float | None = None
    details: dict[str, Any] = field(default_factory=dict, hash=False)

    def not_applied(self, why: str) -> Outcome:
        """This outcome after its kernel write failed (a batch learns it at its end)."""
        return replace(self, result=Result.ERROR, message=f"{self.message}: not applied, {why}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action,
            "result": self.result,
            "message": self.message,
            "reason": self.reason,
            "service": str(self.target.service) if self.target else "",
            "real_server": str(self.target.real_server) if self.target else "",
            "weight": self.weight,
            "job_id": self.job_id,
            "holders": list(self.holders),
        }
        if self.retry_after is not None:
            out["retry_after"] = math.ceil(self.retry_after)
        return out
