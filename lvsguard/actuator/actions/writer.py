"""The door into the action layer: :class:`Actions`, the one writer of IPVS, behind its own lock.

Every caller (the webhook, the admin API, the console, the job threads and the
retry loop) makes one call here and gets an :class:`Outcome` (or a list) back.
The lock, the kernel, the shared views and the refusal memory stay inside.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, TypeVar, runtime_checkable

from lvsguard.actuator.actions import director, drift, holds, members, shared, steps, table
from lvsguard.actuator.actions.outcome import Actor, Kernel, NoMetrics, Outcome, Recorder
from lvsguard.actuator.actions.reconcile import reconcile
from lvsguard.actuator.actions.session import Session
from lvsguard.actuator.actions.shared import ClusterDrains
from lvsguard.actuator.actions.view import ServiceView, SharedViews
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.policy import Policy
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.actuator.states import HoldKind, Result
from lvsguard.actuator.targets import Target
from lvsguard.cluster.records import ClusterHold, HoldStore
from lvsguard.cluster.table import TableRecord, decode
from lvsguard.errors import ClusterStoreError, NoSuchService
from lvsguard.logs import event
from lvsguard.model import Forward, RealServerKey, ServiceKey, SyncDaemon, Table
from lvsguard.table.desired import DesiredTable
from lvsguard.table.plan import Plan

log = logging.getLogger(__name__)
T = TypeVar("T")

LedgerSource = Ledger | Callable[[], Ledger]
"""A ledger connection, or a function that gives one and is called under the lock
(``actuator.ledger.locked_ledger``: the app's one warm connection, only used under the lock)."""


@runtime_checkable
class _SyncDaemonReader(Protocol):
    """A kernel that reads the sync daemons alone (``NetlinkIPVS``, the tests' fake)."""

    def sync_daemons(self) -> tuple[SyncDaemon, ...]: ...


class Batch:
    """What one alert of a webhook payload may do inside the payload's batch session (:meth:`Actions.alerts`)."""

    def __init__(self, session: Session, cluster: HoldStore | None = None):
        self._session = session
        self._cluster = cluster
        """The cluster store's holds; an alert's hold goes there when ``cluster.share`` names its source."""

    def hold(
        self,
        target: Target,
        actor: Actor,
        *,
        action: str,
        reason: str = "",
        drain_timeout: float | None = None,
        drain_delete: bool = False,
    ) -> Outcome:
        store = shared.store_for(self._cluster, actor)
        if store is not None and (not drain_delete or self._session.drains.store is not None):
            return shared.hold(
                self._session,
                store,
                target,
                actor,
                action=action,
                reason=reason,
                drain_timeout=drain_timeout,
                drain_delete=drain_delete,
            )
        return holds.hold(
            self._session,
            target,
            actor,
            action=action,
            reason=reason,
            drain_timeout=drain_timeout,
            drain_delete=drain_delete,
        )

    def release(self, target: Target, actor: Actor, *, scope: str = "own") -> Outcome:
        return holds.release(self._session, target, actor, scope=scope)

    def resolve(self, actor: Actor) -> list[Outcome]:
        """Release everything the alert ``actor`` holds; an empty list when it holds nothing."""
        store = shared.store_for(self._cluster, actor)
        if store is not None:
            return shared.resolve(self._session, store, actor)
        return holds.resolve(self._session, actor)

    def failover(self, actor: Actor, *, reason: str = "") -> Outcome:
        return director.failover(self._session, actor, reason=reason)

    def ignore(self, actor: Actor, action: str, message: str, result: Result, *, audit: bool = True) -> Outcome:
        """An alert the layer does nothing for (no rule, bad labels, a kernel error about it)."""
        return self._session.ignore(actor, action, message, result, audit=audit)


class Actions:
    """The action layer: one per actuator process, shared by every request and job thread."""

    def __init__(
        self,
        kernel: Kernel,
        settings: ActuatorSettings,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Recorder | None = None,
    ):
        self._kernel = kernel
        self._lock = threading.RLock()
        self.settings = settings
        """Read by every session; :meth:`replace_settings` swaps it (a reload)."""
        self.clock = clock
        self.policy = Policy(settings, clock=clock)
        self.metrics: Recorder = metrics or NoMetrics()
        self.views = SharedViews()
        """Views of big services shared by cached sessions (``VIEW_TTL``)."""
        self.refusals: dict[tuple[Target, str], str] = {}
        """The last refusal reason per real server and action (a repeat is audited once)."""
        self._job_started: Callable[[int], None] = lambda job_id: None
        self.table = table.TableState()
        """The table reconciler's drains and pending services (``apply_table``, ``retry_table``)."""
        self.cluster: HoldStore | None = None
        """The cluster store's holds (``cluster.store: etcd``): operators' holds go there first (``shared``)."""
        self.drains = ClusterDrains()
        """The cluster's drain jobs (``cluster.store: etcd``): an operator's drain is one for every director."""
        self.cluster_table: TableRecord | None = None
        """The cluster's desired table (``table.source: cluster``) this director applies; None: none known yet."""
        self.settings = self._with_cluster_table(settings)
        self.policy.settings = self.settings
        self.services_seen: set[ServiceKey] = set()
        """The services the kernel had at the sessions' last reads (the fleet's VIPs come from them, no read)."""
        self.lock_waited = 0.0
        """Seconds the last ``converge_cluster`` waited for the lock (the cluster watch logs it)."""

    # wiring

    def on_new_job(self, start: Callable[[int], None]) -> None:
        """Call ``start`` with each new job's id, once its row is committed (the app's JobRunner starts a thread)."""
        self._job_started = start

    def start_job(self, job_id: int) -> None:
        self._job_started(job_id)

    def replace_settings(self, new: ActuatorSettings, also: Callable[[], None] = lambda: None) -> None:
        """Make ``new`` the settings of every later session, and run ``also``, under the lock (a reload).

        The Policy stays the same object: its rate-limit window and hold-down clocks carry over.
        """
        with self._lock:
            new = self._with_cluster_table(new)
            self.settings = new
            self.policy.settings = new
            if not new.table.manage:  # unmanaged meanwhile: the kernel may be anything when management comes back
                self.table.applied = None
            also()

    def _with_cluster_table(self, settings: ActuatorSettings) -> ActuatorSettings:
        """With ``table.source: cluster`` the desired table is the cluster's, not the config's ``services``."""
        if settings.table.source != "cluster":
            return settings
        desired = self.cluster_table.desired if self.cluster_table is not None else DesiredTable()
        return dataclasses.replace(settings, desired=desired)

    def _no_table(self) -> bool:
        """The table comes from the cluster and none is known yet (no record, no cache): nothing to apply."""
        return self.settings.table.source == "cluster" and self.cluster_table is None

    def load_cached_cluster_table(self, ledger: Ledger) -> TableRecord | None:
        """At start (``table.source: cluster``): the cluster's table last applied, from the ledger, as the desired.

        So a director that starts with etcd out of reach (a reboot in an
        outage) builds the table it had; the watch brings the newer one later.
        """
        if self.settings.table.source != "cluster" or self.cluster_table is not None:
            return self.cluster_table
        cached = ledger.cached_cluster_table()
        if cached is None:
            return None
        try:
            record = decode(cached[1], cached[0], "the ledger's cached cluster table")
        except ClusterStoreError as exc:  # not a table this version reads: etcd's is fetched whole instead
            event(log, logging.ERROR, "cluster_table_cache_refused", error=exc, instead="the table in etcd")
            return None
        with self._lock:
            self.cluster_table = record
            self.replace_settings(self.settings)
        return self.cluster_table

    def apply_cluster_table(self, ledger: LedgerSource, record: TableRecord, actor: Actor) -> table.TableOutcome:
        """Make ``record`` the desired table and apply what it changed (``apply_table``); cache it in the ledger.

        The cache is the director's last known cluster table: a start with etcd
        out of reach builds it (``JobRunner.begin``).
        """
        with self._lock:
            self.cluster_table = record
            self.replace_settings(self.settings)
            outcome = self.apply_table(ledger, actor)
            lg = ledger if isinstance(ledger, Ledger) else ledger()
            with lg.transaction():
                lg.cache_cluster_table(record.revision, record.text)
            return outcome

    # reads (no lock: a read does not change the kernel or the ledger)

    def active_connections(self, targets: Iterable[Target]) -> dict[Target, int]:
        """The active connections of each real server in the kernel (one read per service); absent: not there."""
        found: dict[Target, int] = {}
        by_service: dict[ServiceKey, list[Target]] = {}
        for target in targets:
            by_service.setdefault(target.service, []).append(target)
        for key, wanted in by_service.items():
            try:
                servers = {rs.key: rs for rs in self._kernel.read_real_servers(key)}
            except NoSuchService:
                continue
            for target in wanted:
                rs = servers.get(target.real_server)
                if rs is not None:
                    found[target] = rs.active_connections
        return found

    def removal_check(self, target: Target) -> Callable[[frozenset[RealServerKey]], None]:
        """The quorum for deleting a drained real server across the cluster (``held``: the cluster's holds)."""
        try:
            view = ServiceView(target.service, self._kernel.read_real_servers(target.service))
        except NoSuchService:
            return lambda held: None
        return lambda held: shared.check_removal(self.policy, view, target, held)

    def read_table(self) -> Table:
        """The kernel table, read afresh."""
        return self._kernel.read()

    def service_keys(self) -> set[ServiceKey]:
        """The services this director has, without reading the kernel: the config's table and what sessions read."""
        return {svc.key for svc in self.settings.desired} | self.services_seen

    def sync_daemons(self) -> tuple[SyncDaemon, ...]:
        """The sync daemons: one netlink request where the kernel can, not a read of the whole table."""
        if isinstance(self._kernel, _SyncDaemonReader):
            return self._kernel.sync_daemons()
        return self._kernel.read().sync_daemons

    # one call, one outcome

    def hold(
        self,
        ledger: LedgerSource,
        target: Target,
        actor: Actor,
        *,
        action: str = "quarantine",
        reason: str = "",
        force: bool = False,
        drain_timeout: float | None = None,
        drain_delete: bool = False,
    ) -> Outcome:
        """Quarantine or drain (``action``): ``actor``'s hold on the real server, which goes to weight 0.

        With a cluster store, an operator's hold is the whole cluster's (``shared``), a drain a cluster job.
        """
        with self._session(ledger) as s:
            shared_drains = not drain_delete or self.drains.store is not None
            store = shared.store_for(self.cluster, actor)
            if store is not None and actor.hold_kind == HoldKind.MANUAL and shared_drains:
                return shared.hold(
                    s,
                    store,
                    target,
                    actor,
                    action=action,
                    reason=reason,
                    force=force,
                    drain_timeout=drain_timeout,
                    drain_delete=drain_delete,
                )
            return holds.hold(
                s,
                target,
                actor,
                action=action,
                reason=reason,
                force=force,
                drain_timeout=drain_timeout,
                drain_delete=drain_delete,
            )

    def release(
        self, ledger: LedgerSource, target: Target, actor: Actor, *, scope: str = "own", force: bool = False
    ) -> Outcome:
        """Restore: drop holds (``scope``), and bring the real server back once none is left.

        With a cluster store, an operator's restore is the whole cluster's (``shared``).
        """
        with self._session(ledger) as s:
            store = shared.store_for(self.cluster, actor)
            if store is not None and actor.hold_kind == HoldKind.MANUAL and scope != "alerts":
                return shared.release(s, store, target, actor, scope=scope, force=force)
            return holds.release(s, target, actor, scope=scope, force=force)

    def hold_many(
        self,
        ledger: LedgerSource,
        targets: Sequence[Target],
        actor: Actor,
        *,
        action: str = "quarantine",
        reason: str = "",
        force: bool = False,
    ) -> list[Outcome]:
        """An operator's quarantine of many real servers at once: one outcome per target, in their order.

        One batch session (as a webhook payload: two ledger commits and one
        round of kernel writes, each service's in one request), the same rules
        as one at a time, the quorum of a service counting the targets before
        it. With a cluster store, one etcd transaction for every service
        record touched (``shared.hold_many``).
        """
        with self._lock:
            with self._session(ledger, batch=True) as s:
                store = shared.store_for(self.cluster, actor)
                if store is not None and actor.hold_kind == HoldKind.MANUAL:
                    outcomes = shared.hold_many(s, store, targets, actor, action=action, reason=reason, force=force)
                else:
                    outcomes = [holds.hold(s, t, actor, action=action, reason=reason, force=force) for t in targets]
            return [s.settled(o) for o in outcomes]

    def release_many(
        self, ledger: LedgerSource, targets: Sequence[Target], actor: Actor, *, scope: str = "own", force: bool = False
    ) -> list[Outcome]:
        """An operator's restore of many real servers at once, in one batch session (``hold_many``)."""
        with self._lock:
            with self._session(ledger, batch=True) as s:
                store = shared.store_for(self.cluster, actor)
                if store is not None and actor.hold_kind == HoldKind.MANUAL and scope != "alerts":
                    outcomes = shared.release_many(s, store, targets, actor, scope=scope, force=force)
                else:
                    outcomes = [holds.release(s, t, actor, scope=scope, force=force) for t in targets]
            return [s.settled(o) for o in outcomes]

    def set_weight(
        self, ledger: LedgerSource, target: Target, weight: int, actor: Actor, *, force: bool = False
    ) -> Outcome:
        with self._session(ledger) as s:
            return members.set_weight(s, target, weight, actor, force=force)

    def add(
        self,
        ledger: LedgerSource,
        target: Target,
        actor: Actor,
        *,
        weight: int = 1,
        forward: Forward | None = None,
        upper_threshold: int = 0,
        lower_threshold: int = 0,
    ) -> Outcome:
        """Add a real server; ValueError when ``forward`` is needed (its service's real servers disagree)."""
        with self._session(ledger) as s:
            return members.add(
                s,
                target,
                actor,
                weight=weight,
                forward=forward,
                upper_threshold=upper_threshold,
                lower_threshold=lower_threshold,
            )

    def remove(self, ledger: LedgerSource, target: Target, actor: Actor, *, force: bool = False) -> Outcome:
        with self._session(ledger) as s:
            return members.remove(s, target, actor, force=force)

    def failover(self, ledger: LedgerSource, actor: Actor, *, reason: str = "") -> Outcome:
        with self._session(ledger) as s:
            return director.failover(s, actor, reason=reason)

    def end_failover(self, ledger: LedgerSource, actor: Actor, *, scope: str = "own") -> Outcome:
        with self._session(ledger) as s:
            return director.end_failover(s, actor, scope=scope)

    def alerts(
        self,
        ledger: LedgerSource,
        items: Sequence[T],
        handle: Callable[[Batch, T], list[Outcome]],
        *,
        preload: bool = False,
    ) -> list[list[Outcome]]:
        """Handle a webhook payload in one batch session; each item's outcomes as the batch's end left them.

        ``preload``: read the whole table once (many alerts) instead of each service
        they touch. A big service's view read by an earlier session less than
        ``VIEW_TTL`` seconds ago is used instead of a new read.
        """
        with self._lock:
            table = self._kernel.read() if preload else None
            with self._session(ledger, table=table, batch=True, cached=True) as s:
                batch = Batch(s, self.cluster)
                results = [handle(batch, item) for item in items]
        return [[s.settled(o) for o in outcomes] for outcomes in results]

    # background work

    def converge_cluster(
        self, ledger: LedgerSource, records: list[ClusterHold], *, behind: Callable[[], bool] = lambda: False
    ) -> list[Outcome] | None:
        """Make this director's mirrors of the cluster's holds ``records`` (the cluster watch's call).

        One batch session, as a webhook payload: 1 000 holds that arrive at once (one record, one
        watch event) are two ledger commits and one round of kernel writes, not 1 000 of each.
        ``behind()`` true under the lock: the records are older than a write of this director's own;
        nothing is done (None).
        """
        asked = time.monotonic()
        with self._lock:
            self.lock_waited = time.monotonic() - asked
            if behind():  # asked under the lock, where this director's own writes of holds happen: None
                return None
            if self.share_queued(ledger) and behind():  # etcd is back: the records are older than what it just took
                return None
            with self._session(ledger, batch=True) as s:
                outcomes = shared.converge(s, records)
            return [s.settled(o) for o in outcomes]

    def share_queued(self, ledger: LedgerSource) -> list[Outcome]:
        """Write to etcd what shared alerts did here while it could not be reached (``shared.share_queued``).

        Called by the cluster watch before each convergence and by the retry loop while the watch says etcd is up.
        """
        if self.cluster is None:
            return []
        with self._session(ledger) as s:
            if not s.ledger.cluster_queue():
                return []
            return shared.share_queued(s, self.cluster)

    def retry_pending(self, ledger: LedgerSource, *, cached: bool = False) -> list[Outcome]:
        """Converge every real server whose holds and kernel state disagree (refused earlier)."""
        with self._session(ledger, cached=cached) as s:
            return holds.converge_all(s)

    def reconcile(self, ledger: LedgerSource, *, cached: bool = False) -> list[Outcome]:
        """Finish or report what a crash interrupted, and report weights changed by hand; returns what was found.

        ``cached``: the retry loop's periodic rounds may use a big service's view
        that a webhook session read less than ``VIEW_TTL`` seconds ago. Reading a
        service of 1 000 real servers afresh under the lock every round stalled
        every webhook request behind it; a weight changed by hand is then
        reported one round later at worst. The round at start reads afresh.
        """
        with self._session(ledger, cached=cached) as s:
            return reconcile(s)

    # the table (``table.manage``)

    def apply_table(self, ledger: LedgerSource, actor: Actor, *, whole: bool = False) -> table.TableOutcome:
        """Make the kernel's table the config's (``settings.desired``), the holds winning; every step audited.

        ``whole`` (the actuator's start) reads and plans the whole table; else (a reload) only what the config
        changed since the last run applied (``apply_changes``), the whole table when that is unknown.
        """
        if self._no_table():
            return table.TableOutcome(Plan(), None)
        with self._session(ledger) as s:
            try:
                if whole:
                    return table.apply_table(s, s.settings.desired, s.settings.table, self.table, actor)
                return table.apply_changes(s, s.settings.desired, s.settings.table, self.table, actor)
            finally:
                self.views.clear()  # big services' cached views may miss what was just written

    def plan_table(self, ledger: LedgerSource) -> Plan:
        """What ``apply_table`` would do now (read-only)."""
        if self._no_table():
            return Plan()
        with self._session(ledger) as s:
            return table.plan_table(s, s.settings.desired, s.settings.table, self.table)

    def retry_table(self, ledger: LedgerSource, actor: Actor) -> table.TableOutcome | None:
        """Plan and apply again the services the last run left unfinished; None when there is none."""
        with self._session(ledger) as s:
            if not self.table.pending or not s.settings.table.manage or self._no_table():
                return None
            try:
                return table.apply_table(
                    s, s.settings.desired, s.settings.table, self.table, actor, only=set(self.table.pending)
                )
            finally:
                self.views.clear()

    def check_drift(self, ledger: LedgerSource, actor: Actor) -> list[drift.Drift] | None:
        """Compare the managed entries of the kernel with the config once ``table.drift_interval`` has passed.

        Returns the drift left (after a correction with ``table.drift: correct``), or None when no check was due.
        """
        wanted = self.settings.table
        if not wanted.manage or not wanted.drift_interval or self._no_table():
            self.table.drift = {}
            return None
        if self.clock() - self.table.checked < wanted.drift_interval:
            return None
        # The table is read without the lock (a reload or an alert's action does not wait for 100 000 real servers
        # to be read); only the services that read shows unlike the config are read again and judged under it.
        managed = None if wanted.prune == "exact" else [svc.key for svc in self.settings.desired]  # owned: those only
        kernel = table.read_part(self._kernel, managed)
        with self._session(ledger) as s:
            if self.table.applied is not s.settings.desired:  # a reload between its new settings and its apply
                return None
            only = drift.suspects(s, kernel, s.settings.desired, s.settings.table)
            try:
                return drift.check(s, s.settings.desired, s.settings.table, self.table, actor, only=only)
            finally:
                if s.settings.table.drift == "correct":
                    self.views.clear()

    def step_job(self, ledger: LedgerSource, job_id: int) -> bool:
        """Advance one job by one step; True when it has finished."""
        with self._session(ledger) as s:
            return steps.step_job(s, job_id)

    @contextmanager
    def _session(
        self, source: LedgerSource, *, table: Table | None = None, batch: bool = False, cached: bool = False
    ) -> Iterator[Session]:
        """Hold the lock for actions that share one view of the kernel table.

        ``cached``: a big service's view read less than ``VIEW_TTL`` seconds ago by
        another session is used instead of a new read (the webhook at a high rate:
        reading a service of 1 000 real servers costs more than the rest of the
        request). Every session's writes update the shared view in place, and a
        failed write or a rolled-back batch drops it, so the cache only misses
        what another program wrote in the last ``VIEW_TTL`` seconds. Sessions of
        the API, the jobs and the reconciliation at start always read afresh; the
        retry loop's rounds use a fresh shared view too (``reconcile``).

        ``batch``: one ledger transaction for the whole session. Kernel writes
        wait until its end: the holds and intents are committed first, then
        the kernel is written, then every confirmation and audit event goes in
        one more transaction. The crash-safety order is the same as one write at
        a time, with two commits per batch instead of four per action (a webhook
        payload of 1 000 alerts).

        A transaction that a failed commit (disk full, locked) leaves open is
        rolled back, so the connection's next session starts clean.
        """
        with self._lock:
            ledger = source if isinstance(source, Ledger) else source()
            try:
                session = Session(self, ledger, table, batch=batch, cached=cached)
                if not batch:
                    yield session
                    return
                ledger.begin()
                try:
                    yield session
                except BaseException:
                    ledger.rollback()  # nothing reached the kernel yet
                    self.views.clear()  # the session's views have writes that never happened
                    raise
                session.flush()
            finally:
                if ledger.in_transaction:
                    ledger.rollback()
