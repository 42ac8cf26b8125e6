"""Test-session rules shared by unit and kernel tests.

Kernel tests (marker ``kernel``) need a kernel with IPVS and root. On a
development host without IPVS they are skipped; ``make test`` and CI run them
inside the lab VM with ``LVSGUARD_REQUIRE_KERNEL=1``, where a missing IPVS is
a failure, never a skip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `lab` is a top-level directory of the checkout, not installed
    sys.path.insert(0, str(ROOT))


def kernel_available() -> bool:
    return os.path.exists("/proc/net/ip_vs") and os.geteuid() == 0


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("LVSGUARD_REQUIRE_KERNEL") == "1" and not kernel_available():
        pytest.exit("LVSGUARD_REQUIRE_KERNEL=1 but this kernel has no IPVS (or we are not root)", returncode=3)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if kernel_available():
        return
    skip = pytest.mark.skip(reason="needs a kernel with IPVS and root (run it in the lab VM: make test)")
    for item in items:
        if item.get_closest_marker("kernel"):
            item.add_marker(skip)
