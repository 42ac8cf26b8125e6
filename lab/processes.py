"""Stopping the processes the lab, its tests and the benchmarks start."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate ``process`` and reap it; killed if it takes more than ``timeout`` s (a no-op once it has exited).

    SIGTERM first, so that a daemon gives back what it holds (keepalived its
    VIPs, an exporter its port); SIGKILL only for one that hangs, and it is
    always reaped, so no zombie outlives the lab.
    """
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
