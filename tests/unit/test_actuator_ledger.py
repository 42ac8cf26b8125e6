"""The ledger file: WAL, one active hold per holder, persistence across connections."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.targets import Target
from lvsguard.model import RealServerKey, ServiceKey

T = Target.parse("TCP 192.0.2.10:80", "10.0.1.1:80")
T6 = Target.parse("FWM 3 IPv6", "[2001:db8::5]:443")


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(str(tmp_path / "l.db"))


def test_file_is_in_wal_mode(ledger: Ledger) -> None:
    assert ledger.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_holder_holds_a_real_server_once(ledger: Ledger) -> None:
    first, new = ledger.add_hold(
        T, kind="alert", holder="fp", source="alertmanager", action="quarantine", alertname="Down"
    )
    again, new_again = ledger.add_hold(T, kind="alert", holder="fp", source="alertmanager", action="quarantine")
    assert (new, new_again, again.id) == (True, False, first.id)
    with pytest.raises(sqlite3.IntegrityError):
        ledger.conn.execute(
            "INSERT INTO holds (service, real_server, kind, holder, source, action, state, created_at)"
            " VALUES (?, ?, 'alert', 'fp', 'x', 'quarantine', 'active', 0)",
            (str(T.service), str(T.real_server)),
        )
    ledger.release_hold(first.id, by="test")
    _third, new_third = ledger.add_hold(T, kind="alert", holder="fp", source="alertmanager", action="quarantine")
    assert new_third is True


def test_targets_round_trip_through_text_columns(ledger: Ledger) -> None:
    hold, _ = ledger.add_hold(T6, kind="manual", holder="alice", source="api", action="drain")
    assert ledger.hold(hold.id).target == T6


def test_state_survives_a_new_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    one = Ledger.open(path)
    with one.transaction():
        one.begin_write(T, state="out", original=7, expected=0, previous=7)
    one.conn.close()  # as after kill -9: nothing but the committed file
    two = Ledger.open(path)
    backend = two.backend(T)
    assert (backend.original_weight, backend.expected_weight, backend.write_pending) == (7, 0, True)


def test_a_failed_transaction_leaves_nothing(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.begin_write(T, state="out", original=7, expected=0, previous=7)
        raise RuntimeError("kernel said no")
    assert ledger.backend(T) is None


def test_jobs_keep_their_parameters_and_finish_once(ledger: Ledger) -> None:
    job = ledger.create_job("drain", T, params={"timeout": 30, "delete": True}, actor="api alice")
    ledger.update_job(job.id, progress=1.7, message="x")
    assert ledger.job(job.id).progress == 1.0
    ledger.finish_job(job.id, "done", "drained")
    ledger.finish_job(job.id, "failed", "late")
    done = ledger.job(job.id)
    assert (done.state, done.message, done.params) == ("done", "drained", {"timeout": 30, "delete": True})
    assert ledger.open_jobs() == []


def test_audit_is_newest_first_and_pollable(ledger: Ledger) -> None:
    ids = [
        ledger.audit(source="api", actor="a", action="weight", result="applied", target=T, details={"n": i})
        for i in range(3)
    ]
    assert [e.id for e in ledger.audit_events()] == ids[::-1]
    assert [e.details["n"] for e in ledger.audit_events(after=ids[0])] == [2, 1]


def test_owned_of_some_services_reads_only_theirs(ledger: Ledger) -> None:
    web, dns = ServiceKey.parse("TCP 192.0.2.10:80"), ServiceKey.parse("UDP 192.0.2.10:53")
    web1 = RealServerKey.parse("10.0.1.1:80")
    with ledger.transaction():
        ledger.own([web, (web, web1), dns])
    assert ledger.owned() == {web, (web, web1), dns}
    assert ledger.owned([web]) == {web, (web, web1)}
    assert ledger.owned([]) == frozenset()
