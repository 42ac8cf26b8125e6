"""The plan: the fewest IPVS operations that turn the kernel's table into the desired one.

``plan(desired, kernel)`` is pure. Identity decides between an edit and a
replacement: a service is its protocol + address + port, or its fwmark +
family; a real server its address + port inside its service. Whatever else
differs (scheduler, flags, persistence; weight, forwarding, thresholds,
tunnel) is an edit in place, never a delete and add, so counters and
connections stay.

Removal follows a prune policy (``owned``: only what lvsguard created, given
as ``owned``; ``exact``: everything not desired) and, unless ``drain=False``,
drains first: a real server with active connections is set to weight 0 and
removed by a later plan, once it is idle; a service goes when none of its real
servers is busy. A caller's ``weights`` mapping wins over the config's weight
of a real server (the actuator's holds: a quarantined server stays at 0).

``str(plan)`` reads like ``terraform plan``::

    + TCP 192.0.2.10:80: scheduler wlc
        + 10.0.1.2:80: masq, weight 1
    ~ TCP 192.0.2.11:80: scheduler rr → wlc
        ~ 10.0.1.3:80: weight 5 → 10
        - 10.0.1.4:80: drain, weight 5 → 0 (3 active connections)
    - TCP 192.0.2.12:80: remove, with 2 real servers

    Plan: 1 service to add, 1 to change; 1 real server to add, 1 to change, 1 to drain.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from lvsguard.model import RealServer, RealServerKey, ServiceKey, Table, VirtualService
from lvsguard.table.desired import (
    DesiredTable,
    describe_real_server,
    describe_service,
    real_server_changes,
    same_real_server,
    service_changes,
    service_settings,
    strip_real_servers,
)

__all__ = ["PRUNE_POLICIES", "Op", "Plan", "RealServerStep", "ServiceStep", "Step", "changed", "plan"]

PRUNE_POLICIES = ("owned", "exact")

Owned = Collection[ServiceKey | tuple[ServiceKey, RealServerKey]]
Weights = Mapping[tuple[ServiceKey, RealServerKey], int]


class Op(enum.Enum):
    """What a step does; the value is the order in which ``apply`` runs them."""

    ADD_SERVICE = 1
    EDIT_SERVICE = 2
    ADD_REAL_SERVER = 3
    EDIT_REAL_SERVER = 4
    DRAIN_REAL_SERVER = 5  # weight to 0; a later plan removes it once idle
    DRAINING = 6  # already at 0 and still busy: nothing to write yet
    REMOVE_REAL_SERVER = 7
    REMOVE_SERVICE = 8  # after its real servers; takes the idle ones with it

    @property
    def writes(self) -> bool:
        return self is not Op.DRAINING


@dataclass(frozen=True, slots=True)
class ServiceStep:
    """Add, edit or remove one service. ``before`` is the kernel's, ``after`` what is written."""

    op: Op
    before: VirtualService | None
    after: VirtualService | None

    @property
    def service(self) -> ServiceKey:
        svc = self.after or self.before
        assert svc is not None
        return svc.key

    def describe(self) -> str:
        if self.op is Op.ADD_SERVICE and self.after is not None:
            return f"+ {self.service}: {describe_service(self.after)}"
        if self.op is Op.EDIT_SERVICE and self.before is not None and self.after is not None:
            return f"~ {self.service}: {'; '.join(service_changes(self.before, self.after))}"
        count = len(self.before.real_servers) if self.before is not None else 0
        servers = f", with {count} real server{'s' if count != 1 else ''}" if count else ""
        return f"- {self.service}: remove{servers}"


@dataclass(frozen=True, slots=True)
class RealServerStep:
    """Add, edit, drain or remove one real server of ``service``.

    ``after`` is exactly what is written, the weight already the winning one;
    ``config_weight`` is the config's when a hold overrode it (else None).
    """

    op: Op
    service: ServiceKey
    before: RealServer | None
    after: RealServer | None
    config_weight: int | None = None

    @property
    def real_server(self) -> RealServerKey:
        rs = self.after or self.before
        assert rs is not None
        return rs.key

    def describe(self) -> str:
        held = f" (held; the config says {self.config_weight})" if self.config_weight is not None else ""
        before, after = self.before, self.after
        if self.op is Op.ADD_REAL_SERVER and after is not None:
            return f"+ {after.key}: {describe_real_server(after)}{held}"
        if self.op is Op.EDIT_REAL_SERVER and before is not None and after is not None:
            return f"~ {after.key}: {'; '.join(real_server_changes(before, after))}{held}"
        assert before is not None
        busy = _connections(before)
        if self.op is Op.DRAIN_REAL_SERVER:
            return f"- {before.key}: drain, weight {before.weight} → 0{busy}"
        if self.op is Op.DRAINING:
            return f"- {before.key}: draining{busy or ' (idle)'}"
        return f"- {before.key}: remove"


Step = ServiceStep | RealServerStep


def _connections(rs: RealServer) -> str:
    active = rs.active_connections
    return f" ({active} active connection{'s' if active != 1 else ''})" if active else ""


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps in the order ``apply`` runs them, and what the prune policy left alone."""

    steps: tuple[Step, ...] = ()
    left_alone: tuple[ServiceKey | tuple[ServiceKey, RealServerKey], ...] = ()  # not desired, not ours (owned)

    @property
    def operations(self) -> tuple[Step, ...]:
        """The steps that write to the kernel (a draining real server waits)."""
        return tuple(s for s in self.steps if s.op.writes)

    @property
    def empty(self) -> bool:
        """True when the kernel already holds the desired table (nothing to write, nothing draining)."""
        return not self.steps

    def count(self, op: Op) -> int:
        return sum(1 for s in self.steps if s.op is op)

    def summary(self) -> str:
        """``1 service to add, 1 to change; 2 real servers to add``, or ``no changes``."""
        if self.empty:
            return "no changes"
        groups = []
        for noun, ops in (
            ("service", ((Op.ADD_SERVICE, "add"), (Op.EDIT_SERVICE, "change"), (Op.REMOVE_SERVICE, "remove"))),
            (
                "real server",
                (
                    (Op.ADD_REAL_SERVER, "add"),
                    (Op.EDIT_REAL_SERVER, "change"),
                    (Op.DRAIN_REAL_SERVER, "drain"),
                    (Op.REMOVE_REAL_SERVER, "remove"),
                ),
            ),
        ):
            parts: list[str] = []
            for op, verb in ops:
                n = self.count(op)
                if n:
                    lead = f"{n} {noun}{'s' if n != 1 else ''} to" if not parts else f"{n} to"
                    parts.append(f"{lead} {verb}")
            if parts:
                groups.append(", ".join(parts))
        waiting = self.count(Op.DRAINING)
        if waiting:
            groups.append(f"{waiting} real server{'s' if waiting != 1 else ''} still draining")
        return "; ".join(groups)

    def __str__(self) -> str:
        if self.empty:
            return "No changes: the kernel's table matches the config.\n"
        lines: list[str] = []
        order: dict[ServiceKey, list[Step]] = {}
        for step in self.steps:
            order.setdefault(step.service, []).append(step)
        for key, steps in order.items():
            own = [s for s in steps if isinstance(s, ServiceStep)]
            lines.append(own[0].describe() if own else f"  {key}")
            lines += ["    " + s.describe() for s in steps if isinstance(s, RealServerStep)]
        lines.append("")
        lines.append(f"Plan: {self.summary()}.")
        if self.left_alone:
            n = len(self.left_alone)
            lines.append(f"{n} kernel entr{'ies' if n != 1 else 'y'} not in the config and not lvsguard's: left alone.")
        return "\n".join(lines) + "\n"


def _busy(service: ServiceKey, rs: RealServer) -> bool:
    """Connections a removal would cut short: active ones, and for UDP the inactive (UDP has no other)."""
    return rs.active_connections > 0 or (service.protocol == "UDP" and rs.inactive_connections > 0)


def _retire(service: ServiceKey, rs: RealServer, drain: bool) -> RealServerStep:
    """The step that takes a real server out: drain it while it is busy, remove it once idle."""
    if drain and _busy(service, rs):
        if rs.weight:
            return RealServerStep(Op.DRAIN_REAL_SERVER, service, rs, replace(rs, weight=0))
        return RealServerStep(Op.DRAINING, service, rs, None)
    return RealServerStep(Op.REMOVE_REAL_SERVER, service, rs, None)


def _services(kernel: Table | Iterable[VirtualService]) -> tuple[VirtualService, ...]:
    return kernel.services if isinstance(kernel, Table) else tuple(kernel)


def plan(
    desired: DesiredTable,
    kernel: Table | Iterable[VirtualService],
    *,
    prune: str = "owned",
    owned: Owned = frozenset(),
    weights: Weights | None = None,
    drain: bool = True,
    only: Collection[ServiceKey] | None = None,
) -> Plan:
    """The steps from ``kernel`` to ``desired``.

    ``prune``: ``owned`` removes only the services and real servers in
    ``owned`` (what lvsguard created), ``exact`` everything not desired.
    ``weights``: per (service, real server), a weight that wins over the
    config's. ``drain=False`` removes busy real servers at once. ``only``:
    plan these services alone (``changed`` between two configs); ``kernel``
    then need hold no more than them, so a reload reads and compares what
    changed, not the whole table.
    """
    if prune not in PRUNE_POLICIES:
        raise ValueError(f"prune must be one of {', '.join(PRUNE_POLICIES)}, got {prune!r}")
    weights = weights or {}
    current = {svc.key: svc for svc in _services(kernel)}
    if only is not None:
        keys = set(only)
        desired = DesiredTable(tuple(svc for svc in desired if svc.key in keys))
        current = {key: svc for key, svc in current.items() if key in keys}
    exact = prune == "exact"
    service_steps: list[Step] = []
    server_steps: list[RealServerStep] = []
    removals: list[ServiceStep] = []
    left_alone: list[ServiceKey | tuple[ServiceKey, RealServerKey]] = []

    for want in desired:
        have = current.get(want.key)
        if have is None:
            service_steps.append(ServiceStep(Op.ADD_SERVICE, None, strip_real_servers(want)))
        elif service_settings(have) != service_settings(want):
            service_steps.append(ServiceStep(Op.EDIT_SERVICE, strip_real_servers(have), strip_real_servers(want)))
        existing = {rs.key: rs for rs in have.real_servers} if have is not None else {}
        for rs in want.real_servers:
            held = weights.get((want.key, rs.key)) if weights else None  # hashing two keys per server: only when held
            config_weight = rs.weight if held is not None and held != rs.weight else None
            target = rs if held is None else replace(rs, weight=held)
            old = existing.pop(rs.key, None)
            if old is None:
                server_steps.append(RealServerStep(Op.ADD_REAL_SERVER, want.key, None, target, config_weight))
            elif not same_real_server(old, target):
                server_steps.append(RealServerStep(Op.EDIT_REAL_SERVER, want.key, old, target, config_weight))
        for old in existing.values():
            if exact or (want.key, old.key) in owned:
                server_steps.append(_retire(want.key, old, drain))
            else:
                left_alone.append((want.key, old.key))

    for key, have in current.items():
        if key in desired:
            continue
        if not (exact or key in owned):
            left_alone.append(key)
            continue
        retiring = [_retire(key, rs, drain) for rs in have.real_servers]
        if all(step.op is Op.REMOVE_REAL_SERVER for step in retiring):
            removals.append(ServiceStep(Op.REMOVE_SERVICE, have, None))
            continue
        # Some are busy: the service stays until a later plan finds them idle, and meanwhile sends
        # no new connection to any of them (an idle one at weight 0 just waits for its service to go).
        for step in retiring:
            if step.op is not Op.REMOVE_REAL_SERVER:
                server_steps.append(step)
            elif step.before is not None and step.before.weight:
                server_steps.append(_zero(step))

    steps: list[Step] = sorted([*service_steps, *server_steps], key=lambda s: s.op.value)
    steps += removals
    return Plan(tuple(steps), tuple(left_alone))


def changed(old: DesiredTable, new: DesiredTable) -> frozenset[ServiceKey]:
    """The services added, removed or changed (any setting, any real server) from one config to the next.

    A service a reload did not touch is the very object it was (``lvsguard.config.reuse``), at the same
    place: those are passed over without hashing their keys (10 000 services).
    """
    same = {i for i, (a, b) in enumerate(zip(old.services, new.services)) if a is b}
    keys = {svc.key for i, svc in enumerate(new.services) if i not in same and old.service(svc.key) != svc}
    keys.update(svc.key for i, svc in enumerate(old.services) if i not in same and svc.key not in new)
    return frozenset(keys)


def _zero(step: RealServerStep) -> RealServerStep:
    """An idle real server of a service that waits for its busy ones: weight 0 now, gone with its service."""
    assert step.before is not None
    return RealServerStep(Op.DRAIN_REAL_SERVER, step.service, step.before, replace(step.before, weight=0))
