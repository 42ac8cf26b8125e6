"""``tcp``: the real server accepts a connection on the port (keepalived's TCP_CHECK).

A bare non-blocking socket and ``loop.sock_connect``: no stream objects, so a
probe costs one socket, one connect and one close.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from exporter.probes.result import ProbeResult, Target, guarded


@dataclass(frozen=True, slots=True)
class TCPChecker:
    kind = "tcp"

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"connect to {target}", lambda: self._connect(target))

    async def _connect(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        sock = socket.socket(target.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (target.address, target.port))
        finally:
            sock.close()
        return ProbeResult(True, f"connected to {target}", time.perf_counter() - started)
