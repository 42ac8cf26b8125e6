"""LVSGUARD-MIB as code: column numbers, row indexes, and a snapshot turned into subtrees.

This file and ``mibs/LVSGUARD-MIB.txt`` describe the same objects; a unit test
reads the MIB with smidump and checks that every name, OID and type here
matches it. Row indexes are the object's identity (see the MIB's
DESCRIPTION and docs/snmp.md): a row keeps its instance identifier while
other rows come and go, and every director of a cluster numbers a service
the same way.
"""

from __future__ import annotations

import functools
import math
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lvsguard.defaults import SNMP_BASE_OID
from lvsguard.exporter.snmp.ber import Oid
from lvsguard.exporter.snmp.mibview import Column, Subtree
from lvsguard.exporter.snmp.snapshot import (
    PROBE_TYPES,
    Health,
    PassiveState,
    RealServerState,
    ServiceState,
    Snapshot,
)
from lvsguard.model import FWM, RealServer, ServiceKey, Stats, VirtualService

DEFAULT_BASE: Oid = SNMP_BASE_OID
"""lvsguardMIB (lvsguard.defaults): net-snmp's playpen arc, until the project has an enterprise number."""

PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132, FWM: 256}
"""lvsgVsProtocol: the IP protocol number, fwmark(256) for a firewall-mark service."""

SYS_DESCR = "lvsguard SNMP agent (LVSGUARD-MIB)"

# Sub-trees under the base (lvsgObjects = base.1).
DIRECTOR = (1, 1)
VS_ENTRY = (1, 2, 1)
RS_ENTRY = (1, 3, 1)
PROBE_ENTRY = (1, 4, 1)
SYNC_ENTRY = (1, 5, 1)
VIP_ENTRY = (1, 6, 1)
NOTIFY_OBJECTS = (1, 7)
NOTIFICATIONS = (0,)

SYSTEM = (1, 3, 6, 1, 2, 1, 1)
SNMP_GROUP = (1, 3, 6, 1, 2, 1, 11)

_STATS = (
    ("StatsConns", "counter64"),
    ("StatsInPkts", "counter64"),
    ("StatsOutPkts", "counter64"),
    ("StatsInBytes", "counter64"),
    ("StatsOutBytes", "counter64"),
    ("RateCps", "gauge32"),
    ("RateInPPS", "gauge32"),
    ("RateOutPPS", "gauge32"),
    ("RateInBPS", "gauge32"),
    ("RateOutBPS", "gauge32"),
)


def _columns(prefix: str, first: int, spec: Iterable[tuple[str, str]]) -> tuple[Column, ...]:
    return tuple(Column(first + i, prefix + name, kind) for i, (name, kind) in enumerate(spec))


DIRECTOR_COLUMNS = _columns(
    "lvsgDirector",
    1,
    (
        ("Role", "integer"),
        ("VipsOwned", "gauge32"),
        ("LastRoleChange", "timeticks"),
        ("TableSource", "integer"),
        ("ConnEntries", "gauge32"),
        ("StatsConns", "counter64"),
        ("StatsInPkts", "counter64"),
        ("StatsOutPkts", "counter64"),
        ("StatsInBytes", "counter64"),
        ("StatsOutBytes", "counter64"),
    ),
)

VS_COLUMNS = _columns(
    "lvsgVs",
    6,
    (
        ("Name", "text"),
        ("Scheduler", "text"),
        ("Persist", "integer"),
        ("PersistTimeout", "unsigned32"),
        ("PersistGranularity", "unsigned32"),
        ("PersistEngine", "text"),
        ("RealServersTotal", "gauge32"),
        ("RealServersUp", "gauge32"),
        ("Quorum", "unsigned32"),
        ("QuorumStatus", "integer"),
        ("DiscontinuityTime", "timeticks"),
        *_STATS,
    ),
)

RS_COLUMNS = _columns(
    "lvsgRs",
    4,
    (
        ("Name", "text"),
        ("Forwarding", "integer"),
        ("Weight", "integer"),
        ("UpperConnectionLimit", "unsigned32"),
        ("LowerConnectionLimit", "unsigned32"),
        ("Status", "integer"),
        ("QuarantineState", "integer"),
        ("LastChange", "timeticks"),
        ("DiscontinuityTime", "timeticks"),
        ("StatsActiveConns", "gauge32"),
        ("StatsInactiveConns", "gauge32"),
        ("StatsPersistentConns", "gauge32"),
        *_STATS,
        ("HandshakeRefused", "counter64"),
        ("HandshakeTimeouts", "counter64"),
        ("PassiveVerdicts", "counter64"),
        ("PassiveHoldDown", "gauge32"),
    ),
)

PROBE_COLUMNS = _columns(
    "lvsgProbe", 2, (("Type", "integer"), ("LastResult", "integer"), ("Latency", "gauge32"), ("Message", "text"))
)
SYNC_COLUMNS = _columns("lvsgSync", 2, (("State", "integer"), ("Interface", "text"), ("Id", "unsigned32")))
VIP_COLUMNS = _columns("lvsgVip", 3, (("Interface", "text"), ("Owned", "integer")))

TRUE, FALSE = 1, 2  # TruthValue
QUORUM_MET, QUORUM_NOT_MET, QUORUM_NOT_CONFIGURED = 1, 2, 3
SOURCES = {"netlink": 1, "procfs": 2}
SOURCE_UNAVAILABLE = 3
SYNC_ROLES = (("master", 1), ("backup", 2))


@functools.lru_cache(maxsize=1 << 18)
def address_index(address: str) -> Oid:
    """InetAddressType, then the InetAddress as a length-prefixed octet string (RFC 4001).

    Cached: the same addresses come back in every snapshot, and a table of
    100 000 real servers is rebuilt every ``max_age`` seconds.
    """
    if ":" in address:
        return (2, 16, *socket.inet_pton(socket.AF_INET6, address))
    return (1, 4, *socket.inet_pton(socket.AF_INET, address))


def service_index(key: ServiceKey) -> Oid:
    """lvsgVsEntry INDEX { Protocol, AddrType, Address, Port, FwMark }."""
    if key.is_fwmark:
        zero = "0.0.0.0" if key.family == 4 else "::"
        return (PROTOCOL_NUMBERS[FWM], *address_index(zero), 0, key.fwmark)
    return (PROTOCOL_NUMBERS[key.protocol], *address_index(key.address), key.port, 0)


def real_server_index(service: ServiceKey | Oid, rs: RealServer) -> Oid:
    """lvsgRsEntry INDEX: the service's index, then AddrType, Address, Port of the real server."""
    prefix = service if isinstance(service, tuple) else service_index(service)
    return prefix + address_index(rs.key.address) + (rs.key.port,)


def text_index(text: str) -> Oid:
    """A non-IMPLIED string index: its length, then its octets."""
    raw = text.encode("utf-8")
    return (len(raw), *raw)


def prefix_length(svc: VirtualService) -> int:
    """Persistence granularity as a prefix length (the kernel keeps an IPv4 netmask as an int)."""
    if svc.key.family == 6:
        return svc.netmask
    return bin(svc.netmask & 0xFFFFFFFF).count("1")


def _stats(stats: Stats) -> tuple[int, ...]:
    return (
        stats.connections,
        stats.incoming_packets,
        stats.outgoing_packets,
        stats.incoming_bytes,
        stats.outgoing_bytes,
        stats.cps,
        stats.incoming_pps,
        stats.outgoing_pps,
        stats.incoming_bps,
        stats.outgoing_bps,
    )


@dataclass
class Uptime:
    """sysUpTime and TimeStamp values, in hundredths of a second since the agent started."""

    start: float = field(default_factory=time.time)
    clock: Callable[[], float] = time.time

    def now(self) -> int:
        return int((self.clock() - self.start) * 100)

    def stamp(self, when: float | None) -> int:
        """TimeStamp of a wall-clock time: zero for None or before the agent started."""
        if when is None or when <= self.start:
            return 0
        return int((when - self.start) * 100)


class FirstSeen:
    """When the agent first saw each service and real server (their discontinuity time).

    Keys present in the first snapshot get ``None`` (TimeStamp zero); a key that
    leaves a snapshot is forgotten, so if it comes back its counters restarted
    and it gets the time it came back.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[Any, float | None] | None = None

    def update(self, keys: Iterable[Any]) -> dict[Any, float | None]:
        current = set(keys)
        if self._seen is None:
            self._seen = {k: None for k in current}
            return self._seen
        now = self._clock()
        seen = {k: self._seen.get(k, now) for k in current}
        self._seen = seen
        return seen


@dataclass(frozen=True, slots=True)
class Counters:
    """Live agent counters served as SNMPv2-MIB's snmp group (each a callable)."""

    in_packets: Callable[[], int]
    bad_versions: Callable[[], int]
    bad_community_names: Callable[[], int]
    bad_community_uses: Callable[[], int]
    asn_parse_errors: Callable[[], int]
    silent_drops: Callable[[], int]


def build_subtrees(
    snap: Snapshot,
    base: Oid,
    uptime: Uptime,
    first_seen: FirstSeen,
    counters: Counters | None = None,
) -> list[Subtree]:
    """Every served subtree of one snapshot, LVSGUARD-MIB under ``base`` plus system/snmp groups."""
    table = snap.table
    services = table.services if table is not None else ()
    seen = first_seen.update(
        [svc.key for svc in services] + [(svc.key, rs.key) for svc in services for rs in svc.real_servers]
    )
    vs_rows: list[tuple[Oid, list[Any]]] = []
    rs_rows: list[tuple[Oid, list[Any]]] = []
    probe_rows: list[tuple[Oid, list[Any]]] = []
    no_state = RealServerState()
    no_passive = PassiveState()
    for svc in services:
        state = snap.services.get(svc.key, ServiceState())
        svc_index = service_index(svc.key)
        up = 0
        for rs in svc.real_servers:
            rs_state = snap.real_servers.get((svc.key, rs.key), no_state)
            up += rs_state.health is Health.ALIVE
            index = real_server_index(svc_index, rs)
            passive = snap.passive.get((svc.key, rs.key), no_passive)
            rs_rows.append((index, _rs_row(rs, rs_state, passive, uptime, seen[(svc.key, rs.key)])))
            for probe in snap.probes.get((svc.key, rs.key), ()):
                probe_rows.append((index + text_index(probe.name), _probe_row(probe)))
        vs_rows.append((svc_index, _vs_row(svc, state, up, uptime, seen[svc.key])))
    return [
        Subtree(SYSTEM, _SYSTEM_COLUMNS, [((0,), [SYS_DESCR, base, uptime.now])]),
        *_snmp_group(counters),
        Subtree(base + DIRECTOR, DIRECTOR_COLUMNS, [((0,), _director_row(snap, uptime))]),
        Subtree(base + VS_ENTRY, VS_COLUMNS, vs_rows),
        Subtree(base + RS_ENTRY, RS_COLUMNS, rs_rows),
        Subtree(base + PROBE_ENTRY, PROBE_COLUMNS, probe_rows),
        Subtree(base + SYNC_ENTRY, SYNC_COLUMNS, _sync_rows(snap)),
        Subtree(
            base + VIP_ENTRY,
            VIP_COLUMNS,
            [(address_index(v.address), [v.interface, TRUE if v.owned else FALSE]) for v in snap.director.vips],
        ),
    ]


_SYSTEM_COLUMNS = (
    Column(1, "sysDescr", "text"),
    Column(2, "sysObjectID", "oid"),
    Column(3, "sysUpTime", "dyn-timeticks"),
)
_SNMP_COLUMNS = (
    Column(1, "snmpInPkts", "dyn-counter32"),
    Column(3, "snmpInBadVersions", "dyn-counter32"),
    Column(4, "snmpInBadCommunityNames", "dyn-counter32"),
    Column(5, "snmpInBadCommunityUses", "dyn-counter32"),
    Column(6, "snmpInASNParseErrs", "dyn-counter32"),
    Column(31, "snmpSilentDrops", "dyn-counter32"),
)


def _snmp_group(counters: Counters | None) -> list[Subtree]:
    if counters is None:
        return []
    row = [
        counters.in_packets,
        counters.bad_versions,
        counters.bad_community_names,
        counters.bad_community_uses,
        counters.asn_parse_errors,
        counters.silent_drops,
    ]
    return [Subtree(SNMP_GROUP, _SNMP_COLUMNS, [((0,), row)])]


def _director_row(snap: Snapshot, uptime: Uptime) -> list[Any]:
    table = snap.table
    director = snap.director
    totals = table.totals if table is not None and table.totals is not None else None
    source = SOURCES.get(table.source, SOURCE_UNAVAILABLE) if table is not None else SOURCE_UNAVAILABLE
    entries = table.connection_entries if table is not None and table.connection_entries is not None else 0
    stats = _stats(totals)[:5] if totals is not None else (0, 0, 0, 0, 0)
    return [
        director.role.value,
        sum(1 for v in director.vips if v.owned),
        uptime.stamp(director.last_role_change),
        source,
        entries,
        *stats,
    ]


def _vs_row(svc: VirtualService, state: ServiceState, up: int, uptime: Uptime, first: float | None) -> list[Any]:
    if state.quorum <= 0:
        quorum_status = QUORUM_NOT_CONFIGURED
    else:
        quorum_status = QUORUM_MET if up >= state.quorum else QUORUM_NOT_MET
    return [
        state.name or str(svc.key),
        svc.scheduler,
        TRUE if svc.persistent else FALSE,
        svc.timeout,
        prefix_length(svc),
        svc.pe_name,
        len(svc.real_servers),
        up,
        max(state.quorum, 0),
        quorum_status,
        uptime.stamp(first),
        *_stats(svc.stats),
    ]


def _rs_row(
    rs: RealServer, state: RealServerState, passive: PassiveState, uptime: Uptime, first: float | None
) -> list[Any]:
    return [
        state.name or str(rs.key),
        rs.forward.value + 1,
        rs.weight,
        rs.upper_threshold,
        rs.lower_threshold,
        state.health.value,
        state.hold.value,
        uptime.stamp(state.last_change),
        uptime.stamp(first),
        rs.active_connections,
        rs.inactive_connections,
        rs.persistent_connections,
        *_stats(rs.stats),
        passive.refused,
        passive.timeouts,
        passive.verdicts,
        math.ceil(passive.holddown),  # a hold-down that runs never reads 0
    ]


def _probe_row(probe: Any) -> list[Any]:
    kind = PROBE_TYPES.index(probe.kind) + 1 if probe.kind in PROBE_TYPES else len(PROBE_TYPES) + 1
    result = 3 if probe.ok is None else (1 if probe.ok else 2)
    return [kind, result, int(probe.latency * 1_000_000), probe.message]


def _sync_rows(snap: Snapshot) -> list[tuple[Oid, list[Any]]]:
    """Both roles always, so that a stopped daemon reads stopped(2); none when the table is unreadable."""
    if snap.table is None:
        return []
    running = {d.role: d for d in snap.table.sync_daemons}
    rows: list[tuple[Oid, list[Any]]] = []
    for role, number in SYNC_ROLES:
        daemon = running.get(role)
        if daemon is None:
            rows.append(((number,), [2, "", 0]))
        else:
            rows.append(((number,), [1, daemon.mcast_interface, daemon.sync_id]))
    return rows
