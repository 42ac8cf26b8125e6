"""The IPVS collector: one read of the kernel's IPVS table as Prometheus metrics.

The metric definitions below (name, type, help, the model field that holds the
value) are the one table the exposition reads: ``exporter.exposition`` renders
them as Prometheus text fast enough for 100 000 real servers. The tests hold
that text to prometheus_client's rendering of the same definitions
(``tests/exposition_oracle.py``), which is not a second production path.

Label names are node_exporter's (``local_address``, ``local_port``, ``proto``,
``local_mark``, ``remote_address``, ``remote_port``), with node_exporter's values
(a fwmark service has an empty address, port ``0`` and the mark as eight hex
digits, as /proc/net/ip_vs prints it), so that series join with
``node_ipvs_*``. ``service`` and ``real_server`` carry the names from the config
(empty without one).

Collection happens at scrape time. ``IPVSCollector.scrape`` is the one wrapper
around the kernel read: a failed read becomes ``ipvs_up 0`` and one log line per
change of reason, never an exception.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Protocol, TypeVar

from lvsguard import __version__
from lvsguard.errors import LvsguardError
from lvsguard.ipvs import TableReader
from lvsguard.labels import BACKEND_LABELS, SERVICE_LABELS, mark_label, parse_backend_labels
from lvsguard.logs import event
from lvsguard.model import RealServerKey, ServiceKey, Table, VirtualService

# --- label names -------------------------------------------------------------

SERVICE_INFO_LABELS: tuple[str, ...] = SERVICE_LABELS + ("scheduler", "persistent", "forward")
SYNC_DAEMON_LABELS: tuple[str, ...] = ("role", "mcast_interface", "sync_id")
VIP_LABELS: tuple[str, ...] = ("vip", "interface")
EXPORTER_INFO_LABELS: tuple[str, ...] = ("version", "ipvs_source")

COUNTER = "counter"
GAUGE = "gauge"

SYNC_ROLES = ("master", "backup")
FORWARD_MIXED = "mixed"  # ipvs_service_info{forward}: real servers use more than one method


# --- metric definitions ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric family: what the exposition paths need to emit it."""

    name: str
    type: str  # COUNTER or GAUGE
    help: str
    field: str = ""  # dotted attribute of the row's model object that holds the value; "" = computed
    netlink_only: bool = False  # /proc/net/ip_vs has no such value: omitted when the table came from procfs

    @property
    def value(self) -> Callable[[object], int]:
        """Reads this metric's value from a model object (Stats, VirtualService or RealServer)."""
        return attrgetter(self.field)


_TRAFFIC = (  # Stats field, what it counts
    ("connections", "Connections scheduled"),
    ("incoming_packets", "Incoming packets, client to real server"),
    ("outgoing_packets", "Outgoing packets, real server to client; only NAT sends them through the director"),
    ("incoming_bytes", "Incoming bytes, client to real server"),
    ("outgoing_bytes", "Outgoing bytes, real server to client; only NAT sends them through the director"),
)


def _traffic(prefix: str, scope: str, path: str, *, netlink_only: bool) -> tuple[MetricDef, ...]:
    return tuple(
        MetricDef(f"{prefix}{name}_total", COUNTER, f"{what} ({scope}).", path + name, netlink_only)
        for name, what in _TRAFFIC
    )


UP = MetricDef(
    "ipvs_up", GAUGE, "1 when the IPVS table was read for this scrape, 0 when it could not be (the reason is logged)."
)
EXPORTER_INFO = MetricDef(
    "lvsguard_exporter_info",
    GAUGE,
    "lvsguard version and the source of the IPVS table (netlink, or procfs without traffic counters); always 1.",
)
HOST_METRICS = _traffic("ipvs_", "host total, all virtual services", "", netlink_only=False)
SERVICE_INFO = MetricDef(
    "ipvs_service_info",
    GAUGE,
    "A virtual service: scheduler, persistence and the forwarding method of its real servers (mixed when they differ); always 1.",
)
SERVICE_METRICS = _traffic("ipvs_service_", "per virtual service", "stats.", netlink_only=True)
BACKEND_METRICS = _traffic("ipvs_backend_", "per real server", "stats.", netlink_only=True) + (
    MetricDef(
        "ipvs_backend_connections_active",
        GAUGE,
        "Active (established) connections of the real server.",
        "active_connections",
    ),
    MetricDef(
        "ipvs_backend_connections_inactive",
        GAUGE,
        "Inactive connections (other states) of the real server.",
        "inactive_connections",
    ),
    MetricDef(
        "ipvs_backend_connections_persistent",
        GAUGE,
        "Persistence templates that point to the real server.",
        "persistent_connections",
        netlink_only=True,
    ),
    MetricDef("ipvs_backend_weight", GAUGE, "Scheduling weight of the real server (0: no new connections).", "weight"),
)
SYNC_DAEMON_UP = MetricDef(
    "ipvs_sync_daemon_up",
    GAUGE,
    "1 for each running IPVS connection-sync daemon; 0, with empty interface and sync_id, for a role that is not running.",
    netlink_only=True,
)
VIP_OWNED = MetricDef(
    "lvs_director_vip_owned",
    GAUGE,
    "1 when a virtual service address is configured on an interface of this director, 0 when it is on none.",
)
SCRAPE_DURATION = MetricDef(
    "lvsguard_scrape_duration_seconds", GAUGE, "Time spent reading the IPVS table and rendering its metrics."
)

ALL_METRICS: tuple[MetricDef, ...] = (
    UP,
    EXPORTER_INFO,
    *HOST_METRICS,
    SERVICE_INFO,
    *SERVICE_METRICS,
    *BACKEND_METRICS,
    SYNC_DAEMON_UP,
    VIP_OWNED,
    SCRAPE_DURATION,
)
"""Every family, in exposition order."""


# --- labels ------------------------------------------------------------------


class Names(Protocol):
    """Names of services and real servers (``lvsguard.config.Config`` is one)."""

    def service_name(self, key: ServiceKey) -> str: ...

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str: ...


class ExtraFamilies(Protocol):
    """More families served after the IPVS ones (the probes' ``exporter.probes.metrics.ProbeMetrics``)."""

    def chunks(self) -> Iterator[str]:
        """Their Prometheus text, family by family."""
        ...


class NoNames:
    """The names when there is no config: every name is empty."""

    def service_name(self, key: ServiceKey) -> str:
        return ""

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str:
        return ""


def service_label_values(key: ServiceKey, name: str) -> tuple[str, ...]:
    """Values of SERVICE_LABELS, as node_exporter writes them."""
    if key.is_fwmark:
        return ("", "0", key.protocol, mark_label(key.fwmark), name)
    return (key.address, str(key.port), key.protocol, "", name)


def backend_label_values(service: ServiceKey, key: RealServerKey, names: Names) -> tuple[str, ...]:
    """Values of every label of BACKEND_LABELS for real server ``key`` of ``service``."""
    local_address, local_port, proto, local_mark, service_name = service_label_values(
        service, names.service_name(service)
    )
    return (
        local_address,
        local_port,
        key.address,
        str(key.port),
        proto,
        local_mark,
        service_name,
        names.real_server_name(service, key),
    )


def service_info_values(svc: VirtualService) -> tuple[str, str, str]:
    """scheduler, persistent ("true"/"false") and forward of ``ipvs_service_info``."""
    methods = {rs.forward for rs in svc.real_servers}
    forward = "" if not methods else FORWARD_MIXED if len(methods) > 1 else methods.pop().label
    return (svc.scheduler, "true" if svc.persistent else "false", forward)


H = TypeVar("H", bound=Hashable)
T = TypeVar("T")


def group(keys: Sequence[H], objects: Sequence[T]) -> tuple[list[H], list[list[T]]] | None:
    """Objects whose label keys are equal, in first-seen order; None when all keys differ.

    Series with equal labels are summed (as node_exporter does when labels are
    dropped): a series per object would be a duplicate, which Prometheus rejects.
    """
    if len(dict.fromkeys(keys)) == len(keys):
        return None
    groups: dict[H, list[T]] = {}
    for key, obj in zip(keys, objects):
        groups.setdefault(key, []).append(obj)
    return list(groups), list(groups.values())


def summed(metric: MetricDef, groups: list[list[T]]) -> list[int]:
    """The value of ``metric`` of each group: the sum over its objects."""
    get = metric.value
    return [sum(map(get, objs)) for objs in groups]


# --- one scrape --------------------------------------------------------------


Rows = list[tuple[tuple[str, ...], int | float]]


@dataclass(frozen=True, slots=True)
class Family:
    """A family whose samples are built per scrape from plain values (not the big per-real-server ones)."""

    metric: MetricDef
    labels: tuple[str, ...]
    rows: Rows


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one scrape read: the table (services already filtered by the allow-list) and the local addresses."""

    table: Table | None  # None when the table could not be read (ipvs_up 0)
    source: str  # "netlink", "procfs", or "" before any reader was opened
    addresses: Mapping[str, str] | None  # local address -> interface; None when not read
    started: float  # clock() when the scrape began
    version: str
    clock: Callable[[], float] = time.perf_counter

    @property
    def netlink(self) -> bool:
        """The table carries the netlink-only values (traffic counters, persistence, sync daemons)."""
        return self.table is not None and self.table.source != "procfs"

    def wants(self, metric: MetricDef) -> bool:
        return self.table is not None and (self.netlink or not metric.netlink_only)

    def head(self) -> list[Family]:
        """ipvs_up, lvsguard_exporter_info and the host totals."""
        families = [
            Family(UP, (), [((), 0 if self.table is None else 1)]),
            Family(EXPORTER_INFO, EXPORTER_INFO_LABELS, [((self.version, self.source), 1)]),
        ]
        totals = self.table.totals if self.table is not None else None
        if totals is not None:
            families += [Family(m, (), [((), m.value(totals))]) for m in HOST_METRICS]
        return families

    def tail(self) -> list[Family]:
        """Sync daemons and VIP ownership (each only when it could be read)."""
        families = []
        if self.table is not None and self.wants(SYNC_DAEMON_UP):
            rows: Rows = [((d.role, d.mcast_interface, str(d.sync_id)), 1) for d in self.table.sync_daemons]
            running = {d.role for d in self.table.sync_daemons}
            rows += [((role, "", ""), 0) for role in SYNC_ROLES if role not in running]
            families.append(Family(SYNC_DAEMON_UP, SYNC_DAEMON_LABELS, rows))
        if self.table is not None and self.addresses is not None:
            vips = dict.fromkeys(s.key.address for s in self.table.services if not s.key.is_fwmark)
            owned = self.addresses
            rows = [((vip, owned[vip]), 1) if vip in owned else ((vip, ""), 0) for vip in vips]
            if rows:
                families.append(Family(VIP_OWNED, VIP_LABELS, rows))
        return families

    def duration(self) -> Family:
        return Family(SCRAPE_DURATION, (), [((), self.clock() - self.started)])


class _ReasonLog:
    """Logs a failure once per change of reason, and the recovery once."""

    def __init__(self, logger: logging.Logger, what: str):
        self._logger = logger
        self._what = what
        self._reason: str | None = None
        self._lock = threading.Lock()

    def failed(self, reason: str, exc: BaseException) -> None:
        with self._lock:
            if reason == self._reason:
                return
            self._reason = reason
        event(self._logger, logging.WARNING, f"{self._what}_failed", reason=reason)
        if not isinstance(exc, LvsguardError):  # not a kernel answer: a bug, so keep the traceback once
            self._logger.debug("%s_failed traceback", self._what, exc_info=exc)

    def ok(self) -> None:
        with self._lock:
            if self._reason is None:
                return
            self._reason = None
        event(self._logger, logging.INFO, f"{self._what}_recovered")


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, LvsguardError) else f"{type(exc).__name__}: {exc}"


# --- the collector -----------------------------------------------------------


class IPVSCollector:
    """The IPVS table read through ``reader``, one ``scrape()`` at a time, and the options of its labels.

    ``backend_labels`` chooses the labels of ``ipvs_backend_*`` (as node_exporter's
    ``--collector.ipvs.backend-labels``; real servers left with equal labels are
    summed), ``services`` is an allow-list of service keys (None: every service),
    ``names`` names services and real servers, ``addresses`` returns this
    director's local addresses (address -> interface) for ``lvs_director_vip_owned``
    (None: that family is not exported). ``version`` and ``clock`` (seconds, for
    the scrape duration) are there for tests.
    """

    def __init__(
        self,
        reader: TableReader,
        *,
        backend_labels: str | Iterable[str] = BACKEND_LABELS,
        services: Collection[ServiceKey] | None = None,
        names: Names | None = None,
        addresses: Callable[[], Mapping[str, str]] | None = None,
        version: str = __version__,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.perf_counter,
        probes: ExtraFamilies | None = None,
    ):
        self.reader = reader
        self.probes = probes  # the health-check series, rendered after the IPVS families
        self.backend_labels = parse_backend_labels(backend_labels)
        self.backend_select = tuple(BACKEND_LABELS.index(label) for label in self.backend_labels)
        self.services = frozenset(services) if services is not None else None
        self.names: Names = names if names is not None else NoNames()
        self.version = version
        self.clock = clock
        self._addresses = addresses
        self.logger = logger or logging.getLogger(__name__)
        self._table_log = _ReasonLog(self.logger, "ipvs_read")
        self._address_log = _ReasonLog(self.logger, "address_read")

    # The one wrapper around I/O: never raises.
    def scrape(self) -> Scrape:
        """Read the table (and the local addresses) for one scrape."""
        started = self.clock()
        table: Table | None = None
        try:
            table = self.reader.read()
        except Exception as exc:
            self._table_log.failed(_reason(exc), exc)
        else:
            self._table_log.ok()
        addresses = None
        if table is not None and self._addresses is not None:
            try:
                addresses = self._addresses()
            except Exception as exc:
                self._address_log.failed(_reason(exc), exc)
            else:
                self._address_log.ok()
        if table is not None and self.services is not None:
            table = replace(table, services=tuple(s for s in table.services if s.key in self.services))
        source = table.source if table is not None else getattr(self.reader, "source", "")
        return Scrape(table, source, addresses, started, self.version, self.clock)

    def backend_values(self, service: ServiceKey, key: RealServerKey) -> tuple[str, ...]:
        """Values of ``self.backend_labels`` for one real server."""
        full = backend_label_values(service, key, self.names)
        return tuple(full[i] for i in self.backend_select)
