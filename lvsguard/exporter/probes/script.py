"""``script``: run a command; its exit code is the verdict (keepalived's MISC_CHECK with misc_dynamic).

Exit 0: up. Exit 1: down. Exit 2-255: up, with weight ``code - 2``. Killed by
a signal: down. ``{address}`` and ``{port}`` in the arguments become the
target's, and the environment carries ``LVSGUARD_ADDRESS``/``LVSGUARD_PORT``.
The command runs in its own process group: on timeout (or when the engine
stops) the whole group gets SIGKILL and is reaped, so no zombie is left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

from lvsguard.exporter.probes.result import ProbeResult, Target, guarded


def verdict(code: int) -> tuple[bool, int | None]:
    """(up, weight) of an exit code; a negative code (killed by a signal) is down."""
    if code == 0:
        return True, None
    if 2 <= code <= 255:
        return True, code - 2
    return False, None


@dataclass(frozen=True, slots=True)
class ScriptChecker:
    kind = "script"
    command: tuple[str, ...]

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"script {self.command[0]}", lambda: self._run(target))

    async def _run(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        argv = [arg.replace("{address}", target.address).replace("{port}", str(target.port)) for arg in self.command]
        env = {**os.environ, "LVSGUARD_ADDRESS": target.address, "LVSGUARD_PORT": str(target.port)}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled (timeout or shutdown): kill the group, then reap
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await asyncio.shield(proc.wait())
        up, weight = verdict(code)
        took = time.perf_counter() - started
        how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        what = f"script {argv[0]}: {how}" + (f", weight {weight}" if weight is not None else "")
        return ProbeResult(up, what, took, "" if up else "ScriptFailed", weight=weight)
