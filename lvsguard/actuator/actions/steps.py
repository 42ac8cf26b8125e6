"""Job steps: a drain waits for a real server's connections to end, a slow start ramps its weight up.

A job outlives the request that started it; its thread calls :func:`step_job`
every ``job_poll_interval`` seconds until it returns True.
"""

from __future__ import annotations

import math

from lvsguard.actuator.actions.outcome import ACTUATOR, Actor, Outcome
from lvsguard.actuator.actions.session import Session
from lvsguard.actuator.ledger import Job
from lvsguard.actuator.states import BackendState, JobKind, JobState, Result, Source
from lvsguard.actuator.targets import Target
from lvsguard.errors import PolicyRefused


def ramp_weight(target_weight: int, elapsed: float, period: float, steps: int) -> int:
    """Weight after ``elapsed`` seconds of a slow start to ``target_weight`` over ``period`` seconds.

    Steps of ``period / steps`` seconds, never below 1 (0 would be "out") and
    never above the target.
    """
    if period <= 0 or elapsed >= period or target_weight <= 1:
        return target_weight
    step = min(steps, int(elapsed / (period / steps)) + 1)
    return max(1, min(target_weight, math.ceil(target_weight * step / steps)))


def start_slow_start(
    s: Session, target: Target, actor: Actor, weight: int, previous: int, *, message_prefix: str
) -> Outcome:
    """Write the first step of a ramp to ``weight`` and start its job."""
    period, steps = s.settings.slow_start, s.settings.slow_start_steps
    params = {"target_weight": weight, "period": period, "steps": steps, "started_at": s.clock()}
    first = ramp_weight(weight, 0.0, period, steps)
    with s.ledger.transaction():
        job = s.ledger.create_job(
            JobKind.SLOW_START, target, params=params, actor=str(actor), message=f"weight {first} of {weight}"
        )
    new = s.write(target, first, state=BackendState.RESTORING, original=weight, previous=previous, job_id=job.id)
    s.start_job(job.id)
    return Outcome(
        message_prefix,
        target,
        Result.APPLIED,
        f"{target}: weight {previous} -> {first}, ramping to {weight} over {period:g} s (job {job.id})",
        weight=new.weight,
        job_id=job.id,
    )


def step_job(s: Session, job_id: int) -> bool:
    """Advance one job by one step; True when it has finished."""
    job = s.ledger.job(job_id)
    if job is None or job.state != JobState.RUNNING:
        return True
    if job.kind == JobKind.DRAIN:
        return _step_drain(s, job)
    return _step_slow_start(s, job)


def _end_job(
    s: Session, job: Job, state: JobState, message: str, *, progress: float | None = None, drop_backend: bool = False
) -> bool:
    with s.ledger.transaction():
        if drop_backend:
            s.ledger.delete_backend(job.target)
        s.ledger.finish_job(job.id, state, message, progress=progress)
        s.ledger.audit(
            source=Source.ACTUATOR,
            actor=job.actor,
            action=job.kind,
            result=state,
            target=job.target,
            message=message,
            details={"job_id": job.id},
        )
    s.metrics.action(job.kind, state, Source.ACTUATOR)
    return True


def _step_drain(s: Session, job: Job) -> bool:
    target = job.target
    s.forget(target.service)
    svc, rs = s.real_server(target)
    if svc is None or rs is None:  # no real server without its service: the same test, as mypy sees it
        return _end_job(s, job, JobState.DONE, f"{target} is no longer in the kernel table", progress=1.0)
    backend = s.ledger.backend(target)
    if backend is None or backend.state != BackendState.OUT:
        return _end_job(s, job, JobState.CANCELLED, f"{target} was restored before the drain finished")
    initial = int(job.params.get("initial_active", 0))
    active = rs.active_connections
    progress = 1.0 if initial <= 0 else max(0.0, 1.0 - active / initial)
    if job.params.get("cluster"):
        return _follow_cluster(s, job, str(job.params["cluster"]), active, progress)
    if active == 0:
        if job.params.get("delete"):
            try:
                s.policy.check_quorum(target, svc, removing=True)
            except PolicyRefused as exc:
                return _end_job(s, job, JobState.FAILED, f"drained, not deleted: {exc}", progress=1.0)
            s.delete(target, Actor(Source.ACTUATOR, job.actor), rs)
            return _end_job(s, job, JobState.DONE, f"{target} drained and deleted", progress=1.0)
        return _end_job(s, job, JobState.DONE, f"{target} drained: 0 active connections", progress=1.0)
    if s.clock() >= float(job.params["deadline"]):
        return _end_job(
            s,
            job,
            JobState.TIMEOUT,
            f"{target}: {active} active connections left after "
            f"{float(job.params['timeout']):g} s; it stays at weight 0",
            progress=progress,
        )
    return _progress(s, job, progress, f"{active} active connections left", active)


def _follow_cluster(s: Session, job: Job, name: str, active: int, progress: float) -> bool:
    """A drain of the cluster (``cluster.store: etcd``): its owner decides the end, this job shows it here."""
    cluster = s.drains.job(name)
    if cluster is not None and not cluster.running:
        state = JobState(cluster.state) if cluster.state in {j.value for j in JobState} else JobState.DONE
        return _end_job(s, job, state, f"cluster drain: {cluster.message}", progress=1.0 if active == 0 else progress)
    owner = cluster.owners[-1] if cluster is not None and cluster.owners else "?"
    return _progress(s, job, progress, f"{active} active connections left here; cluster drain owned by {owner}", active)


def _progress(s: Session, job: Job, progress: float, message: str, active: int) -> bool:
    """A drain goes on: its progress and its active connections recorded."""
    with s.ledger.transaction():
        s.ledger.update_job(job.id, progress=progress, message=message, params={**job.params, "active": active})
    return False


def _step_slow_start(s: Session, job: Job) -> bool:
    target = job.target
    s.forget(target.service)
    _svc, rs = s.real_server(target)
    backend = s.ledger.backend(target)
    if backend is None or backend.state != BackendState.RESTORING or backend.job_id != job.id:
        return _end_job(s, job, JobState.CANCELLED, f"{target} was taken out again")
    if rs is None:
        return _end_job(s, job, JobState.FAILED, f"{target} is no longer in the kernel table", drop_backend=True)
    if rs.weight != backend.expected_weight:
        with s.ledger.transaction():
            s.ledger.delete_backend(target)
        s.finish(
            Outcome(
                "slow_start",
                target,
                Result.DRIFT,
                f"{target}: weight changed by hand to {rs.weight} during "
                f"the slow start (expected {backend.expected_weight}); ramp stopped",
                reason="changed_by_hand",
                weight=rs.weight,
            ),
            ACTUATOR,
        )
        return _end_job(s, job, JobState.FAILED, f"weight changed by hand to {rs.weight}; ramp stopped")
    goal = backend.original_weight
    elapsed = s.clock() - float(job.params["started_at"])
    weight = ramp_weight(goal, elapsed, float(job.params["period"]), int(job.params["steps"]))
    if weight != rs.weight:
        s.write(
            target,
            weight,
            state=BackendState.RESTORING,
            original=goal,
            previous=rs.weight,
            job_id=job.id,
            touch=False,
        )
    if weight >= goal:
        return _end_job(s, job, JobState.DONE, f"{target} back at weight {goal}", progress=1.0, drop_backend=True)
    with s.ledger.transaction():
        s.ledger.update_job(job.id, progress=weight / goal, message=f"weight {weight} of {goal}")
    return False
