"""The actuator's ledger file: its SQLite schema, and the read-only reads other processes make.

Two processes use the file. The actuator is its only writer (``actuator.ledger``:
the crash-safe write order, the queries of the API and the console). The
exporter reads it, read-only, for the SNMP agent's holds, actors and original
weights (``exporter.snmp.feeds``), and ``lvsguard diff`` for the holds and
what the table reconciler owns (``table.commands``). Dependencies point down: the exporter must not
import the actuator, and the core imports neither app. So the schema and the
exporter's read live here, in the core, where both apps can import them, and the
layout of the file has one owner: a column renamed here is renamed for the
writer and the reader at once, and ``tests/unit/test_ledger_file.py`` reads a
ledger the actuator wrote.

Tables:

- ``holds``: one row per holder of a real server (an alert fingerprint, or a
  manual hold by an API token name); ``state`` active -> released | removed.
- ``backends``: one row per real server the actuator has taken out (or is
  ramping back in): the original weight to restore, the weight the kernel
  should show now, and the write-ahead flag.
- ``changes``: the last time the actuator changed each real server's weight
  (the hold-down survives a restart).
- ``jobs``: drains and slow-start restores, with progress.
- ``failovers``: who asks this director to give its VIPs up (same holders as ``holds``).
- ``audit``: every decision, applied or refused, with the actor.
- ``ended_sessions``: console sessions logged out, until they would have expired.
- ``cluster_queue``: the shared alerts' holds (``op`` take) and resolves
  (``op`` release) this director applied while etcd could not be reached, one
  row per cluster holder (the newest news of that alert), written to etcd when
  it answers again.
- ``owned``: the services and real servers the table reconciler created or
  adopted from the config (``table.prune: owned`` removes only these); a
  service's own row has ``real_server`` ''.
- ``table_drains``: the real servers the table reconciler drains because they
  left the config: since when, and when they are removed at the latest
  (``actuator.drain_timeout``); a restarted actuator resumes them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from urllib.parse import quote

SCHEMA = """
CREATE TABLE IF NOT EXISTS holds (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    real_server TEXT NOT NULL,
    kind TEXT NOT NULL,
    holder TEXT NOT NULL,
    alertname TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    released_at REAL,
    released_by TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS holds_active
    ON holds (service, real_server, kind, holder) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS holds_holder ON holds (holder) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS backends (
    service TEXT NOT NULL,
    real_server TEXT NOT NULL,
    state TEXT NOT NULL,
    original_weight INTEGER NOT NULL,
    expected_weight INTEGER NOT NULL,
    previous_weight INTEGER NOT NULL,
    write_pending INTEGER NOT NULL DEFAULT 0,
    since REAL NOT NULL,
    drift TEXT NOT NULL DEFAULT '',
    job_id INTEGER,
    PRIMARY KEY (service, real_server)
);
CREATE TABLE IF NOT EXISTS changes (
    service TEXT NOT NULL,
    real_server TEXT NOT NULL,
    changed_at REAL NOT NULL,
    PRIMARY KEY (service, real_server)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    service TEXT NOT NULL,
    real_server TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',
    actor TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (service, real_server) WHERE state = 'running';
CREATE TABLE IF NOT EXISTS failovers (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    holder TEXT NOT NULL,
    alertname TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    released_at REAL,
    released_by TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS failovers_active ON failovers (kind, holder) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    service TEXT NOT NULL DEFAULT '',
    real_server TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS owned (
    service TEXT NOT NULL,
    real_server TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    PRIMARY KEY (service, real_server)
);
CREATE TABLE IF NOT EXISTS table_drains (
    service TEXT NOT NULL,
    real_server TEXT NOT NULL,
    since REAL NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (service, real_server)
);
CREATE TABLE IF NOT EXISTS cluster_table (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    record TEXT NOT NULL,
    applied REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cluster_queue (
    holder TEXT PRIMARY KEY,
    op TEXT NOT NULL,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    alertname TEXT NOT NULL DEFAULT '',
    service TEXT NOT NULL DEFAULT '',
    real_server TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    drain_timeout REAL,
    drain_delete INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ended_sessions (
    sid TEXT PRIMARY KEY,
    until REAL NOT NULL
);
"""

HOLD_KINDS = ("alert", "manual")
JOB_KINDS = ("drain", "slow_start")
JOB_OPEN = "running"
JOB_STATES = ("running", "done", "failed", "timeout", "cancelled")
BACKEND_STATES = ("out", "restoring")  # ``backends.state``: taken out, or being ramped back in
READ_TIMEOUT = 1.0  # seconds a reader waits for a lock (WAL readers rarely wait at all)


@dataclass(frozen=True, slots=True)
class BackendRow:
    """A real server the actuator has taken out (``state`` "out") or is ramping back in ("restoring")."""

    service: str  # as ``ServiceKey`` prints it
    real_server: str  # as ``RealServerKey`` prints it
    state: str
    original_weight: int  # the weight to restore
    since: float  # Unix time it was taken out


@dataclass(frozen=True, slots=True)
class HoldRow:
    """An active hold: who keeps a real server out, and why."""

    service: str
    real_server: str
    kind: str  # "alert" (holder = fingerprint) or "manual" (holder = API token name)
    holder: str
    source: str  # "alertmanager", "api", "cli"
    alertname: str
    action: str  # "quarantine" or "drain"
    reason: str


@dataclass(frozen=True, slots=True)
class DrainRow:
    """A drain job of a real server that is out (running or ended)."""

    service: str
    real_server: str
    state: str  # one of JOB_STATES
    actor: str
    message: str
    finished_at: float | None  # Unix time; None while it runs


@dataclass(frozen=True, slots=True)
class LedgerHolds:
    """What keeps real servers out, at one committed state of the ledger."""

    backends: tuple[BackendRow, ...]
    holds: tuple[HoldRow, ...]  # active only, oldest first
    drains: tuple[DrainRow, ...]  # of real servers that are out, oldest first


def read_holds(path: str) -> LedgerHolds:
    """The ledger at ``path`` opened read-only: its taken-out real servers, active holds and their drains.

    Never writes and never creates the file (``mode=ro``); in WAL mode it sees
    the last committed state while the actuator writes. Raises
    ``sqlite3.Error`` when the file is absent, not a database, or has no such
    tables (the actuator never ran there).
    """
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=READ_TIMEOUT)
    try:
        backends = conn.execute("SELECT service, real_server, state, original_weight, since FROM backends").fetchall()
        holds = conn.execute(
            "SELECT service, real_server, kind, holder, source, alertname, action, reason FROM holds"
            " WHERE state = 'active' ORDER BY id"
        ).fetchall()
        drains = conn.execute(
            "SELECT j.service, j.real_server, j.state, j.actor, j.message, j.finished_at FROM jobs j"
            " JOIN backends b ON b.service = j.service AND b.real_server = j.real_server"
            " WHERE j.kind = 'drain' AND b.state = 'out' ORDER BY j.id"
        ).fetchall()
    finally:
        conn.close()
    return LedgerHolds(
        tuple(BackendRow(s, r, state, int(weight), float(since)) for s, r, state, weight, since in backends),
        tuple(HoldRow(*row) for row in holds),
        tuple(
            DrainRow(s, r, state, actor, message, None if finished is None else float(finished))
            for s, r, state, actor, message, finished in drains
        ),
    )


def read_owned(path: str) -> frozenset[tuple[str, str]]:
    """The ledger's ``owned`` rows (service, real server; '' for a service's own), read as ``read_holds`` reads."""
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=READ_TIMEOUT)
    try:
        return frozenset((s, r) for s, r in conn.execute("SELECT service, real_server FROM owned"))
    finally:
        conn.close()


def read_cluster_table(path: str) -> tuple[int, str] | None:
    """(revision, record) of the cluster's table the actuator last applied (``table.source: cluster``); None: none."""
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=READ_TIMEOUT)
    try:
        row = conn.execute("SELECT revision, record FROM cluster_table WHERE id = 1").fetchone()
    except sqlite3.OperationalError:  # a ledger from before the table
        return None
    finally:
        conn.close()
    return None if row is None else (int(row[0]), str(row[1]))
