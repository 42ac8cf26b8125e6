"""Wait for the kernel (or a peer) to show what a test or the demo expects.

IPVS folds its per-CPU counters on a 2-second estimator tick, Prometheus scrapes
on its interval, keepalived and Alertmanager act on theirs: a single read right
after the action proves nothing. ``poll`` reads until the condition holds or the
time runs out, and its failure says what was last seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    what: str,
    probe: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float = 15.0,
    interval: float = 0.3,
    *,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until ``done(result)``; AssertionError naming ``what`` and the last result after ``timeout`` s.

    ``detail``: what else the failure should show (the state of the peers), called only then.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: still {result!r} after {timeout:.0f} s" + (f"\n{detail()}" if detail else "")
            )
        time.sleep(interval)
