"""``http`` and ``https``: a request whose status is in the expected set and whose body matches a regex and an MD5.

Plain ``http`` has a hot path for the engine, ``begin``: the request on a bare
socket in the engine's epoll set (connect, send, read until the answer is
complete), parsed by the same parser as the coroutine client. ``https`` and
one-off checks use ``check`` (asyncio streams, TLS).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from lvsguard.exporter.probes import httpclient
from lvsguard.exporter.probes.poller import IN, Poller
from lvsguard.exporter.probes.result import ProbeResult, Target, failed, guarded
from lvsguard.exporter.probes.tcp import ABORT, Connect, Done

DEFAULT_STATUSES = frozenset(range(200, 400))


def tls_context(verify: bool, ca_file: str | None = None) -> ssl.SSLContext:
    """A client context; ``verify=False`` accepts any certificate (self-signed real servers)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True, slots=True)
class HTTPChecker:
    """``tls`` makes it https. ``host`` is the Host header ("" = the target), ``sni`` the TLS server name.

    ``digest`` is the lowercase MD5 hex the body must have (keepalived's ``digest``; "" = any).
    """

    method: str = "GET"
    path: str = "/"
    host: str = ""
    statuses: frozenset[int] = DEFAULT_STATUSES
    body: re.Pattern[bytes] | None = None
    tls: ssl.SSLContext | None = None
    sni: str | None = None
    digest: str = ""

    @property
    def kind(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def begin(self) -> Any:
        """The engine's hot path for plain http; None for https (TLS runs on asyncio streams)."""
        return self._begin if self.tls is None else None

    def _begin(self, poller: Poller, target: Target, done: Done, token: Any) -> Exchange:
        return Exchange(self, poller, target, done, token)

    def judge(self, answer: httpclient.Response, took: float) -> ProbeResult:
        """The result of an answer: its status in the expected set, its body matching."""
        what = f"{self.method} {self.path}: {answer.status} {answer.reason}".rstrip()
        if answer.status not in self.statuses:
            return ProbeResult(False, f"{what}, status not expected", took, "UnexpectedStatus")
        if self.body is not None and not self.body.search(answer.body):
            return ProbeResult(
                False,
                f"{what}, body does not match {self.body.pattern.decode(errors='replace')!r}",
                took,
                "BodyMismatch",
            )
        if self.digest:
            if answer.truncated:
                return ProbeResult(
                    False,
                    f"{what}, body longer than {httpclient.MAX_BODY} bytes: no digest is taken of it",
                    took,
                    "BodyTooLong",
                )
            got = hashlib.md5(answer.body, usedforsecurity=False).hexdigest()
            if got != self.digest:
                return ProbeResult(False, f"{what}, body MD5 {got}, expected {self.digest}", took, "DigestMismatch")
        return ProbeResult(True, what, took)

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"{self.method} {self.kind}://{target}{self.path}", lambda: self._get(target))

    async def _get(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        answer = await httpclient.request(
            target.address,
            target.port,
            method=self.method,
            path=self.path,
            host_header=self.host,
            tls=self.tls,
            sni=self.sni,
        )
        return self.judge(answer, time.perf_counter() - started)


class Exchange(Connect):
    """One plain-http probe in flight on the engine's poller: connect (as tcp), send, read, judge."""

    __slots__ = ("checker", "data")

    def __init__(self, checker: HTTPChecker, poller: Poller, target: Target, done: Done, token: Any):
        self.checker = checker
        self.data = b""
        super().__init__(poller, target, done, token)

    def _what(self) -> str:
        c = self.checker
        return f"{c.method} http://{self.target}{c.path}"

    def _connected(self, code: int) -> None:
        sock = self.sock
        try:
            if code:
                raise OSError(code, os.strerror(code))
            c, t = self.checker, self.target
            sock.send(httpclient.request_bytes(t.address, t.port, c.method, c.path, c.host))
            self.poller.rewatch(self.fd, IN, self._readable)
        except OSError as exc:
            self._fail(exc)

    def _readable(self, events: int) -> None:
        sock = self.sock
        eof = False
        try:
            while True:
                try:
                    more = sock.recv(httpclient.READ_SIZE)
                except BlockingIOError:
                    break
                if not more:
                    eof = True
                    break
                self.data += more
                if len(self.data) > httpclient.MAX_HEAD + httpclient.MAX_BODY:
                    eof = True
                    break
            answer = httpclient.parse_response(self.data, self.checker.method, httpclient.MAX_BODY, eof)
        except (OSError, ValueError) as exc:
            self._fail(exc)
            return
        if answer is None:
            self.poller.rewatch(self.fd, IN, self._readable)
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
        sock.close()
        self.done(self.token, self.checker.judge(answer, self.poller.now - self.started))

    def _fail(self, exc: BaseException) -> None:
        if self.fd >= 0:
            self.poller.forget(self.fd)
            self.sock.close()
        self.done(self.token, failed(exc, self.started, self._what()))

    _failed_start = _fail
