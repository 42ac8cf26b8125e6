"""The cluster's table watch (``table.source: cluster``): this director applies the cluster's desired table.

One thread reads the table's manifest and the chunks it names
(``lvsguard.cluster.table``: only the chunks this director does not hold
already), and once the whole table is there and checked, applies it
through the table reconciler (``Actions.apply_cluster_table``: the same plan,
holds winning, prune policy, drains before deletes, edits in place, only the
services that changed), then watches the manifest and applies each new revision.
Every record applied is cached in the ledger: at start, before etcd is asked,
the cached table is the desired one (``JobRunner.begin``), so a director that
reboots while etcd is out of reach still builds its table. While etcd cannot
be reached the director keeps what it has and reads again every ``retry``
seconds; when it answers, one read brings the newest revision. A manifest
that is deleted, or names a chunk that is missing or not valid, is logged and
the last table applied stays: a director never applies half a table.

Metrics (registered only with ``table.source: cluster``):

- ``lvsguard_cluster_table_revision``: the revision of the cluster's table this
  director's kernel has applied (0: none yet);
- ``lvsguard_cluster_table_lag_seconds``: the last revision applied, from its
  write (the writer's clock) to this director's kernel written;
- ``lvsguard_cluster_table_pending_services``: services the last apply left
  unfinished here (an entry the kernel refused, a drain waiting).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from lvsguard.actuator.actions import Actions, Actor, Source
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.worker import Worker
from lvsguard.cluster.etcd import KeyValue
from lvsguard.cluster.table import TableRecord, TableStore
from lvsguard.errors import ClusterStoreError, TableRefused
from lvsguard.logs import event

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 5.0  # seconds a watch may stay silent before the manifest is read again
RETRY = 1.0  # seconds between two reads while etcd cannot be reached


class TableMetrics:
    def __init__(self, registry: CollectorRegistry, actions: Actions):
        self.revision = Gauge(
            "lvsguard_cluster_table_revision",
            "Revision of the cluster's desired table applied to this director's kernel (0: none yet).",
            registry=registry,
        )
        self.lag = Gauge(
            "lvsguard_cluster_table_lag_seconds",
            "Last revision of the cluster's table applied: seconds from its write to this director's kernel written.",
            registry=registry,
        )
        pending = Gauge(
            "lvsguard_cluster_table_pending_services",
            "Services of the cluster's table that the last apply left unfinished here (refused, draining).",
            registry=registry,
        )
        pending.set_function(lambda: len(actions.table.pending))


class TableSync(Worker):
    """The table watch of one actuator: ``start()`` with the cluster watch, ``stop()`` at exit."""

    thread_name = "lvsguard-cluster-table"

    def __init__(
        self,
        actions: Actions,
        ledger_path: str,
        store: TableStore,
        metrics: TableMetrics,
        *,
        applied: threading.Event | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        retry: float = RETRY,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__()
        self.actions = actions
        self.ledger_path = ledger_path
        self.store = store
        self.metrics = metrics
        self.applied = applied or threading.Event()
        """Set after each revision applied (the fleet announcer's cue)."""
        self.idle_timeout = idle_timeout
        self.retry = retry
        self.clock = clock
        self._reported_down = False

    def start(self) -> None:
        self.show(self.actions.cluster_table)  # the cached one, applied at start
        super().start()

    def show(self, record: TableRecord | None) -> None:
        self.metrics.revision.set(record.revision if record is not None else 0)

    def _run(self) -> None:
        ledger = Ledger.open(self.ledger_path, clock=self.actions.clock, create=False)
        try:
            while not self._stop.is_set():
                try:
                    revision = self._read(ledger)
                    self._follow(ledger, revision)
                except ClusterStoreError as exc:
                    if not self._reported_down:
                        event(log, logging.WARNING, "cluster_table_unreachable", error=exc, keeping="the table applied")
                        self._reported_down = True
                    self._stop.wait(self.retry)
                except Exception as exc:  # a failed apply must not end the watch: logged, read again
                    event(log, logging.ERROR, "cluster_table_failed", error=exc)
                    self._stop.wait(self.retry)
        finally:
            ledger.close()

    def _read(self, ledger: Ledger) -> int:
        """Read the manifest and apply its table when it is new; the revision read at."""
        kvs, revision = self.store.client.range(self.store.key, exact=True)
        self._reported_down = False
        if kvs:
            self._take(ledger, kvs[0], revision)
        return revision

    def _follow(self, ledger: Ledger, revision: int) -> None:
        watch = self.store.client.watch(self.store.key, revision + 1, idle_timeout=self.idle_timeout, exact=True)
        for batch in watch:
            if self._stop.is_set():
                return
            mine = [ev for ev in batch if ev.kv.key == self.store.key]
            if not mine:
                continue
            last = mine[-1]
            if last.kind == "delete":
                event(log, logging.WARNING, "cluster_table_deleted", key=self.store.key, keeping="the table applied")
                continue
            self._take(ledger, last.kv, last.kv.mod_revision)

    def _take(self, ledger: Ledger, kv: KeyValue, revision: int) -> None:
        """Apply the table of manifest ``kv`` once all of it is fetched (its chunks read at ``revision``).

        The chunks of the table applied are not fetched again, nor its
        services parsed again. A table that
        is not valid (a chunk missing or not matching its hash, a bad entry)
        is logged and the last one applied stays; etcd out of reach raises
        ClusterStoreError (the loop reads again).
        """
        current = self.actions.cluster_table
        if current is not None and current.revision == kv.mod_revision and current.manifest.text == kv.value:
            return  # applied already (at start, from the cache)
        try:
            record = self.store.fetch(kv, revision, held=current)
        except TableRefused as exc:
            event(
                log,
                logging.ERROR,
                "cluster_table_refused",
                revision=kv.mod_revision,
                error=exc,
                keeping="the table applied",
            )
            return
        actor = Actor(Source.CLUSTER, f"table revision {record.revision} by {record.by or 'unknown'}")
        outcome = self.actions.apply_cluster_table(ledger, record, actor)
        if record.at:
            self.metrics.lag.set(max(0.0, self.clock() - record.at))
        self.show(record)
        event(
            log,
            logging.WARNING if outcome.failures else logging.INFO,
            "cluster_table_applied",
            revision=record.revision,
            by=record.by,
            result=outcome.outcome,
            message=outcome.message,
        )
        self.applied.set()
