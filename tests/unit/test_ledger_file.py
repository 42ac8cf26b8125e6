"""The ledger file's one read from outside the actuator (``lvsguard.ledger.read_holds``), on a ledger the actuator wrote.

The writer is the real ``actuator.ledger.Ledger``, so a column renamed on one
side only fails here, not in an exporter on a director.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.targets import Target
from lvsguard.ledger import BackendRow, DrainRow, HoldRow, read_holds
from lvsguard.model import RealServerKey, ServiceKey

WEB = ServiceKey("TCP", "192.0.2.10", 80)
RS1, RS2, RS3 = (Target(WEB, RealServerKey(f"10.0.0.{i}", 80)) for i in (1, 2, 3))


def test_reader_sees_what_keeps_real_servers_out_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "actuator.db"
    ledger = Ledger.open(str(path), clock=lambda: 100.0)
    ledger.add_hold(RS1, kind="alert", holder="f00d", source="alertmanager", action="quarantine", alertname="Down")
    ledger.begin_write(RS1, state="out", original=5, expected=0, previous=5)
    released, _ = ledger.add_hold(RS1, kind="manual", holder="old", source="api", action="quarantine")
    ledger.release_hold(released.id, by="api old")
    ledger.add_hold(RS2, kind="manual", holder="ops", source="cli", action="drain", reason="kernel upgrade")
    ledger.begin_write(RS2, state="out", original=4, expected=0, previous=4)
    job = ledger.create_job("drain", RS2, params={}, actor="cli ops")
    ledger.finish_job(job.id, "done", "drained")
    ledger.begin_write(RS3, state="restoring", original=5, expected=2, previous=0)
    ledger.create_job("slow_start", RS3, params={}, actor="api ops")
    ledger.close()
    before = path.read_bytes()

    rows = read_holds(str(path))

    assert sorted(rows.backends, key=lambda b: b.real_server) == [
        BackendRow(str(WEB), "10.0.0.1:80", "out", 5, 100.0),
        BackendRow(str(WEB), "10.0.0.2:80", "out", 4, 100.0),
        BackendRow(str(WEB), "10.0.0.3:80", "restoring", 5, 100.0),
    ]
    assert rows.holds == (  # active ones only, oldest first
        HoldRow(str(WEB), "10.0.0.1:80", "alert", "f00d", "alertmanager", "Down", "quarantine", ""),
        HoldRow(str(WEB), "10.0.0.2:80", "manual", "ops", "cli", "", "drain", "kernel upgrade"),
    )
    assert rows.drains == (DrainRow(str(WEB), "10.0.0.2:80", "done", "cli ops", "drained", 100.0),)
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [None, b"", b"not a database at all" * 100], ids=["absent", "no tables", "garbage"])
def test_a_file_that_is_no_ledger_is_an_sqlite_error_and_is_not_created(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "actuator.db"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(sqlite3.Error):
        read_holds(str(path))
    assert path.exists() == (content is not None)
