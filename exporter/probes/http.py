"""``http`` and ``https``: a request whose status is in the expected set and whose body matches a regex."""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass

from exporter.probes import httpclient
from exporter.probes.result import ProbeResult, Target, guarded

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
    """``tls`` makes it https. ``host`` is the Host header ("" = the target), ``sni`` the TLS server name."""

    method: str = "GET"
    path: str = "/"
    host: str = ""
    statuses: frozenset[int] = DEFAULT_STATUSES
    body: re.Pattern[bytes] | None = None
    tls: ssl.SSLContext | None = None
    sni: str | None = None

    @property
    def kind(self) -> str:
        return "https" if self.tls is not None else "http"

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"{self.method} {self.kind}://{target}{self.path}", lambda: self._get(target))

    async def _get(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        answer = await httpclient.request(
            target.address, target.port, method=self.method, path=self.path, host_header=self.host, tls=self.tls, sni=self.sni
        )
        took = time.perf_counter() - started
        what = f"{self.method} {self.path}: {answer.status} {answer.reason}".rstrip()
        if answer.status not in self.statuses:
            return ProbeResult(False, f"{what}, status not expected", took, "UnexpectedStatus")
        if self.body is not None and not self.body.search(answer.body):
            return ProbeResult(False, f"{what}, body does not match {self.body.pattern.decode(errors='replace')!r}", took, "BodyMismatch")
        return ProbeResult(True, what, took)
