"""The director's own action: failover hands this director's VIPs to the backup (keepalived's track file)."""

from __future__ import annotations

from lvsguard.actuator.actions.outcome import Actor, Outcome, holder_text
from lvsguard.actuator.actions.session import Session
from lvsguard.actuator.failover import peer_problem, read_track_file, write_track_file
from lvsguard.actuator.states import HoldKind, Result


def failover(s: Session, actor: Actor, *, reason: str = "") -> Outcome:
    """Record ``actor``'s request that this director hands its VIPs over, and write the track file."""
    path = s.settings.failover_track_file
    if not path:
        return s.finish(
            Outcome(
                "failover",
                None,
                Result.REFUSED,
                "refused: failover is not configured (actuator.failover_track_file)",
                "not_configured",
            ),
            actor,
        )
    peer = s.settings.failover_peer_url
    requested = read_track_file(path)  # under the lock: only this actuator writes the file
    token = next(iter(s.settings.tokens.values()), "")  # the peer's reads need one beyond loopback
    problem = peer_problem(peer, token=token) if peer and not requested else None
    if problem:
        return s.finish(Outcome("failover", None, Result.REFUSED, f"refused: {problem}", "peer"), actor)
    if s.policy.dry_run:
        return s.finish(Outcome("failover", None, Result.DRY_RUN, f"dry run: would write 1 to {path}"), actor)
    with s.ledger.transaction():
        new = s.ledger.add_failover(
            kind=actor.hold_kind, holder=actor.name, source=actor.source, alertname=actor.alertname, reason=reason
        )
    if not requested:
        write_track_file(path, True)  # recorded first (crash order), then at once: the VIPs start moving
    holders = tuple(holder_text(f) for f in s.ledger.active_failovers())
    if requested:
        if not new:
            return s.finish(
                Outcome("failover", None, Result.NOOP, "failover already requested by this holder", holders=holders),
                actor,
                audit=False,
            )
        return s.finish(
            Outcome(
                "failover",
                None,
                Result.RECORDED,
                f"failover already requested ({path} = 1); {len(holders)} holder(s) now",
                holders=holders,
            ),
            actor,
        )
    s.metrics.failover()
    return s.finish(
        Outcome(
            "failover",
            None,
            Result.APPLIED,
            f"failover requested: {path} = 1 (keepalived lowers this director's priority)",
            holders=holders,
        ),
        actor,
    )


def end_failover(s: Session, actor: Actor, *, scope: str = "own") -> Outcome:
    """Release failover requests (``own``/``alerts``/``all`` as for holds); ``0`` once none is left."""
    path = s.settings.failover_track_file
    if not path:
        return s.finish(Outcome("failover", None, Result.NOOP, "failover is not configured"), actor, audit=False)
    kind = None if scope == "all" else (HoldKind.ALERT if scope == "alerts" else actor.hold_kind)
    holder = actor.name if scope == "own" and actor.hold_kind == HoldKind.ALERT else None
    with s.ledger.transaction():
        released = s.ledger.release_failovers(kind=kind, holder=holder, by=str(actor))
    remaining = tuple(holder_text(f) for f in s.ledger.active_failovers())
    if remaining:
        result = Result.RECORDED if released else Result.NOOP
        return s.finish(
            Outcome("failover", None, result, "failover still requested by " + ", ".join(remaining), holders=remaining),
            actor,
            audit=bool(released),
        )
    if not released and read_track_file(path) is False:
        return s.finish(Outcome("failover", None, Result.NOOP, "no failover is requested"), actor, audit=False)
    if s.policy.dry_run:
        return s.finish(Outcome("failover", None, Result.DRY_RUN, f"dry run: would write 0 to {path}"), actor)
    write_track_file(path, False)
    return s.finish(Outcome("failover", None, Result.APPLIED, f"failover released: {path} = 0"), actor)
