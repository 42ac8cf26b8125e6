"""Reconcile at start (and every retry round): finish what a crash interrupted, report hand changes."""

from __future__ import annotations

from lvsguard.actuator.actions.holds import converge
from lvsguard.actuator.actions.outcome import ACTUATOR, Outcome
from lvsguard.actuator.actions.session import Session
from lvsguard.actuator.failover import read_track_file, write_track_file
from lvsguard.actuator.ledger import Backend
from lvsguard.actuator.states import BackendState, HoldKind, HoldState, JobState, Result
from lvsguard.actuator.targets import Target


def reconcile(s: Session) -> list[Outcome]:
    """Compare the ledger with the kernel after a start; finish interrupted writes, report drift."""
    outcomes = []
    path = s.settings.failover_track_file
    if path and not s.policy.dry_run:
        wanted = bool(s.ledger.active_failovers())
        if read_track_file(path) is not wanted:
            write_track_file(path, wanted)
            outcomes.append(
                s.finish(
                    Outcome("failover", None, Result.APPLIED, f"{path} set to {int(wanted)} from the ledger at start"),
                    ACTUATOR,
                )
            )
    for backend in s.ledger.backends():
        outcome = _reconcile_backend(s, backend)
        if outcome is not None:
            outcomes.append(s.finish(outcome, ACTUATOR))
    known = {b.target for b in s.ledger.backends()}
    manual = {h.target for h in s.ledger.active_holds() if h.kind == HoldKind.MANUAL}
    for target in sorted(manual - known, key=str):
        outcome = converge(s, target)  # an operator's hold whose request a kill cut before the kernel write
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def _reconcile_backend(s: Session, backend: Backend) -> Outcome | None:
    target = backend.target
    _svc, rs = s.real_server(target)
    if rs is None and _in_the_table(s, target):
        return None  # deleted by hand: the config's table puts it back at its held weight; the drift check reports it
    if rs is None:
        with s.ledger.transaction():
            s.ledger.delete_backend(target)
            closed = s.ledger.close_holds(target, state=HoldState.REMOVED, by="reconcile")
            for job in s.ledger.open_jobs(target):
                s.ledger.finish_job(job.id, JobState.FAILED, "real server gone after a restart")
        return Outcome(
            "reconcile",
            target,
            Result.NOT_FOUND,
            f"{target} is no longer in the kernel table; {closed} hold(s) closed",
        )
    immediate_restore = backend.state == BackendState.RESTORING and backend.job_id is None
    if rs.weight == backend.expected_weight:
        if not backend.write_pending:
            if immediate_restore:
                with s.ledger.transaction():
                    s.ledger.delete_backend(target)
            return None
        with s.ledger.transaction():
            s.ledger.end_write(target)
            if immediate_restore:
                s.ledger.delete_backend(target)
        return Outcome(
            "reconcile",
            target,
            Result.APPLIED,
            f"{target}: interrupted write to weight {rs.weight} had reached the kernel",
            weight=rs.weight,
        )
    if backend.write_pending and rs.weight == backend.previous_weight:
        s.write(
            target,
            backend.expected_weight,
            state=backend.state,
            original=backend.original_weight,
            previous=rs.weight,
            job_id=backend.job_id,
            touch=False,
            done=immediate_restore,
        )
        return Outcome(
            "reconcile",
            target,
            Result.APPLIED,
            f"{target}: interrupted write completed, weight {rs.weight} -> {backend.expected_weight}",
            weight=backend.expected_weight,
        )
    drift = f"weight is {rs.weight} in the kernel, the actuator set {backend.expected_weight}"
    if backend.drift == drift:
        return None
    with s.ledger.transaction():
        s.ledger.set_drift(target, drift)
    return Outcome(
        "reconcile",
        target,
        Result.DRIFT,
        f"{target}: {drift} (changed by hand; left as it is)",
        reason="changed_by_hand",
        weight=rs.weight,
    )


def _in_the_table(s: Session, target: Target) -> bool:
    """Whether ``target`` is a real server of the config's table (``table.manage``): its holds outlive the kernel's."""
    if not s.settings.table.manage:
        return False
    svc = s.settings.desired.service(target.service)
    return svc is not None and svc.real_server(target.real_server) is not None
