"""Drift: a managed entry of the kernel's table changed by hand (``ipvsadm``), noticed, reported, maybe corrected.

Every ``table.drift_interval`` the retry loop asks the door (``Actions.check_drift``,
under the one lock) to plan from the kernel to the desired table the last whole
run applied, as ``apply_table`` does, and reads each step as a difference:

- a held real server is planned at its held weight (0 while quarantined), so a
  hold is never drift;
- a real server the reconciler drains (it left the config) and an entry the
  kernel refused (retried by the retry loop, audited as such) are not drift;
- with ``prune: owned`` only the config's services are read (one request each),
  so the cost follows the managed part, not the whole table; with ``exact`` the
  whole table is managed and read, and a service added by hand is drift too.

A difference found is logged once when it starts (``table_drift``, WARNING,
naming the service and real server as ``ipvsadm`` writes them and what differs)
and shown while it lasts as ``lvsguard_table_drift`` (``actuator.metrics``).
With ``table.drift: correct`` the plan of the drifted services is applied at
once (audited as ``table_apply`` by ``drift``); with ``report`` it is left.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from lvsguard.actuator.actions.outcome import Actor
from lvsguard.actuator.actions.session import Session
from lvsguard.actuator.actions.table import TableState, apply_table, held_weights, plan_table
from lvsguard.actuator.states import Result
from lvsguard.logs import event
from lvsguard.model import RealServerKey, ServiceKey, Table, VirtualService
from lvsguard.table.desired import DesiredTable, describe_service, real_server_differences, service_differences
from lvsguard.table.load import TableSettings
from lvsguard.table.plan import Op, Plan, RealServerStep, ServiceStep, plan

log = logging.getLogger(__name__)

ACTION = "table_drift"
RETIRING = (Op.DRAIN_REAL_SERVER, Op.REMOVE_REAL_SERVER, Op.REMOVE_SERVICE)

DriftKey = tuple[ServiceKey, RealServerKey | None, str]


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference: a setting of a service or real server (``field``), or the entry ``missing`` or ``extra``."""

    service: ServiceKey
    real_server: RealServerKey | None
    field: str  # weight, forward, upper_threshold, ...; scheduler, flags, ...; missing, extra
    kernel: str  # what the kernel has
    wanted: str  # what the config (or a hold) says

    @property
    def key(self) -> DriftKey:
        return (self.service, self.real_server, self.field)

    @property
    def entry(self) -> str:
        if self.real_server is None:
            return f"service {self.service}"
        return f"real server {self.real_server} of {self.service}"

    def __str__(self) -> str:
        if self.field == "missing":
            return f"{self.entry} is not in the kernel (changed by hand; the config has it: {self.wanted})"
        if self.field == "extra":
            return f"{self.entry} is in the kernel, not in the config (added by hand)"
        return f"{self.entry}: {self.field} is {self.kernel} in the kernel, lvsguard wants {self.wanted}"


def find(
    s: Session,
    desired: DesiredTable,
    settings: TableSettings,
    state: TableState,
    *,
    only: Collection[ServiceKey] | None = None,
) -> dict[DriftKey, Drift]:
    """The differences between the managed part of the kernel and ``desired`` (holds, drains, refusals apart)."""
    if only is None and settings.prune != "exact":
        only = [svc.key for svc in desired]
    # Nothing owned: what lvsguard owns and the config no longer has is the reconciler's to drain and remove, not
    # drift; under ``exact`` everything not desired is planned out anyway.
    return _read(plan_table(s, desired, settings, state, only=only, owned=()), state)


def _read(plan: Plan, state: TableState) -> dict[DriftKey, Drift]:
    out: dict[DriftKey, Drift] = {}
    for step in plan.steps:
        entry = (step.service, step.real_server if isinstance(step, RealServerStep) else None)
        if step.op is Op.DRAINING:
            continue
        if step.op in RETIRING and (step.service in state.pending or (entry in state.drains)):
            continue  # the reconciler's own drain or removal of what left the config
        for found in _differences(step):
            if entry not in state.failed or found.key in state.drift:  # a drift whose correction failed stays
                out[found.key] = found
    return out


def _differences(step: ServiceStep | RealServerStep) -> list[Drift]:
    if isinstance(step, ServiceStep):
        svc = step.service
        if step.op is Op.ADD_SERVICE and step.after is not None:
            return [Drift(svc, None, "missing", "absent", describe_service(step.after))]
        if step.op is Op.EDIT_SERVICE and step.before is not None and step.after is not None:
            return [Drift(svc, None, _field(n), a, b) for n, a, b in service_differences(step.before, step.after)]
        return [Drift(svc, None, "extra", "present", "absent")]
    rs = step.real_server
    if step.op is Op.ADD_REAL_SERVER:
        return [Drift(step.service, rs, "missing", "absent", "present")]
    if step.op is Op.EDIT_REAL_SERVER and step.before is not None and step.after is not None:
        held = f" (held; the config says {step.config_weight})" if step.config_weight is not None else ""
        return [
            Drift(step.service, rs, _field(n), a, b + held if n == "weight" else b)
            for n, a, b in real_server_differences(step.before, step.after)
        ]
    return [Drift(step.service, rs, "extra", "present", "absent")]


def _field(name: str) -> str:
    """``upper threshold`` → ``upper_threshold``: a label value without spaces."""
    return name.replace(" ", "_").replace("-", "_")


def suspects(
    s: Session, kernel: Table | list[VirtualService], desired: DesiredTable, settings: TableSettings
) -> frozenset[ServiceKey]:
    """The services a read of the whole table, made without the lock, shows unlike the config (the holds winning).

    Drains and the kernel's changes while it was read are not told apart
    here: ``check`` reads each suspect again, under the lock, and judges it as
    always. The others matched the config when read.
    """
    only = None if settings.prune == "exact" else [svc.key for svc in desired]
    steps = plan(desired, kernel, prune=settings.prune, weights=held_weights(s, desired), only=only).steps
    return frozenset(step.service for step in steps)


def check(
    s: Session,
    desired: DesiredTable,
    settings: TableSettings,
    state: TableState,
    actor: Actor,
    *,
    only: Collection[ServiceKey] | None = None,
) -> list[Drift]:
    """Compare, log what started drifting, correct it by policy; returns the drift left (the metric's).

    ``only``: the services to read and compare (``suspects``); the rest is taken as matching.
    """
    state.checked = s.clock()
    found = find(s, desired, settings, state, only=only)
    known = state.drift
    for key, drift in found.items():
        if key not in known:
            s.metrics.action(ACTION, Result.DRIFT, actor.source)
            event(
                log,
                logging.WARNING,
                ACTION,
                service=drift.service,
                real_server=drift.real_server or "",
                field=drift.field,
                kernel=drift.kernel,
                config=drift.wanted,
                policy=settings.drift,
                message=str(drift),
            )
    state.drift = found
    corrected: set[ServiceKey] = set()
    if found and settings.drift == "correct" and not s.policy.dry_run:
        corrected = {drift.service for drift in found.values()}
        apply_table(s, desired, settings, state, actor, only=corrected, audit_repeats=True)
        found = {k: d for k, d in found.items() if d.service not in corrected}
        found.update(find(s, desired, settings, state, only=corrected))
    for key, drift in known.items():
        if key not in found and drift.service not in corrected:
            event(
                log,
                logging.INFO,
                "table_drift_ended",
                service=drift.service,
                real_server=drift.real_server or "",
                field=drift.field,
            )
    state.drift = found
    return list(found.values())


__all__ = ["ACTION", "Drift", "DriftKey", "check", "find"]
