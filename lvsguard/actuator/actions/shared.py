"""Holds shared by every director through the cluster store (``cluster.store: etcd``; docs/cluster.md).

An operator's quarantine or drain is first written to the cluster record of
its service, in a transaction that checks the quorum against every hold of
the cluster (``lvsguard.cluster.records``); then this director takes it like
every other: a *mirror* hold in its ledger (source ``cluster``, holder
``<director>/<source> <name>``), converged by ``holds``. Every other director
sees the record through its watch and takes the same mirror hold
(``converge``). A restore removes the records of the real server and releases
the mirrors; a director whose mirror has no record left releases it.

A mirror is held as an alert's hold: refused by this director's own rules
(hold-down, rate limit), it waits and the retry loop applies it later. The
ledger stays the director's audit trail and its copy of the last known
cluster state: while etcd cannot be reached, nothing is released or taken
from the cluster, and the operator's request is answered with an error. A
shared alert's hold or resolve is done here at once instead and queued in the
ledger; ``share_queued`` writes the queue when etcd answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Any

from lvsguard.actuator.actions import holds
from lvsguard.actuator.actions.outcome import Actor, Outcome
from lvsguard.actuator.actions.session import Session
from lvsguard.actuator.actions.view import ServiceView
from lvsguard.actuator.ledger import Queued
from lvsguard.actuator.policy import Policy
from lvsguard.actuator.states import HoldKind, Result, Source
from lvsguard.actuator.targets import Target
from lvsguard.cluster.drains import DrainJob, DrainStore
from lvsguard.cluster.etcd import Compare
from lvsguard.cluster.records import DELETE, ClusterHold, HoldStore
from lvsguard.errors import ClusterStoreError, PolicyRefused
from lvsguard.logs import event
from lvsguard.model import RealServer, RealServerKey, ServiceKey

log = logging.getLogger(__name__)

STORE_REASON = "cluster_store"  # the ``reason`` of an outcome that etcd could not be reached for


class ClusterDrains:
    """The cluster's drain jobs as the action layer sees them: where they are written, and the last read of them."""

    def __init__(self) -> None:
        self.store: DrainStore | None = None
        """Set with ``cluster.store: etcd``: an operator's drain starts a job there."""
        self.job: Callable[[str], DrainJob | None] = lambda name: None
        """The job of that name as this director last read it (``actuator.drains.DrainWorker``)."""


def store_for(store: HoldStore | None, actor: Actor) -> HoldStore | None:
    """``store`` when ``cluster.share`` names whose hold ``actor``'s is (``operator`` or its alert source), else None."""
    if store is None:
        return None
    who = "operator" if actor.hold_kind == HoldKind.MANUAL else str(actor.source)
    return store if store.config.shares(who) else None


def holder_of(store: HoldStore, actor: Actor) -> str:
    """The cluster holder of ``actor``'s hold.

    An operator's names the director it was taken on (``lvs1/api alice``).
    An alert's names no director (``alertmanager BackendDown/<fingerprint>``):
    Alertmanager sends the same alert to every director, and each one's
    webhook makes the same hold, one in the cluster, not one per director.
    """
    if actor.hold_kind == HoldKind.ALERT:
        return f"{actor.source} {actor.audit_name}"
    return store.holder(str(actor))


def mirror(holder: str) -> Actor:
    """The actor of a cluster hold in this director's ledger."""
    return Actor(Source.CLUSTER, holder)


class _ClusterStanding:
    """A service as the quorum sees it across the cluster: out if out here or held anywhere.

    ``out``: how many of the real servers held in the cluster (the one being
    checked left aside) have a weight above 0 here. ``back``: a real server
    counted as in although its weight here is 0 (a hold taken here while etcd
    was away, which the cluster has not counted yet).
    """

    def __init__(self, view: ServiceView, out: int, back: RealServerKey | None = None):
        self._view = view
        self._back = back if back is not None and not _in(view, back) and view.real_server(back) else None
        self.total = view.total
        self.healthy = view.healthy - out + (self._back is not None)

    def real_server(self, key: RealServerKey) -> RealServer | None:
        rs = self._view.real_server(key)
        return replace(rs, weight=1) if rs is not None and key == self._back else rs


def _in(view: ServiceView, key: RealServerKey) -> bool:
    """Whether ``key`` has a weight above 0 in ``view``."""
    rs = view.real_server(key)
    return rs is not None and rs.weight > 0


def _out(view: ServiceView, held: AbstractSet[RealServerKey], but: RealServerKey) -> int:
    return sum(1 for key in held if key != but and _in(view, key))


def check_removal(policy: Policy, view: ServiceView, target: Target, held: AbstractSet[RealServerKey]) -> None:
    """The quorum for deleting ``target`` (a drain with ``delete`` that ended), ``held`` what the cluster holds."""
    policy.check_quorum(target, _ClusterStanding(view, _out(view, held, but=target.real_server)), removing=True)


class _BulkQuorum:
    """The quorum checks of a bulk hold, O(1) each: ``take_many`` passes one live set per service and attempt.

    The set grows by each item whose check passed (``HoldStore.take_many``),
    so the count of held real servers that are in here is kept, not counted
    again per item (1 000 items of a service: 500 000 lookups).
    """

    def __init__(self, s: Session):
        self._s = s
        self._known: dict[ServiceKey, tuple[AbstractSet[RealServerKey], int, int, RealServerKey | None]] = {}

    def check(self, service: ServiceKey, real_server: RealServerKey, held: AbstractSet[RealServerKey]) -> None:
        view = self._s.service(service)
        if view is None:
            return
        known = self._known.get(service)
        if known is None or known[0] is not held:  # the first item of the service in this attempt
            size, out = len(held), _out(view, held, but=real_server) + (real_server in held and _in(view, real_server))
        else:
            _held, size, out, passed = known
            if len(held) != size and passed is not None:  # the last item that passed is held now
                size, out = len(held), out + _in(view, passed)
        self._known[service] = (held, size, out, None)
        mine = real_server in held and _in(view, real_server)
        self._s.policy.check_quorum(Target(service, real_server), _ClusterStanding(view, out - mine))
        self._known[service] = (held, size, out, real_server)


def hold(
    s: Session,
    store: HoldStore,
    target: Target,
    actor: Actor,
    *,
    action: str,
    reason: str = "",
    force: bool = False,
    drain_timeout: float | None = None,
    drain_delete: bool = False,
    later: bool = True,
) -> Outcome:
    """An operator's or a shared alert's hold, for every director: the cluster record (quorum checked in the
    transaction), then here.

    While etcd cannot be reached, a shared alert's hold is taken here at once
    and queued for the cluster (``later``; ``share_queued`` writes it when
    etcd answers; else ClusterStoreError); an operator's request is answered
    with an error.

    A drain is also a job of the cluster (``lvsguard.cluster.drains``), owned
    by this director until it ends or this director dies, written in the
    hold's own transaction. An operator's hold
    this director's rules refuse leaves the cluster again; an alert's stays
    and waits there, as an alert's hold waits in a director's own ledger.
    """
    svc, rs = s.real_server(target)
    if svc is None or rs is None:
        return s.absent(action, target, svc, actor)
    if s.policy.dry_run:
        return holds.hold(s, target, actor, action=action, reason=reason, force=force)
    if drain_delete:
        try:
            s.policy.check_unmanaged(target)  # the config's table would add it back
        except PolicyRefused as exc:
            return s.refused(action, target, exc, actor)
    holder = holder_of(store, actor)
    drains = s.drains.store if action == "drain" else None
    timeout = s.settings.drain_timeout if drain_timeout is None else drain_timeout
    started: list[tuple[DrainJob, bool]] = []  # the drain job the last attempt of the transaction wrote or joined

    # Writing a hold taken here while etcd was away: its own weight 0 here is not the cluster's yet.
    own = not later and all(h.holder in (actor.name, holder) for h in s.ledger.active_holds(target))
    back = target.real_server if own else None

    def check(held: frozenset[RealServerKey]) -> None:
        s.policy.check_quorum(target, _ClusterStanding(svc, _out(svc, held, but=target.real_server), back))

    def with_job() -> tuple[list[Compare], list[dict[str, Any]]]:
        assert drains is not None
        job, created, compare, ops = drains.starting(
            target.service, target.real_server, holder, timeout=timeout, delete=drain_delete
        )
        started[:] = [(job, created)]
        return compare, ops

    try:
        new = store.take(
            target.service,
            target.real_server,
            holder,
            action=action,
            reason=reason,
            check=check,
            extra=with_job if drains is not None else None,
        )
    except PolicyRefused as exc:
        return s.refused(action, target, exc, actor, details={"cluster": "refused"})
    except ClusterStoreError as exc:
        if actor.hold_kind == HoldKind.ALERT:
            if not later:
                raise
            return _hold_here(
                s,
                target,
                actor,
                holder,
                exc,
                action=action,
                reason=reason,
                drain_timeout=drain_timeout,
                delete=drain_delete,
            )
        return _unreachable(s, action, target, actor, exc)
    outcome = holds.hold(
        s, target, mirror(holder), action=action, reason=reason, force=force, drain_timeout=drain_timeout
    )
    if actor.hold_kind == HoldKind.ALERT:
        _shared_now(s, actor, holder, target)
    manual = actor.hold_kind == HoldKind.MANUAL
    if outcome.result == Result.REFUSED and new and manual:  # this director's rules said no: the request leaves no hold
        ours = [(target.service, target.real_server)] if started and started[0][1] else []
        try:  # the hold and the drain job it started go in one transaction, as they came
            also = drains.remove_ops(ours) if drains is not None else []
            store.release(target.service, target.real_server, lambda h: h == holder, also=also)
        except ClusterStoreError as exc:
            return _unreachable(s, action, target, actor, exc)
        _drop_mirrors(s, holder, {target})
        return replace(outcome, details={**outcome.details, "cluster": holder})
    if drains is not None and (new or outcome.result in (Result.APPLIED, Result.RECORDED)):
        if new:
            job = started[0][0]  # written with the hold
        else:  # the hold was there already (another director's webhook got the same alert): join or start its job
            try:
                job, _new = drains.start(
                    target.service, target.real_server, holder, timeout=timeout, delete=drain_delete
                )
            except ClusterStoreError as exc:
                if not later:
                    raise
                return _unreachable(s, action, target, actor, exc)
        owner = job.owners[-1] if job.owners else "?"
        outcome = replace(
            outcome,
            message=f"{outcome.message}; cluster drain {job.id} owned by {owner}"
            + (", deletes the real server at the end" if job.delete else ""),
            details={**outcome.details, "drain": job.id, "deadline": job.deadline, "delete": job.delete},
        )
    return replace(outcome, details={**outcome.details, "cluster": holder})


def hold_many(
    s: Session,
    store: HoldStore,
    targets: Sequence[Target],
    actor: Actor,
    *,
    action: str,
    reason: str = "",
    force: bool = False,
) -> list[Outcome]:
    """An operator's holds on many real servers, for every director: one transaction, then here in the session's batch.

    Each item as ``hold`` would do it alone, in the order given: the quorum
    of a service counts the items before it. One compare-and-swap covers
    every service record touched (``HoldStore.take_many``); the holds this
    director's own rules then refuse leave the cluster again in one more.
    """
    if s.policy.dry_run:
        return [holds.hold(s, t, actor, action=action, reason=reason, force=force) for t in targets]
    holder = store.holder(str(actor))
    found: list[Target] = []
    for target in dict.fromkeys(targets):
        svc, rs = s.real_server(target)
        if svc is not None and rs is not None:
            found.append(target)

    quorum = _BulkQuorum(s)
    fates = store.take_many(
        [(t.service, t.real_server) for t in found], holder, action=action, reason=reason, check=quorum.check
    )
    outcomes: list[Outcome] = []
    undo: list[Target] = []
    for target in targets:
        fate = fates.get((target.service, target.real_server))
        if fate is None:
            svc, _rs = s.real_server(target)
            outcomes.append(s.absent(action, target, svc, actor))
        elif isinstance(fate, PolicyRefused):
            outcomes.append(s.refused(action, target, fate, actor))
        elif isinstance(fate, ClusterStoreError):
            outcomes.append(_unreachable(s, action, target, actor, fate))
        else:
            outcome = holds.hold(s, target, mirror(holder), action=action, reason=reason, force=force)
            if outcome.result == Result.REFUSED and fate:
                undo.append(target)
            outcomes.append(replace(outcome, details={**outcome.details, "cluster": holder}))
    if undo:  # this director's rules said no: the operator's request leaves no hold
        try:
            store.release_many([(t.service, t.real_server) for t in undo], lambda h: h == holder)
        except ClusterStoreError as exc:
            return [
                _unreachable(s, action, o.target, actor, exc) if o.target is not None and o.target in undo else o
                for o in outcomes
            ]
        _drop_mirrors(s, holder, set(undo))
    return outcomes


def release_many(
    s: Session, store: HoldStore, targets: Sequence[Target], actor: Actor, *, scope: str, force: bool = False
) -> list[Outcome]:
    """An operator's restore of many real servers, for every director: one transaction, then each here."""
    items = [(t.service, t.real_server) for t in dict.fromkeys(targets)]
    try:
        store.release_many(items)
        if s.drains.store is not None:
            s.drains.store.remove(items)
    except ClusterStoreError as exc:
        return [_unreachable(s, "restore", t, actor, exc) for t in targets]
    return [_release_here(s, t, actor, scope=scope, force=force) for t in targets]


def resolve(s: Session, store: HoldStore, actor: Actor, *, later: bool = True) -> list[Outcome]:
    """A shared alert resolved on this director: its holds leave the cluster, then their mirrors here.

    Any director's resolve counts (every director gets the same alert from
    Alertmanager). The cluster's holds are read, not this director's
    mirrors: a hold this director has not applied yet goes too. What the
    alert holds in this director's own ledger (taken before it was shared,
    a failover, or while etcd was away) is released as without a cluster.
    While etcd cannot be reached, the alert's holds here are released at
    once and the resolve is queued for the cluster (``later``; else
    ClusterStoreError).
    """
    holder = holder_of(store, actor)
    try:
        records, _revision = store.snapshot()
        items = list(dict.fromkeys((r.service, r.real_server) for r in records if r.holder == holder))
        if items:
            store.release_many(items, lambda h: h == holder)
    except ClusterStoreError as exc:
        if not later:
            raise
        return _resolve_here(s, actor, holder, exc)
    with s.ledger.transaction():
        s.ledger.unqueue(holder)  # what this director queued for the alert is older news
    targets = {Target(service, rs) for service, rs in items}
    targets |= {h.target for h in s.ledger.holds_of(HoldKind.ALERT, holder)}
    outcomes = [holds.release(s, t, mirror(holder)) for t in sorted(targets, key=str)]
    return outcomes + holds.resolve(s, actor)


QUEUED = "the cluster store cannot be reached: done on this director, queued for the cluster until etcd answers"


def _hold_here(
    s: Session,
    target: Target,
    actor: Actor,
    holder: str,
    exc: ClusterStoreError,
    *,
    action: str,
    reason: str,
    drain_timeout: float | None,
    delete: bool,
) -> Outcome:
    """etcd cannot be reached: the alert's own hold here at once (as without a cluster), queued for the cluster.

    A drain deletes nothing before its hold is the cluster's: its cluster job, ``delete`` and all, starts then.
    """
    outcome = holds.hold(s, target, actor, action=action, reason=reason, drain_timeout=drain_timeout)
    queued = Queued(
        holder,
        "take",
        actor.source,
        actor.name,
        actor.alertname,
        target,
        action,
        reason,
        drain_timeout,
        delete,
        s.clock(),
    )
    with s.ledger.transaction():
        s.ledger.queue_for_cluster(queued)
    event(log, logging.WARNING, "cluster_share_queued", op="take", holder=holder, target=target, error=exc)
    return replace(outcome, message=f"{outcome.message}; {QUEUED}", details={**outcome.details, "cluster": "queued"})


def _resolve_here(s: Session, actor: Actor, holder: str, exc: ClusterStoreError) -> list[Outcome]:
    """etcd cannot be reached: the alert's holds here released at once (its mirrors and its own), the resolve queued.

    Until the resolve reaches etcd, the cluster's record of the alert is not taken again here (``converge``).
    """
    targets = sorted({h.target for h in s.ledger.holds_of(HoldKind.ALERT, holder)}, key=str)
    outcomes = [holds.release(s, t, mirror(holder)) for t in targets] + holds.resolve(s, actor)
    queued = Queued(holder, "release", actor.source, actor.name, actor.alertname, None, "", "", None, False, s.clock())
    with s.ledger.transaction():
        s.ledger.queue_for_cluster(queued)
    event(log, logging.WARNING, "cluster_share_queued", op="release", holder=holder, error=exc)
    if not outcomes:
        return [s.finish(Outcome("restore", None, Result.RECORDED, f"{actor}: nothing held here; {QUEUED}"), actor)]
    return [replace(o, message=f"{o.message}; {QUEUED}", details={**o.details, "cluster": "queued"}) for o in outcomes]


def _shared_now(s: Session, actor: Actor, holder: str, target: Target) -> None:
    """The alert's hold is the cluster's now: its own hold here (taken while etcd was away) gives way to the mirror."""
    with s.ledger.transaction():
        s.ledger.unqueue(holder)
    if s.ledger.active_hold(target, HoldKind.ALERT, actor.name) is not None:
        holds.release(s, target, actor)


def _share(s: Session, store: HoldStore, item: Queued, actor: Actor) -> list[Outcome]:
    """One queued item written to etcd (ClusterStoreError when it cannot be)."""
    if store_for(store, actor) is None:
        return []
    if item.op == "release" or item.target is None:
        return resolve(s, store, actor, later=False)
    outcome = hold(
        s,
        store,
        item.target,
        actor,
        action=item.action,
        reason=item.reason,
        drain_timeout=item.drain_timeout,
        drain_delete=item.drain_delete,
        later=False,
    )
    if outcome.details.get("cluster") == "refused" and s.ledger.active_hold(item.target, HoldKind.ALERT, actor.name):
        return [outcome, holds.release(s, item.target, actor)]
    return [outcome]


def share_queued(s: Session, store: HoldStore) -> list[Outcome]:
    """Write what the shared alerts did here while etcd could not be reached, oldest first; the outcomes.

    A hold goes as the alert's webhook would have written it (the cluster's
    quorum checked, a drain's job with it) and its own hold here gives way
    to the mirror; one the cluster's quorum refuses is released here too, as
    a refused alert leaves no hold anywhere. A resolve removes the alert's
    holds from the cluster. Stops at the first item etcd does not answer
    (kept for the next try). A source ``cluster.share`` no longer names
    stays as it is here.
    """
    outcomes: list[Outcome] = []
    for item in s.ledger.cluster_queue():
        actor = Actor(Source(item.source), item.name, item.alertname)
        try:
            done = _share(s, store, item, actor)
        except ClusterStoreError:
            break
        with s.ledger.transaction():
            s.ledger.unqueue(item.holder)
        waited = round(s.clock() - item.at, 3)
        event(log, logging.INFO, "cluster_share_written", op=item.op, holder=item.holder, waited=waited)
        outcomes += done
    return outcomes


def _drop_mirrors(s: Session, holder: str, targets: set[Target]) -> None:
    """Forget ``holder``'s mirror holds on ``targets`` (a mirror waits as an alert's hold would; these must not)."""
    with s.ledger.transaction():
        for h in s.ledger.holds_of(HoldKind.ALERT, holder):
            if h.target in targets:
                s.ledger.delete_hold(h.id)


def release(s: Session, store: HoldStore, target: Target, actor: Actor, *, scope: str, force: bool = False) -> Outcome:
    """An operator's restore, for every director: the real server's cluster records go, then its mirrors here.

    Its drain job goes too (a deletion that ended one is forgotten: the real server may be added again).
    """
    drains, item = s.drains.store, [(target.service, target.real_server)]
    try:  # the holds and the drain job in one transaction; a job without a hold (nothing released) goes alone
        released = store.release(*item[0], also=drains.remove_ops(item) if drains is not None else ())
        if not released and drains is not None:
            drains.remove(item)
    except ClusterStoreError as exc:
        return _unreachable(s, "restore", target, actor, exc)
    return _release_here(s, target, actor, scope=scope, force=force)


def _release_here(s: Session, target: Target, actor: Actor, *, scope: str, force: bool) -> Outcome:
    """The real server's cluster records are gone: release its mirrors here, and the operator's own holds."""
    outcome: Outcome | None = None
    for h in s.ledger.active_holds(target):
        if h.source == Source.CLUSTER:
            outcome = holds.release(s, target, mirror(h.holder), force=force)
    if outcome is None or any(h.kind == HoldKind.MANUAL for h in s.ledger.active_holds(target)):
        outcome = holds.release(s, target, actor, scope=scope, force=force)
    return outcome


def converge(s: Session, records: list[ClusterHold]) -> list[Outcome]:
    """Make this director's mirror holds the cluster's ``records``; the outcome of each change.

    A record of a real server this director's kernel does not have is left
    for later (its table may not have it yet), without an audit event per round.
    The record of an alert resolved here while etcd was away, whose resolve
    is still queued, is not taken again.
    """
    resolved = {q.holder for q in s.ledger.cluster_queue() if q.op == "release"}  # resolved here, not yet in etcd
    wanted = {(Target(r.service, r.real_server), r.holder): r for r in records if r.holder not in resolved}
    mirrors = {(h.target, h.holder) for h in s.ledger.active_holds() if h.source == Source.CLUSTER}
    outcomes = []
    deleted: set[Target] = set()
    for (target, holder), record in sorted(wanted.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        if record.action == DELETE:
            _svc, rs = s.real_server(target)
            if rs is not None and target not in deleted:
                deleted.add(target)
                outcomes.append(_delete(s, target, holder, rs))
            continue
        if (target, holder) in mirrors:
            continue
        _svc, rs = s.real_server(target)
        if rs is None:
            continue
        outcomes.append(holds.hold(s, target, mirror(holder), action=record.action, reason=record.reason))
    for target, holder in sorted(mirrors - set(wanted), key=lambda item: (str(item[0]), item[1])):
        outcomes.append(holds.release(s, target, mirror(holder)))
    return outcomes


def _delete(s: Session, target: Target, holder: str, rs: RealServer) -> Outcome:
    """A drain with ``delete`` ended in the cluster: remove the real server from this kernel too."""
    actor = mirror(holder)
    try:
        s.policy.check_unmanaged(target)  # this director's config owns it: its table would add it back
    except PolicyRefused as exc:
        return s.refused("remove", target, exc, actor)
    return s.finish(s.delete(target, actor, rs), actor)


def _unreachable(s: Session, action: str, target: Target | None, actor: Actor, exc: ClusterStoreError) -> Outcome:
    """Nothing changed here. A write that an etcd member received without answering may still commit."""
    if exc.maybe_applied:
        message = (
            f"{target or actor}: not confirmed by the cluster store, nothing changed here yet: {exc}; etcd may still "
            "record it once its quorum is back, and then every director applies it (see lvsguard status --cluster)"
        )
    else:
        message = f"{target or actor}: nothing changed, the cluster store cannot be reached: {exc}"
    return s.finish(Outcome(action, target, Result.ERROR, message, reason=STORE_REASON), actor)
