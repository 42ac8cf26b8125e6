"""The SNMP agent: one UDP socket, v2c on the fast path, v3 through pysnmp, one snapshot for both.

A request finds the current ``MibView`` (built from one snapshot: one kernel
table read plus health, holds and role). When the view is older than
``max_age`` the request waits for a fresh one, read in a worker thread
(netlink is blocking I/O) and shared by every request that arrives
meanwhile, so a walk sees consistent data and the kernel is read at most
once per ``max_age`` however many managers poll.

Nothing a client sends can stop the agent: every datagram is handled inside
one ``try``; what is dropped is counted in ``AgentStats`` (and served as
SNMPv2-MIB's snmp group), and an unexpected exception is logged once with
the peer's address and counted as ``internal_errors``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config as pysnmp_config
from pysnmp.entity import engine as pysnmp_engine

from lvsguard.errors import BerError, SnmpAgentError
from lvsguard.exporter.snmp.fastpath import VERSION_V3, AgentStats, V2cResponder, peek_version
from lvsguard.exporter.snmp.layout import Counters, FirstSeen, Uptime, build_subtrees
from lvsguard.exporter.snmp.mibview import MibView
from lvsguard.exporter.snmp.notify import TrapSender, changes
from lvsguard.exporter.snmp.settings import AgentSettings
from lvsguard.exporter.snmp.snapshot import Health, RsRef, Snapshot, SnapshotProvider
from lvsguard.exporter.snmp.v3 import crypto_available, make_engine
from lvsguard.model import parse_endpoint

log = logging.getLogger(__name__)


def _transport_class(version: int) -> type[udp.UdpAsyncioTransport]:
    base: type[Any] = udp.UdpAsyncioTransport if version == 4 else udp6.Udp6AsyncioTransport

    class AgentTransport(base):
        """pysnmp's UDP transport, with every datagram routed through the agent first."""

        agent: SnmpAgent

        def datagram_received(self, datagram: bytes, address: Any) -> None:
            self.agent.datagram_received(self, datagram, address)

    return AgentTransport


class SnmpAgent:
    """Serves LVSGUARD-MIB from ``provider`` snapshots on ``settings.listen``."""

    def __init__(
        self,
        settings: AgentSettings,
        provider: SnapshotProvider,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.stats = AgentStats()
        self.uptime = Uptime(start=clock(), clock=clock)
        self._clock = clock
        self._first_seen = FirstSeen(clock)
        self._responder = V2cResponder(
            (c.encode() for c in settings.communities), self.stats, settings.max_response_size
        )
        self._view: MibView | None = None
        self._snapshot: Snapshot | None = None
        self._quiet: set[RsRef] | None = (
            None  # found at start with no verdict yet: a first "dead" is not news (notify.changes)
        )
        self._view_time = 0.0
        self._sender: TrapSender | Any = None  # TrapSender, or notify_v3.V3TrapSender
        self._watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # asyncio keeps only weak references to tasks
        self._refreshing: asyncio.Future[MibView] | None = None
        self._engine: pysnmp_engine.SnmpEngine | None = None
        self._transport: Any = None
        s = self.stats
        self._counters = Counters(
            in_packets=lambda: s.in_packets,
            bad_versions=lambda: s.bad_versions,
            bad_community_names=lambda: s.bad_community_names,
            bad_community_uses=lambda: s.bad_community_uses,
            asn_parse_errors=lambda: s.asn_parse_errors,
            silent_drops=lambda: s.silent_drops,
        )

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Read the first snapshot and bind the socket; SnmpAgentError if the address is unusable."""
        host, port, version = self.settings.host_port
        if (self.settings.users or self.settings.trap_user) and not crypto_available():
            raise SnmpAgentError(
                f"SNMP agent on {self.settings.listen}: v3 users need the Python package 'cryptography' (AES), not installed"
            )
        if self.settings.trap_targets:
            self._sender = self._make_sender()
        await self.refresh()
        cls = _transport_class(version)
        transport = cls()
        transport.agent = self
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise SnmpAgentError(f"SNMP agent cannot listen on {self.settings.listen}: {exc.strerror}") from None
        sock.setblocking(False)
        transport.open_server_mode(sock=sock)
        await transport._lport  # the endpoint exists once this future is done
        self._transport = transport
        if self.settings.users:
            self._engine = make_engine(self.settings.users, self.current_view, self.settings.engine_id)
            domain = udp.DOMAIN_NAME if version == 4 else udp6.DOMAIN_NAME
            pysnmp_config.add_transport(self._engine, domain, transport)
        if self._sender is not None:
            self._watch = asyncio.ensure_future(self._watch_loop())
        log.info(
            "SNMP agent on %s: v2c %s, v3 users %s, base %s",
            self.address_text,
            "on" if self.settings.communities else "off",
            ", ".join(u.name for u in self.settings.users) or "none",
            ".".join(map(str, self.settings.base_oid)),
        )

    def _make_sender(self) -> Any:
        targets = [parse_endpoint(t) for t in self.settings.trap_targets]
        if self.settings.trap_user is not None:
            from lvsguard.exporter.snmp.notify_v3 import V3TrapSender  # pysnmp's originator, only when asked for

            return V3TrapSender(
                targets,
                self.settings.trap_user,
                self.settings.base_oid,
                self.uptime,
                engine_id=self.settings.engine_id,
                inform=self.settings.inform,
            )
        return TrapSender(
            targets, self.settings.trap_community, self.settings.base_oid, self.uptime, inform=self.settings.inform
        )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._sender is not None:
            self._sender.close()
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
        elif self._transport is not None:
            self._transport.close_transport()
        self._transport = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when ``listen`` asked for port 0."""
        if self._transport is None or self._transport.transport is None:
            raise SnmpAgentError("SNMP agent is not started")
        sockname = self._transport.transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    @property
    def address_text(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # --- snapshots ----------------------------------------------------------------

    def current_view(self) -> MibView:
        if self._view is None:
            raise SnmpAgentError("SNMP agent has no snapshot yet")
        return self._view

    def _build(self) -> tuple[Snapshot, MibView]:
        snap = self.provider()
        return snap, MibView(
            build_subtrees(snap, self.settings.base_oid, self.uptime, self._first_seen, self._counters)
        )

    async def refresh(self) -> MibView:
        """A fresh view, shared by every caller while one is being built; notifications go out from here."""
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        loop = asyncio.get_running_loop()
        self._refreshing = future = loop.create_future()
        view = self._view if self._view is not None else MibView([])
        try:
            snap, view = await loop.run_in_executor(None, self._build)
            self._notify(snap)
            self._snapshot = snap
        except Exception as exc:
            log.error("SNMP snapshot failed, serving the previous one: %s: %s", type(exc).__name__, exc)
        finally:
            # whatever happened, the waiters get a view and the next request may try again
            self._view, self._view_time = view, self._clock()
            self._refreshing = None
            future.set_result(view)
        return view

    def _notify(self, snap: Snapshot) -> None:
        if self._sender is None:
            return
        found = changes(self._snapshot, snap, self.settings.base_oid, self._quiet or frozenset())
        self._quiet = quiet_after(snap, self._quiet)
        if found:
            self._spawn(self._sender.send_all(found))

    async def _watch_loop(self) -> None:
        """With notification targets, read a snapshot every max_age even when nobody polls."""
        while True:
            await asyncio.sleep(self.settings.max_age)
            if not self._fresh():
                await self.refresh()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fresh(self) -> bool:
        return self._view is not None and self._clock() - self._view_time < self.settings.max_age

    # --- datagrams ----------------------------------------------------------------

    def datagram_received(self, transport: Any, data: bytes, address: Any) -> None:
        """Entry point of every datagram; answers now, or once the refreshed view is there."""
        self.stats.in_packets += 1
        if self._fresh():
            self._handle(transport, data, address)
        else:
            self._spawn(self._handle_after_refresh(transport, data, address))

    async def _handle_after_refresh(self, transport: Any, data: bytes, address: Any) -> None:
        await self.refresh()
        self._handle(transport, data, address)

    def _handle(self, transport: Any, data: bytes, address: Any) -> None:
        try:
            try:
                version = peek_version(data)
            except BerError:
                self.stats.asn_parse_errors += 1
                return
            if version == VERSION_V3:
                self._handle_v3(transport, data, address)
                return
            answer = self._responder.respond(data, self.current_view())
            if answer is not None and transport.transport is not None:
                transport.transport.sendto(answer, address)
        except Exception as exc:
            self.stats.internal_errors += 1
            log.error("SNMP agent: error on a packet from %s: %s: %s", address, type(exc).__name__, exc)

    def _handle_v3(self, transport: Any, data: bytes, address: Any) -> None:
        self.stats.v3_messages += 1
        if self._engine is None:
            self.stats.bad_versions += 1
            return
        try:
            transport._callback_function(transport, transport.normalize_address(address), data)
        except Exception as exc:
            self.stats.v3_rejected += 1
            log.debug("SNMP agent: v3 message from %s rejected by pysnmp: %s: %s", address, type(exc).__name__, exc)


def quiet_after(new: Snapshot, quiet: set[RsRef] | None) -> set[RsRef] | None:
    """The real servers whose first verdict of dead is no news, after ``new``; None until a table was read.

    On the first snapshot with a table: every real server with no verdict yet. A restarted
    exporter finds the same servers, and those already dead were announced by
    the process before it. A real server leaves the set once it has a verdict
    (from then on transitions are news) or leaves the table; one added later
    never enters it, so its first "dead" is sent.
    """
    if new.table is None:
        return quiet
    states = new.real_servers
    present = {(svc.key, rs.key) for svc in new.table.services for rs in svc.real_servers}
    if quiet is None:
        return {ref for ref in present if states.get(ref) is None or states[ref].health is Health.UNKNOWN}
    return {ref for ref in quiet if ref in present and (ref not in states or states[ref].health is Health.UNKNOWN)}
