"""The cluster watch (``cluster.store: etcd``): this director follows the cluster's holds and converges its kernel.

One thread reads every hold of the cluster (a linearizable range), converges
(``Actions.converge_cluster``), then watches the prefix from the next revision
and converges again on every change. A watch silent for ``idle_timeout``
seconds is dropped and the holds are read again: a partition leaves a TCP
stream open and mute, and the read is what says whether etcd is there. While
it is not, the director keeps its kernel and its ledger as they are (the last
known cluster state) and tries again every ``retry`` seconds; when etcd
answers, one read and one convergence catch up with whatever happened.

Metrics (registered only with ``store: etcd``):

- ``lvsguard_cluster_store_up``: 1 while the last read of the holds succeeded;
- ``lvsguard_cluster_convergence_lag_seconds``: for the last hold this
  director applied from the cluster, the time from its write on the director
  that took it (that director's clock) to the kernel write here;
- ``lvsguard_cluster_apply_seconds``: this director's own share of the last
  convergence, from the watch event to the kernel written;
- ``lvsguard_cluster_pending_holds``: cluster holds not applied here (refused
  for now by this director's rules, or a real server its table lacks);
- ``lvsguard_cluster_last_sync_timestamp_seconds``: when the holds were last read or confirmed by etcd.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from lvsguard.actuator.actions import Actions, Result
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.states import BackendState
from lvsguard.actuator.targets import Target
from lvsguard.actuator.worker import Worker
from lvsguard.cluster.etcd import KeyValue
from lvsguard.cluster.records import DELETE, ClusterHold, HoldStore
from lvsguard.errors import ClusterStoreError
from lvsguard.logs import event

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 5.0  # seconds a watch may stay silent before the holds are read again
RETRY = 1.0  # seconds between two reads while etcd cannot be reached


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.up = Gauge(
            "lvsguard_cluster_store_up",
            "1 when the last read of the cluster's holds from etcd succeeded, 0 when etcd could not be reached.",
            registry=registry,
        )
        self.lag = Gauge(
            "lvsguard_cluster_convergence_lag_seconds",
            "Last hold applied from the cluster: seconds from its write on the director that took it to this "
            "director's kernel write.",
            registry=registry,
        )
        self.apply = Gauge(
            "lvsguard_cluster_apply_seconds",
            "This director's share of the last convergence: seconds from the watch event to its kernel written.",
            registry=registry,
        )
        self.pending = Gauge(
            "lvsguard_cluster_pending_holds",
            "Holds of the cluster this director has not applied (refused for now here, or not in its table).",
            registry=registry,
        )
        self.synced = Gauge(
            "lvsguard_cluster_last_sync_timestamp_seconds",
            "When this director last read the cluster's holds or etcd confirmed its watch (epoch seconds).",
            registry=registry,
        )


class ClusterSync(Worker):
    """The watch thread of one actuator: ``start()`` once the app runs (``JobRunner.begin``), ``stop()`` at exit."""

    thread_name = "lvsguard-cluster"

    def __init__(
        self,
        actions: Actions,
        ledger_path: str,
        store: HoldStore,
        metrics: ClusterMetrics,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        retry: float = RETRY,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__()
        self.actions = actions
        self.ledger_path = ledger_path
        self.store = store
        self.metrics = metrics
        self.idle_timeout = idle_timeout
        self.retry = retry
        self.clock = clock
        self.up = False
        self._reported_down = False
        self.converged = threading.Event()  # set after each convergence (tests and the benchmark wait on it)
        self.announce_soon = threading.Event()  # set after each convergence: the fleet announcer's cue
        self.pending = 0  # cluster holds not applied here (the metric's value; the fleet view shows it)
        self._records: dict[str, list[ClusterHold]] = {}  # key -> its holds
        self.revision = 0  # the cluster's revision that ``_records`` are at

    def deletions(self) -> list[ClusterHold]:
        """The cluster's holds that are deletions (a drain with ``delete`` ended), as last read."""
        return [h for holds in list(self._records.values()) for h in holds if h.action == DELETE]

    def _run(self) -> None:
        ledger = Ledger.open(self.ledger_path, clock=self.actions.clock, create=False)
        try:
            while not self._stop.is_set():
                try:
                    revision = self._read(ledger)
                except ClusterStoreError as exc:
                    self._down(exc)
                    self._stop.wait(self.retry)
                    continue
                except Exception as exc:  # a failed convergence must not end the watch: logged, read again
                    event(log, logging.ERROR, "cluster_converge_failed", error=exc)
                    self._stop.wait(self.retry)
                    continue
                try:
                    self._follow(ledger, revision)
                except ClusterStoreError as exc:  # the read that follows says whether etcd is there
                    event(log, logging.DEBUG, "cluster_watch_ended", error=exc)
                except Exception as exc:
                    event(log, logging.ERROR, "cluster_converge_failed", error=exc)
                    self._stop.wait(self.retry)
        finally:
            self.store.unfollow()
            ledger.close()

    def _read(self, ledger: Ledger) -> int:
        """Read every hold, converge; the revision read at."""
        kvs, revision = self.store.client.range(self.store.prefix)
        self.store.follow(kvs)  # the copy a hold's compare-and-swap starts from
        self._records = {}
        for kv in kvs:
            self._decode_into(kv.key, kv)
        self.revision = revision
        if not self.up:
            event(log, logging.INFO, "cluster_store_up", endpoint=self.store.client.endpoint, revision=revision)
        self.up = True
        self._reported_down = False
        self.metrics.up.set(1)
        self.metrics.synced.set(self.clock())
        self._converge(ledger, time.monotonic(), time.thread_time())
        return revision

    def _follow(self, ledger: Ledger, revision: int) -> None:
        for batch in self.store.client.watch(self.store.prefix, revision + 1, idle_timeout=self.idle_timeout):
            if self._stop.is_set():
                return
            self.metrics.synced.set(self.clock())
            if not batch:
                continue
            received, cpu = time.monotonic(), time.thread_time()
            for ev in batch:
                self.store.seen(ev.kv, deleted=ev.kind == "delete")
                self.revision = max(self.revision, ev.kv.mod_revision)
                if ev.kind == "delete":
                    self._records.pop(ev.kv.key, None)
                else:
                    self._decode_into(ev.kv.key, ev.kv)
            self._converge(ledger, received, cpu)

    def _decode_into(self, key: str, kv: KeyValue) -> None:
        try:
            self._records[key] = self.store.decode(kv)
        except ClusterStoreError as exc:  # not ours, or damaged: the others still count
            self._records.pop(key, None)
            event(log, logging.WARNING, "cluster_record_skipped", key=key, error=exc)

    def _converge(self, ledger: Ledger, received: float, cpu: float) -> None:
        """Converge to the records; ``received``: when the change arrived (monotonic), ``cpu``: this thread's CPU then."""
        records = [hold for holds in self._records.values() for hold in holds]
        # When this director wrote holds after what the watch has seen (its API, meanwhile), converging
        # now would undo them until their own event arrives, which the watch delivers next: skipped.
        outcomes = self.actions.converge_cluster(ledger, records, behind=lambda: self.revision < self.store.written)
        if outcomes is None:
            return
        now = self.clock()
        written = [o for o in outcomes if o.result == Result.APPLIED]
        if written:
            seconds = time.monotonic() - received
            self.metrics.apply.set(seconds)
            event(  # where the time went: this thread's CPU, the wait for the action lock, the rest waiting to run
                log,
                logging.INFO,
                "cluster_applied",
                written=len(written),
                seconds=round(seconds, 4),
                cpu=round(time.thread_time() - cpu, 4),
                lock_wait=round(self.actions.lock_waited, 4),
            )
            taken = {(o.target, o.action) for o in written}
            ats = [r.at for r in records if (Target(r.service, r.real_server), r.action) in taken]
            if ats:
                self.metrics.lag.set(max(0.0, now - max(ats)))
        for outcome in outcomes:
            if outcome.result != Result.NOOP:
                event(
                    log,
                    logging.WARNING if outcome.result == Result.REFUSED else logging.INFO,
                    "cluster_converge",
                    result=outcome.result,
                    target=outcome.target,
                    message=outcome.message,
                )
        out = {b.target for b in ledger.backends() if b.state == BackendState.OUT}
        self.pending = sum(1 for r in records if r.action != DELETE and Target(r.service, r.real_server) not in out)
        self.metrics.pending.set(self.pending)
        self.converged.set()
        self.announce_soon.set()

    def _down(self, exc: ClusterStoreError) -> None:
        if self.up or not self._reported_down:  # once per outage (and the first failure after a start)
            event(log, logging.WARNING, "cluster_store_down", error=exc, keeping="the last known state")
        self._reported_down = True
        self.store.unfollow()
        self.up = False
        self.metrics.up.set(0)
