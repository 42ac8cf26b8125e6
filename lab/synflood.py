"""Raw TCP segments from spoofed client addresses: a SYN flood, and filler entries for the connection table.

The segments are sent from the lab's client namespace through a raw socket,
with source addresses of ``SPOOF_PREFIX`` (IPv4) or ``SPOOF_PREFIX6`` (IPv6),
on no lab link, so the real servers' answers go nowhere, as a flood's do. The
family is the destination's. IPVS schedules each SYN like a client's, so the
director's connection table fills with SYN_RECV entries (``syn_flood``), or
with ESTABLISHED ones when an ACK follows and the real servers are told to
drop the spoofed range (``fill``, IPv4).
"""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from lvsguard.ipvs.netns import entered

SPOOF_PREFIX = "198.51.101."  # TEST-NET-2's neighbour in the lab: on no link
SPOOF_PREFIX6 = "2001:db8:5f::"  # in the documentation prefix, on no lab link
NOBODY = "198.51.100.99"  # on the lab's client LAN, answered by nobody
NOBODY6 = "2001:db8:c::99"
SYN, ACK = 0x02, 0x10


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def segment(src: str, sport: int, dst: str, dport: int, flags: int, seq: int = 1000, ack: int = 0) -> bytes:
    """An IPv4 or IPv6 packet (``dst``'s family) with one TCP segment (no options, no payload), checksums filled in."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0)
    if ":" in dst:
        s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
        pseudo = s + d + struct.pack("!I3xB", len(tcp), socket.IPPROTO_TCP)
    else:
        s, d = socket.inet_aton(src), socket.inet_aton(dst)
        pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    if ":" in dst:  # version 6, no traffic class or flow label; next header TCP, hop limit 64
        return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64, s, d) + tcp
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0, s, d) + tcp


def spoofed(i: int, family: int = 4) -> tuple[str, int]:
    """The ``i``-th spoofed client address and port of ``family`` (60 000 ports per address)."""
    prefix = SPOOF_PREFIX6 if family == 6 else SPOOF_PREFIX
    return prefix + str(1 + i // 60000), 1024 + i % 60000


def send(netns: str, packets: Iterable[tuple[bytes, str]]) -> int:
    """Send (packet, destination) pairs from a raw socket in ``netns``; how many were sent.

    Each packet goes out whole, its IP header included: an ``IPPROTO_RAW``
    socket implies ``IP_HDRINCL`` (IPv4) and ``IPV6_HDRINCL`` (IPv6, Linux 4.5).
    """
    n = 0
    socks: dict[int, socket.socket] = {}
    with entered(netns):
        try:
            for packet, dst in packets:
                family = socket.AF_INET6 if ":" in dst else socket.AF_INET
                if family not in socks:
                    socks[family] = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
                socks[family].sendto(packet, (dst, 0))
                n += 1
        finally:
            for sock in socks.values():
                sock.close()
    return n


def syn_flood(netns: str, vip: str, port: int, start: int, count: int) -> int:
    """``count`` SYNs to ``vip:port`` (either family) from spoofed clients ``start``..``start+count-1``."""
    family = 6 if ":" in vip else 4
    return send(netns, ((segment(*spoofed(i, family), vip, port, SYN), vip) for i in range(start, start + count)))


def fill(client_netns: str, real_server_netns: Iterable[str], vip: str, port: int, count: int, start: int = 0) -> int:
    """``count`` ESTABLISHED entries for ``vip:port``: a SYN and an ACK each; the real servers drop the spoofed range."""
    for netns in real_server_netns:
        subprocess.run(
            ["ip", "netns", "exec", netns, "iptables-legacy", "-I", "INPUT", "-s", SPOOF_PREFIX + "0/24", "-j", "DROP"],
            check=True,
        )

    def packets() -> Iterable[tuple[bytes, str]]:
        for i in range(start, start + count):
            src, sport = spoofed(i)
            yield segment(src, sport, vip, port, SYN, 1000), vip
            yield segment(src, sport, vip, port, ACK, 1001, 1), vip

    return send(client_netns, packets()) // 2


@contextmanager
def routed(director_netns: str) -> Iterator[None]:
    """Route the spoofed ranges (both families) out of the director, to an address nobody has on the client LAN.

    A director has a route back to any client (its default route); the lab's
    has none to these ranges, so it would drop the real servers' SYN-ACKs, and
    conntrack, which sends an entry's events when a packet of it leaves,
    would never report those handshakes answered. Routed, the SYN-ACKs leave
    and die at ARP (IPv4) or neighbour discovery (IPv6), as a flood's answers
    die beyond a real director.
    """
    routes = [("-4", SPOOF_PREFIX + "0/24", NOBODY), ("-6", SPOOF_PREFIX6 + "/64", NOBODY6)]
    added: list[tuple[str, str]] = []
    try:
        for family, prefix, via in routes:
            subprocess.run(
                ["ip", "netns", "exec", director_netns, "ip", family, "route", "add", prefix, "via", via], check=True
            )
            added.append((family, prefix))
        yield
    finally:
        for family, prefix in added:
            subprocess.run(["ip", "netns", "exec", director_netns, "ip", family, "route", "del", prefix], check=True)
