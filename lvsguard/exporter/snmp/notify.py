"""LVSGUARD-MIB notifications: found by comparing two snapshots, sent as v2c traps or informs.

The agent keeps the last snapshot it served; each new one is compared with
it, so every event source (probe engine, actuator ledger, keepalived) only
has to show up in the snapshot for a manager to hear about it:

- lvsgRsHealthChange: a real server's health changed between alive and dead
  (a first result of dead counts, except for the real servers in ``quiet``:
  those the agent found when it started, so that a restart does not repeat
  what the previous process already sent; a first result of alive is not news);
- lvsgVsQuorumLost / lvsgVsQuorumRegained: a service's quorum status changed
  (a real server's first verdict is not a change: while probes settle after a
  start, a quorum does not "regain");
- lvsgRsQuarantined, lvsgRsRestored, lvsgRsDrainDone: the ledger's hold went
  none -> quarantined, any hold -> none, draining -> drained (only between two
  snapshots that could both read the ledger: a ledger that comes back after
  being unreadable, or after a restart, is no news);
- lvsgDirectorRoleChange: the VRRP role changed.

Each notification carries its objects with their instance (service and real
server index), so a manager can act without polling back. Encoding reuses
the agent's BER encoders; an inform is re-sent until the receiver
acknowledges it or the retries run out (then one log line names the target).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from lvsguard.exporter.snmp import ber
from lvsguard.exporter.snmp.ber import Oid
from lvsguard.exporter.snmp.layout import (
    DIRECTOR,
    DIRECTOR_COLUMNS,
    NOTIFY_OBJECTS,
    QUORUM_MET,
    QUORUM_NOT_CONFIGURED,
    QUORUM_NOT_MET,
    RS_COLUMNS,
    RS_ENTRY,
    VS_COLUMNS,
    VS_ENTRY,
    Uptime,
    real_server_index,
    service_index,
)
from lvsguard.exporter.snmp.mibview import ENCODERS, Column
from lvsguard.exporter.snmp.snapshot import Health, Hold, RealServerState, ServiceState, Snapshot
from lvsguard.model import RealServer, RealServerKey, ServiceKey, VirtualService

log = logging.getLogger(__name__)

SYS_UPTIME_0: Oid = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID_0: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)

NOTIFICATION_NUMBERS = {
    "lvsgRsHealthChange": 1,
    "lvsgVsQuorumLost": 2,
    "lvsgVsQuorumRegained": 3,
    "lvsgRsQuarantined": 4,
    "lvsgRsRestored": 5,
    "lvsgRsDrainDone": 6,
    "lvsgDirectorRoleChange": 7,
}

_NOTIFY_COLUMNS = {
    "lvsgNotifyReason": Column(1, "lvsgNotifyReason", "text"),
    "lvsgNotifyActor": Column(2, "lvsgNotifyActor", "text"),
    "lvsgNotifyOriginalWeight": Column(3, "lvsgNotifyOriginalWeight", "integer"),
}


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification: its name and its objects as (instance OID, kind, value)."""

    name: str
    objects: tuple[tuple[Oid, str, Any], ...]

    def trap_oid(self, base: Oid) -> Oid:
        return base + (0, NOTIFICATION_NUMBERS[self.name])


class _Objects:
    """Instance OIDs of the objects a notification carries, under one base."""

    def __init__(self, base: Oid) -> None:
        self.base = base
        self._columns: dict[str, tuple[Oid, str]] = {}
        for entry, columns in ((DIRECTOR, DIRECTOR_COLUMNS), (VS_ENTRY, VS_COLUMNS), (RS_ENTRY, RS_COLUMNS)):
            for column in columns:
                self._columns[column.name] = (base + entry + (column.subid,), column.kind)
        for column in _NOTIFY_COLUMNS.values():
            self._columns[column.name] = (base + NOTIFY_OBJECTS + (column.subid,), column.kind)

    def __call__(self, name: str, index: Oid, value: Any) -> tuple[Oid, str, Any]:
        oid, kind = self._columns[name]
        return oid + index, kind, value


def _alive(svc: VirtualService, states: dict[tuple[ServiceKey, RealServerKey], RealServerState]) -> int:
    return sum(1 for rs in svc.real_servers if states.get((svc.key, rs.key), _NO_STATE).health is Health.ALIVE)


_NO_STATE = RealServerState()


def _quorum_status(state: ServiceState, up: int) -> int:
    if state.quorum <= 0:
        return QUORUM_NOT_CONFIGURED
    return QUORUM_MET if up >= state.quorum else QUORUM_NOT_MET


def _first_verdicts(
    old: dict[tuple[ServiceKey, RealServerKey], RealServerState],
    new: dict[tuple[ServiceKey, RealServerKey], RealServerState],
) -> dict[tuple[ServiceKey, RealServerKey], RealServerState]:
    """``old`` where every real server that was unknown and is known now counts with its new health."""
    merged = dict(old)
    for ref, state in new.items():
        before = old.get(ref, _NO_STATE)
        if before.health is Health.UNKNOWN and state.health is not Health.UNKNOWN:
            merged[ref] = state
    return merged


def changes(
    old: Snapshot | None, new: Snapshot, base: Oid, quiet: AbstractSet[tuple[ServiceKey, RealServerKey]] = frozenset()
) -> list[Notification]:
    """The notifications that lead from ``old`` to ``new`` (none for the first snapshot).

    ``quiet``: real servers whose first verdict of dead is not news (see the module's docstring).
    """
    if old is None:
        return []
    obj = _Objects(base)
    out: list[Notification] = []
    if old.director.role != new.director.role:
        owned = sum(1 for v in new.director.vips if v.owned)
        reason = f"role {old.director.role.name.lower()} -> {new.director.role.name.lower()}"
        out.append(
            Notification(
                "lvsgDirectorRoleChange",
                (
                    obj("lvsgDirectorRole", (0,), new.director.role.value),
                    obj("lvsgDirectorVipsOwned", (0,), owned),
                    obj("lvsgNotifyReason", (0,), reason),
                ),
            )
        )
    if new.table is None or old.table is None:
        return out
    old_services = {svc.key: svc for svc in old.table.services}
    new_states = dict(new.real_servers)
    old_states = dict(old.real_servers)
    quorum_before = _first_verdicts(old_states, new_states)
    holds_news = old.holds_known and new.holds_known
    for svc in new.table.services:
        before = old_services.get(svc.key)
        if before is None:
            continue
        state = new.services.get(svc.key, ServiceState())
        vs_index = service_index(svc.key)
        up = _alive(svc, new_states)
        name = state.name or str(svc.key)
        known = {rs.key for rs in before.real_servers}
        for rs in svc.real_servers:
            if rs.key in known:
                ref = (svc.key, rs.key)
                before_rs = old_states.get(ref, _NO_STATE)
                found = _rs_changes(
                    obj,
                    svc,
                    rs,
                    vs_index,
                    name,
                    up,
                    before_rs,
                    new_states,
                    first_dead=ref not in quiet,
                    holds=holds_news,
                )
                out.extend(found)
        old_status = _quorum_status(old.services.get(svc.key, ServiceState()), _alive(before, quorum_before))
        new_status = _quorum_status(state, up)
        if {old_status, new_status} == {QUORUM_MET, QUORUM_NOT_MET}:
            out.append(
                Notification(
                    "lvsgVsQuorumLost" if new_status == QUORUM_NOT_MET else "lvsgVsQuorumRegained",
                    (
                        obj("lvsgVsName", vs_index, name),
                        obj("lvsgVsQuorumStatus", vs_index, new_status),
                        obj("lvsgVsQuorum", vs_index, state.quorum),
                        obj("lvsgVsRealServersUp", vs_index, up),
                        obj("lvsgVsRealServersTotal", vs_index, len(svc.real_servers)),
                    ),
                )
            )
    return out


def _rs_changes(
    obj: _Objects,
    svc: VirtualService,
    rs: RealServer,
    vs_index: Oid,
    service_name: str,
    up: int,
    before: RealServerState,
    states: dict[tuple[ServiceKey, RealServerKey], RealServerState],
    *,
    first_dead: bool = True,
    holds: bool = True,
) -> list[Notification]:
    now = states.get((svc.key, rs.key), _NO_STATE)
    index = real_server_index(vs_index, rs)
    rs_name = now.name or str(rs.key)
    out: list[Notification] = []
    health_news = now.health is not before.health and now.health is not Health.UNKNOWN
    if health_news and (before.health is not Health.UNKNOWN or (now.health is Health.DEAD and first_dead)):
        out.append(
            Notification(
                "lvsgRsHealthChange",
                (
                    obj("lvsgRsName", index, rs_name),
                    obj("lvsgRsStatus", index, now.health.value),
                    obj("lvsgRsWeight", index, rs.weight),
                    obj("lvsgRsQuarantineState", index, now.hold.value),
                    obj("lvsgVsName", vs_index, service_name),
                    obj("lvsgVsRealServersUp", vs_index, up),
                    obj("lvsgVsRealServersTotal", vs_index, len(svc.real_servers)),
                    obj("lvsgNotifyReason", (0,), now.reason),
                ),
            )
        )
    if now.hold is before.hold or not holds:
        return out
    if before.hold is Hold.NONE and now.hold is Hold.QUARANTINED:
        kind = "lvsgRsQuarantined"
    elif now.hold is Hold.NONE:
        kind = "lvsgRsRestored"
    elif before.hold is Hold.DRAINING and now.hold is Hold.DRAINED:
        kind = "lvsgRsDrainDone"
    else:
        return out
    objects = [
        obj("lvsgRsName", index, rs_name),
        obj("lvsgRsQuarantineState", index, now.hold.value),
        obj("lvsgRsWeight", index, rs.weight),
    ]
    if kind == "lvsgRsDrainDone":
        objects += [
            obj("lvsgRsStatsActiveConns", index, rs.active_connections),
            obj("lvsgRsStatsInactiveConns", index, rs.inactive_connections),
        ]
    else:
        original = now.original_weight if now.original_weight is not None else before.original_weight
        objects.append(obj("lvsgNotifyOriginalWeight", (0,), original if original is not None else rs.weight))
    objects += [obj("lvsgNotifyActor", (0,), now.actor), obj("lvsgNotifyReason", (0,), now.reason)]
    out.append(Notification(kind, tuple(objects)))
    return out


# --- sending ---------------------------------------------------------------------------------


def encode_notification(
    notification: Notification, base: Oid, community: bytes, request_id: int, uptime: int, inform: bool
) -> bytes:
    """A v2c SNMPv2-Trap-PDU (or InformRequest-PDU): sysUpTime.0, snmpTrapOID.0, then the objects."""
    varbinds = [
        ber.tlv(ber.SEQUENCE, ber.encode_oid(SYS_UPTIME_0) + ber.encode_timeticks(uptime)),
        ber.tlv(ber.SEQUENCE, ber.encode_oid(SNMP_TRAP_OID_0) + ber.encode_oid(notification.trap_oid(base))),
    ]
    varbinds += [
        ber.tlv(ber.SEQUENCE, ber.encode_oid(oid) + ENCODERS[kind](value)) for oid, kind, value in notification.objects
    ]
    pdu = (
        ber.encode_integer(request_id)
        + ber.encode_integer(0)
        + ber.encode_integer(0)
        + ber.tlv(ber.SEQUENCE, b"".join(varbinds))
    )
    tag = ber.INFORM_REQUEST if inform else ber.SNMPV2_TRAP
    body = b"\x02\x01\x01" + ber.tlv(ber.OCTET_STRING, community) + ber.tlv(tag, pdu)
    return ber.tlv(ber.SEQUENCE, body)


def response_request_id(data: bytes) -> int | None:
    """The request-id of a v2c Response-PDU, or None for anything else."""
    try:
        end = len(data)
        start, stop = ber.expect(data, 0, end, ber.SEQUENCE, "message")
        _, vstop = ber.expect(data, start, stop, ber.INTEGER, "version")
        _, cstop = ber.expect(data, vstop, stop, ber.OCTET_STRING, "community")
        pstart, pstop = ber.expect(data, cstop, stop, ber.GET_RESPONSE, "PDU")
        istart, istop = ber.expect(data, pstart, pstop, ber.INTEGER, "request-id")
        return ber.decode_integer(data, istart, istop, "request-id")
    except ber.BerError:
        return None


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, sender: TrapSender) -> None:
        self.sender = sender

    def datagram_received(self, data: bytes, addr: Any) -> None:
        request_id = response_request_id(data)
        waiter = self.sender.pending.get(request_id) if request_id is not None else None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class TrapSender:
    """Sends notifications to every target as v2c traps, or informs that wait for an acknowledgement."""

    def __init__(
        self,
        targets: Sequence[tuple[str, int, int]],
        community: str,
        base: Oid,
        uptime: Uptime,
        *,
        inform: bool = False,
        timeout: float = 1.0,
        retries: int = 2,
    ) -> None:
        self.targets = tuple(targets)
        self.community = community.encode()
        self.base = base
        self.uptime = uptime
        self.inform = inform
        self.timeout = timeout
        self.retries = retries
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.sent = 0
        self.unacknowledged = 0
        self._ids = itertools.count(1)
        self._endpoints: dict[int, asyncio.DatagramTransport] = {}

    async def _endpoint(self, version: int) -> asyncio.DatagramTransport:
        if version not in self._endpoints:
            loop = asyncio.get_running_loop()
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            local = ("0.0.0.0", 0) if version == 4 else ("::", 0)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Endpoint(self), local_addr=local, family=family)
            self._endpoints[version] = transport
        return self._endpoints[version]

    async def send_all(self, notifications: Iterable[Notification]) -> None:
        for notification in notifications:
            await asyncio.gather(*(self._send(notification, target) for target in self.targets))

    async def _send(self, notification: Notification, target: tuple[str, int, int]) -> None:
        host, port, version = target
        transport = await self._endpoint(version)
        request_id = next(self._ids) & 0x7FFFFFFF
        data = encode_notification(notification, self.base, self.community, request_id, self.uptime.now(), self.inform)
        if not self.inform:
            transport.sendto(data, (host, port))
            self.sent += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self.pending[request_id] = waiter
        try:
            for _ in range(self.retries + 1):
                transport.sendto(data, (host, port))
                self.sent += 1
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), self.timeout)
                    return
                except TimeoutError:
                    continue
            self.unacknowledged += 1
            log.warning(
                "SNMP inform %s to %s:%d not acknowledged after %d tries",
                notification.name,
                host,
                port,
                self.retries + 1,
            )
        finally:
            self.pending.pop(request_id, None)

    def close(self) -> None:
        for transport in self._endpoints.values():
            transport.close()
        self._endpoints.clear()
