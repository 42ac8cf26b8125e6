"""Background work of the actuator: job threads and the retry loop.

Each drain or slow-start job runs in its own thread with its own ledger
connection, calling ``Actions.step_job`` every ``job_poll_interval`` seconds
until the job ends; the step is the unit of work, so tests drive it directly
and a restarted actuator resumes a job by starting its thread again. One more
thread, every ``retry_interval`` seconds, compares the ledger with the kernel
(a weight changed by hand is reported once, never overwritten), retries the
alert actions that the safety rules refused, and, with ``table.manage``, the
table entries the kernel refused and the drains of real servers that left the
config; and every ``table.drift_interval``, the managed entries changed by hand
(``actuator.actions.drift``). At start, the table is applied before the ledger is compared with the
kernel: after a reboot, the held real servers are back (at weight 0) before
the ledger looks for them.

Threads start only after :meth:`JobRunner.begin` (``serve`` calls it): an app
built for a test records new jobs and runs nothing behind the test's back.
"""

from __future__ import annotations

import logging
import threading

from lvsguard.actuator.actions import Actions, Actor, Outcome, Result, Source
from lvsguard.actuator.cluster import ClusterSync
from lvsguard.actuator.clustertable import TableSync
from lvsguard.actuator.drains import DrainWorker
from lvsguard.actuator.fleet import Announcer
from lvsguard.actuator.ledger import Ledger
from lvsguard.logs import event

log = logging.getLogger(__name__)


class JobRunner:
    """Starts job threads (once running) and the retry loop."""

    def __init__(self, actions: Actions, ledger_path: str):
        self.actions = actions
        self.ledger_path = ledger_path
        self.queued: list[int] = []
        self._running = False
        self._stop = threading.Event()
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self.cluster: ClusterSync | None = None
        """The cluster watch (``cluster.store: etcd``), started last by ``begin``."""
        self.fleet: Announcer | None = None
        """This director's announcements to the fleet view (``cluster.store: etcd``), started with the watch."""
        self.table: TableSync | None = None
        """The cluster's table watch (``table.source: cluster``), started with the cluster watch."""
        self.drains: DrainWorker | None = None
        """The cluster's drain jobs: claimed, decided and ended (``cluster.store: etcd``), started with the watch."""
        actions.on_new_job(self.start)

    def start(self, job_id: int) -> None:
        """Run a job in its own thread (before ``begin``: remember it)."""
        with self._lock:
            if not self._running:
                self.queued.append(job_id)
                return
            current = self._threads.get(job_id)
            if current is not None and current.is_alive():
                return
            thread = threading.Thread(target=self._run_job, args=(job_id,), name=f"lvsguard-job-{job_id}", daemon=True)
            self._threads[job_id] = thread
        thread.start()

    def begin(self) -> None:
        """Reconcile the ledger with the kernel, resume open jobs, start the retry loop."""
        ledger = Ledger.open(self.ledger_path, clock=self.actions.clock)
        try:
            self.actions.load_cached_cluster_table(ledger)  # table.source: cluster: the table last applied
            if self.actions.settings.table.manage:  # first: after a reboot the held real servers must be there
                self.actions.apply_table(ledger, Actor(Source.ACTUATOR, "start"), whole=True)
            for outcome in self.actions.reconcile(ledger):
                event(
                    log,
                    logging.WARNING if outcome.result == Result.DRIFT else logging.INFO,
                    "reconcile",
                    result=outcome.result,
                    target=outcome.target,
                    message=outcome.message,
                )
            open_jobs = [job.id for job in ledger.open_jobs()]
        finally:
            ledger.close()
        with self._lock:
            self._running = True
            pending, self.queued = self.queued, []
        for job_id in [*open_jobs, *pending]:
            self.start(job_id)
        threading.Thread(target=self._retry_loop, name="lvsguard-retry", daemon=True).start()
        if self.cluster is not None:
            self.cluster.start()
        if self.table is not None:
            self.table.start()
        if self.fleet is not None:
            self.fleet.start()
        if self.drains is not None:
            self.drains.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self.drains is not None:
            self.drains.stop(timeout)
        if self.fleet is not None:
            self.fleet.stop(timeout)
        if self.table is not None:
            self.table.stop(timeout)
        if self.cluster is not None:
            self.cluster.stop(timeout)
        for thread in list(self._threads.values()):
            thread.join(timeout)

    def _run_job(self, job_id: int) -> None:
        ledger = Ledger.open(self.ledger_path, clock=self.actions.clock, create=False)
        try:
            while not self._stop.is_set():
                try:
                    if self.actions.step_job(ledger, job_id):
                        break
                except Exception as exc:  # a kernel hiccup must not kill the job: log, retry next step
                    event(log, logging.ERROR, "job_step_failed", job=job_id, error=exc)
                self._stop.wait(self.actions.settings.job_poll_interval)
        finally:
            ledger.close()

    def _retry_loop(self) -> None:
        ledger = Ledger.open(self.ledger_path, clock=self.actions.clock, create=False)
        try:
            while not self._stop.wait(self.actions.settings.retry_interval):
                try:
                    for outcome in self.actions.reconcile(ledger, cached=True):  # a weight changed by hand: once
                        _log_outcome(logging.WARNING, "reconcile", outcome)
                    self.actions.retry_table(ledger, Actor(Source.ACTUATOR, "retry"))
                    self.actions.check_drift(ledger, Actor(Source.ACTUATOR, "drift"))  # every table.drift_interval
                    if self.cluster is not None and self.cluster.up:  # what shared alerts queued while etcd was away
                        for outcome in self.actions.share_queued(ledger):
                            _log_outcome(logging.INFO, "cluster_share", outcome)
                    for outcome in self.actions.retry_pending(ledger, cached=True):
                        if outcome.result != Result.REFUSED:
                            _log_outcome(logging.INFO, "retry", outcome)
                except Exception as exc:  # the loop outlives a failed round; the reason is logged
                    event(log, logging.ERROR, "retry_failed", error=exc)
        finally:
            ledger.close()


def _log_outcome(level: int, name: str, outcome: Outcome) -> None:
    event(log, level, name, result=outcome.result, target=outcome.target, message=outcome.message)
