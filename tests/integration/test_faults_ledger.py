"""The ledger locked by another process: clear 503s that Alertmanager retries, nothing half done.

Host-side: the app over the fake kernel, a real SQLite file, and a second
process holding an exclusive lock on it (as a backup tool or an operator's
``sqlite3`` shell could). The actuator waits SQLite's busy timeout, answers
503 with Retry-After naming the ledger, writes nothing to the kernel, and
works again as soon as the lock is gone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from lvsguard.actuator.app import create_app
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.model import ServiceKey
from tests.fakes import FakeKernel, am_alert, am_payload, service

TOKEN = "ledger-fault-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEB = ServiceKey.parse("TCP 192.0.2.10:80")

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()          # hold the lock until the test closes our stdin
conn.execute("ROLLBACK")
"""


@pytest.fixture
def app(tmp_path: Path) -> tuple[Flask, FakeKernel]:
    kernel = FakeKernel([service(str(WEB), ("10.0.1.1:80", 5), ("10.0.1.2:80", 5), ("10.0.1.3:80", 5))])
    flask_app = create_app(
        ActuatorSettings(tokens={"t": TOKEN}, hold_down=0.0), kernel=kernel, ledger_path=str(tmp_path / "actuator.db")
    )
    assert flask_app.test_client().get("/api/v1/ledger").status_code == 200  # the ledger exists before it is locked
    return flask_app, kernel


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(tmp_path / "actuator.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.communicate("", timeout=30)


def weights(kernel: FakeKernel) -> list[int]:
    return [rs.weight for rs in kernel.read().services[0].real_servers]


def test_a_locked_ledger_is_a_503_and_nothing_is_written(
    app: tuple[Flask, FakeKernel], locked: subprocess.Popen[str]
) -> None:
    flask_app, kernel = app
    client = flask_app.test_client()
    target: dict[str, Any] = {"service": str(WEB), "real_server": "10.0.1.1:80"}

    r = client.post("/api/v1/quarantine", json=target, headers=AUTH)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.get_json() == {"error": "ledger: database is locked"}
    payload = am_payload(am_alert("fp1", service=str(WEB), real_server="10.0.1.2:80", lvsguard_action="quarantine"))
    assert (
        client.post("/webhook/alertmanager", json=payload, headers=AUTH).status_code == 503
    )  # Alertmanager retries it
    assert weights(kernel) == [5, 5, 5] and kernel.writes == []

    locked.communicate("", timeout=30)  # the lock goes away
    r = client.post("/api/v1/quarantine", json=target, headers=AUTH)
    assert (r.status_code, r.get_json()["result"]) == (200, "applied")
    assert client.post("/webhook/alertmanager", json=payload, headers=AUTH).status_code == 200
    assert weights(kernel) == [0, 0, 5]
    holds = client.get("/api/v1/ledger?active=true").get_json()["holds"]
    assert sorted(h["real_server"] for h in holds) == ["10.0.1.1:80", "10.0.1.2:80"]
