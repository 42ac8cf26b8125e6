"""``udp``: send a payload, expect a reply (matching a regex when one is given).

A UDP port that is closed answers with ICMP port unreachable, which a
connected datagram socket reports as ConnectionRefusedError: a fast failure.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from lvsguard.exporter.probes.result import ProbeResult, Target, guarded


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, reply: asyncio.Future[bytes]):
        self.reply = reply

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def exchange(target: Target, payload: bytes) -> bytes:
    """Send ``payload`` to ``target`` and return the first datagram that comes back."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _OneReply(reply), remote_addr=(target.address, target.port)
    )
    try:
        transport.sendto(payload)
        return await reply
    finally:
        transport.close()


@dataclass(frozen=True, slots=True)
class UDPChecker:
    kind = "udp"
    payload: bytes = b"lvsguard-probe\n"
    expect: re.Pattern[bytes] | None = None  # None: any reply

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"udp {target}", lambda: self._send(target))

    async def _send(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        data = await exchange(target, self.payload)
        took = time.perf_counter() - started
        if self.expect is not None and not self.expect.search(data):
            return ProbeResult(
                False,
                f"udp {target}: reply {data[:40]!r} does not match {self.expect.pattern!r}",
                took,
                "ReplyMismatch",
            )
        return ProbeResult(True, f"udp {target}: {len(data)} bytes back", took)
