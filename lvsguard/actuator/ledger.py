"""The ledger: who holds which real server out, what it weighed, the jobs and the audit trail.

SQLite in WAL mode, so that the API reads while an action writes, and
``synchronous=NORMAL``: a commit survives a crash of the process (kill -9) but
not necessarily a power cut, which is what a director's actuator needs.

Crash safety comes from the order of writes (see ``actuator.actions``): the
intent is committed with ``write_pending=1`` *before* the kernel write and
cleared *after* it, so that after a kill -9 at any step the reconciliation at
start knows whether the kernel saw the write.

One connection per thread, opened on first use and kept: waitress serves
requests from a fixed pool of threads, and opening a connection (file, WAL
index, pragmas) costs more than the rest of a webhook request under a slow
kernel. A request that ends inside a transaction (an error) rolls it back at
teardown, so the next request on that thread starts clean. Background jobs
open their own with :meth:`Ledger.open`.

The file's layout (tables, columns, the states they hold) has one owner,
``lvsguard.ledger``, in the core, where the exporter reads it too; the
queries below are the writer's own.
"""

from __future__ import annotations

import fcntl
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from flask import Flask, current_app, g

from lvsguard.actuator.targets import Target
from lvsguard.ledger import SCHEMA
from lvsguard.model import RealServerKey, ServiceKey

SQLITE_MAX_INT = 2**63 - 1  # a larger Python int bound to a query is an OverflowError, not "no row"


@dataclass(frozen=True, slots=True)
class Hold:
    """One holder keeping a real server out."""

    id: int
    target: Target
    kind: str  # "alert" (holder = fingerprint) or "manual" (holder = API token name)
    holder: str
    alertname: str
    source: str  # "alertmanager", "api", "cli"
    action: str  # "quarantine" or "drain"
    reason: str
    state: str  # "active", "released", "removed"
    created_at: float
    released_at: float | None
    released_by: str


@dataclass(frozen=True, slots=True)
class FailoverHold:
    """One holder asking this director to hand its VIPs to the backup."""

    id: int
    kind: str  # "alert" or "manual"
    holder: str
    alertname: str
    source: str
    reason: str
    state: str  # "active" or "released"
    created_at: float
    released_at: float | None
    released_by: str


@dataclass(frozen=True, slots=True)
class Backend:
    """A real server the actuator has taken out or is ramping back in."""

    target: Target
    state: str  # "out" or "restoring"
    original_weight: int  # the weight to restore
    expected_weight: int  # what the kernel should show once the pending write (if any) is done
    previous_weight: int  # the kernel's weight before the pending write
    write_pending: bool  # the kernel write was started but not confirmed
    since: float
    drift: str  # why the kernel no longer matches (a weight changed by hand); "" when it does
    job_id: int | None


@dataclass(frozen=True, slots=True)
class Job:
    """A drain or a slow-start restore that outlives its request."""

    id: int
    kind: str
    target: Target
    state: str
    progress: float  # 0..1
    message: str
    params: dict[str, Any] = field(hash=False)
    actor: str
    created_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class Queued:
    """A shared alert's hold (``take``) or resolve (``release``) made here while etcd could not be reached."""

    holder: str  # the cluster holder (``alertmanager BackendDown/<fingerprint>``): one row per alert, its newest news
    op: str  # "take" or "release"
    source: str  # the alert's source: "alertmanager" or "passive"
    name: str  # its fingerprint
    alertname: str
    target: Target | None  # the real server a take holds; None for a release (all the alert holds)
    action: str  # "quarantine" or "drain" (take)
    reason: str
    drain_timeout: float | None
    drain_delete: bool
    at: float  # when this director got it


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One decision of the actuator."""

    id: int
    at: float
    source: str
    actor: str
    action: str
    service: str
    real_server: str
    result: str
    reason: str
    message: str
    details: dict[str, Any] = field(hash=False)


class Ledger:
    """A connection to the ledger file; not shared between threads."""

    def __init__(self, conn: sqlite3.Connection, *, clock: Any = time.time):
        self.conn = conn
        self.clock = clock
        self._now: float | None = None
        """The time of the open write transaction: every row it writes carries that one time."""

    @classmethod
    def open(cls, path: str, *, clock: Any = time.time, create: bool = True) -> Ledger:
        """Open the ledger at ``path`` (``create``: make the tables first; once per process is enough)."""
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if create:
            conn.executescript(SCHEMA)
        return cls(conn, clock=clock)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE: the write lock is taken up front)."""
        if self.conn.in_transaction:
            yield
            return
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def begin(self) -> None:
        """Open a write transaction; the clock is read once for all of it (a clock read is a system call)."""
        self.conn.execute("BEGIN IMMEDIATE")
        self._now = self.clock()

    def commit(self) -> None:
        self._now = None
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self._now = None
        self.conn.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        """A transaction is open (a commit that failed leaves one: roll it back before the next)."""
        return self.conn.in_transaction

    def now(self) -> float:
        """The open transaction's time, else the clock's."""
        return self.clock() if self._now is None else self._now

    # holds

    def add_hold(
        self, target: Target, *, kind: str, holder: str, source: str, action: str, alertname: str = "", reason: str = ""
    ) -> tuple[Hold, bool]:
        """Record a hold; (hold, True) when new, (the existing active hold, False) on a repeat."""
        existing = self.active_hold(target, kind, holder)
        if existing is not None:
            return existing, False
        now = self.now()
        cur = self.conn.execute(
            "INSERT INTO holds (service, real_server, kind, holder, alertname, source, action, reason, state, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', ?)",
            (*_columns(target), kind, holder, alertname, source, action, reason, now),
        )
        return Hold(
            int(cur.lastrowid or 0), target, kind, holder, alertname, source, action, reason, "active", now, None, ""
        ), True

    def hold(self, hold_id: int) -> Hold | None:
        row = self.conn.execute("SELECT * FROM holds WHERE id = ?", (hold_id,)).fetchone()
        return _hold(row) if row else None

    def active_hold(self, target: Target, kind: str, holder: str) -> Hold | None:
        row = self.conn.execute(
            "SELECT * FROM holds WHERE service = ? AND real_server = ? AND kind = ? AND holder = ? AND state = 'active'",
            (*_columns(target), kind, holder),
        ).fetchone()
        return _hold(row) if row else None

    def active_holds(self, target: Target | None = None) -> list[Hold]:
        """Active holds of one real server, or of all of them (oldest first)."""
        if target is None:
            rows = self.conn.execute("SELECT * FROM holds WHERE state = 'active' ORDER BY id").fetchall()
        else:
            rows = self.conn.execute(
                "SELECT * FROM holds WHERE service = ? AND real_server = ? AND state = 'active' ORDER BY id",
                _columns(target),
            ).fetchall()
        return [_hold(r) for r in rows]

    def holds_of(self, kind: str, holder: str) -> list[Hold]:
        """Active holds of one holder (an alert fingerprint may hold several real servers)."""
        rows = self.conn.execute(
            "SELECT * FROM holds WHERE kind = ? AND holder = ? AND state = 'active' ORDER BY id", (kind, holder)
        ).fetchall()
        return [_hold(r) for r in rows]

    def holds(self, *, limit: int = 100, include_released: bool = True) -> list[Hold]:
        """Newest first: the ledger as the API and the CLI show it."""
        where = "" if include_released else "WHERE state = 'active'"
        rows = self.conn.execute(f"SELECT * FROM holds {where} ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [_hold(r) for r in rows]

    def release_hold(self, hold_id: int, *, state: str = "released", by: str = "") -> None:
        self.conn.execute(
            "UPDATE holds SET state = ?, released_at = ?, released_by = ? WHERE id = ? AND state = 'active'",
            (state, self.now(), by, hold_id),
        )

    def delete_hold(self, hold_id: int) -> None:
        """Forget a hold that never took effect (an operator's refused request)."""
        self.conn.execute("DELETE FROM holds WHERE id = ?", (hold_id,))

    def close_holds(self, target: Target, *, state: str, by: str) -> int:
        """End every active hold of a real server (it was deleted): returns how many."""
        cur = self.conn.execute(
            "UPDATE holds SET state = ?, released_at = ?, released_by = ?"
            " WHERE service = ? AND real_server = ? AND state = 'active'",
            (state, self.now(), by, *_columns(target)),
        )
        return cur.rowcount

    # failover

    def add_failover(self, *, kind: str, holder: str, source: str, alertname: str = "", reason: str = "") -> bool:
        """Record a failover request; False when this holder already has one."""
        cur = self.conn.execute(
            "INSERT INTO failovers (kind, holder, alertname, source, reason, state, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'active', ?) ON CONFLICT DO NOTHING",
            (kind, holder, alertname, source, reason, self.now()),
        )
        return cur.rowcount == 1

    def active_failovers(self) -> list[FailoverHold]:
        rows = self.conn.execute("SELECT * FROM failovers WHERE state = 'active' ORDER BY id").fetchall()
        return [FailoverHold(*r) for r in rows]

    def release_failovers(self, *, kind: str | None, holder: str | None, by: str) -> int:
        """End the failover requests of one holder (or of a kind, or all): returns how many."""
        where, args = ["state = 'active'"], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if holder is not None:
            where.append("holder = ?")
            args.append(holder)
        cur = self.conn.execute(
            f"UPDATE failovers SET state = 'released', released_at = ?, released_by = ? WHERE {' AND '.join(where)}",
            (self.now(), by, *args),
        )
        return cur.rowcount

    # backends

    def backend(self, target: Target) -> Backend | None:
        row = self.conn.execute(
            "SELECT * FROM backends WHERE service = ? AND real_server = ?", _columns(target)
        ).fetchone()
        return _backend(row) if row else None

    def backends(self) -> list[Backend]:
        return [_backend(r) for r in self.conn.execute("SELECT * FROM backends ORDER BY service, real_server")]

    def begin_write(
        self, target: Target, *, state: str, original: int, expected: int, previous: int, job_id: int | None = None
    ) -> None:
        """Record the intent (``write_pending=1``) before the kernel write."""
        self.conn.execute(
            "INSERT INTO backends (service, real_server, state, original_weight, expected_weight, previous_weight,"
            " write_pending, since, drift, job_id) VALUES (?, ?, ?, ?, ?, ?, 1, ?, '', ?)"
            " ON CONFLICT (service, real_server) DO UPDATE SET state = excluded.state,"
            " original_weight = excluded.original_weight, expected_weight = excluded.expected_weight,"
            " previous_weight = excluded.previous_weight, write_pending = 1, drift = '', job_id = excluded.job_id",
            (*_columns(target), state, original, expected, previous, self.now(), job_id),
        )

    def end_write(self, target: Target) -> None:
        """The kernel confirmed the write."""
        self.conn.execute(
            "UPDATE backends SET write_pending = 0 WHERE service = ? AND real_server = ?",
            _columns(target),
        )

    def set_original_weight(self, target: Target, weight: int) -> None:
        self.conn.execute(
            "UPDATE backends SET original_weight = ? WHERE service = ? AND real_server = ?",
            (weight, *_columns(target)),
        )

    def set_drift(self, target: Target, drift: str) -> None:
        self.conn.execute(
            "UPDATE backends SET drift = ?, write_pending = 0 WHERE service = ? AND real_server = ?",
            (drift, *_columns(target)),
        )

    def delete_backend(self, target: Target) -> None:
        self.conn.execute("DELETE FROM backends WHERE service = ? AND real_server = ?", _columns(target))

    # hold-down

    def changed_at(self, target: Target) -> float | None:
        row = self.conn.execute(
            "SELECT changed_at FROM changes WHERE service = ? AND real_server = ?",
            _columns(target),
        ).fetchone()
        return float(row[0]) if row else None

    def touch(self, target: Target) -> None:
        self.conn.execute(
            "INSERT INTO changes (service, real_server, changed_at) VALUES (?, ?, ?)"
            " ON CONFLICT (service, real_server) DO UPDATE SET changed_at = excluded.changed_at",
            (*_columns(target), self.now()),
        )

    # jobs

    def create_job(self, kind: str, target: Target, *, params: dict[str, Any], actor: str, message: str = "") -> Job:
        now = self.now()
        cur = self.conn.execute(
            "INSERT INTO jobs (kind, service, real_server, state, progress, message, params, actor, created_at, updated_at)"
            " VALUES (?, ?, ?, 'running', 0, ?, ?, ?, ?, ?)",
            (kind, *_columns(target), message, json.dumps(params), actor, now, now),
        )
        job = self.job(int(cur.lastrowid or 0))
        assert job is not None
        return job

    def job(self, job_id: int) -> Job | None:
        if not 0 <= job_id <= SQLITE_MAX_INT:  # no such row, and SQLite cannot even take the number
            return None
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, *, state: str | None = None, limit: int = 100) -> list[Job]:
        if state is None:
            rows = self.conn.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY id DESC LIMIT ?", (state, limit)
            ).fetchall()
        return [_job(r) for r in rows]

    def open_jobs(self, target: Target | None = None) -> list[Job]:
        if target is None:
            rows = self.conn.execute("SELECT * FROM jobs WHERE state = 'running' ORDER BY id").fetchall()
        else:
            rows = self.conn.execute(
                "SELECT * FROM jobs WHERE state = 'running' AND service = ? AND real_server = ? ORDER BY id",
                _columns(target),
            ).fetchall()
        return [_job(r) for r in rows]

    def update_job(
        self,
        job_id: int,
        *,
        progress: float | None = None,
        message: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        sets: list[str] = ["updated_at = ?"]
        args: list[float | str] = [self.now()]
        if progress is not None:
            sets.append("progress = ?")
            args.append(max(0.0, min(1.0, progress)))
        if message is not None:
            sets.append("message = ?")
            args.append(message)
        if params is not None:
            sets.append("params = ?")
            args.append(json.dumps(params))
        self.conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))

    def finish_job(self, job_id: int, state: str, message: str, *, progress: float | None = None) -> None:
        """End a running job (a finished job is never reopened)."""
        now = self.now()
        if progress is None:
            self.conn.execute(
                "UPDATE jobs SET state = ?, message = ?, updated_at = ?, finished_at = ? WHERE id = ? AND state = 'running'",
                (state, message, now, now, job_id),
            )
        else:
            self.conn.execute(
                "UPDATE jobs SET state = ?, message = ?, progress = ?, updated_at = ?, finished_at = ?"
                " WHERE id = ? AND state = 'running'",
                (state, message, progress, now, now, job_id),
            )

    # the table reconciler's entries

    def owned(
        self, services: Iterable[ServiceKey] | None = None
    ) -> frozenset[ServiceKey | tuple[ServiceKey, RealServerKey]]:
        """What the table reconciler created or adopted: service keys and (service, real server) pairs.

        ``services``: of these services only (a reload's few, not the 11 000 rows of a big table).
        """
        if services is None:
            rows = self.conn.execute("SELECT service, real_server FROM owned")
        else:
            names = [str(key) for key in services]
            rows = self.conn.execute(
                f"SELECT service, real_server FROM owned WHERE service IN ({', '.join('?' * len(names))})", names
            )
        return frozenset(_OWNED.get((s, r)) or _owned_key(s, r) for s, r in rows)

    def own(self, keys: Iterable[ServiceKey | tuple[ServiceKey, RealServerKey]]) -> None:
        rows = []
        for key in keys:
            columns = _owned_columns(key)
            _OWNED[columns] = key  # the next ``owned`` need not parse what this process wrote
            rows.append((*columns, self.now()))
        if len(_OWNED) > OWNED_CACHE:
            _OWNED.clear()
        self.conn.executemany("INSERT OR IGNORE INTO owned (service, real_server, since) VALUES (?, ?, ?)", rows)

    def disown(self, keys: Iterable[ServiceKey | tuple[ServiceKey, RealServerKey]]) -> None:
        """Forget entries that are gone; a service takes its real servers' rows with it."""
        for key in keys:
            service, real_server = _owned_columns(key)
            if real_server:
                self.conn.execute("DELETE FROM owned WHERE service = ? AND real_server = ?", (service, real_server))
            else:
                self.conn.execute("DELETE FROM owned WHERE service = ?", (service,))

    def cache_cluster_table(self, revision: int, record: str) -> None:
        """Keep the cluster's table last applied (``table.source: cluster``): a start without etcd builds it."""
        self.conn.execute(
            "INSERT OR REPLACE INTO cluster_table (id, revision, record, applied) VALUES (1, ?, ?, ?)",
            (revision, record, self.now()),
        )

    def cached_cluster_table(self) -> tuple[int, str] | None:
        """(revision, record) of the cluster's table last applied; None when none was."""
        row = self.conn.execute("SELECT revision, record FROM cluster_table WHERE id = 1").fetchone()
        return None if row is None else (int(row["revision"]), str(row["record"]))

    def queue_for_cluster(self, item: Queued) -> None:
        """Keep a shared alert's news for etcd; it replaces what was queued for the same alert (the newest wins)."""
        service, real_server = _columns(item.target) if item.target is not None else ("", "")
        self.conn.execute(
            "INSERT OR REPLACE INTO cluster_queue (holder, op, source, name, alertname, service, real_server, action,"
            " reason, drain_timeout, drain_delete, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item.holder,
                item.op,
                item.source,
                item.name,
                item.alertname,
                service,
                real_server,
                item.action,
                item.reason,
                item.drain_timeout,
                int(item.drain_delete),
                item.at,
            ),
        )

    def cluster_queue(self) -> list[Queued]:
        """What waits for etcd, oldest first."""
        rows = self.conn.execute("SELECT * FROM cluster_queue ORDER BY at, holder").fetchall()
        return [
            Queued(
                row["holder"],
                row["op"],
                row["source"],
                row["name"],
                row["alertname"],
                _target(row) if row["service"] else None,
                row["action"],
                row["reason"],
                row["drain_timeout"],
                bool(row["drain_delete"]),
                row["at"],
            )
            for row in rows
        ]

    def unqueue(self, holder: str) -> None:
        """The alert's news reached etcd (or newer news did): forget it."""
        self.conn.execute("DELETE FROM cluster_queue WHERE holder = ?", (holder,))

    def table_drains(self) -> dict[tuple[ServiceKey, RealServerKey], float]:
        """The real servers the reconciler drains out of the table, each with the time it is removed at the latest."""
        return {
            (ServiceKey.parse(row["service"]), RealServerKey.parse(row["real_server"])): row["until"]
            for row in self.conn.execute("SELECT service, real_server, until FROM table_drains")
        }

    def start_table_drains(self, drains: dict[tuple[ServiceKey, RealServerKey], float]) -> None:
        """Record drains that begin now, with their deadlines (a drain already recorded keeps its own)."""
        self.conn.executemany(
            "INSERT OR IGNORE INTO table_drains (service, real_server, since, until) VALUES (?, ?, ?, ?)",
            [(str(service), str(rs), self.now(), until) for (service, rs), until in drains.items()],
        )

    def end_table_drains(self, keys: Iterable[tuple[ServiceKey, RealServerKey]]) -> None:
        """Forget drains that ended: the real server was removed, or came back into the config."""
        self.conn.executemany(
            "DELETE FROM table_drains WHERE service = ? AND real_server = ?",
            [(str(service), str(rs)) for service, rs in keys],
        )

    # audit

    def audit(
        self,
        *,
        source: str,
        actor: str,
        action: str,
        result: str,
        target: Target | None = None,
        reason: str = "",
        message: str = "",
        details: dict[str, Any] | None = None,
    ) -> int:
        cur = self.conn.execute(
            "INSERT INTO audit (at, source, actor, action, service, real_server, result, reason, message, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.now(),
                source,
                actor,
                action,
                *(_columns(target) if target else ("", "")),
                result,
                reason,
                message,
                json.dumps(details or {}),
            ),
        )
        return int(cur.lastrowid or 0)

    def complete_audit(self, event_id: int, *, result: str, message: str, details: dict[str, Any]) -> None:
        """Give an event written ahead of its work (a table apply's intent) the outcome of that work."""
        self.conn.execute(
            "UPDATE audit SET result = ?, message = ?, details = ? WHERE id = ?",
            (result, message, json.dumps(details), event_id),
        )

    # console sessions

    def end_session(self, sid: str, *, until: float) -> None:
        """Refuse console session ``sid`` from now on (until ``until``); expired entries go."""
        with self.transaction():
            self.conn.execute("DELETE FROM ended_sessions WHERE until <= ?", (self.now(),))
            self.conn.execute("INSERT OR REPLACE INTO ended_sessions (sid, until) VALUES (?, ?)", (sid, until))

    def session_ended(self, sid: str) -> bool:
        return self.conn.execute("SELECT 1 FROM ended_sessions WHERE sid = ?", (sid,)).fetchone() is not None

    def audit_events(self, *, limit: int = 100, after: int = 0) -> list[AuditEvent]:
        """Newest first; ``after`` gives only events with a larger id (for polling)."""
        after = min(after, SQLITE_MAX_INT)
        rows = self.conn.execute("SELECT * FROM audit WHERE id > ? ORDER BY id DESC LIMIT ?", (after, limit)).fetchall()
        return [_audit(r) for r in rows]


def writer_lock(path: str, *, wait: float = 0.0) -> IO[bytes] | None:
    """The one-writer lock of the ledger at ``path``: an exclusive ``flock`` on ``<path>.lock``.

    The running actuator holds it for its whole life, and ``lvsguard apply``
    holds it while it applies the table in-process (when no actuator runs), so
    the two never write the table at once. The lock goes with the process (a
    kill -9 frees it). Returns the open lock file (keep it open to keep the
    lock), or None when another process still holds it after ``wait`` seconds.
    """
    lock = open(f"{path}.lock", "ab")  # noqa: SIM115 - the caller keeps it open as long as it holds the lock
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock.close()
                return None
            time.sleep(0.1)


OWNED_CACHE = 1 << 18
_OWNED: dict[tuple[str, str], ServiceKey | tuple[ServiceKey, RealServerKey]] = {}
"""The ``owned`` rows' keys this process wrote or read: every table run reads them all, 0.7 s for 11 000 to parse."""


def _owned_key(service: str, real_server: str) -> ServiceKey | tuple[ServiceKey, RealServerKey]:
    key = (ServiceKey.parse(service), RealServerKey.parse(real_server)) if real_server else ServiceKey.parse(service)
    _OWNED[(service, real_server)] = key
    return key


def _owned_columns(key: ServiceKey | tuple[ServiceKey, RealServerKey]) -> tuple[str, str]:
    return (str(key[0]), str(key[1])) if isinstance(key, tuple) else (str(key), "")


@functools.lru_cache(maxsize=65536)
def _columns(target: Target) -> tuple[str, str]:
    """A target's two text columns (service, real server), rendered once per target."""
    return str(target.service), str(target.real_server)


@functools.lru_cache(maxsize=65536)
def _parse_target(service: str, real_server: str) -> Target:
    return Target.parse(service, real_server)


def _target(row: sqlite3.Row) -> Target:
    return _parse_target(row["service"], row["real_server"])


def _hold(row: sqlite3.Row) -> Hold:
    return Hold(
        row["id"],
        _target(row),
        row["kind"],
        row["holder"],
        row["alertname"],
        row["source"],
        row["action"],
        row["reason"],
        row["state"],
        row["created_at"],
        row["released_at"],
        row["released_by"],
    )


def _backend(row: sqlite3.Row) -> Backend:
    return Backend(
        _target(row),
        row["state"],
        row["original_weight"],
        row["expected_weight"],
        row["previous_weight"],
        bool(row["write_pending"]),
        row["since"],
        row["drift"],
        row["job_id"],
    )


def _job(row: sqlite3.Row) -> Job:
    return Job(
        row["id"],
        row["kind"],
        _target(row),
        row["state"],
        row["progress"],
        row["message"],
        json.loads(row["params"]),
        row["actor"],
        row["created_at"],
        row["updated_at"],
        row["finished_at"],
    )


def _audit(row: sqlite3.Row) -> AuditEvent:
    return AuditEvent(
        row["id"],
        row["at"],
        row["source"],
        row["actor"],
        row["action"],
        row["service"],
        row["real_server"],
        row["result"],
        row["reason"],
        row["message"],
        json.loads(row["details"]),
    )


def get_ledger() -> Ledger:
    """This thread's ledger connection for the current app, opened on first use and kept."""
    local: threading.local = current_app.extensions["lvsguard_ledgers"]
    ledger: Ledger | None = getattr(local, "ledger", None)
    if ledger is None:
        ledger = Ledger.open(
            current_app.config["LVSGUARD_LEDGER"], clock=current_app.config["LVSGUARD_CLOCK"], create=False
        )
        local.ledger = ledger
    g.ledger = ledger
    return ledger


def locked_ledger() -> Ledger:
    """The app's one connection for the webhook and failover, whose sessions run under the action layer's lock.

    Passed as a function (``actions.alerts(locked_ledger, ...)``): the action layer
    calls it under its lock, so one connection is enough; being the same one every
    time keeps its page cache warm (a connection re-reads the pages another
    connection changed, a system call each, and with one connection per serving
    thread a burst of webhooks lands on a different cold connection each time).
    The action layer rolls back what an error leaves open.
    """
    ledger: Ledger | None = current_app.extensions.get("lvsguard_locked_ledger")
    if ledger is None:
        ledger = Ledger.open(
            current_app.config["LVSGUARD_LEDGER"], clock=current_app.config["LVSGUARD_CLOCK"], create=False
        )
        current_app.extensions["lvsguard_locked_ledger"] = ledger
    return ledger


def end_request(_exc: BaseException | None = None) -> None:
    """Teardown: a transaction left open by a failed request is rolled back (the connection stays)."""
    ledger: Ledger | None = g.pop("ledger", None)
    if ledger is not None and ledger.conn.in_transaction:
        ledger.rollback()


def init_app(app: Flask) -> None:
    """Create the schema once; one connection per serving thread, cleaned up after each request."""
    Ledger.open(app.config["LVSGUARD_LEDGER"]).close()
    app.extensions["lvsguard_ledgers"] = threading.local()
    app.teardown_appcontext(end_request)
