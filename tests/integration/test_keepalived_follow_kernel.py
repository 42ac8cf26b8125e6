"""Real keepalived (Debian's) runs the snippet's lines in the lab VM: ``lvsguard keepalived follow`` keeps the role file.

A director namespace with one interface; keepalived (VRRP only) on the config
that ``lvsguard keepalived snippet`` printed, unedited, with the follower run
from a world-readable install (keepalived runs its scripts with a clean
environment). Alone on its link the instance becomes MASTER, and the role file
says so; a ``1`` in the failover track file puts it in FAULT, and the role file
follows. This is what the other director's actuator reads before it fails over.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.topology import in_lab_vm
from lvsguard.keepalived import read_role_file
from tests.waiting import wait_for

pytestmark = pytest.mark.kernel

NETNS = "lvsg-kad"
ROOT = Path(__file__).resolve().parents[2]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture
def director() -> Iterator[Path]:
    """A namespace with the VRRP link ``vrrp0`` (a veth with an address); yields a directory for files."""
    if not (os.path.exists("/proc/net/ip_vs") and os.geteuid() == 0):
        pytest.skip("needs a kernel with IPVS and root (run it in the lab VM: make test)")
    if not in_lab_vm():
        pytest.skip("runs keepalived: inside lab/vm.sh only")
    if shutil.which("keepalived") is None and not os.path.exists("/usr/sbin/keepalived"):
        pytest.fail("keepalived is not installed (apt-get install keepalived)")
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    sh("ip", "netns", "add", NETNS)
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")
    sh("ip", "-n", NETNS, "link", "add", "vrrp0", "type", "veth", "peer", "name", "vrrp0p")  # multicast, ARP
    sh("ip", "-n", NETNS, "addr", "add", "10.99.0.1/24", "dev", "vrrp0")
    sh("ip", "-n", NETNS, "link", "set", "vrrp0p", "up")
    sh("ip", "-n", NETNS, "link", "set", "vrrp0", "up")
    top = Path(tempfile.mkdtemp(prefix="lvsguard-keepalived-", dir="/tmp"))
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


def test_keepalived_runs_the_follower_and_the_role_file_follows_vrrp(director: Path, installed_python: Path) -> None:
    top = director
    role, track = top / "state", top / "failover"
    track.write_text("0\n")
    config = top / "lvsguard.yaml"
    config.write_text(
        "services:\n"
        "  - {name: web, service: 'TCP 10.99.0.100:80'}\n"
        "actuator:\n"
        f"  role_file: {role}\n"
        f"  failover_track_file: {track}\n"
    )
    snippet = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvsguard.cli",
            "keepalived",
            "snippet",
            "--config",
            str(config),
            "--interface",
            "vrrp0",
            "--role-fifo",
            str(top / "role.fifo"),
            "--lvsguard",
            f"{installed_python} -m lvsguard.cli",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    conf = top / "keepalived.conf"
    conf.write_text(snippet)
    log = (top / "keepalived.log").open("w")
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            NETNS,
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "-f",
            str(conf),
            "-p",
            str(top / "keepalived.pid"),
            "-r",
            str(top / "vrrp.pid"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def keepalived_log() -> str:
            return (top / "keepalived.log").read_text()

        wait_for(
            lambda: read_role_file(str(role)) == "master",
            "the role file to say MASTER",
            timeout=30,
            detail=keepalived_log,
        )
        assert role.read_text() == "MASTER\n", keepalived_log()
        track.write_text("1\n")  # what the actuator's failover writes
        wait_for(
            lambda: read_role_file(str(role)) == "fault",
            "the role file to say FAULT",
            timeout=30,
            detail=keepalived_log,
        )
        track.write_text("0\n")
        wait_for(
            lambda: read_role_file(str(role)) in ("backup", "master"),
            "the instance to come back",
            timeout=30,
            detail=keepalived_log,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    assert "Traceback" not in (top / "keepalived.log").read_text()
