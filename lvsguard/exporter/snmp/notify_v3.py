"""SNMPv3 notifications (authPriv traps or informs) through pysnmp's notification originator.

The v2c sender in ``notify`` encodes by hand; v3 needs USM (keys localized to
an engine ID, time windows, and for informs the discovery of the receiver's
engine), which pysnmp does. For a trap the agent is the authoritative engine:
the receiver must know the agent's engine ID (snmptrapd: ``createUser -e
0x<engine_id> ...``); for an inform the receiver is authoritative and pysnmp
discovers it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from pysnmp.hlapi.v3arch.asyncio import ContextData, SnmpEngine, UdpTransportTarget, UsmUserData, send_notification
from pysnmp.hlapi.v3arch.asyncio.transport import Udp6TransportTarget
from pysnmp.proto import rfc1902

from lvsguard.exporter.snmp.ber import Oid
from lvsguard.exporter.snmp.layout import Uptime
from lvsguard.exporter.snmp.notify import SNMP_TRAP_OID_0, SYS_UPTIME_0, Notification
from lvsguard.exporter.snmp.settings import V3User
from lvsguard.exporter.snmp.v3 import AUTH, PRIV, TO_PYASN1

log = logging.getLogger(__name__)


class V3TrapSender:
    """Sends notifications as the USM user ``user`` to every target."""

    def __init__(
        self,
        targets: Sequence[tuple[str, int, int]],
        user: V3User,
        base: Oid,
        uptime: Uptime,
        *,
        engine_id: bytes | None = None,
        inform: bool = False,
        timeout: float = 1.0,
        retries: int = 2,
    ) -> None:
        self.targets = tuple(targets)
        self.base = base
        self.uptime = uptime
        self.inform = inform
        self.timeout = timeout
        self.retries = retries
        self.sent = 0
        self.unacknowledged = 0
        self._engine = SnmpEngine(rfc1902.OctetString(engine_id)) if engine_id else SnmpEngine()
        self._auth = UsmUserData(
            user.name,
            user.auth_key,
            user.priv_key,
            authProtocol=AUTH[user.auth_protocol],
            privProtocol=PRIV[user.priv_protocol],
        )

    async def send_all(self, notifications: Iterable[Notification]) -> None:
        for notification in notifications:
            for target in self.targets:
                await self._send(notification, target)

    async def _send(self, notification: Notification, target: tuple[str, int, int]) -> None:
        host, port, version = target
        cls = UdpTransportTarget if version == 4 else Udp6TransportTarget
        transport = await cls.create((host, port), timeout=self.timeout, retries=self.retries)
        varbinds = [
            (rfc1902.ObjectName(SYS_UPTIME_0), rfc1902.TimeTicks(min(self.uptime.now(), 0xFFFFFFFF))),
            (rfc1902.ObjectName(SNMP_TRAP_OID_0), rfc1902.ObjectName(notification.trap_oid(self.base))),
            *((rfc1902.ObjectName(oid), TO_PYASN1[kind](value)) for oid, kind, value in notification.objects),
        ]
        error, status, _, _ = await send_notification(
            self._engine,
            self._auth,
            transport,
            ContextData(),
            "inform" if self.inform else "trap",
            *varbinds,
            lookupMib=False,
        )
        self.sent += 1
        if error or status:
            self.unacknowledged += 1
            log.warning(
                "SNMPv3 %s %s to %s:%d failed: %s",
                "inform" if self.inform else "trap",
                notification.name,
                host,
                port,
                error or status,
            )

    def close(self) -> None:
        self._engine.close_dispatcher()
