"""Cluster-wide drain jobs on this director (``cluster.store: etcd``; docs/cluster.md, "Drains").

``DrainWorker`` is one thread beside the cluster watch. Every ``INTERVAL``
seconds it renews this director's drain lease and reads the cluster's drain
jobs (``lvsguard.cluster.drains``); then:

- a running job that has no owner (its owner's lease expired: it died, or
  lost etcd longer than the TTL) is claimed, in a transaction only one
  director wins; the winner carries on with the job's own deadline;
- a running job this director owns is decided from the fleet records: when
  every announced director reports 0 active connections to the real server
  (with its weight 0 applied), the drain is done, and a drain with ``delete``
  becomes a deletion in the cluster's holds (quorum checked, compare-and-swap)
  that every director applies; at the deadline it times out and the real
  server stays held at weight 0.

The jobs it read are also what this director reports in its fleet record
(``draining``: the active connections here) and what the ledger's mirror job
of each drain follows (``Actions.cluster_drain``).
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Gauge

from lvsguard.actuator.actions import Actions
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.states import BackendState
from lvsguard.actuator.targets import Target
from lvsguard.actuator.worker import Worker
from lvsguard.cluster.drains import DrainJob, DrainStore, DrainsView
from lvsguard.cluster.fleet import Fleet, FleetView
from lvsguard.cluster.records import HoldStore
from lvsguard.errors import ClusterStoreError, PolicyRefused
from lvsguard.logs import event

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between two looks at the cluster's drain jobs


class DrainMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.running = Gauge(
            "lvsguard_cluster_drains_running",
            "Drain jobs of the cluster still running (every director's), as this director last read them.",
            registry=registry,
        )
        self.owned = Gauge(
            "lvsguard_cluster_drains_owned",
            "Running drain jobs of the cluster that this director owns (decides and ends).",
            registry=registry,
        )


class DrainWorker(Worker):
    """Claims, decides and ends the cluster's drain jobs; ``start()`` with the cluster watch, ``stop()`` at exit."""

    thread_name = "lvsguard-drains"

    def __init__(
        self,
        store: DrainStore,
        holds: HoldStore,
        fleet: Fleet,
        actions: Actions,
        ledger_path: str,
        metrics: DrainMetrics,
        *,
        interval: float = INTERVAL,
    ):
        super().__init__()
        self.store = store
        self.holds = holds
        self.fleet = fleet
        self.actions = actions
        self.ledger_path = ledger_path
        self.metrics = metrics
        self.interval = interval
        self.director = store.director
        self.view = DrainsView()  # the last read (the announcer's and the mirror jobs' source)
        self.read_once = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        try:
            self.store.revoke()  # a clean stop hands its drains over at once, not after the lease's TTL
        except ClusterStoreError:
            pass

    def job(self, name: str) -> DrainJob | None:
        """The cluster's drain job ``name`` as last read; None when unknown."""
        return self.view.job(name)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except ClusterStoreError as exc:  # the cluster watch reports the outage; the jobs wait
                event(log, logging.DEBUG, "cluster_drains_unreachable", error=exc)
            except Exception as exc:  # a failed round must not end the thread
                event(log, logging.ERROR, "cluster_drains_failed", error=exc)
            self._stop.wait(self.interval)

    def round(self) -> None:
        """One look: claim the ownerless running jobs, decide the owned ones."""
        self.store.lease()
        view = self.store.view()
        self.view = view
        self.read_once.set()
        running = [j for j in view.jobs if j.running]
        owned = 0
        fleet: FleetView | None = None  # read once per round, when some job is this director's
        for job in running:
            owner = view.owners.get(job.id)
            if owner is None:
                if not self.store.claim(job):
                    continue
                event(
                    log,
                    logging.WARNING,
                    "cluster_drain_taken_over",
                    job=job.id,
                    previous=job.owners[-1] if job.owners else "-",
                    deadline=job.deadline,
                )
                job = self.store.get(job.id) or job
            elif owner != self.director:
                continue
            owned += 1
            fleet = fleet or self.fleet.view(serializable=True)
            self.decide(job, fleet)
        self.metrics.running.set(len(running))
        self.metrics.owned.set(owned)

    def decide(self, job: DrainJob, fleet: FleetView) -> None:
        """End an owned job when every director drained it (or at its deadline); else leave it running."""
        active = {d.director: dict(d.draining).get(job.id) for d in fleet.directors}
        waiting = {name: n for name, n in active.items() if n != 0}
        if active and not waiting:
            names = ", ".join(sorted(active))
            if job.delete:
                self._delete(job, names)
            else:
                self._end(job, "done", f"{job.real_server} drained: 0 active connections on {names}")
            return
        if self.store.clock() >= job.deadline:
            left = ", ".join(f"{name}: {'not applied' if n is None else n}" for name, n in sorted(waiting.items()))
            self._end(
                job,
                "timeout",
                f"{job.real_server}: active connections left after {job.timeout:g} s ({left}); it stays at weight 0",
            )

    def _end(self, job: DrainJob, state: str, message: str) -> None:
        if self.store.finish(job, state, message):
            event(log, logging.INFO, "cluster_drain_ended", job=job.id, state=state, message=message)

    def _delete(self, job: DrainJob, names: str) -> None:
        target = Target(job.service, job.real_server)
        message = f"{job.real_server} drained on {names} and deleted"
        done = self.store.finish_ops(job, "done", message)
        try:
            ok = self.holds.delete_drained(
                job.service,
                job.real_server,
                check=self.actions.removal_check(target),
                compare=self.store.owned(job),
                also=done,
            )
        except PolicyRefused as exc:
            self._end(job, "failed", f"drained, not deleted: {exc}")
            return
        if ok:
            event(log, logging.INFO, "cluster_drain_ended", job=job.id, state="done", message=message)

    def report(self, ledger: Ledger) -> tuple[tuple[str, int], ...]:
        """(job, active connections here) for every running drain whose weight 0 this director has applied."""
        running = [j for j in self.view.jobs if j.running]
        if not running:
            return ()
        out = {b.target for b in ledger.backends() if b.state == BackendState.OUT}
        active = self.actions.active_connections([Target(j.service, j.real_server) for j in running])
        found = []
        for job in running:
            target = Target(job.service, job.real_server)
            n = active.get(target)
            if n is None:
                found.append((job.id, 0))  # not in this kernel: nothing to drain here
            elif target in out:
                found.append((job.id, n))
        return tuple(sorted(found))
