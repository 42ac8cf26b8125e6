"""Converge holds: quarantine and drain take a real server out, restore brings it back.

The ledger's holds are the desired state; each function records an intent,
then converges the kernel to it: out (weight 0, the original weight recorded)
while a real server has a hold, back in (at once or as a slow-start job) when
its last hold is gone.
"""

from __future__ import annotations

from dataclasses import replace

from lvsguard.actuator.actions.director import end_failover
from lvsguard.actuator.actions.outcome import ACTUATOR, Actor, Outcome, holder_text
from lvsguard.actuator.actions.session import Session
from lvsguard.actuator.actions.steps import start_slow_start
from lvsguard.actuator.ledger import Hold, Job
from lvsguard.actuator.states import BackendState, HoldKind, JobKind, JobState, Result, Source
from lvsguard.actuator.targets import Target
from lvsguard.cluster.drains import job_id
from lvsguard.errors import PolicyRefused


def hold(
    s: Session,
    target: Target,
    actor: Actor,
    *,
    action: str = "quarantine",
    reason: str = "",
    force: bool = False,
    drain_timeout: float | None = None,
    drain_delete: bool = False,
) -> Outcome:
    """Record ``actor``'s hold on the real server and take it out (weight 0); a drain also starts a job."""
    svc, rs = s.real_server(target)
    if svc is None or rs is None:  # no real server without its service: the same test, as mypy sees it
        return s.absent(action, target, svc, actor)
    if drain_delete:
        try:
            s.policy.check_unmanaged(target)  # the config's table would add it back
        except PolicyRefused as exc:
            return s.refused(action, target, exc, actor)
    if s.policy.dry_run:
        try:
            if s.ledger.backend(target) is None:
                s.policy.check_take_out(target, svc, s.ledger.changed_at(target), force=force)
        except PolicyRefused as exc:
            return s.refused(action, target, exc, actor)
        return s.finish(
            Outcome(action, target, Result.DRY_RUN, f"dry run: would set {target} to weight 0", weight=rs.weight),
            actor,
        )
    with s.ledger.transaction():
        held, new = s.ledger.add_hold(
            target,
            kind=actor.hold_kind,
            holder=actor.name,
            source=actor.source,
            action=action,
            alertname=actor.alertname,
            reason=reason,
        )
    backend = s.ledger.backend(target)
    if not new and backend is not None and backend.state == BackendState.OUT:
        outcome = Outcome(
            action,
            target,
            Result.NOOP,
            f"{target} is already held by {holder_text(held)}",
            weight=rs.weight,
            holders=_holders(s, target),
        )
        return s.finish(outcome, actor, audit=False)
    outcome = take_out(s, target, actor, action=action, force=force)
    if outcome.result == Result.REFUSED and new and actor.hold_kind == HoldKind.MANUAL:
        with s.ledger.transaction():  # an operator's refused request leaves no hold; an alert's waits
            s.ledger.delete_hold(held.id)
        return replace(outcome, holders=tuple(h for h in outcome.holders if h != holder_text(held)))
    if action == "drain" and outcome.result in (Result.APPLIED, Result.RECORDED):
        job = _ensure_drain_job(s, target, actor, timeout=drain_timeout, delete=drain_delete)
        outcome = replace(outcome, job_id=job.id, message=f"{outcome.message}; drain job {job.id}")
    return s.finish(outcome, actor) if outcome.result != Result.REFUSED else outcome


def release(s: Session, target: Target, actor: Actor, *, scope: str = "own", force: bool = False) -> Outcome:
    """Drop holds and bring the real server back when the last one is gone.

    ``scope``: ``own`` is the actor's own hold (an alert: its fingerprint;
    an operator: every manual hold), ``alerts`` every alert's hold (an alert
    whose action is ``restore``), ``all`` every hold (an operator's override;
    an alert still firing takes the real server out again on its next notification).
    """
    holds = s.ledger.active_holds(target)
    if scope == "all":
        mine = holds
    elif scope == "alerts":
        mine = [h for h in holds if h.kind == HoldKind.ALERT]
    elif actor.hold_kind == HoldKind.ALERT:
        mine = [h for h in holds if h.kind == HoldKind.ALERT and h.holder == actor.name]
    else:
        mine = [h for h in holds if h.kind == HoldKind.MANUAL]
    backend = s.ledger.backend(target)
    if not mine and not (backend is not None and backend.state == BackendState.OUT and not holds):
        if not holds:
            _svc, rs = s.real_server(target)
            outcome = Outcome("restore", target, Result.NOOP, f"{target} is not held", weight=rs.weight if rs else None)
        else:
            names = tuple(holder_text(h) for h in holds)
            outcome = Outcome(
                "restore",
                target,
                Result.NOOP,
                f"{target} stays out: held by " + ", ".join(names) + " (an alert's hold ends when it resolves)",
                holders=names,
            )
        return s.finish(outcome, actor, audit=False)
    with s.ledger.transaction():
        for h in mine:
            s.ledger.release_hold(h.id, by=str(actor))
    remaining = s.ledger.active_holds(target)
    if remaining:
        names = tuple(holder_text(h) for h in remaining)
        return s.finish(
            Outcome(
                "restore",
                target,
                Result.RECORDED,
                f"released {len(mine)} hold(s); {target} stays out, held by " + ", ".join(names),
                holders=names,
            ),
            actor,
        )
    _cancel_jobs(s, target, JobKind.DRAIN, f"restored by {actor}")
    outcome = bring_back(s, target, actor, force=force)
    return outcome if outcome.result == Result.REFUSED else s.finish(outcome, actor)


def resolve(s: Session, actor: Actor) -> list[Outcome]:
    """Release everything an alert's fingerprint holds (whatever the rules say now)."""
    outcomes = [release(s, h.target, actor) for h in s.ledger.holds_of(HoldKind.ALERT, actor.name)]
    if any(f.kind == HoldKind.ALERT and f.holder == actor.name for f in s.ledger.active_failovers()):
        outcomes.append(end_failover(s, actor))
    return outcomes


def converge(s: Session, target: Target) -> Outcome | None:
    """Bring the kernel in line with the holds of one real server; None when they agree."""
    holds = s.ledger.active_holds(target)
    backend = s.ledger.backend(target)
    if holds and (backend is None or backend.state == BackendState.RESTORING):
        first = holds[0]
        actor = Actor(Source(first.source), first.holder, first.alertname) if first.kind == HoldKind.ALERT else ACTUATOR
        outcome = take_out(s, target, actor, action=first.action)
        if outcome.result == Result.REFUSED:
            if outcome.retry_after is None:
                _drop_unapplied_manual_holds(s, holds)
            return outcome
        if any(h.action == "drain" for h in holds):
            job = _ensure_drain_job(s, target, actor, timeout=None, delete=False)
            outcome = replace(outcome, job_id=job.id)
        return s.finish(outcome, ACTUATOR if outcome.result != Result.APPLIED else actor)
    if not holds and backend is not None and backend.state == BackendState.OUT:
        outcome = bring_back(s, target, ACTUATOR)
        return outcome if outcome.result == Result.REFUSED else s.finish(outcome, ACTUATOR)
    return None


def converge_all(s: Session) -> list[Outcome]:
    """Converge every real server whose holds and kernel state disagree (refused earlier).

    Two reads of the ledger find them (``converge``'s own test, on every
    real server at once): with 1 000 holds in place, asking each real
    server's holds and backend in turn was 2 000 queries under the lock in
    every retry round, in the way of the cluster watch's kernel writes.
    """
    held = {h.target for h in s.ledger.active_holds()}
    states = {b.target: b.state for b in s.ledger.backends()}
    astray = [
        target
        for target in held | set(states)
        if (target in held and states.get(target, BackendState.RESTORING) == BackendState.RESTORING)
        or (target not in held and states.get(target) == BackendState.OUT)
    ]
    outcomes = []
    for target in sorted(astray, key=str):
        outcome = converge(s, target)
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def _drop_unapplied_manual_holds(s: Session, holds: list[Hold]) -> None:
    """Forget operators' holds the rules refuse, as a refused request leaves none; an alert's hold waits.

    A live refused request deletes its hold at once, so a manual hold left
    here never took effect: a kill -9 cut its request between the hold's
    commit and the kernel write, and the operator got no reply.
    """
    manual = [h for h in holds if h.kind == HoldKind.MANUAL]
    if manual:
        with s.ledger.transaction():
            for h in manual:
                s.ledger.delete_hold(h.id)


def _holders(s: Session, target: Target) -> tuple[str, ...]:
    return tuple(holder_text(h) for h in s.ledger.active_holds(target))


def take_out(s: Session, target: Target, actor: Actor, *, action: str, force: bool = False) -> Outcome:
    """Converge towards "out": weight 0 with the original weight recorded (refusals are audited here)."""
    svc, rs = s.real_server(target)
    if svc is None or rs is None:
        return s.absent(action, target, svc, actor)
    backend = s.ledger.backend(target)
    holders = _holders(s, target)
    if backend is not None and backend.state == BackendState.OUT:
        return Outcome(
            action,
            target,
            Result.RECORDED,
            f"{target} stays out, held by {len(holders)}",
            weight=rs.weight,
            holders=holders,
        )
    try:
        s.policy.check_take_out(target, svc, s.ledger.changed_at(target), force=force)
    except PolicyRefused as exc:
        return s.refused(
            action, target, exc, actor, weight=rs.weight, holders=holders, details={"pending": bool(holders)}
        )
    if backend is not None:
        _cancel_jobs(s, target, JobKind.SLOW_START, f"taken out again by {actor}")
    original = backend.original_weight if backend is not None else rs.weight
    new = s.write(target, 0, state=BackendState.OUT, original=original, previous=rs.weight)
    if rs.weight > 0:
        s.policy.record_write()
    return Outcome(
        action,
        target,
        Result.APPLIED,
        f"{target}: weight {rs.weight} -> 0 (original {original} recorded)",
        weight=new.weight,
        holders=holders,
        details={"original_weight": original},
    )


def _ensure_drain_job(s: Session, target: Target, actor: Actor, *, timeout: float | None, delete: bool) -> Job:
    for job in s.ledger.open_jobs(target):
        if job.kind == JobKind.DRAIN:
            return job
    _svc, rs = s.real_server(target)
    timeout = s.settings.drain_timeout if timeout is None else timeout
    initial = rs.active_connections if rs else 0
    params: dict[str, object] = {
        "timeout": timeout,
        "delete": delete,
        "deadline": s.clock() + timeout,
        "initial_active": initial,
    }
    if actor.source == Source.CLUSTER and s.drains.store is not None:
        params["cluster"] = job_id(target.service, target.real_server)  # it follows the cluster's job (steps)
    with s.ledger.transaction():
        job = s.ledger.create_job(
            JobKind.DRAIN, target, params=params, actor=str(actor), message=f"waiting for {initial} active connections"
        )
    s.start_job(job.id)
    return job


def bring_back(s: Session, target: Target, actor: Actor, *, force: bool = False) -> Outcome:
    """Converge towards "in": the recorded weight, at once or as a slow-start job."""
    backend = s.ledger.backend(target)
    svc, rs = s.real_server(target)
    if backend is None:
        return Outcome("restore", target, Result.NOOP, f"{target} is not out", weight=rs.weight if rs else None)
    if backend.state == BackendState.RESTORING:
        return Outcome(
            "restore",
            target,
            Result.NOOP,
            f"{target} is already coming back (job {backend.job_id})",
            weight=rs.weight if rs else None,
            job_id=backend.job_id,
        )
    if svc is None or rs is None:
        with s.ledger.transaction():
            s.ledger.delete_backend(target)
        return Outcome(
            "restore", target, Result.NOT_FOUND, f"{target} is no longer in the kernel table; nothing to restore"
        )
    if backend.drift or rs.weight != backend.expected_weight:
        with s.ledger.transaction():
            s.ledger.delete_backend(target)
        return Outcome(
            "restore",
            target,
            Result.DRIFT,
            f"{target}: weight was changed by hand to {rs.weight} (the actuator set "
            f"{backend.expected_weight}); left as it is, original {backend.original_weight} not restored",
            reason="changed_by_hand",
            weight=rs.weight,
        )
    try:
        s.policy.check_bring_back(target, svc, s.ledger.changed_at(target), force=force)
    except PolicyRefused as exc:
        return s.refused("restore", target, exc, actor, weight=rs.weight)
    if s.policy.dry_run:
        return Outcome(
            "restore", target, Result.DRY_RUN, f"dry run: would restore {target} to weight {backend.original_weight}"
        )
    original = backend.original_weight
    if s.settings.slow_start > 0 and original > 1:
        return start_slow_start(s, target, actor, original, rs.weight, message_prefix="restore")
    new = s.write(target, original, state=BackendState.RESTORING, original=original, previous=rs.weight, done=True)
    return Outcome(
        "restore", target, Result.APPLIED, f"{target}: weight {rs.weight} -> {original} (restored)", weight=new.weight
    )


def _cancel_jobs(s: Session, target: Target, kind: JobKind, why: str) -> None:
    with s.ledger.transaction():
        for job in s.ledger.open_jobs(target):
            if job.kind == kind:
                s.ledger.finish_job(job.id, JobState.CANCELLED, why)
