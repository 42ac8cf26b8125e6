"""One fake kernel for the unit tests of pure logic (seesaw's dummy IPVS, httpx's MockTransport).

:class:`FakeKernel` implements the protocol of ``lvsguard.ipvs.netlink.NetlinkIPVS``
over plain model data, with the same typed errors. Tests set what the kernel
would show (active connections, a weight changed by hand) through its knobs;
kernel behaviour itself is tested against the real kernel in tests/integration.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Iterable

from lvsguard.errors import AlreadyExists, KernelError, NoSuchDestination, NoSuchService
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, SyncDaemon, Table, VirtualService


class FakeKernel:
    """An in-memory IPVS table behind the NetlinkIPVS interface."""

    source = "fake"

    def __init__(self, services: Iterable[VirtualService] = ()):
        self._services: dict[ServiceKey, VirtualService] = {svc.key: svc for svc in services}
        self._daemons: dict[str, SyncDaemon] = {}
        self._lock = threading.Lock()
        self.writes: list[tuple[str, str, str, int | None]] = []
        """Every successful write: (operation, service, real server, weight)."""
        self.fail_writes: KernelError | None = None
        """When set, every write raises it (a kernel that refuses)."""
        self.fail_reads: KernelError | None = None
        """When set, every read raises it (IPVS unavailable)."""

    # reads

    def read(self) -> Table:
        self._check_read()
        with self._lock:
            return Table(tuple(self._services.values()), sync_daemons=tuple(self._daemons.values()), source=self.source)

    def read_service(self, key: ServiceKey) -> VirtualService:
        self._check_read()
        with self._lock:
            try:
                return self._services[key]
            except KeyError:
                raise NoSuchService("no such service", service=key) from None

    def sync_daemons(self) -> tuple[SyncDaemon, ...]:
        self._check_read()
        return tuple(self._daemons.values())

    # writes

    def add_service(self, svc: VirtualService) -> None:
        with self._lock:
            self._check_write()
            if svc.key in self._services:
                raise AlreadyExists("service already exists", service=svc.key)
            self._services[svc.key] = svc
            self.writes.append(("add_service", str(svc.key), "", None))

    def edit_service(self, svc: VirtualService) -> None:
        with self._lock:
            old = self._service(svc.key)
            self._services[svc.key] = replace(svc, real_servers=old.real_servers)
            self.writes.append(("edit_service", str(svc.key), "", None))

    def delete_service(self, key: ServiceKey) -> None:
        with self._lock:
            self._service(key)
            del self._services[key]
            self.writes.append(("delete_service", str(key), "", None))

    def add_real_server(self, service: ServiceKey, rs: RealServer) -> None:
        with self._lock:
            svc = self._service(service)
            if svc.real_server(rs.key) is not None:
                raise AlreadyExists("already exists", service=service, real_server=rs.key)
            self._services[service] = replace(svc, real_servers=svc.real_servers + (rs,))
            self.writes.append(("add_real_server", str(service), str(rs.key), rs.weight))

    def add_real_servers(self, service: ServiceKey, servers: Iterable[RealServer]) -> int:
        count = 0
        for rs in servers:
            self.add_real_server(service, rs)
            count += 1
        return count

    def edit_real_server(self, service: ServiceKey, rs: RealServer) -> None:
        with self._lock:
            self._replace(service, rs.key, lambda old: replace(old, weight=rs.weight, forward=rs.forward,
                                                                 upper_threshold=rs.upper_threshold,
                                                                 lower_threshold=rs.lower_threshold))  # fmt: skip
            self.writes.append(("edit_real_server", str(service), str(rs.key), rs.weight))

    def delete_real_server(self, service: ServiceKey, key: RealServerKey) -> None:
        with self._lock:
            svc = self._service(service)
            if svc.real_server(key) is None:
                raise NoSuchDestination("no such destination", service=service, real_server=key)
            self._services[service] = replace(svc, real_servers=tuple(r for r in svc.real_servers if r.key != key))
            self.writes.append(("delete_real_server", str(service), str(key), None))

    def set_weight(self, service: ServiceKey, key: RealServerKey, weight: int) -> RealServer:
        with self._lock:
            new = self._replace(service, key, lambda old: replace(old, weight=weight))
            self.writes.append(("set_weight", str(service), str(key), weight))
            return new

    def start_sync_daemon(self, daemon: SyncDaemon) -> None:
        with self._lock:
            self._check_write()
            self._daemons[daemon.role] = daemon

    def stop_sync_daemon(self, role: str) -> None:
        with self._lock:
            self._check_write()
            self._daemons.pop(role, None)

    def flush(self) -> None:
        with self._lock:
            self._check_write()
            self._services.clear()

    def close(self) -> None:
        return None

    # knobs for tests: what the kernel would show without the actuator's doing

    def set_connections(self, service: ServiceKey, key: RealServerKey, active: int, inactive: int = 0) -> None:
        with self._lock:
            self._replace(service, key, lambda old: replace(old, active_connections=active, inactive_connections=inactive),
                          write=False)  # fmt: skip

    def set_weight_by_hand(self, service: ServiceKey, key: RealServerKey, weight: int) -> None:
        """An operator's ``ipvsadm -e ... -w N``: not recorded in ``writes``."""
        with self._lock:
            self._replace(service, key, lambda old: replace(old, weight=weight), write=False)

    def weight(self, service: ServiceKey, key: RealServerKey) -> int:
        rs = self._services[service].real_server(key)
        assert rs is not None, f"{key} not in {service}"
        return rs.weight

    # internals

    def _check_read(self) -> None:
        if self.fail_reads is not None:
            raise self.fail_reads

    def _check_write(self) -> None:
        if self.fail_writes is not None:
            raise self.fail_writes

    def _service(self, key: ServiceKey) -> VirtualService:
        self._check_write()
        try:
            return self._services[key]
        except KeyError:
            raise NoSuchService("no such service", service=key) from None

    def _replace(self, service: ServiceKey, key: RealServerKey, change, *, write: bool = True) -> RealServer:  # type: ignore[no-untyped-def]
        svc = self._service(service) if write else self._services[service]
        old = svc.real_server(key)
        if old is None:
            raise NoSuchDestination("no such destination", service=service, real_server=key)
        new: RealServer = change(old)
        self._services[service] = replace(svc, real_servers=tuple(new if r.key == key else r for r in svc.real_servers))
        return new


def service(text: str = "TCP 192.0.2.10:80", *servers: tuple[str, int], scheduler: str = "wrr") -> VirtualService:
    """``service("TCP 192.0.2.10:80", ("10.0.1.1:80", 5), ...)``: a service with NAT real servers."""
    key = ServiceKey.parse(text)
    return VirtualService(
        key, scheduler, real_servers=tuple(RealServer(RealServerKey.parse(a), w, Forward.MASQ) for a, w in servers)
    )


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
