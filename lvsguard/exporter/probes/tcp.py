"""``tcp``: the real server accepts a connection on the port (keepalived's TCP_CHECK).

Two ways to run the same check. The engine's hot path, ``begin``, is a bare
non-blocking socket in the engine's epoll set (``poller.Poller``): no future,
no task, no timer of its own (the engine keeps the deadlines), and no clock read of its
own (its start and end times are the poller's ``now``, read once per batch), so
a probe costs ``socket``, ``connect``, one ``epoll_ctl``, ``setsockopt`` and
``close`` (and ``getsockopt`` for the error of a failed connect).
``check`` is the same connect as a coroutine, for one-off checks and for
platforms without epoll.

The close is an abortive one (SO_LINGER 0: a reset, as HAProxy's health checks
do): the director keeps no TIME_WAIT socket per probe, which at thousands of
probes a second would fill its port range, and the real server's application
never sees a request.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lvsguard.exporter.probes.poller import FAILED, OUT, Poller
from lvsguard.exporter.probes.result import ProbeResult, Target, failed, guarded

ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)

Done = Callable[[Any, ProbeResult], None]  # (the engine's token, the result)


def error_name(code: int) -> str:
    """The OSError subclass name of an errno (``ConnectionRefusedError``), as the coroutine path reports it."""
    return type(OSError(code, "")).__name__


def open_nonblocking(target: Target) -> _socket.socket:
    """A non-blocking stream socket for ``target`` (the C-level class: no Python wrapper to build per probe)."""
    sock = _socket.socket(socket.AF_INET6 if ":" in target.address else socket.AF_INET, socket.SOCK_STREAM | _NONBLOCK)
    if not _NONBLOCK:
        sock.setblocking(False)
    return sock


class Connect:
    """One tcp probe in flight on the engine's poller; ``cancel()`` drops it without a result.

    Its connect is also the start of an http probe (``http.Exchange``), which
    says what a finished connect (``_connected``) and a failed start do.
    """

    __slots__ = ("sock", "fd", "target", "done", "token", "started", "poller")

    def __init__(self, poller: Poller, target: Target, done: Done, token: Any):
        self.poller = poller
        self.target = target
        self.done = done
        self.token = token
        self.started = poller.now
        self.fd = -1
        try:
            self.sock = sock = open_nonblocking(target)
            self.fd = sock.fileno()
            code = sock.connect_ex((target.address, target.port))
            if code in IN_PROGRESS:
                poller.watch(self.fd, OUT, self._writable)
                return
        except OSError as exc:  # no descriptor left, an address the family refuses
            self._failed_start(exc)
            return
        self._connected(code)

    def _writable(self, events: int) -> None:
        # writable without an error event: connected (the kernel flags a pending SO_ERROR as EPOLLERR), no getsockopt
        self._connected(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if events & FAILED else 0)

    def _failed_start(self, exc: OSError) -> None:
        if self.fd >= 0:
            self.sock.close()
        self.done(self.token, failed(exc, self.started, f"connect to {self.target}"))

    def _connected(self, code: int) -> None:
        """The connect finished: ``code`` is 0 or its errno."""
        sock = self.sock
        took = self.poller.now - self.started
        if code == 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
            sock.close()
            self.done(self.token, ProbeResult(True, f"connected to {self.target}", took))
        else:
            sock.close()
            self.done(
                self.token, ProbeResult(False, f"connect to {self.target}: {os.strerror(code)}", took, error_name(code))
            )

    def cancel(self) -> None:
        self.poller.forget(self.fd)
        self.sock.close()


@dataclass(frozen=True, slots=True)
class TCPChecker:
    kind = "tcp"

    def begin(self, poller: Poller, target: Target, done: Done, token: Any) -> Connect:
        """Start one probe on the engine's poller; ``done(token, result)`` is called once unless cancelled."""
        return Connect(poller, target, done, token)

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"connect to {target}", lambda: self._connect(target))

    async def _connect(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        sock = socket.socket(target.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (target.address, target.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
        finally:
            sock.close()
        return ProbeResult(True, f"connected to {target}", time.perf_counter() - started)
