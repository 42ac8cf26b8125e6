"""What a check returns, and the interface every check type implements.

A failed check is a value, not an exception (seesaw's ``healthcheck.Result``):
``ProbeResult(ok=False, message=..., error=...)``. Checks that report a load
(agent, script, prometheus) also carry a weight, as a percentage of the real
server's full weight or as an absolute weight.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Target:
    """Where a check goes: the real server's address and the port to probe."""

    address: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.address else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One check's outcome.

    ``ok`` is what rise/fall counts; ``message`` says why in an operator's
    words; ``duration`` is seconds; ``error`` is the exception class name when
    the check failed on an error (``ConnectionRefusedError``, ``TimeoutError``).
    ``weight_percent`` (agent, prometheus) or ``weight`` (script, absolute as
    keepalived's misc_dynamic) is set when the check reports a load.
    """

    ok: bool
    message: str
    duration: float = 0.0
    error: str = ""
    weight_percent: float | None = None
    weight: int | None = None


class Checker(Protocol):
    """A check type: probes one target once; never raises (a failure is a ProbeResult)."""

    @property
    def kind(self) -> str:
        """The check type's name as configured (``tcp``, ``http``, ``https``, ...)."""
        ...

    async def check(self, target: Target) -> ProbeResult: ...


def failed(exc: BaseException, started: float, what: str = "") -> ProbeResult:
    """The ProbeResult of a check that raised ``exc``."""
    name = type(exc).__name__
    detail = str(exc) or name
    if isinstance(exc, TimeoutError):
        detail = "timed out"
    return ProbeResult(False, f"{what}: {detail}" if what else detail, time.perf_counter() - started, name)


async def guarded(what: str, body: Callable[[], Awaitable[ProbeResult]]) -> ProbeResult:
    """``body()``, with any OSError, ValueError or timeout turned into a failed ProbeResult."""
    started = time.perf_counter()
    try:
        return await body()
    except (OSError, ValueError, TimeoutError, EOFError) as exc:
        return failed(exc, started, what)
