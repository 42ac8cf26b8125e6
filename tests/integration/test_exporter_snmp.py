"""`lvsguard exporter` with an `snmp` section serves the SNMP agent beside /metrics (host side, real net-snmp client).

The kernel values over SNMP are checked in the lab (test_snmp_kernel.py); this
checks the wiring of the real process: the config section starts the agent,
`--snmp-listen` moves it, a real `snmpget` gets an answer, and SIGTERM stops both.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("snmpget") is None, reason="net-snmp's snmpget is not installed (Debian package snmp)")
def test_exporter_starts_the_snmp_agent_from_the_config(tmp_path: Path) -> None:
    http_port, snmp_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    config = tmp_path / "lvsguard.yaml"
    config.write_text("snmp:\n  listen: 127.0.0.1:1\n  communities: [lvs-test]\n")  # --snmp-listen overrides the port
    log = (tmp_path / "exporter.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lvsguard.cli",
            "exporter",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{http_port}",
            "--snmp-listen",
            f"127.0.0.1:{snmp_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as reply:
                    assert b"lvsguard_exporter_info" in reply.read()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "exporter.log").read_text()
                assert time.monotonic() < deadline, "the exporter did not serve /metrics"
                time.sleep(0.2)
        answer = subprocess.run(
            [
                "snmpget",
                "-v2c",
                "-c",
                "lvs-test",
                "-On",
                "-t",
                "2",
                "-r",
                "2",
                f"127.0.0.1:{snmp_port}",
                "1.3.6.1.2.1.1.1.0",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.startswith('.1.3.6.1.2.1.1.1.0 = STRING: "lvsguard')
        wrong = subprocess.run(
            ["snmpget", "-v2c", "-c", "wrong", "-t", "1", "-r", "0", f"127.0.0.1:{snmp_port}", "1.3.6.1.2.1.1.1.0"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert wrong.returncode != 0 and "Timeout" in wrong.stderr  # a wrong community gets nothing
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        log.close()
    assert "snmp_agent_started" in (tmp_path / "exporter.log").read_text()
