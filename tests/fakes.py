"""One fake kernel for the unit tests of pure logic (seesaw's dummy IPVS, httpx's MockTransport).

:class:`FakeKernel` implements the protocol of ``lvsguard.ipvs.netlink.NetlinkIPVS``
over plain model data, with the same typed errors. Tests set what the kernel
would show (active connections, a weight changed by hand) through its knobs;
kernel behaviour itself is tested against the real kernel in tests/integration.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from lvsguard.errors import AlreadyExists, BulkFailed, InvalidRequest, KernelError, NoSuchDestination, NoSuchService
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, SyncDaemon, Table, VirtualService

T = TypeVar("T")

if TYPE_CHECKING:
    from flask import Flask

    from lvsguard.actuator.settings import ActuatorSettings


class FakeKernel:
    """An in-memory IPVS table behind the NetlinkIPVS interface."""

    source = "fake"

    def __init__(self, services: Iterable[VirtualService] = ()):
        self._services: dict[ServiceKey, VirtualService] = {}
        self._servers: dict[ServiceKey, dict[RealServerKey, RealServer]] = {}
        for svc in services:
            self._services[svc.key] = replace(svc, real_servers=())
            self._servers[svc.key] = {rs.key: rs for rs in svc.real_servers}
        self._daemons: dict[str, SyncDaemon] = {}
        self._lock = threading.Lock()
        self.writes: list[tuple[str, str, str, int | None]] = []
        """Every successful write: (operation, service, real server, weight)."""
        self.fail_writes: KernelError | None = None
        """When set, every write raises it (a kernel that refuses)."""
        self.fail_reads: KernelError | None = None
        """When set, every read raises it (IPVS unavailable)."""
        self.missing_schedulers: set[str] = set()
        """Schedulers this kernel has no module for: a service using one is refused (as netlink's EINVAL)."""

    # reads

    def read(self) -> Table:
        self._check_read()
        with self._lock:
            services = tuple(self._build(key) for key in self._services)
            return Table(services, sync_daemons=tuple(self._daemons.values()), source=self.source)

    def read_service(self, key: ServiceKey) -> VirtualService:
        self._check_read()
        with self._lock:
            if key not in self._services:
                raise NoSuchService("no such service", service=key)
            return self._build(key)

    def read_real_servers(self, key: ServiceKey) -> tuple[RealServer, ...]:
        return self.read_service(key).real_servers

    def sync_daemons(self) -> tuple[SyncDaemon, ...]:
        self._check_read()
        return tuple(self._daemons.values())

    # writes

    def add_service(self, svc: VirtualService) -> None:
        with self._lock:
            self._check_write()
            if svc.key in self._services:
                raise AlreadyExists("service already exists", service=svc.key)
            self._check_scheduler(svc)
            self._services[svc.key] = replace(svc, real_servers=())
            self._servers[svc.key] = {rs.key: rs for rs in svc.real_servers}
            self.writes.append(("add_service", str(svc.key), "", None))

    def edit_service(self, svc: VirtualService) -> None:
        with self._lock:
            self._servers_of(svc.key)
            self._check_scheduler(svc)
            self._services[svc.key] = replace(svc, real_servers=())
            self.writes.append(("edit_service", str(svc.key), "", None))

    def delete_service(self, key: ServiceKey) -> None:
        with self._lock:
            self._servers_of(key)
            del self._services[key], self._servers[key]
            self.writes.append(("delete_service", str(key), "", None))

    def add_real_server(self, service: ServiceKey, rs: RealServer) -> None:
        with self._lock:
            servers = self._servers_of(service)
            if rs.key in servers:
                raise AlreadyExists("already exists", service=service, real_server=rs.key)
            servers[rs.key] = rs
            self.writes.append(("add_real_server", str(service), str(rs.key), rs.weight))

    def add_real_servers(self, service: ServiceKey, servers: Iterable[RealServer]) -> int:
        count = 0
        for rs in servers:
            self.add_real_server(service, rs)
            count += 1
        return count

    def add_services(self, services: Iterable[VirtualService]) -> int:
        """The pipelined form: each on its own, the failures in one BulkFailed (as netlink does)."""
        return self._each(services, self.add_service, "services not added")

    def add_real_servers_to(self, servers: Iterable[tuple[ServiceKey, RealServer]]) -> int:
        return self._each(servers, lambda pair: self.add_real_server(*pair), "real servers not added")

    def edit_real_servers_to(self, servers: Iterable[tuple[ServiceKey, RealServer]]) -> int:
        return self._each(servers, lambda pair: self.edit_real_server(*pair), "real servers not changed")

    @staticmethod
    def _each(items: Iterable[T], write: Callable[[T], None], what: str) -> int:
        failures: list[KernelError] = []
        count = 0
        for item in items:
            count += 1
            try:
                write(item)
            except KernelError as exc:
                failures.append(exc)
        if failures:
            raise BulkFailed(f"{len(failures)} of {count} {what}", failures)
        return count

    def edit_real_server(self, service: ServiceKey, rs: RealServer) -> None:
        """SET_DEST: every setting replaced; the counters stay the kernel's."""
        with self._lock:
            old = self._dest(service, rs.key)
            self._servers[service][rs.key] = replace(
                old,
                weight=rs.weight,
                forward=rs.forward,
                upper_threshold=rs.upper_threshold,
                lower_threshold=rs.lower_threshold,
                tunnel_type=rs.tunnel_type,
                tunnel_port=rs.tunnel_port,
                tunnel_flags=rs.tunnel_flags,
            )
            self.writes.append(("edit_real_server", str(service), str(rs.key), rs.weight))

    def edit_real_servers(self, service: ServiceKey, servers: Iterable[RealServer]) -> int:
        """The pipelined form: each edit on its own, the failures in one BulkFailed (as netlink does)."""
        failures: list[KernelError] = []
        count = 0
        for rs in servers:
            count += 1
            try:
                self.edit_real_server(service, rs)
            except KernelError as exc:
                failures.append(exc)
        if failures:
            raise BulkFailed(f"{len(failures)} of {count} real servers not changed", failures, service=service)
        return count

    def delete_real_server(self, service: ServiceKey, key: RealServerKey) -> None:
        with self._lock:
            self._dest(service, key)
            del self._servers[service][key]
            self.writes.append(("delete_real_server", str(service), str(key), None))

    def set_weight(self, service: ServiceKey, key: RealServerKey, weight: int) -> RealServer:
        with self._lock:
            new = replace(self._dest(service, key), weight=weight)
            self._servers[service][key] = new
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
            self._servers.clear()

    def close(self) -> None:
        return None

    # knobs for tests: what the kernel would show without the actuator's doing

    def set_connections(self, service: ServiceKey, key: RealServerKey, active: int, inactive: int = 0) -> None:
        with self._lock:
            old = self._servers[service][key]
            self._servers[service][key] = replace(old, active_connections=active, inactive_connections=inactive)

    def set_weight_by_hand(self, service: ServiceKey, key: RealServerKey, weight: int) -> None:
        """An operator's ``ipvsadm -e ... -w N``: not recorded in ``writes``."""
        with self._lock:
            self._servers[service][key] = replace(self._servers[service][key], weight=weight)

    def weight(self, service: ServiceKey, key: RealServerKey) -> int:
        return self._servers[service][key].weight

    # internals

    def _build(self, key: ServiceKey) -> VirtualService:
        return replace(self._services[key], real_servers=tuple(self._servers[key].values()))

    def _check_scheduler(self, svc: VirtualService) -> None:
        if svc.scheduler in self.missing_schedulers:
            raise InvalidRequest(f"no scheduler {svc.scheduler!r} in this kernel", service=svc.key)

    def _check_read(self) -> None:
        if self.fail_reads is not None:
            raise self.fail_reads

    def _check_write(self) -> None:
        if self.fail_writes is not None:
            raise self.fail_writes

    def _servers_of(self, key: ServiceKey) -> dict[RealServerKey, RealServer]:
        self._check_write()
        try:
            return self._servers[key]
        except KeyError:
            raise NoSuchService("no such service", service=key) from None

    def _dest(self, service: ServiceKey, key: RealServerKey) -> RealServer:
        try:
            return self._servers_of(service)[key]
        except KeyError:
            raise NoSuchDestination("no such destination", service=service, real_server=key) from None


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


def am_alert(
    fingerprint: str,
    *,
    status: str = "firing",
    service: str = "TCP 192.0.2.10:80",
    real_server: str = "10.0.1.1:80",
    **labels: str,
) -> dict[str, object]:
    """One alert as Alertmanager 0.25+ sends it, labelled like the exporter's ``ipvs_backend_*`` series."""
    svc = ServiceKey.parse(service)
    rs = RealServerKey.parse(real_server)
    exporter_labels = {
        "proto": svc.protocol,
        "local_address": svc.address,
        "local_port": str(svc.port),
        "local_mark": str(svc.fwmark) if svc.fwmark else "",
        "remote_address": rs.address,
        "remote_port": str(rs.port),
    }
    return {
        "status": status,
        "labels": {"alertname": "IPVSBackendDown", **exporter_labels, **labels},
        "annotations": {"summary": f"{rs} does not answer"},
        "startsAt": "2026-11-25T21:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-25T21:05:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=lvs_backend_healthy+%3D%3D+0",
        "fingerprint": fingerprint,
    }


def am_payload(*alerts: dict[str, object], status: str | None = None) -> dict[str, object]:
    """A version-4 webhook notification carrying ``alerts``."""
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="IPVSBackendDown"}',
        "truncatedAlerts": 0,
        "status": status or ("firing" if firing else "resolved"),
        "receiver": "lvsguard",
        "groupLabels": {"alertname": "IPVSBackendDown"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


_APP_KERNELS: weakref.WeakKeyDictionary[Flask, FakeKernel] = weakref.WeakKeyDictionary()


def fake_app(settings: ActuatorSettings, kernel: FakeKernel, ledger_path: str, **kwargs: Any) -> Flask:
    """``create_app`` on ``kernel``; :func:`kernel_of` gives it back (the app keeps its kernel to itself)."""
    from lvsguard.actuator.app import create_app

    app = create_app(settings, kernel=kernel, ledger_path=ledger_path, **kwargs)
    _APP_KERNELS[app] = kernel
    return app


def kernel_of(app: Flask) -> FakeKernel:
    """The fake kernel an app made by :func:`fake_app` writes to."""
    return _APP_KERNELS[app]
