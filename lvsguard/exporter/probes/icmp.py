"""``icmp``: an echo request answered by an echo reply.

Unprivileged ICMP datagram sockets (``SOCK_DGRAM, IPPROTO_ICMP``) are used when
``net.ipv4.ping_group_range`` allows our group; a raw socket (needs
CAP_NET_RAW) otherwise. Either socket is connected to the target, so the
kernel hands it only the target's packets.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import time
from dataclasses import dataclass

from lvsguard.exporter.probes.result import ProbeResult, Target, guarded

ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
PROTO = {socket.AF_INET: socket.IPPROTO_ICMP, socket.AF_INET6: socket.IPPROTO_ICMPV6}
_sequence = itertools.count(1)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(family: socket.AddressFamily, ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, ident, seq)
    if family == socket.AF_INET6:  # the kernel fills the ICMPv6 checksum
        return header + payload
    return struct.pack("!BBHHH", ECHO_REQUEST[family], 0, checksum(header + payload), ident, seq) + payload


def parse_reply(family: socket.AddressFamily, packet: bytes, raw: bool) -> tuple[int, int, int] | None:
    """(type, ident, seq) of an ICMP packet; a raw IPv4 socket's packet starts with the IP header."""
    if raw and family == socket.AF_INET and packet:
        packet = packet[(packet[0] & 0x0F) * 4 :]
    if len(packet) < 8:
        return None
    kind, _, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    return kind, ident, seq


def open_socket(family: socket.AddressFamily) -> tuple[socket.socket, bool]:
    """An ICMP socket and whether it is raw (datagram first, raw when datagram ICMP is not allowed)."""
    try:
        return socket.socket(family, socket.SOCK_DGRAM, PROTO[family]), False
    except PermissionError:
        return socket.socket(family, socket.SOCK_RAW, PROTO[family]), True


@dataclass(frozen=True, slots=True)
class ICMPChecker:
    kind = "icmp"
    payload: bytes = b"lvsguard-probe"

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"icmp echo {target.address}", lambda: self._ping(target))

    async def _ping(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        family = target.family
        sock, raw = open_socket(family)
        loop = asyncio.get_running_loop()
        try:
            sock.setblocking(False)
            sock.connect((target.address, 0))  # a datagram/raw connect only sets the peer: it does not block
            seq = next(_sequence) & 0xFFFF
            ident = os.getpid() & 0xFFFF
            await loop.sock_sendall(sock, echo_request(family, ident, seq, self.payload))
            while True:
                parsed = parse_reply(family, await loop.sock_recv(sock, 2048), raw)
                if parsed is None:
                    continue
                kind, got_ident, got_seq = parsed
                # a datagram socket's identifier is the kernel's (its local "port"): match on seq only
                if kind == ECHO_REPLY[family] and got_seq == seq and (not raw or got_ident == ident):
                    break
        finally:
            sock.close()
        return ProbeResult(True, f"echo reply from {target.address}", time.perf_counter() - started)
