"""What a running exporter feeds into the SNMP snapshot besides the kernel table.

Four sources, each read once per snapshot, each optional, none able to stop the agent:

- the probe engine of the same process (``ProbeFeed``): per real server the
  health after rise/fall, and per check the last result, latency and message;
- the actuator's ledger (``LedgerFeed``): the SQLite file opened read-only
  through ``lvsguard.ledger``, which owns its layout, so that the exporter
  never writes it and never waits for the actuator (WAL lets a reader see the
  last committed state while the actuator writes);
- keepalived's notify FIFO (``DirectorFeed``): the VRRP role, with the VIPs
  (the addresses of the virtual services) and whether this director holds them;
- the passive detector of the same process (``PassiveFeed``): per real server its
  failed handshakes by reason, its verdicts and the seconds left of its hold-down.

``FeedingProvider`` puts them on top of the table snapshot. The pieces that
decide (``rs_health``, ``hold_of``, ``director_role``, ``compose``) are pure
functions over plain data, so their tests need no engine, file or FIFO.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from lvsguard.errors import LvsguardError
from lvsguard.exporter.passive.conntable import REFUSED, TIMEOUT
from lvsguard.exporter.snmp.snapshot import (
    DirectorState,
    Health,
    Hold,
    PassiveState,
    ProbeState,
    RealServerState,
    Role,
    RsRef,
    ServiceState,
    Snapshot,
    SnapshotProvider,
    Vip,
)
from lvsguard.ledger import BackendRow, DrainRow, HoldRow, LedgerHolds, read_holds
from lvsguard.logs import event
from lvsguard.model import RealServerKey, ServiceKey, Table

log = logging.getLogger(__name__)


class _OnceLog:
    """One log line per change of reason (a source that stays broken is not repeated every snapshot)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.reason = ""

    def failed(self, reason: str, level: int = logging.WARNING) -> None:
        if reason != self.reason:
            event(log, level, "snmp_feed_unavailable", source=self.source, reason=reason)
            self.reason = reason

    def ok(self) -> None:
        if self.reason:
            event(log, logging.INFO, "snmp_feed_available", source=self.source)
            self.reason = ""


# --- probes ------------------------------------------------------------------------------------


class _Result(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def message(self) -> str: ...
    @property
    def duration(self) -> float: ...


class _RiseFall(Protocol):
    @property
    def healthy(self) -> bool: ...
    @property
    def changes(self) -> int: ...
    @property
    def changed_at(self) -> float: ...


class _Checker(Protocol):
    @property
    def kind(self) -> str: ...


class _Spec(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def checker(self) -> _Checker: ...


class ProbeJob(Protocol):
    """What the feed reads of one check of the probe engine (``ProbeEngine.jobs`` values), read-only."""

    @property
    def key(self) -> tuple[ServiceKey, RealServerKey, str]: ...
    @property
    def spec(self) -> _Spec: ...
    @property
    def health(self) -> _RiseFall: ...
    @property
    def last(self) -> _Result | None: ...


@dataclass(frozen=True, slots=True)
class CheckView:
    """One check as the feed saw it: plain values, copied out of the engine."""

    service: ServiceKey
    real_server: RealServerKey
    name: str
    kind: str
    healthy: bool
    settled: bool  # rise/fall has given a verdict once (before that, "healthy" is only the starting value)
    changed_at: float  # time.time() of the last transition, 0 = never
    ok: bool | None  # the last result; None before the first
    latency: float
    message: str


@dataclass(frozen=True, slots=True)
class RsHealth:
    """The health of one real server over all of its checks."""

    health: Health
    last_change: float | None
    reason: str


def rs_health(checks: Sequence[CheckView]) -> RsHealth:
    """Dead when a settled check is unhealthy, alive when every check is settled and healthy, else unknown.

    keepalived's rule (any failing checker takes the real server down). A
    check is "settled" from its first verdict on: the engine starts every
    check healthy so that nothing is quarantined before it was probed, but
    SNMP must not call a real server alive on that assumption; it reads
    unknown until each check has either seen a result that agrees with its
    state or made a transition.
    """
    if not checks:
        return RsHealth(Health.UNKNOWN, None, "")
    changed = [c.changed_at for c in checks if c.changed_at > 0]
    last_change = max(changed) if changed else None
    dead = [c for c in checks if c.settled and not c.healthy]
    if dead:
        worst = max(dead, key=lambda c: c.changed_at)
        return RsHealth(Health.DEAD, last_change, worst.message or f"{worst.name} failed")
    if all(c.settled for c in checks):
        latest = max(checks, key=lambda c: c.changed_at)
        return RsHealth(Health.ALIVE, last_change, latest.message if latest.changed_at > 0 else "")
    return RsHealth(Health.UNKNOWN, last_change, "")


class ProbeFeed:
    """Reads the checks of a running probe engine (another thread's) without stopping it.

    ``jobs`` returns the engine's live mapping; it is copied at once (one C-level
    dict copy, atomic under the GIL) and each check's attributes are read
    once. A check is settled from its first verdict on and stays settled (the
    feed remembers it), so one failed result of a healthy check does not turn
    its real server unknown.
    """

    def __init__(self, jobs: Callable[[], Mapping[tuple[ServiceKey, RealServerKey, str], ProbeJob]]) -> None:
        self._jobs = jobs
        self._settled: set[tuple[ServiceKey, RealServerKey, str]] = set()

    def checks(self) -> list[CheckView]:
        jobs = dict(self._jobs())
        out = []
        for key, job in jobs.items():
            health, last = job.health, job.last
            healthy, changes, changed_at = health.healthy, health.changes, health.changed_at
            if key not in self._settled and (changes > 0 or (last is not None and last.ok == healthy)):
                self._settled.add(key)
            out.append(
                CheckView(
                    key[0],
                    key[1],
                    job.spec.name,
                    job.spec.checker.kind,
                    healthy,
                    key in self._settled,
                    changed_at,
                    None if last is None else last.ok,
                    0.0 if last is None else last.duration,
                    "" if last is None else last.message,
                )
            )
        self._settled &= jobs.keys()
        return out


def probe_states(checks: Iterable[CheckView]) -> tuple[dict[RsRef, RsHealth], dict[RsRef, tuple[ProbeState, ...]]]:
    """Per real server: its health, and its probes' rows (sorted by name, as the MIB index orders them)."""
    grouped: dict[RsRef, list[CheckView]] = {}
    for check in checks:
        grouped.setdefault((check.service, check.real_server), []).append(check)
    health = {ref: rs_health(group) for ref, group in grouped.items()}
    probes = {
        ref: tuple(ProbeState(c.name, c.kind, c.ok, c.latency, c.message) for c in sorted(group, key=lambda c: c.name))
        for ref, group in grouped.items()
    }
    return health, probes


# --- the passive detector ----------------------------------------------------------------------


class PassiveCounts(Protocol):
    """``exporter.passive.metrics.PassiveMetrics``: per real server, failures by reason, verdicts, hold-down left."""

    def per_backend(self) -> Mapping[RsRef, tuple[Mapping[str, int], int, float]]: ...


class PassiveFeed:
    """Reads the passive detector's counters (its own lock: one copy per snapshot, never waiting on a pass)."""

    def __init__(self, metrics: PassiveCounts) -> None:
        self.metrics = metrics

    def read(self) -> dict[RsRef, PassiveState]:
        return {
            ref: PassiveState(failures.get(REFUSED, 0), failures.get(TIMEOUT, 0), verdicts, holddown)
            for ref, (failures, verdicts, holddown) in self.metrics.per_backend().items()
        }


# --- the actuator's ledger ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerHold:
    """The ledger's view of one real server the actuator keeps out (or has kept out)."""

    hold: Hold
    actor: str
    reason: str
    original_weight: int | None
    since: float | None


def actor_text(kind: str, holder: str, source: str, alertname: str) -> str:
    """Who holds it, as the actuator's audit trail names an actor (``actuator.actions.Actor``)."""
    if kind == "alert":
        return f"alert {alertname or '?'} ({holder})"
    return f"{source} {holder}"


def hold_of(backend: BackendRow, holds: Sequence[HoldRow], drain: DrainRow | None) -> LedgerHold:
    """The hold of one real server from its ``backends`` row, its active holds (oldest first) and its last drain job.

    Out with a drain hold: draining while the drain job runs, drained once it
    ended (done, timeout, or drained but not deleted). Out otherwise:
    quarantined. Ramping back in ("restoring") or not in the ledger: none.
    """
    if backend.state != "out":
        return LedgerHold(Hold.NONE, "", "", None, None)
    first = holds[0] if holds else None
    actor = actor_text(first.kind, first.holder, first.source, first.alertname) if first else ""
    reason = first.reason if first else ""
    if any(h.action == "drain" for h in holds):
        if drain is not None and drain.state in ("done", "timeout", "failed"):
            finished = drain.finished_at
            return LedgerHold(
                Hold.DRAINED,
                drain.actor or actor,
                drain.message or reason,
                backend.original_weight,
                finished if finished is not None else backend.since,
            )
        return LedgerHold(Hold.DRAINING, actor, reason, backend.original_weight, backend.since)
    return LedgerHold(Hold.QUARANTINED, actor, reason, backend.original_weight, backend.since)


class LedgerFeed:
    """The actuator's ledger (SQLite, WAL), read read-only for each snapshot (``lvsguard.ledger.read_holds``).

    ``read()`` returns the holds by real server, or None when the ledger
    cannot be read (absent: the actuator never ran here; unreadable:
    permissions, corruption): the snapshot then marks its holds unknown, which
    reads as none and sends no quarantine/restore notifications. Each change
    of reason is one log line. A connection per read: it costs well under a
    millisecond, and never keeps a file the actuator may replace.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._log = _OnceLog(f"ledger {path}")

    def read(self) -> dict[RsRef, LedgerHold] | None:
        if not os.path.exists(self.path):
            self._log.failed("no such file: no holds (no actuator on this director yet?)", logging.INFO)
            return None
        try:
            rows = read_holds(self.path)
        except (sqlite3.Error, ValueError, TypeError) as exc:  # not a ledger, or a value of the wrong type
            self._log.failed(f"cannot read: {exc}")
            return None
        self._log.ok()
        return ledger_holds(rows)


def _ref(service: str, real_server: str) -> RsRef | None:
    try:
        return ServiceKey.parse(service), RealServerKey.parse(real_server)
    except (ValueError, LvsguardError):
        return None


def ledger_holds(rows: LedgerHolds) -> dict[RsRef, LedgerHold]:
    """The ledger's taken-out real servers, active holds and drain jobs -> the hold of each real server."""
    held: dict[tuple[str, str], list[HoldRow]] = {}
    for hold in rows.holds:
        held.setdefault((hold.service, hold.real_server), []).append(hold)
    last_drain = {(d.service, d.real_server): d for d in rows.drains}  # ordered by id: the last one wins
    out: dict[RsRef, LedgerHold] = {}
    for backend in rows.backends:
        key = (backend.service, backend.real_server)
        ref = _ref(*key)
        if ref is not None:
            out[ref] = hold_of(backend, held.get(key, []), last_drain.get(key))
    return out


# --- the director ------------------------------------------------------------------------------


class VrrpStates(Protocol):
    """``exporter.keepalived.KeepalivedFifo``: instance -> its state (``.state`` lower case)."""

    def states(self) -> Mapping[str, object]: ...


def director_role(states: Iterable[str]) -> Role:
    """One role for the director from its VRRP instances' states.

    fault if any instance is in fault (it cannot take over); master if any is
    master (it holds VIPs and serves); backup if all are backup; unknown with
    no instance reported yet, or only stopped ones.
    """
    seen = set(states)
    if "fault" in seen:
        return Role.FAULT
    if "master" in seen:
        return Role.MASTER
    if "backup" in seen:
        return Role.BACKUP
    return Role.UNKNOWN


def vips(addresses: Iterable[str], local: Mapping[str, str] | None) -> tuple[Vip, ...]:
    """The VIPs (virtual service addresses, no duplicates) and whether this director has them; ``local``: address -> interface."""
    out = []
    for address in sorted({a for a in addresses if a}):
        interface = local.get(address, "") if local is not None else ""
        out.append(Vip(address, bool(interface), interface))
    return tuple(out)


class DirectorFeed:
    """The role from keepalived's FIFO (one reader, shared with /metrics) and the VIPs from the local addresses."""

    def __init__(
        self,
        fifo: VrrpStates | None,
        local_addresses: Callable[[], Mapping[str, str]],
        configured: Iterable[ServiceKey] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fifo = fifo
        self.local_addresses = local_addresses
        self.configured = tuple(k.address for k in configured if not k.is_fwmark)
        self.clock = clock
        self._role = Role.UNKNOWN
        self._changed: float | None = None
        self._log = _OnceLog("local addresses")

    def read(self, table: Table | None) -> DirectorState:
        role = Role.UNKNOWN
        if self.fifo is not None:
            role = director_role(str(getattr(s, "state", "")) for s in self.fifo.states().values())
        if role is not self._role:
            self._role, self._changed = role, self.clock()
        try:
            local: Mapping[str, str] | None = self.local_addresses()
            self._log.ok()
        except (OSError, LvsguardError) as exc:
            self._log.failed(str(exc))
            local = None
        addresses = list(self.configured)
        if table is not None:
            addresses += [svc.key.address for svc in table.services if not svc.key.is_fwmark]
        return DirectorState(role, self._changed, vips(addresses, local))


# --- putting it together ----------------------------------------------------------------------


def compose(
    snap: Snapshot,
    *,
    health: Mapping[RsRef, RsHealth],
    probes: Mapping[RsRef, tuple[ProbeState, ...]],
    holds: Mapping[RsRef, LedgerHold] | None,
    director: DirectorState | None,
    quorum: Callable[[ServiceKey, int], int] | None,
) -> Snapshot:
    """``snap`` (table and names) with health, probes, holds, quorums and the director's state on top.

    A real server's last change is the later of its health's and its hold's.
    Its reason and actor are the hold's while one is on, else the probes'.
    ``holds`` None (ledger unreadable) marks the snapshot's holds unknown.
    """
    if snap.table is None:
        return dataclasses.replace(snap, director=director or snap.director, holds_known=holds is not None)
    no_health = RsHealth(Health.UNKNOWN, None, "")
    real_servers: dict[RsRef, RealServerState] = {}
    services: dict[ServiceKey, ServiceState] = {}
    for svc in snap.table.services:
        state = snap.services.get(svc.key, ServiceState())
        if quorum is not None:
            state = dataclasses.replace(state, quorum=quorum(svc.key, len(svc.real_servers)))
        services[svc.key] = state
        for rs in svc.real_servers:
            ref = (svc.key, rs.key)
            base = snap.real_servers.get(ref, RealServerState())
            h = health.get(ref, no_health)
            held = holds.get(ref) if holds is not None else None
            changes = [
                t for t in (h.last_change, held.since if held is not None and held.hold is not Hold.NONE else None) if t
            ]
            hold: Hold  # not narrowed to the held kinds by the test below
            if held is not None and held.hold is not Hold.NONE:
                reason, actor, original, hold = held.reason, held.actor, held.original_weight, held.hold
            else:
                reason, actor, original, hold = h.reason, "", None, Hold.NONE
            real_servers[ref] = RealServerState(
                health=h.health,
                hold=hold,
                last_change=max(changes) if changes else None,
                name=base.name,
                reason=reason,
                actor=actor,
                original_weight=original,
            )
    return dataclasses.replace(
        snap,
        services=services,
        real_servers=real_servers,
        probes=dict(probes),
        director=director if director is not None else snap.director,
        holds_known=holds is not None,
    )


class FeedingProvider:
    """A snapshot provider: the table provider's snapshot, fed by the probes, the ledger, keepalived and the passive detector.

    Called from the agent's worker thread, one call at a time (the agent
    shares one refresh between all requests); the lock makes that a rule
    rather than an assumption, since the feeds keep a little state.
    """

    def __init__(
        self,
        table: SnapshotProvider,
        *,
        probes: ProbeFeed | None = None,
        ledger: LedgerFeed | None = None,
        director: DirectorFeed | None = None,
        quorum: Callable[[ServiceKey, int], int] | None = None,
        passive: PassiveFeed | None = None,
    ) -> None:
        self.table = table
        self.probes = probes
        self.passive = passive
        self.ledger = ledger
        self.director = director
        self.quorum = quorum
        self._lock = threading.Lock()

    def __call__(self) -> Snapshot:
        with self._lock:
            snap = self.table()
            health, probes = probe_states(self.probes.checks()) if self.probes is not None else ({}, {})
            holds = self.ledger.read() if self.ledger is not None else {}
            director = self.director.read(snap.table) if self.director is not None else None
            snap = compose(snap, health=health, probes=probes, holds=holds, director=director, quorum=self.quorum)
            return dataclasses.replace(snap, passive=self.passive.read()) if self.passive is not None else snap
