"""Weights and membership: set a weight, add a real server, remove one."""

from __future__ import annotations

from dataclasses import replace

from lvsguard.actuator.actions.outcome import Actor, Outcome, holder_text
from lvsguard.actuator.actions.session import Session
from lvsguard.actuator.actions.steps import ramp_weight, start_slow_start
from lvsguard.actuator.states import Result
from lvsguard.actuator.targets import Target
from lvsguard.errors import PolicyRefused
from lvsguard.model import Forward, RealServer


def set_weight(s: Session, target: Target, weight: int, actor: Actor, *, force: bool = False) -> Outcome:
    """Set a weight; on a held real server, change the weight it comes back at instead."""
    svc, rs = s.real_server(target)
    if svc is None or rs is None:
        return s.absent("weight", target, svc, actor)
    try:
        s.policy.check_unmanaged(target)
    except PolicyRefused as exc:
        return s.refused("weight", target, exc, actor)
    backend = s.ledger.backend(target)
    if backend is not None:
        with s.ledger.transaction():
            s.ledger.set_original_weight(target, weight)
        holders = tuple(holder_text(h) for h in s.ledger.active_holds(target))
        return s.finish(
            Outcome(
                "weight",
                target,
                Result.RECORDED,
                f"{target} is held out; it will come back at weight {weight}",
                weight=rs.weight,
                holders=holders,
            ),
            actor,
        )
    if rs.weight == weight:
        return s.finish(
            Outcome("weight", target, Result.NOOP, f"{target} already has weight {weight}", weight=weight),
            actor,
            audit=False,
        )
    try:
        if weight == 0:
            s.policy.check_take_out(target, svc, s.ledger.changed_at(target), force=force)
        else:
            s.policy.check_bring_back(target, svc, s.ledger.changed_at(target), force=force)
    except PolicyRefused as exc:
        return s.refused("weight", target, exc, actor, weight=rs.weight)
    if s.policy.dry_run:
        return s.finish(
            Outcome(
                "weight", target, Result.DRY_RUN, f"dry run: would set {target} to weight {weight}", weight=rs.weight
            ),
            actor,
        )
    new = replace(rs, weight=weight)
    s.kernel.edit_real_server(target.service, new)
    with s.ledger.transaction():
        s.ledger.touch(target)
    s.replace_rs(target, new)
    if weight == 0:
        s.policy.record_write()
    return s.finish(
        Outcome("weight", target, Result.APPLIED, f"{target}: weight {rs.weight} -> {weight}", weight=new.weight),
        actor,
    )


def add(
    s: Session,
    target: Target,
    actor: Actor,
    *,
    weight: int = 1,
    forward: Forward | None = None,
    upper_threshold: int = 0,
    lower_threshold: int = 0,
) -> Outcome:
    """Add a real server (idempotent); with slow start, it ramps up to ``weight`` as a job.

    ValueError when ``forward`` is not given and the service's real servers do not agree on one.
    """
    svc, rs = s.real_server(target)
    if svc is None:
        return s.finish(
            Outcome("add", target, Result.NOT_FOUND, f"no service {target.service} in the kernel table"), actor
        )
    if rs is not None:
        outcome = Outcome(
            "add", target, Result.NOOP, f"{target} is already in the service (weight {rs.weight})", weight=rs.weight
        )
        return s.finish(outcome, actor, audit=False)
    try:
        s.policy.check_unmanaged(target)
        s.policy.check_add(target)
    except PolicyRefused as exc:
        return s.refused("add", target, exc, actor)
    if forward is None:
        methods = {r.forward for r in svc.servers.values()}
        if len(methods) != 1:
            raise ValueError(
                f"forward is required: {target.service} has real servers with "
                f"{'no' if not methods else 'several'} forwarding methods"
            )
        forward = methods.pop()
    if s.policy.dry_run:
        return s.finish(
            Outcome("add", target, Result.DRY_RUN, f"dry run: would add {target} with weight {weight}"), actor
        )
    slow = s.settings.slow_start > 0 and weight > 1
    first = ramp_weight(weight, 0.0, s.settings.slow_start, s.settings.slow_start_steps) if slow else weight
    s.kernel.add_real_server(
        target.service, RealServer(target.real_server, first, forward, upper_threshold, lower_threshold)
    )
    s.forget(target.service)
    with s.ledger.transaction():
        s.ledger.touch(target)
    if slow:
        outcome = start_slow_start(s, target, actor, weight, first, message_prefix="add")
        return s.finish(replace(outcome, message=f"{target} added; {outcome.message}"), actor)
    return s.finish(
        Outcome("add", target, Result.APPLIED, f"{target} added with weight {weight} ({forward})", weight=first),
        actor,
    )


def remove(s: Session, target: Target, actor: Actor, *, force: bool = False) -> Outcome:
    """Delete a real server at once (drain first to let connections finish)."""
    svc, rs = s.real_server(target)
    if svc is None or rs is None:
        return s.absent("remove", target, svc, actor)
    try:
        s.policy.check_unmanaged(target)
        s.policy.check_take_out(target, svc, s.ledger.changed_at(target), force=force, removing=True)
    except PolicyRefused as exc:
        return s.refused("remove", target, exc, actor)
    if s.policy.dry_run:
        return s.finish(Outcome("remove", target, Result.DRY_RUN, f"dry run: would delete {target}"), actor)
    return s.finish(s.delete(target, actor, rs), actor)
