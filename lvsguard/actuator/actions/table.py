"""The table reconciler: make the kernel's IPVS table the config's (``table.manage``), with the holds winning.

It runs through the door (``Actions.apply_table``), under the one lock, at
actuator start, on a reload and on ``POST /api/v1/table/apply``. One run:

1. read the kernel's table and plan (``lvsguard.table.plan``): the real servers
   the actuator holds (quarantined, draining, ramping up) keep the weight the
   ledger says the kernel has; the config's weight becomes the one a restore
   returns to (``backends.original_weight``);
2. record in the ledger, before any write, the entries it is about to create
   or adopt (``owned``, what ``prune: owned`` may remove later), the drains it
   begins, and the run's audit event (who, when, the summary of the plan) as
   not finished;
3. apply through the netlink writer: every step tried, each failure named;
4. forget what it removed, and give the audit event its outcome.

A kill -9 between 2 and 4 leaves the audit event saying the run did not
finish, and the kernel with whole entries only: the next run (the restarted
actuator's) plans from the kernel and writes only what is missing. A retry of
the pending services is audited after the fact, and only when it differs
from the last one.

A real server that leaves the config while busy is drained: weight 0 now,
removed by a later run once it is idle, or once ``actuator.drain_timeout``
has passed since the drain started. The drain is recorded in the ledger
(``table_drains``) with the intent, before the write: a restarted actuator
resumes it with its first deadline. A failed step or a drain left waiting
keeps its services pending: the retry loop runs them again (``retry_table``)
until the kernel matches.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lvsguard.actuator.actions.outcome import Actor, Kernel
from lvsguard.actuator.actions.session import Session
from lvsguard.actuator.states import Result
from lvsguard.actuator.targets import Target
from lvsguard.errors import NoSuchService
from lvsguard.logs import event
from lvsguard.model import RealServerKey, ServiceKey, Table, VirtualService
from lvsguard.table.apply import ApplyResult, apply
from lvsguard.table.desired import DesiredTable
from lvsguard.table.load import TableSettings
from lvsguard.table.plan import Op, Plan, RealServerStep, ServiceStep, Step, changed, plan

if TYPE_CHECKING:
    from lvsguard.actuator.actions.drift import Drift, DriftKey

log = logging.getLogger(__name__)

ACTION = "table_apply"
UNFINISHED = "not finished: the actuator stopped during the apply"
DRAINS = (Op.DRAIN_REAL_SERVER, Op.DRAINING)


@dataclass
class TableState:
    """What the reconciler remembers between runs (``Actions.table``): drains started, services to retry."""

    drains: dict[tuple[ServiceKey, RealServerKey], float] = field(default_factory=dict)
    """Real servers draining out of the config, with the time they are removed at the latest (the ledger's)."""
    pending: set[ServiceKey] = field(default_factory=set)
    """Services the last run left unfinished (a failure, a drain): the retry loop plans them again."""
    last: str = ""
    """The last run's message: a retry that fails the same way again is not audited again."""
    failed: set[tuple[ServiceKey, RealServerKey | None]] = field(default_factory=set)
    """The entries the kernel refused (a real server, or a service: None): retried, not drift."""
    applied: DesiredTable | None = None
    """The desired table last applied: a drift check compares the kernel with it, a reload plans what differs."""
    applied_prune: str = ""
    """The ``table.prune`` of that run: a reload that changes it plans the whole table."""
    drift: dict[DriftKey, Drift] = field(default_factory=dict)
    """The managed entries found changed by hand (``actuator.actions.drift.Drift``); replaced whole, never mutated."""
    checked: float = float("-inf")
    """When the drift was last compared (the actions' clock)."""


@dataclass(frozen=True, slots=True)
class TableOutcome:
    """One run: the plan, what the kernel took (None: nothing written, a dry run), the held real servers."""

    plan: Plan
    result: ApplyResult | None
    held: tuple[Target, ...] = ()
    dry_run: bool = False
    restore: tuple[str, ...] = ()  # held real servers whose restore weight the config changed

    @property
    def outcome(self) -> Result:
        if self.dry_run:
            return Result.DRY_RUN
        if self.result is not None and self.result.failures:
            return Result.ERROR
        return Result.APPLIED if self.plan.operations else Result.NOOP

    @property
    def failures(self) -> list[dict[str, str]]:
        if self.result is None:
            return []
        return [
            {
                "service": str(f.step.service),
                "real_server": str(f.step.real_server) if isinstance(f.step, RealServerStep) else "",
                "message": str(f),
            }
            for f in self.result.failures
        ]

    @property
    def message(self) -> str:
        text = f"table: {self.plan.summary()}"
        if self.result is not None and self.plan.operations:
            text += f"; {len(self.result.applied)} applied"
            if self.result.failures:
                text += f", {len(self.result.failures)} failed: " + "; ".join(str(f) for f in self.result.failures)
        if self.held:
            text += f"; {len(self.held)} held real server(s) kept at their held weight"
        if self.restore:
            text += "; " + "; ".join(self.restore)
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "result": str(self.outcome),
            "message": self.message,
            "summary": self.plan.summary(),
            "plan": str(self.plan),
            "applied": len(self.result.applied) if self.result is not None else 0,
            "failures": self.failures,
            "held": [{"service": str(t.service), "real_server": str(t.real_server)} for t in self.held],
        }


def held_weights(s: Session, desired: DesiredTable) -> dict[tuple[ServiceKey, RealServerKey], int]:
    """The weight each real server the actuator holds must keep: the one the ledger expects in the kernel."""
    weights = {}
    for backend in s.ledger.backends():
        target = backend.target
        svc = desired.service(target.service)
        if svc is not None and any(rs.key == target.real_server for rs in svc.real_servers):
            weights[(target.service, target.real_server)] = backend.expected_weight
    return weights


def plan_table(
    s: Session,
    desired: DesiredTable,
    settings: TableSettings,
    state: TableState,
    *,
    only: Collection[ServiceKey] | None = None,
    owned: Collection[ServiceKey | tuple[ServiceKey, RealServerKey]] | None = None,
) -> Plan:
    """The plan from the kernel to ``desired``; a drain past its deadline becomes a removal.

    ``owned``: what ``prune: owned`` may remove; None: the ledger's (reading it costs 0.3 s for 11 000 entries).
    """
    kernel = _read(s, only)
    weights = held_weights(s, desired)
    if owned is None:
        owned = s.ledger.owned(only)
    steps = plan(desired, kernel, prune=settings.prune, owned=owned, weights=weights, only=only)
    now = s.clock()
    expired = {
        step.service
        for step in steps.steps
        if isinstance(step, RealServerStep)
        and step.op in DRAINS
        and state.drains.get((step.service, step.real_server), now + 1) <= now
    }
    if not expired:
        return steps
    forced = plan(desired, kernel, prune=settings.prune, owned=owned, weights=weights, drain=False, only=expired)
    merged = [step for step in steps.steps if step.service not in expired] + list(forced.steps)
    return Plan(tuple(sorted(merged, key=lambda step: step.op.value)), steps.left_alone)


def _read(s: Session, only: Collection[ServiceKey] | None) -> Table | list[VirtualService]:
    return read_part(s.kernel, only)


def read_part(kernel: Kernel, only: Collection[ServiceKey] | None) -> Table | list[VirtualService]:
    """The whole table, or only the services ``only`` names that the kernel has (a retry's few)."""
    if only is None:
        return kernel.read()
    services = []
    for key in only:
        try:
            services.append(kernel.read_service(key))
        except NoSuchService:  # not in the kernel: one to add
            continue
    return services


def apply_table(
    s: Session,
    desired: DesiredTable,
    settings: TableSettings,
    state: TableState,
    actor: Actor,
    *,
    only: Collection[ServiceKey] | None = None,
    audit_repeats: bool = False,
) -> TableOutcome:
    """Plan and apply; record what is owned, the held weights to restore, the drains; audit the run.

    A run with ``only`` whose message is the last run's is not audited again
    (the retry loop), unless ``audit_repeats`` (a drift corrected twice the same way is two events).
    """
    state.drains = s.ledger.table_drains()  # a restarted actuator resumes the drains its predecessor began
    steps = plan_table(s, desired, settings, state, only=only)
    held = _held_apart(desired, held_weights(s, desired))
    if s.policy.dry_run:
        outcome = TableOutcome(steps, None, held, dry_run=True)
        _audit(s, outcome, actor)
        return outcome
    draining = {
        (step.service, step.real_server)
        for step in steps.steps
        if isinstance(step, RealServerStep) and step.op in DRAINS
    }
    begun = {key: s.clock() + s.settings.drain_timeout for key in draining if key not in state.drains}
    ahead = (only is None or audit_repeats) and bool(steps.operations)
    with s.ledger.transaction():  # intent first: what is created is owned even if a kill cuts the apply short
        s.ledger.own(desired.keys() if only is None else _keys_of(desired, only))
        s.ledger.start_table_drains(begun)
        event_id = _audit_ahead(s, steps, actor) if ahead else 0
    result = apply(steps, s.kernel)
    removed = _removed(result.applied)
    planned = None if only is None else set(only)
    ended = [key for key in state.drains if key not in draining and (planned is None or key[0] in planned)]
    state.drains.update(begun)
    for entry in ended:
        del state.drains[entry]
    failed = {f.step.service for f in result.failures}
    waiting = {step.service for step in steps.steps if step.op in DRAINS}
    state.pending = (failed | waiting) if only is None else (state.pending - set(only)) | failed | waiting
    refused = {_entry(f.step) for f in result.failures}
    kept = {e for e in state.failed if only is not None and e[0] not in only}
    state.failed = kept | refused
    state.drift = {
        key: found
        for key, found in state.drift.items()
        if (only is not None and key[0] not in only) or (key[0], key[1]) in refused
    }
    if only is None:
        state.applied, state.applied_prune = desired, settings.prune
    for key in {step.service for step in steps.operations}:
        s.forget(key)
    with s.ledger.transaction():  # one commit: what the run removed and ended, the restore weights, its audit event
        s.ledger.disown(removed)
        s.ledger.end_table_drains(ended)
        outcome = TableOutcome(steps, result, held, restore=_restore_weights(s, desired))
        repeat = only is not None and not audit_repeats and outcome.message == state.last  # the retry loop
        state.last = outcome.message
        if not repeat:
            _audit(s, outcome, actor, event_id)
    return outcome


def apply_changes(
    s: Session, desired: DesiredTable, settings: TableSettings, state: TableState, actor: Actor
) -> TableOutcome:
    """A reload's run: plan and apply only what differs from the desired table last applied.

    The services the two configs disagree on (added, removed, any setting or
    real server changed), with those the last run left unfinished, refused or
    found drifted, are read and planned; the rest of the kernel is not read. A
    whole run when the last applied table is unknown (the first run, a dry run,
    ``table.manage`` turned on again) or ``table.prune`` changed. A hand change
    elsewhere is the drift check's to find (``actuator.actions.drift``).
    """
    if state.applied is None or state.applied_prune != settings.prune or s.policy.dry_run:
        return apply_table(s, desired, settings, state, actor)
    only = set(changed(state.applied, desired)) | state.pending
    only.update(key[0] for key in state.drift)
    only.update(entry[0] for entry in state.failed)
    outcome = apply_table(s, desired, settings, state, actor, only=only, audit_repeats=True)
    state.applied = desired
    return outcome


def _entry(step: Step) -> tuple[ServiceKey, RealServerKey | None]:
    return (step.service, step.real_server if isinstance(step, RealServerStep) else None)


def _held_apart(desired: DesiredTable, weights: dict[tuple[ServiceKey, RealServerKey], int]) -> tuple[Target, ...]:
    """The held real servers whose held weight is not the config's (the config's waits for the restore)."""
    out: list[Target] = []
    if not weights:  # the common case: no need to walk a table of 100 000 real servers
        return ()
    for svc in desired:
        for rs in svc.real_servers:
            held = weights.get((svc.key, rs.key))
            if held is not None and held != rs.weight:
                out.append(Target(svc.key, rs.key))
    return tuple(out)


def _keys_of(desired: DesiredTable, only: Iterable[ServiceKey]) -> list[ServiceKey | tuple[ServiceKey, RealServerKey]]:
    keys: list[ServiceKey | tuple[ServiceKey, RealServerKey]] = []
    for key in only:
        svc = desired.service(key)
        if svc is not None:
            keys.append(key)
            keys += [(key, rs.key) for rs in svc.real_servers]
    return keys


def _removed(applied: Iterable[Step]) -> list[ServiceKey | tuple[ServiceKey, RealServerKey]]:
    out: list[ServiceKey | tuple[ServiceKey, RealServerKey]] = []
    for step in applied:
        if isinstance(step, ServiceStep) and step.op is Op.REMOVE_SERVICE:
            out.append(step.service)
        elif isinstance(step, RealServerStep) and step.op is Op.REMOVE_REAL_SERVER:
            out.append((step.service, step.real_server))
    return out


def _restore_weights(s: Session, desired: DesiredTable) -> tuple[str, ...]:
    """A held real server comes back at the config's weight: it becomes the backend's original weight.

    Returns what changed (``real server 10.0.1.2:80 of TCP ...: back at 10, was 5``) for the audit.
    """
    changed = []
    for backend in s.ledger.backends():
        svc = desired.service(backend.target.service)
        if svc is None:
            continue
        for rs in svc.real_servers:
            if rs.key == backend.target.real_server and rs.weight != backend.original_weight:
                s.ledger.set_original_weight(backend.target, rs.weight)
                changed.append(f"{backend.target}: back at weight {rs.weight}, was {backend.original_weight}")
    return tuple(changed)


def _audit_ahead(s: Session, steps: Plan, actor: Actor) -> int:
    """The run's audit event before its first write: an error unless the run lives to complete it."""
    return s.ledger.audit(
        source=actor.source,
        actor=actor.audit_name,
        action=ACTION,
        result=Result.ERROR,
        message=f"table: {steps.summary()}; {UNFINISHED}",
        details={"summary": steps.summary(), "applied": 0, "failures": [UNFINISHED]},
    )


def _audit(s: Session, outcome: TableOutcome, actor: Actor, event_id: int = 0) -> None:
    result = outcome.outcome
    if result is Result.NOOP and not outcome.plan.steps and not outcome.restore:
        return  # nothing to say: the kernel matched
    details = {
        "summary": outcome.plan.summary(),
        "applied": len(outcome.result.applied) if outcome.result is not None else 0,
        "failures": [f["message"] for f in outcome.failures],
    }
    with s.ledger.transaction():
        if event_id:
            s.ledger.complete_audit(event_id, result=result, message=outcome.message, details=details)
        else:
            s.ledger.audit(
                source=actor.source,
                actor=actor.audit_name,
                action=ACTION,
                result=result,
                message=outcome.message,
                details=details,
            )
    s.metrics.action(ACTION, result, actor.source)
    event(
        log,
        logging.WARNING if result is Result.ERROR else logging.INFO,
        ACTION,
        result=result,
        source=actor.source,
        actor=actor.name,
        message=outcome.message,
    )


__all__ = [
    "ACTION",
    "TableOutcome",
    "TableState",
    "apply_changes",
    "apply_table",
    "held_weights",
    "plan_table",
    "read_part",
]
