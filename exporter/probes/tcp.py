"""``tcp``: the real server accepts a connection on the port (keepalived's TCP_CHECK).

A bare non-blocking socket and ``loop.sock_connect``: no stream objects, so a
probe costs one socket, one connect and one close. The close is an abortive
one (SO_LINGER 0: a reset, as HAProxy's health checks do): the director keeps
no TIME_WAIT socket per probe, which at thousands of probes a second would
fill its port range, and the real server's application never sees a request.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass

from exporter.probes.result import ProbeResult, Target, guarded

_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


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
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
        finally:
            sock.close()
        return ProbeResult(True, f"connected to {target}", time.perf_counter() - started)
