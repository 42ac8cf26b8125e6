"""This director in the fleet view (``cluster.store: etcd``; docs/cluster.md, "The fleet").

``Announcer`` is one thread beside the cluster watch: every ``INTERVAL``
seconds, and at once after each convergence of the watch, it keeps this
director's status in etcd (``lvsguard.cluster.fleet``): its VRRP role, the
VIPs it holds, the cluster holds its kernel has applied and those it has not,
its table drift, its exporter's and etcd's state. ``confirm`` is what an
operator's action waits for before it answers: every director's status
showing the hold applied (or released), for at most ``CONFIRM_TIMEOUT``
seconds, so that the reply says, director by director, where the action
took effect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from lvsguard.actuator.actions import Actions
from lvsguard.actuator.cluster import ClusterSync
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.states import BackendState, Confirmed, Source
from lvsguard.actuator.targets import Target
from lvsguard.actuator.worker import Worker
from lvsguard.cluster.fleet import INTERVAL, DirectorStatus, Fleet, FleetView
from lvsguard.errors import ClusterStoreError
from lvsguard.logs import event

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 3.0  # seconds an operator's action waits for every director to show it
CONFIRM_POLL = 0.05
VIP_REFRESH = 30.0  # seconds between two reads of the table's service addresses, when nothing else says them


class Announcer(Worker):
    """Puts this director's status into etcd; ``start()`` with the cluster watch, ``stop()`` at exit."""

    thread_name = "lvsguard-fleet"

    def __init__(
        self,
        fleet: Fleet,
        sync: ClusterSync,
        actions: Actions,
        ledger_path: str,
        *,
        role: Callable[[], str],
        exporter: Callable[[], str],
        addresses: Callable[[], set[str]],
        advertise: str = "",
        interval: float = INTERVAL,
        draining: Callable[[Ledger], tuple[tuple[str, int], ...]] = lambda ledger: (),
    ):
        super().__init__()
        self.fleet = fleet
        self.sync = sync
        self.actions = actions
        self.ledger_path = ledger_path
        self.role = role
        self.exporter = exporter
        self.addresses = addresses
        self.advertise = advertise
        self.interval = interval
        self.draining = draining
        self.director = fleet.config.director_name
        self._service_addresses: set[str] = set()
        self._addresses_read = -VIP_REFRESH

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        try:
            self.fleet.withdraw(self.director)  # a clean stop leaves the view at once, not after the lease
        except ClusterStoreError:
            pass

    def _wake(self) -> None:
        self.sync.announce_soon.set()  # it waits on this between two looks

    def status(self, ledger: Ledger) -> DirectorStatus:
        """This director now, as the fleet view shows it."""
        out = {b.target for b in ledger.backends() if b.state == BackendState.OUT}
        table = self.actions.cluster_table
        deletions = self.sync.deletions()
        present = self.actions.active_connections(Target(d.service, d.real_server) for d in deletions)
        applied = tuple(
            sorted(
                {
                    (str(h.target.service), str(h.target.real_server), h.holder)
                    for h in ledger.active_holds()
                    if h.source == Source.CLUSTER and h.target in out
                }
                | {  # a deletion is applied where the real server is gone
                    (str(d.service), str(d.real_server), d.holder)
                    for d in deletions
                    if Target(d.service, d.real_server) not in present
                }
            )
        )
        return DirectorStatus(
            director=self.director,
            role=self.role(),
            vips=tuple(sorted(self._vips())),
            actuator_url=self.advertise,
            store_up=self.sync.up,
            exporter=self.exporter(),
            applied=applied,
            pending=self.sync.pending,
            drift=len(self.actions.table.drift),
            draining=self.draining(ledger),
            at=self.fleet.clock(),
            table_source=self.actions.settings.table.source,
            table_revision=table.revision if table is not None else 0,
            table_pending=len(self.actions.table.pending),
        )

    def _vips(self) -> set[str]:
        """Service addresses that are addresses of this director.

        The services are the config's table and those the action layer's
        sessions read (``Actions.service_keys``), not a read of the kernel's
        table of its own: a dump of a big table every ``VIP_REFRESH`` seconds
        held the interpreter long enough to delay the cluster watch's kernel
        writes (its p99). Only when neither knows a service (no table in the
        config, no action yet) is the table read, every ``VIP_REFRESH`` seconds.
        """
        keys = self.actions.service_keys()
        if keys:
            return {key.address for key in keys if key.address} & self.addresses()
        now = time.monotonic()
        if now - self._addresses_read >= VIP_REFRESH:
            self._service_addresses = {svc.key.address for svc in self.actions.read_table().services if svc.key.address}
            self._addresses_read = now
        return self._service_addresses & self.addresses()

    def _run(self) -> None:
        ledger = Ledger.open(self.ledger_path, clock=self.actions.clock, create=False)
        try:
            while not self._stop.is_set():
                self.sync.announce_soon.clear()
                try:
                    self.fleet.announce(self.status(ledger))
                except ClusterStoreError:
                    pass  # the cluster watch reports the outage (cluster_store_down) and the metric says it
                except Exception as exc:  # a failed round must not end the announcements
                    event(log, logging.ERROR, "fleet_announce_failed", error=exc)
                self.sync.announce_soon.wait(self.interval)
        finally:
            ledger.close()


def confirm(
    fleet: Fleet, target: Target, holder: str | None, *, timeout: float = CONFIRM_TIMEOUT
) -> dict[str, Confirmed]:
    """Director -> ``applied``, ``pending`` or ``stale``: where an operator's cluster action took effect.

    ``holder`` is the cluster hold just taken; None for a restore (applied
    where no cluster hold of the real server is left). Waits until every
    fresh director shows it, or ``timeout`` seconds; a director whose last
    announcement is stale is not waited for.
    """
    return confirm_many(fleet, [(target, holder)], timeout=timeout)


def confirm_many(
    fleet: Fleet, items: Sequence[tuple[Target, str | None]], *, timeout: float = CONFIRM_TIMEOUT
) -> dict[str, Confirmed]:
    """``confirm`` for many actions at once (a bulk action): ``applied`` where every one of them shows."""
    wanted = [(str(t.service), str(t.real_server), holder) for t, holder in items]
    deadline = time.monotonic() + timeout
    while True:
        try:
            view = fleet.view(serializable=True)
        except ClusterStoreError:
            return {}
        result = {d.director: _state(view, d, wanted) for d in view.directors}
        if Confirmed.PENDING not in result.values() or time.monotonic() >= deadline:
            return result
        time.sleep(CONFIRM_POLL)


def _state(view: FleetView, d: DirectorStatus, wanted: list[tuple[str, str, str | None]]) -> Confirmed:
    if view.stale(d):
        return Confirmed.STALE
    applied = set(d.applied)
    held = {(s, r) for s, r, _h in d.applied}
    for service, real_server, holder in wanted:
        done = (service, real_server, holder) in applied if holder is not None else (service, real_server) not in held
        if not done:
            return Confirmed.PENDING
    return Confirmed.APPLIED
