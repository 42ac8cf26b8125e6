"""What the SNMP agent serves: one kernel table read plus what lvsguard knows beyond it.

The agent shares the exporter's data model: the kernel side is a
``lvsguard.model.Table`` from the same reader that feeds ``/metrics``; health,
quarantine holds, probe results and the director's role come from the probe
engine, the actuator's ledger and keepalived when those are present, and
default to "unknown"/"none" when they are not. A provider is any callable
that returns a ``Snapshot``; ``reader_provider`` adapts a table reader.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from lvsguard.errors import LvsguardError
from lvsguard.model import RealServerKey, ServiceKey, Table

log = logging.getLogger(__name__)


class Health(enum.Enum):
    """lvsgRsStatus: the health of a real server after rise/fall."""

    ALIVE = 1
    DEAD = 2
    UNKNOWN = 3  # no probe watches it


class Hold(enum.Enum):
    """lvsgRsQuarantineState: the actuator ledger's hold on a real server."""

    NONE = 1
    QUARANTINED = 2
    DRAINING = 3
    DRAINED = 4


class Role(enum.Enum):
    """lvsgDirectorRole: the director's VRRP role."""

    UNKNOWN = 1
    MASTER = 2
    BACKUP = 3
    FAULT = 4


PROBE_TYPES = ("tcp", "http", "https", "udp", "icmp", "dns", "script", "agent")
"""lvsgProbeType values 1..8, in order; anything else is other(9)."""


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What the configuration says about a virtual service."""

    name: str = ""  # "" = use str(key)
    quorum: int = 0  # alive real servers needed; 0 = no quorum


@dataclass(frozen=True, slots=True)
class RealServerState:
    """Health and hold of one real server of one service."""

    health: Health = Health.UNKNOWN
    hold: Hold = Hold.NONE
    last_change: float | None = None  # time.time() of the last health or hold change
    name: str = ""  # "" = use str(key)
    reason: str = ""  # why the last change happened (probe message, alert, operator's words)
    actor: str = ""  # who asked for the current hold (alertmanager, fast-path, an operator)
    original_weight: int | None = None  # the weight the ledger restores, while a hold is on


@dataclass(frozen=True, slots=True)
class ProbeState:
    """The last run of one probe of one real server."""

    name: str  # the check's name in the configuration, 1..32 characters
    kind: str  # one of PROBE_TYPES, else reported as other
    ok: bool | None  # None before the first run
    latency: float = 0.0  # seconds
    message: str = ""


@dataclass(frozen=True, slots=True)
class PassiveState:
    """The passive detector's view of one real server (``exporter.passive.metrics``)."""

    refused: int = 0  # failed handshakes since the detector started, by reason
    timeouts: int = 0
    verdicts: int = 0
    holddown: float = 0.0  # seconds left of its hold-down, 0 = none


@dataclass(frozen=True, slots=True)
class Vip:
    """A virtual IP address and whether this director holds it."""

    address: str  # compressed IP text
    owned: bool
    interface: str = ""


@dataclass(frozen=True, slots=True)
class DirectorState:
    """The director's VRRP side."""

    role: Role = Role.UNKNOWN
    last_role_change: float | None = None  # time.time()
    vips: tuple[Vip, ...] = ()


RsRef = tuple[ServiceKey, RealServerKey]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent view for the agent. ``table`` is None when the kernel could not be read."""

    table: Table | None
    services: Mapping[ServiceKey, ServiceState] = field(default_factory=dict)
    real_servers: Mapping[RsRef, RealServerState] = field(default_factory=dict)
    probes: Mapping[RsRef, tuple[ProbeState, ...]] = field(default_factory=dict)
    passive: Mapping[RsRef, PassiveState] = field(default_factory=dict)  # empty: passive detection off
    director: DirectorState = DirectorState()
    holds_known: bool = True  # False: the actuator's ledger could not be read (holds read none, and are no news)


SnapshotProvider = Callable[[], Snapshot]


class TableReader(Protocol):
    """The reader protocol of ``lvsguard.ipvs`` (netlink or procfs)."""

    source: str

    def read(self) -> Table: ...


class Names(Protocol):
    """What the config knows of names (``lvsguard.config.Config`` has these); "" = no name."""

    def service_name(self, key: ServiceKey) -> str: ...

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str: ...


def reader_provider(reader: TableReader, names: Names | None = None) -> SnapshotProvider:
    """A provider that serves the kernel table (with the config's names); a failed read serves empty tables.

    A failure is logged once per change of reason (as the Prometheus side does),
    with the reader's message (which names the namespace or file), and
    lvsgDirectorTableSource reads unavailable.
    """
    last_failure = [""]

    def provide() -> Snapshot:
        try:
            table = reader.read()
        except LvsguardError as exc:
            if str(exc) != last_failure[0]:
                log.warning("SNMP snapshot: IPVS table unreadable: %s", exc)
                last_failure[0] = str(exc)
            return Snapshot(None)
        if last_failure[0]:
            log.info("SNMP snapshot: IPVS table readable again (%s)", reader.source)
            last_failure[0] = ""
        if names is None:
            return Snapshot(table)
        services = {svc.key: ServiceState(name=names.service_name(svc.key)) for svc in table.services}
        real_servers = {
            (svc.key, rs.key): RealServerState(name=name)
            for svc in table.services
            for rs in svc.real_servers
            if (name := names.real_server_name(svc.key, rs.key))
        }
        return Snapshot(table, services=services, real_servers=real_servers)

    return provide
