"""Fixtures of the kernel tests: one lab cluster per test module.

The lab (lab.topology) is built afresh for every module that asks for ``lab``
(about 2-5 s) and torn down at the module's end, so one module's weights,
quarantines or stopped servers never leak into another, and two labs (they
share namespace names) never exist at once. Inside a module the table is
shared: tests that send traffic compare counter *differences*
(``lab.connections`` before and after) and restore any weight they change. On a host without IPVS the fixture skips; outside the lab VM it skips
unless FORCE=1 says the host is disposable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.topology import Lab, in_lab_vm
from tests import installed

_build_seconds: list[float] = []


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The running cluster: director lvs-dir1, real servers lvs-rs1..3, client lvs-cli1 (docs/lab.md)."""
    if not (os.path.exists("/proc/net/ip_vs") and os.geteuid() == 0):
        pytest.skip("needs a kernel with IPVS and root (run it in the lab VM: make test)")
    if not in_lab_vm():
        pytest.skip("builds namespaces and IPVS services: runs inside lab/vm.sh, or with FORCE=1 on a disposable host")
    cluster = Lab(real_servers=int(os.environ.get("LAB_REAL_SERVERS", "3")))
    started = time.monotonic()
    cluster.build()
    _build_seconds.append(time.monotonic() - started)
    try:
        yield cluster
    finally:
        cluster.teardown()


@pytest.fixture(scope="session")
def installed_python() -> Iterator[Path]:
    """The python of a world-readable install of lvsguard, for runs as user nobody (tests/installed.py says why)."""
    top = Path(tempfile.mkdtemp(prefix="lvsguard-installed-", dir="/tmp"))
    top.chmod(0o755)
    try:
        yield installed.install(top / "venv")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _build_seconds:
        terminalreporter.write_line(
            f"lab: cluster built {len(_build_seconds)} times, {min(_build_seconds):.1f}-{max(_build_seconds):.1f} s each"
        )
