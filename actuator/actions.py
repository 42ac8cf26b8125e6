"""The only code that writes to IPVS: quarantine, restore, drain, add, remove, set weight.

Webhook, API and CLI all come here, so every write goes through the ledger and
:mod:`actuator.policy`, under one lock (SQLite and the kernel see one writer).

The model is *desired state*: holds (one per alert fingerprint or manual
holder) say that a real server should be out; the ``backends`` table says what
the actuator did to the kernel. Every operation records the intent, then
converges the two: take the real server out when it has a hold and is in, bring
it back when its last hold is gone. A refused convergence (quorum, hold-down,
rate limit) is retried by :meth:`Actions.retry_pending` while the hold lasts,
which is how "applied later, when the quorum allows it and the alert still
fires" works.

Order of writes for crash safety: ledger intent (``write_pending``) committed,
kernel write, ledger confirmation committed. :meth:`Actions.reconcile` at start
finishes or reports whatever a kill -9 interrupted. A kernel weight that differs
from the ledger with no write pending was changed by hand: it is reported
(audit ``drift``) and never overwritten.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from actuator.failover import peer_problem, read_track_file, write_track_file
from actuator.ledger import Backend, FailoverHold, Hold, Job, Ledger
from actuator.policy import Policy, RefusedForNow
from actuator.settings import ActuatorSettings
from actuator.targets import Target
from lvsguard.errors import BulkFailed, KernelError, NoSuchDestination, NoSuchService, PolicyRefused
from lvsguard.logs import event
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService

log = logging.getLogger(__name__)

VIEW_TTL = 0.5
"""Seconds a webhook session may reuse the view of a big service read by an earlier session."""
VIEW_CACHE_MIN = 64
"""Real servers from which a service's view is worth caching (its read costs O(real servers))."""
LOG_EACH = 8
"""A batch with more decisions than this logs one summary line plus one line per warning (refused,
drift, error) instead of one line per decision: a log line costs system calls, and the audit trail
has every decision anyway."""


class Kernel(Protocol):
    """The part of ``lvsguard.ipvs.netlink.NetlinkIPVS`` the actuator uses (``tests/fakes.py`` has the fake)."""

    def read(self) -> Table: ...
    def read_service(self, key: ServiceKey) -> VirtualService: ...
    def read_real_servers(self, key: ServiceKey) -> tuple[RealServer, ...]: ...
    def edit_real_server(self, service: ServiceKey, rs: RealServer) -> None: ...
    def edit_real_servers(self, service: ServiceKey, servers: Iterable[RealServer]) -> int: ...
    def add_real_server(self, service: ServiceKey, rs: RealServer) -> None: ...
    def delete_real_server(self, service: ServiceKey, key: RealServerKey) -> None: ...


class Recorder(Protocol):
    """Where outcomes are counted (``actuator.metrics.ActuatorMetrics``)."""

    def action(self, action: str, result: str, source: str) -> None: ...
    def refusal(self, action: str, reason: str) -> None: ...
    def failover(self) -> None: ...


class _NoMetrics:
    def action(self, action: str, result: str, source: str) -> None:
        return None

    def refusal(self, action: str, reason: str) -> None:
        return None

    def failover(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked: an alert (``name`` = fingerprint), an API token or the CLI (``name`` = token name)."""

    source: str  # "alertmanager", "api", "cli", "actuator" (retries, reconciliation, jobs)
    name: str
    alertname: str = ""

    @property
    def hold_kind(self) -> str:
        return "alert" if self.source == "alertmanager" else "manual"

    def __str__(self) -> str:
        if self.source == "alertmanager":
            return f"alert {self.alertname or '?'} ({self.name})"
        return f"{self.source} {self.name}"


ACTUATOR = Actor("actuator", "actuator")

RESULTS = ("applied", "recorded", "noop", "refused", "dry_run", "not_found", "drift", "error")
"""applied: the kernel was written or a job started; recorded: the ledger changed but
the kernel needed no write (another holder keeps the real server out); noop: nothing
to do (a repeat); refused: a safety rule said no (``reason``); dry_run: would have
written; not_found: no such service or real server; drift: the kernel weight was
changed by hand and is left as it is; error: the kernel failed."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one action did, for the API reply, the webhook reply, the audit trail and the metrics."""

    action: str
    target: Target | None
    result: str
    message: str
    reason: str = ""  # refusal reason (policy.REASONS) or error class
    weight: int | None = None  # the real server's kernel weight afterwards, when known
    job_id: int | None = None
    holders: tuple[str, ...] = ()
    retry_after: float | None = None
    details: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action,
            "result": self.result,
            "message": self.message,
            "reason": self.reason,
            "service": str(self.target.service) if self.target else "",
            "real_server": str(self.target.real_server) if self.target else "",
            "weight": self.weight,
            "job_id": self.job_id,
            "holders": list(self.holders),
        }
        if self.retry_after is not None:
            out["retry_after"] = math.ceil(self.retry_after)
        return out


def ramp_weight(target_weight: int, elapsed: float, period: float, steps: int) -> int:
    """Weight after ``elapsed`` seconds of a slow start to ``target_weight`` over ``period`` seconds.

    Steps of ``period / steps`` seconds, never below 1 (0 would be "out") and
    never above the target.
    """
    if period <= 0 or elapsed >= period or target_weight <= 1:
        return target_weight
    step = min(steps, int(elapsed / (period / steps)) + 1)
    return max(1, min(target_weight, math.ceil(target_weight * step / steps)))


WARNINGS = ("refused", "drift", "error")
"""Results logged at WARNING, each on its own line even in a big batch."""


def _log_action(entry: dict[str, Any], actor: Actor) -> None:
    """The log line of one decision (``entry`` as the audit trail has it)."""
    level = logging.WARNING if entry["result"] in WARNINGS else logging.INFO
    event(
        log,
        level,
        "action",
        action=entry["action"],
        result=entry["result"],
        reason=entry["reason"] or "-",
        target=entry["target"] or "-",
        source=actor.source,
        actor=actor.name,
        alertname=actor.alertname or "-",
        message=entry["message"],
    )


def _failover_text(hold: FailoverHold) -> str:
    if hold.kind == "alert":
        return f"alert {hold.alertname or '?'} ({hold.holder})"
    return f"manual ({hold.source} {hold.holder})"


def _holder_text(hold: Hold) -> str:
    if hold.kind == "alert":
        return f"alert {hold.alertname or '?'} ({hold.holder})"
    return f"manual ({hold.source} {hold.holder})"


class Actions:
    """The action layer: one per actuator process, shared by every request and job thread."""

    def __init__(
        self,
        kernel: Kernel,
        settings: ActuatorSettings,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Recorder | None = None,
    ):
        self.kernel = kernel
        self.settings = settings
        self.clock = clock
        self.policy = Policy(settings, clock=clock)
        self.metrics: Recorder = metrics or _NoMetrics()
        self.lock = threading.RLock()
        self.start_job: Callable[[int], None] = lambda job_id: None
        """Called with a new job's id; the app's JobRunner replaces it with one that starts a thread."""
        self._last_refusal: dict[tuple[Target, str], str] = {}
        self.views: dict[ServiceKey, tuple[float, ServiceView]] = {}
        """Views of big services (``VIEW_CACHE_MIN``) by read time (``time.monotonic``); only used under the lock."""

    @contextmanager
    def session(
        self, ledger: Ledger, *, table: Table | None = None, batch: bool = False, cached: bool = False
    ) -> Iterator[Session]:
        """Hold the lock for actions that share one view of the kernel table.

        ``cached``: a big service's view read less than ``VIEW_TTL`` seconds ago by
        another session is used instead of a new read (the webhook at a high rate:
        reading a service of 1 000 real servers costs more than the rest of the
        request). Every session's writes update the shared view in place, and a
        failed write or a rolled-back batch drops it, so the cache only misses
        what another program wrote in the last ``VIEW_TTL`` seconds. Sessions of
        the API, the jobs and the reconciliation at start always read afresh; the
        retry loop's rounds use a fresh shared view too (``reconcile``).

        ``batch``: one ledger transaction for the whole session. Kernel writes
        wait until its end: the holds and intents are committed first, then
        the kernel is written, then every confirmation and audit event goes in
        one more transaction. The crash-safety order is the same as one write at
        a time, with two commits per batch instead of four per action (a webhook
        payload of 1 000 alerts).
        """
        with self.lock:
            session = Session(self, ledger, table, batch=batch, cached=cached)
            if not batch:
                yield session
                return
            ledger.begin()
            try:
                yield session
            except BaseException:
                ledger.rollback()  # nothing reached the kernel yet
                self.views.clear()  # the session's views have writes that never happened
                raise
            session.flush()

    def retry_pending(self, ledger: Ledger, *, cached: bool = False) -> list[Outcome]:
        """Converge every real server whose holds and kernel state disagree (refused earlier)."""
        with self.session(ledger, cached=cached) as s:
            return s.converge_all()

    def reconcile(self, ledger: Ledger, *, cached: bool = False) -> list[Outcome]:
        """Finish or report what a crash interrupted, and report weights changed by hand; returns what was found.

        ``cached``: the retry loop's periodic rounds may use a big service's view
        that a webhook session read less than ``VIEW_TTL`` seconds ago. Reading a
        service of 1 000 real servers afresh under the lock every round stalled
        every webhook request behind it; a weight changed by hand is then
        reported one round later at worst. The round at start reads afresh.
        """
        with self.session(ledger, cached=cached) as s:
            return s.reconcile()

    def step_job(self, ledger: Ledger, job_id: int) -> bool:
        """Advance one job by one step; True when it has finished."""
        with self.session(ledger) as s:
            return s.step_job(job_id)


class ServiceView:
    """One service of the session's kernel view, indexed by real server (O(1) per alert in a big batch)."""

    def __init__(self, key: ServiceKey, real_servers: tuple[RealServer, ...]):
        self.key = key
        self.servers = {rs.key: rs for rs in real_servers}
        self.healthy = sum(1 for rs in real_servers if rs.weight > 0)
        self.total = len(self.servers)

    def real_server(self, key: RealServerKey) -> RealServer | None:
        return self.servers.get(key)

    def update(self, rs: RealServer) -> None:
        old = self.servers.get(rs.key)
        self.healthy += (rs.weight > 0) - (old is not None and old.weight > 0)
        self.servers[rs.key] = rs


@dataclass(frozen=True, slots=True)
class _QueuedWrite:
    """A kernel write of a batch session, waiting for the intents' commit."""

    target: Target
    rs: RealServer
    before: Backend | None  # the backend row before this write's intent (to undo it)
    touch: bool
    done: bool


class Session:
    """A batch of actions under the lock, with a cached view of the services they touch."""

    def __init__(
        self, actions: Actions, ledger: Ledger, table: Table | None, *, batch: bool = False, cached: bool = False
    ):
        self.a = actions
        self.batch = batch
        self.cached = cached
        self._queued: list[_QueuedWrite] = []
        self._audits: list[tuple[dict[str, Any], Actor]] = []
        self._jobs: list[int] = []
        self.failed: dict[Target, str] = {}
        """After a batch: real servers whose kernel write failed, with the kernel's message."""
        self.ledger = ledger
        self.kernel = actions.kernel
        self.policy = actions.policy
        self.settings = actions.settings
        self._services: dict[ServiceKey, ServiceView | None] = {}
        if table is not None:
            self._services = {svc.key: ServiceView(svc.key, svc.real_servers) for svc in table.services}
            self._complete = True
            now = time.monotonic()
            for view in self._services.values():
                self._remember(view, now)
        else:
            self._complete = False

    # kernel view

    def service(self, key: ServiceKey) -> ServiceView | None:
        """The service as the kernel has it (read once per session); None when absent."""
        if key in self._services:
            return self._services[key]
        if self._complete:
            return None
        now = time.monotonic()
        if self.cached and key in self.a.views:
            read_at, view = self.a.views[key]
            if now - read_at < VIEW_TTL:
                self._services[key] = view
                return view
        try:
            svc: ServiceView | None = ServiceView(key, self.kernel.read_real_servers(key))
        except NoSuchService:
            svc = None
            self.a.views.pop(key, None)
        self._services[key] = svc
        if svc is not None:
            self._remember(svc, now)
        return svc

    def _remember(self, view: ServiceView, read_at: float) -> None:
        """Share a big service's view with later cached sessions (writes update it in place)."""
        if view.total >= VIEW_CACHE_MIN:
            self.a.views[view.key] = (read_at, view)
        else:
            self.a.views.pop(view.key, None)

    def real_server(self, target: Target) -> tuple[ServiceView | None, RealServer | None]:
        svc = self.service(target.service)
        return svc, (svc.real_server(target.real_server) if svc else None)

    def _forget(self, key: ServiceKey) -> None:
        self._services.pop(key, None)
        self.a.views.pop(key, None)
        self._complete = False

    def _replace_rs(self, target: Target, rs: RealServer) -> None:
        view = self._services.get(target.service)
        if view is not None:
            view.update(rs)

    # recording

    def _finish(self, outcome: Outcome, actor: Actor, *, audit: bool = True) -> Outcome:
        """Audit and count an outcome; a noop is only counted.

        A refusal repeated by a retry or a re-sent alert (same real server, action
        and reason) is audited and counted once; an operator's every attempt is.
        """
        if not audit:
            self.a.metrics.action(outcome.action, outcome.result, actor.source)
            return outcome
        key = (outcome.target, outcome.action) if outcome.target else None
        if outcome.result == "refused" and key is not None:
            if self.a._last_refusal.get(key) == outcome.reason and actor.source in ("actuator", "alertmanager"):
                return outcome
            self.a._last_refusal[key] = outcome.reason
            self.a.metrics.refusal(outcome.action, outcome.reason)
        elif outcome.result == "refused":  # the director's own actions (failover) have no real server
            self.a.metrics.refusal(outcome.action, outcome.reason)
        elif key is not None and outcome.result in ("applied", "recorded"):
            self.a._last_refusal.pop(key, None)
        details = dict(outcome.details)
        if outcome.weight is not None:
            details["weight"] = outcome.weight
        if outcome.job_id is not None:
            details["job_id"] = outcome.job_id
        entry = {
            "source": actor.source,
            "actor": actor.name if not actor.alertname else f"{actor.alertname}/{actor.name}",
            "action": outcome.action,
            "result": outcome.result,
            "target": outcome.target,
            "reason": outcome.reason,
            "message": outcome.message,
            "details": details,
        }
        self.a.metrics.action(outcome.action, outcome.result, actor.source)
        if self.batch:
            self._audits.append((entry, actor))  # audited and logged after the kernel writes, with their real result
            return outcome
        with self.ledger.transaction():
            self.ledger.audit(**entry)
        _log_action(entry, actor)
        return outcome

    def _refused(self, action: str, target: Target, exc: PolicyRefused, actor: Actor, **extra: Any) -> Outcome:
        retry = exc.retry_after if isinstance(exc, RefusedForNow) else None
        return self._finish(Outcome(action, target, "refused", str(exc), exc.reason, retry_after=retry, **extra), actor)

    def _write(
        self,
        target: Target,
        weight: int,
        *,
        state: str,
        original: int,
        previous: int,
        job_id: int | None = None,
        touch: bool = True,
        done: bool = False,
    ) -> RealServer:
        """Ledger intent, kernel write, ledger confirmation; undo the intent if the kernel says no.

        ``done``: the write ends the actuator's involvement (a restore), so the
        confirmation also drops the backend row, in the same transaction.
        """
        _view, current = self.real_server(target)
        if current is None:
            raise NoSuchDestination("no such destination", service=target.service, real_server=target.real_server)
        rs = replace(current, weight=weight)
        before = self.ledger.backend(target)
        if self.batch:
            self.ledger.begin_write(
                target, state=state, original=original, expected=weight, previous=previous, job_id=job_id
            )
            self._queued.append(_QueuedWrite(target, rs, before, touch, done))
            self._replace_rs(target, rs)
            return rs
        with self.ledger.transaction():
            self.ledger.begin_write(
                target, state=state, original=original, expected=weight, previous=previous, job_id=job_id
            )
        try:
            self.kernel.edit_real_server(target.service, rs)
        except KernelError:
            with self.ledger.transaction():
                self._put_backend(target, before)
            self._forget(target.service)
            raise
        with self.ledger.transaction():
            self.ledger.end_write(target)
            if touch:
                self.ledger.touch(target)
            if done:
                self.ledger.delete_backend(target)
        self._replace_rs(target, rs)
        return rs

    def _start_job(self, job_id: int) -> None:
        if self.batch:
            self._jobs.append(job_id)  # its thread must see the committed job
        else:
            self.a.start_job(job_id)

    def flush(self) -> None:
        """End a batch: commit the intents, write the kernel, commit confirmations and audit, start jobs.

        One kernel write per real server, the last queued one (a SET_DEST replaces the
        real server's whole state, so the earlier ones of the batch change nothing the
        last does not), all of a service's in one pipelined request. A real server whose
        write failed keeps the kernel state from before the batch, and its ledger row
        goes back to what it was then.
        """
        self.ledger.commit()
        by_target: dict[Target, list[_QueuedWrite]] = {}
        for write in self._queued:
            by_target.setdefault(write.target, []).append(write)
        by_service: dict[ServiceKey, dict[RealServerKey, Target]] = {}
        for target in by_target:
            by_service.setdefault(target.service, {})[target.real_server] = target
        for service, targets in by_service.items():
            try:
                self.kernel.edit_real_servers(service, (by_target[t][-1].rs for t in targets.values()))
            except BulkFailed as exc:
                for failure in exc.failures:
                    failed = (
                        [targets[failure.real_server]] if failure.real_server in targets else list(targets.values())
                    )
                    for target in failed:
                        self.failed[target] = str(failure)
            except KernelError as exc:
                for target in targets.values():
                    self.failed[target] = str(exc)
        with self.ledger.transaction():
            for target, writes in by_target.items():
                if target in self.failed:
                    self._put_backend(target, writes[0].before)  # the batch's intents are undone
                    continue
                self.ledger.end_write(target)
                if any(w.touch for w in writes):
                    self.ledger.touch(target)
                if writes[-1].done:
                    self.ledger.delete_backend(target)
            entries = []
            for entry, actor in self._audits:
                if entry["target"] in self.failed and entry["result"] == "applied":
                    entry = {
                        **entry,
                        "result": "error",
                        "message": f"{entry['message']}: not applied, {self.failed[entry['target']]}",
                    }
                self.ledger.audit(**entry)
                entries.append((entry, actor))
        self._log_batch(entries)
        for target in self.failed:
            self._forget(target.service)
        for job_id in self._jobs:
            self.a.start_job(job_id)

    @staticmethod
    def _log_batch(entries: list[tuple[dict[str, Any], Actor]]) -> None:
        """One line per decision, or (``LOG_EACH``) one per warning and a summary of the rest."""
        if len(entries) <= LOG_EACH:
            for entry, actor in entries:
                _log_action(entry, actor)
            return
        counts: dict[str, int] = {}
        for entry, actor in entries:
            if entry["result"] in WARNINGS:
                _log_action(entry, actor)
            else:
                key = f"{entry['action']}_{entry['result']}"
                counts[key] = counts.get(key, 0) + 1
        sources = ",".join(sorted({actor.source for _entry, actor in entries}))
        event(
            log,
            logging.INFO,
            "actions",
            decisions=len(entries),
            source=sources,
            **dict(sorted(counts.items())),
            hint="one line per decision is in the audit trail",
        )

    def _put_backend(self, target: Target, backend: Backend | None) -> None:
        self.ledger.delete_backend(target)
        if backend is not None:
            self.ledger.begin_write(
                target,
                state=backend.state,
                original=backend.original_weight,
                expected=backend.expected_weight,
                previous=backend.previous_weight,
                job_id=backend.job_id,
            )
            if not backend.write_pending:
                self.ledger.end_write(target)

    # holds: quarantine and drain

    def hold(
        self,
        target: Target,
        actor: Actor,
        *,
        action: str = "quarantine",
        reason: str = "",
        force: bool = False,
        drain_timeout: float | None = None,
        drain_delete: bool = False,
    ) -> Outcome:
        """Record ``actor``'s hold on the real server and take it out (weight 0); a drain also starts a job."""
        svc, rs = self.real_server(target)
        if rs is None:
            return self._absent(action, target, svc, actor)
        if self.policy.dry_run:
            try:
                if self.ledger.backend(target) is None:
                    self.policy.check_take_out(target, svc, self.ledger.changed_at(target), force=force)  # type: ignore[arg-type]
            except PolicyRefused as exc:
                return self._refused(action, target, exc, actor)
            return self._finish(
                Outcome(action, target, "dry_run", f"dry run: would set {target} to weight 0", weight=rs.weight), actor
            )
        with self.ledger.transaction():
            hold, new = self.ledger.add_hold(
                target,
                kind=actor.hold_kind,
                holder=actor.name,
                source=actor.source,
                action=action,
                alertname=actor.alertname,
                reason=reason,
            )
        backend = self.ledger.backend(target)
        if not new and backend is not None and backend.state == "out":
            outcome = Outcome(
                action,
                target,
                "noop",
                f"{target} is already held by {_holder_text(hold)}",
                weight=rs.weight,
                holders=self._holders(target),
            )
            return self._finish(outcome, actor, audit=False)
        outcome = self._take_out(target, actor, action=action, force=force)
        if outcome.result == "refused" and new and actor.hold_kind == "manual":
            with self.ledger.transaction():  # an operator's refused request leaves no hold; an alert's waits
                self.ledger.delete_hold(hold.id)
            return replace(outcome, holders=tuple(h for h in outcome.holders if h != _holder_text(hold)))
        if action == "drain" and outcome.result in ("applied", "recorded"):
            job = self._ensure_drain_job(target, actor, timeout=drain_timeout, delete=drain_delete)
            outcome = replace(outcome, job_id=job.id, message=f"{outcome.message}; drain job {job.id}")
        return self._finish(outcome, actor) if outcome.result != "refused" else outcome

    def _absent(self, action: str, target: Target, svc: ServiceView | None, actor: Actor) -> Outcome:
        """The target is not in the kernel table: recorded and answered, never raised."""
        listed = target.real_server in self.settings.real_servers_allowed.get(target.service, frozenset())
        where = (
            f"no service {target.service}"
            if svc is None
            else f"no real server {target.real_server} in {target.service}"
        )
        note = " (the config lists it)" if listed else ""
        return self._finish(Outcome(action, target, "not_found", f"{where} in the kernel table{note}"), actor)

    def _holders(self, target: Target) -> tuple[str, ...]:
        return tuple(_holder_text(h) for h in self.ledger.active_holds(target))

    def _take_out(self, target: Target, actor: Actor, *, action: str, force: bool = False) -> Outcome:
        """Converge towards "out": weight 0 with the original weight recorded (refusals are audited here)."""
        svc, rs = self.real_server(target)
        if svc is None or rs is None:
            return self._absent(action, target, svc, actor)
        backend = self.ledger.backend(target)
        holders = self._holders(target)
        if backend is not None and backend.state == "out":
            return Outcome(
                action,
                target,
                "recorded",
                f"{target} stays out, held by {len(holders)}",
                weight=rs.weight,
                holders=holders,
            )
        try:
            self.policy.check_take_out(target, svc, self.ledger.changed_at(target), force=force)
        except PolicyRefused as exc:
            return self._refused(
                action, target, exc, actor, weight=rs.weight, holders=holders, details={"pending": bool(holders)}
            )
        if backend is not None:
            self._cancel_jobs(target, "slow_start", f"taken out again by {actor}")
        original = backend.original_weight if backend is not None else rs.weight
        new = self._write(target, 0, state="out", original=original, previous=rs.weight)
        if rs.weight > 0:
            self.policy.record_write()
        return Outcome(
            action,
            target,
            "applied",
            f"{target}: weight {rs.weight} -> 0 (original {original} recorded)",
            weight=new.weight,
            holders=holders,
            details={"original_weight": original},
        )

    def _ensure_drain_job(self, target: Target, actor: Actor, *, timeout: float | None, delete: bool) -> Job:
        for job in self.ledger.open_jobs(target):
            if job.kind == "drain":
                return job
        _svc, rs = self.real_server(target)
        timeout = self.settings.drain_timeout if timeout is None else timeout
        initial = rs.active_connections if rs else 0
        params = {"timeout": timeout, "delete": delete, "deadline": self.a.clock() + timeout, "initial_active": initial}
        with self.ledger.transaction():
            job = self.ledger.create_job(
                "drain", target, params=params, actor=str(actor), message=f"waiting for {initial} active connections"
            )
        self._start_job(job.id)
        return job

    def release(self, target: Target, actor: Actor, *, scope: str = "own", force: bool = False) -> Outcome:
        """Drop holds and bring the real server back when the last one is gone.

        ``scope``: ``own`` is the actor's own hold (an alert: its fingerprint;
        an operator: every manual hold), ``alerts`` every alert's hold (an alert
        whose action is ``restore``), ``all`` every hold (an operator's override;
        an alert still firing takes the real server out again on its next notification).
        """
        holds = self.ledger.active_holds(target)
        if scope == "all":
            mine = holds
        elif scope == "alerts":
            mine = [h for h in holds if h.kind == "alert"]
        elif actor.hold_kind == "alert":
            mine = [h for h in holds if h.kind == "alert" and h.holder == actor.name]
        else:
            mine = [h for h in holds if h.kind == "manual"]
        backend = self.ledger.backend(target)
        if not mine and not (backend is not None and backend.state == "out" and not holds):
            if not holds:
                _svc, rs = self.real_server(target)
                outcome = Outcome("restore", target, "noop", f"{target} is not held", weight=rs.weight if rs else None)
            else:
                outcome = Outcome(
                    "restore",
                    target,
                    "noop",
                    f"{target} stays out: held by "
                    + ", ".join(_holder_text(h) for h in holds)
                    + " (an alert's hold ends when it resolves)",
                    holders=tuple(_holder_text(h) for h in holds),
                )
            return self._finish(outcome, actor, audit=False)
        with self.ledger.transaction():
            for h in mine:
                self.ledger.release_hold(h.id, by=str(actor))
        remaining = self.ledger.active_holds(target)
        if remaining:
            names = tuple(_holder_text(h) for h in remaining)
            return self._finish(
                Outcome(
                    "restore",
                    target,
                    "recorded",
                    f"released {len(mine)} hold(s); {target} stays out, held by " + ", ".join(names),
                    holders=names,
                ),
                actor,
            )
        self._cancel_jobs(target, "drain", f"restored by {actor}")
        outcome = self._bring_back(target, actor, force=force)
        return outcome if outcome.result == "refused" else self._finish(outcome, actor)

    def _bring_back(self, target: Target, actor: Actor, *, force: bool = False) -> Outcome:
        """Converge towards "in": the recorded weight, at once or as a slow-start job."""
        backend = self.ledger.backend(target)
        svc, rs = self.real_server(target)
        if backend is None:
            return Outcome("restore", target, "noop", f"{target} is not out", weight=rs.weight if rs else None)
        if backend.state == "restoring":
            return Outcome(
                "restore",
                target,
                "noop",
                f"{target} is already coming back (job {backend.job_id})",
                weight=rs.weight if rs else None,
                job_id=backend.job_id,
            )
        if svc is None or rs is None:
            with self.ledger.transaction():
                self.ledger.delete_backend(target)
            return Outcome(
                "restore", target, "not_found", f"{target} is no longer in the kernel table; nothing to restore"
            )
        if backend.drift or rs.weight != backend.expected_weight:
            with self.ledger.transaction():
                self.ledger.delete_backend(target)
            return Outcome(
                "restore",
                target,
                "drift",
                f"{target}: weight was changed by hand to {rs.weight} (the actuator set "
                f"{backend.expected_weight}); left as it is, original {backend.original_weight} not restored",
                reason="changed_by_hand",
                weight=rs.weight,
            )
        try:
            self.policy.check_bring_back(target, svc, self.ledger.changed_at(target), force=force)
        except PolicyRefused as exc:
            return self._refused("restore", target, exc, actor, weight=rs.weight)
        if self.policy.dry_run:
            return Outcome(
                "restore", target, "dry_run", f"dry run: would restore {target} to weight {backend.original_weight}"
            )
        original = backend.original_weight
        if self.settings.slow_start > 0 and original > 1:
            return self._start_slow_start(target, actor, original, rs.weight, message_prefix="restore")
        new = self._write(target, original, state="restoring", original=original, previous=rs.weight, done=True)
        return Outcome(
            "restore", target, "applied", f"{target}: weight {rs.weight} -> {original} (restored)", weight=new.weight
        )

    def _start_slow_start(
        self, target: Target, actor: Actor, weight: int, previous: int, *, message_prefix: str
    ) -> Outcome:
        period, steps = self.settings.slow_start, self.settings.slow_start_steps
        params = {"target_weight": weight, "period": period, "steps": steps, "started_at": self.a.clock()}
        first = ramp_weight(weight, 0.0, period, steps)
        with self.ledger.transaction():
            job = self.ledger.create_job(
                "slow_start", target, params=params, actor=str(actor), message=f"weight {first} of {weight}"
            )
        new = self._write(target, first, state="restoring", original=weight, previous=previous, job_id=job.id)
        self._start_job(job.id)
        return Outcome(
            message_prefix,
            target,
            "applied",
            f"{target}: weight {previous} -> {first}, ramping to {weight} over {period:g} s (job {job.id})",
            weight=new.weight,
            job_id=job.id,
        )

    def _cancel_jobs(self, target: Target, kind: str, why: str) -> None:
        with self.ledger.transaction():
            for job in self.ledger.open_jobs(target):
                if job.kind == kind:
                    self.ledger.finish_job(job.id, "cancelled", why)

    # failover (the director, not a real server)

    def failover(self, actor: Actor, *, reason: str = "") -> Outcome:
        """Record ``actor``'s request that this director hands its VIPs over, and write the track file."""
        path = self.settings.failover_track_file
        if not path:
            return self._finish(
                Outcome(
                    "failover",
                    None,
                    "refused",
                    "refused: failover is not configured (actuator.failover_track_file)",
                    "not_configured",
                ),
                actor,
            )
        peer = self.settings.failover_peer_url
        requested = read_track_file(path)  # under the lock: only this actuator writes the file
        problem = peer_problem(peer) if peer and not requested else None
        if problem:
            return self._finish(Outcome("failover", None, "refused", f"refused: {problem}", "peer"), actor)
        if self.policy.dry_run:
            return self._finish(Outcome("failover", None, "dry_run", f"dry run: would write 1 to {path}"), actor)
        with self.ledger.transaction():
            new = self.ledger.add_failover(
                kind=actor.hold_kind, holder=actor.name, source=actor.source, alertname=actor.alertname, reason=reason
            )
        if not requested:
            write_track_file(path, True)  # recorded first (crash order), then at once: the VIPs start moving
        holders = tuple(_failover_text(f) for f in self.ledger.active_failovers())
        if requested:
            if not new:
                return self._finish(
                    Outcome("failover", None, "noop", "failover already requested by this holder", holders=holders),
                    actor,
                    audit=False,
                )
            return self._finish(
                Outcome(
                    "failover",
                    None,
                    "recorded",
                    f"failover already requested ({path} = 1); {len(holders)} holder(s) now",
                    holders=holders,
                ),
                actor,
            )
        self.a.metrics.failover()
        return self._finish(
            Outcome(
                "failover",
                None,
                "applied",
                f"failover requested: {path} = 1 (keepalived lowers this director's priority)",
                holders=holders,
            ),
            actor,
        )

    def end_failover(self, actor: Actor, *, scope: str = "own") -> Outcome:
        """Release failover requests (``own``/``alerts``/``all`` as for holds); ``0`` once none is left."""
        path = self.settings.failover_track_file
        if not path:
            return self._finish(Outcome("failover", None, "noop", "failover is not configured"), actor, audit=False)
        kind = None if scope == "all" else ("alert" if scope == "alerts" else actor.hold_kind)
        holder = actor.name if scope == "own" and actor.hold_kind == "alert" else None
        with self.ledger.transaction():
            released = self.ledger.release_failovers(kind=kind, holder=holder, by=str(actor))
        remaining = tuple(_failover_text(f) for f in self.ledger.active_failovers())
        if remaining:
            result = "recorded" if released else "noop"
            return self._finish(
                Outcome(
                    "failover", None, result, "failover still requested by " + ", ".join(remaining), holders=remaining
                ),
                actor,
                audit=bool(released),
            )
        if not released and read_track_file(path) is False:
            return self._finish(Outcome("failover", None, "noop", "no failover is requested"), actor, audit=False)
        if self.policy.dry_run:
            return self._finish(Outcome("failover", None, "dry_run", f"dry run: would write 0 to {path}"), actor)
        write_track_file(path, False)
        return self._finish(Outcome("failover", None, "applied", f"failover released: {path} = 0"), actor)

    # weights and membership

    def set_weight(self, target: Target, weight: int, actor: Actor, *, force: bool = False) -> Outcome:
        """Set a weight; on a held real server, change the weight it comes back at instead."""
        svc, rs = self.real_server(target)
        if svc is None or rs is None:
            return self._absent("weight", target, svc, actor)
        backend = self.ledger.backend(target)
        if backend is not None:
            with self.ledger.transaction():
                self.ledger.set_original_weight(target, weight)
            holders = self._holders(target)
            return self._finish(
                Outcome(
                    "weight",
                    target,
                    "recorded",
                    f"{target} is held out; it will come back at weight {weight}",
                    weight=rs.weight,
                    holders=holders,
                ),
                actor,
            )
        if rs.weight == weight:
            return self._finish(
                Outcome("weight", target, "noop", f"{target} already has weight {weight}", weight=weight),
                actor,
                audit=False,
            )
        try:
            if weight == 0:
                self.policy.check_take_out(target, svc, self.ledger.changed_at(target), force=force)
            else:
                self.policy.check_bring_back(target, svc, self.ledger.changed_at(target), force=force)
        except PolicyRefused as exc:
            return self._refused("weight", target, exc, actor, weight=rs.weight)
        if self.policy.dry_run:
            return self._finish(
                Outcome(
                    "weight", target, "dry_run", f"dry run: would set {target} to weight {weight}", weight=rs.weight
                ),
                actor,
            )
        new = replace(rs, weight=weight)
        self.kernel.edit_real_server(target.service, new)
        with self.ledger.transaction():
            self.ledger.touch(target)
        self._replace_rs(target, new)
        if weight == 0:
            self.policy.record_write()
        return self._finish(
            Outcome("weight", target, "applied", f"{target}: weight {rs.weight} -> {weight}", weight=new.weight), actor
        )

    def add(
        self,
        target: Target,
        actor: Actor,
        *,
        weight: int = 1,
        forward: Forward | None = None,
        upper_threshold: int = 0,
        lower_threshold: int = 0,
    ) -> Outcome:
        """Add a real server (idempotent); with slow start, it ramps up to ``weight`` as a job."""
        svc, rs = self.real_server(target)
        if svc is None:
            return self._finish(
                Outcome("add", target, "not_found", f"no service {target.service} in the kernel table"), actor
            )
        if rs is not None:
            outcome = Outcome(
                "add", target, "noop", f"{target} is already in the service (weight {rs.weight})", weight=rs.weight
            )
            return self._finish(outcome, actor, audit=False)
        try:
            self.policy.check_add(target)
        except PolicyRefused as exc:
            return self._refused("add", target, exc, actor)
        if forward is None:
            methods = {r.forward for r in svc.servers.values()}
            if len(methods) != 1:
                raise ValueError(
                    f"forward is required: {target.service} has real servers with "
                    f"{'no' if not methods else 'several'} forwarding methods"
                )
            forward = methods.pop()
        if self.policy.dry_run:
            return self._finish(
                Outcome("add", target, "dry_run", f"dry run: would add {target} with weight {weight}"), actor
            )
        slow = self.settings.slow_start > 0 and weight > 1
        first = ramp_weight(weight, 0.0, self.settings.slow_start, self.settings.slow_start_steps) if slow else weight
        self.kernel.add_real_server(
            target.service, RealServer(target.real_server, first, forward, upper_threshold, lower_threshold)
        )
        self._forget(target.service)
        with self.ledger.transaction():
            self.ledger.touch(target)
        if slow:
            outcome = self._start_slow_start(target, actor, weight, first, message_prefix="add")
            return self._finish(replace(outcome, message=f"{target} added; {outcome.message}"), actor)
        return self._finish(
            Outcome("add", target, "applied", f"{target} added with weight {weight} ({forward})", weight=first), actor
        )

    def remove(self, target: Target, actor: Actor, *, force: bool = False) -> Outcome:
        """Delete a real server at once (drain first to let connections finish)."""
        svc, rs = self.real_server(target)
        if svc is None or rs is None:
            return self._absent("remove", target, svc, actor)
        try:
            self.policy.check_take_out(target, svc, self.ledger.changed_at(target), force=force, removing=True)
        except PolicyRefused as exc:
            return self._refused("remove", target, exc, actor)
        if self.policy.dry_run:
            return self._finish(Outcome("remove", target, "dry_run", f"dry run: would delete {target}"), actor)
        return self._finish(self._delete(target, actor, rs), actor)

    def _delete(self, target: Target, actor: Actor, rs: RealServer) -> Outcome:
        backend = self.ledger.backend(target)
        self.kernel.delete_real_server(target.service, target.real_server)
        self._forget(target.service)
        with self.ledger.transaction():
            closed = self.ledger.close_holds(target, state="removed", by=str(actor))
            self.ledger.delete_backend(target)
            for job in self.ledger.open_jobs(target):
                if job.kind == "slow_start":
                    self.ledger.finish_job(job.id, "cancelled", "real server deleted")
            self.ledger.touch(target)
        if rs.weight > 0:
            self.policy.record_write()
        original = backend.original_weight if backend is not None else rs.weight
        return Outcome(
            "remove",
            target,
            "applied",
            f"{target} deleted (weight was {original}; {closed} hold(s) closed)",
            details={"original_weight": original},
        )

    # convergence, jobs, reconciliation

    def converge(self, target: Target) -> Outcome | None:
        """Bring the kernel in line with the holds of one real server; None when they agree."""
        holds = self.ledger.active_holds(target)
        backend = self.ledger.backend(target)
        if holds and (backend is None or backend.state == "restoring"):
            first = holds[0]
            actor = Actor(first.source, first.holder, first.alertname) if first.kind == "alert" else ACTUATOR
            outcome = self._take_out(target, actor, action=first.action)
            if outcome.result == "refused":
                if outcome.retry_after is None:
                    self._drop_unapplied_manual_holds(holds)
                return outcome
            if any(h.action == "drain" for h in holds):
                job = self._ensure_drain_job(target, actor, timeout=None, delete=False)
                outcome = replace(outcome, job_id=job.id)
            return self._finish(outcome, ACTUATOR if outcome.result != "applied" else actor)
        if not holds and backend is not None and backend.state == "out":
            outcome = self._bring_back(target, ACTUATOR)
            return outcome if outcome.result == "refused" else self._finish(outcome, ACTUATOR)
        return None

    def _drop_unapplied_manual_holds(self, holds: list[Hold]) -> None:
        """Forget operators' holds the rules refuse, as a refused request leaves none; an alert's hold waits.

        A live refused request deletes its hold at once, so a manual hold left
        here never took effect: a kill -9 cut its request between the hold's
        commit and the kernel write, and the operator got no reply.
        """
        manual = [h for h in holds if h.kind == "manual"]
        if manual:
            with self.ledger.transaction():
                for h in manual:
                    self.ledger.delete_hold(h.id)

    def converge_all(self) -> list[Outcome]:
        targets = {h.target for h in self.ledger.active_holds()} | {b.target for b in self.ledger.backends()}
        outcomes = []
        for target in sorted(targets, key=str):
            outcome = self.converge(target)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def step_job(self, job_id: int) -> bool:
        job = self.ledger.job(job_id)
        if job is None or job.state != "running":
            return True
        if job.kind == "drain":
            return self._step_drain(job)
        return self._step_slow_start(job)

    def _end_job(
        self, job: Job, state: str, message: str, *, progress: float | None = None, drop_backend: bool = False
    ) -> bool:
        with self.ledger.transaction():
            if drop_backend:
                self.ledger.delete_backend(job.target)
            self.ledger.finish_job(job.id, state, message, progress=progress)
            self.ledger.audit(
                source="actuator",
                actor=job.actor,
                action=job.kind,
                result=state,
                target=job.target,
                message=message,
                details={"job_id": job.id},
            )
        self.a.metrics.action(job.kind, state, "actuator")
        return True

    def _step_drain(self, job: Job) -> bool:
        target = job.target
        self._forget(target.service)
        svc, rs = self.real_server(target)
        if rs is None:
            return self._end_job(job, "done", f"{target} is no longer in the kernel table", progress=1.0)
        backend = self.ledger.backend(target)
        if backend is None or backend.state != "out":
            return self._end_job(job, "cancelled", f"{target} was restored before the drain finished")
        initial = int(job.params.get("initial_active", 0))
        active = rs.active_connections
        progress = 1.0 if initial <= 0 else max(0.0, 1.0 - active / initial)
        if active == 0:
            if job.params.get("delete"):
                try:
                    self.policy.check_quorum(target, svc, removing=True)  # type: ignore[arg-type]
                except PolicyRefused as exc:
                    return self._end_job(job, "failed", f"drained, not deleted: {exc}", progress=1.0)
                self._delete(target, Actor("actuator", job.actor), rs)
                return self._end_job(job, "done", f"{target} drained and deleted", progress=1.0)
            return self._end_job(job, "done", f"{target} drained: 0 active connections", progress=1.0)
        if self.a.clock() >= float(job.params["deadline"]):
            return self._end_job(
                job,
                "timeout",
                f"{target}: {active} active connections left after "
                f"{float(job.params['timeout']):g} s; it stays at weight 0",
                progress=progress,
            )
        with self.ledger.transaction():
            self.ledger.update_job(
                job.id,
                progress=progress,
                message=f"{active} active connections left",
                params={**job.params, "active": active},
            )
        return False

    def _step_slow_start(self, job: Job) -> bool:
        target = job.target
        self._forget(target.service)
        _svc, rs = self.real_server(target)
        backend = self.ledger.backend(target)
        if backend is None or backend.state != "restoring" or backend.job_id != job.id:
            return self._end_job(job, "cancelled", f"{target} was taken out again")
        if rs is None:
            return self._end_job(job, "failed", f"{target} is no longer in the kernel table", drop_backend=True)
        if rs.weight != backend.expected_weight:
            with self.ledger.transaction():
                self.ledger.delete_backend(target)
            self._finish(
                Outcome(
                    "slow_start",
                    target,
                    "drift",
                    f"{target}: weight changed by hand to {rs.weight} during "
                    f"the slow start (expected {backend.expected_weight}); ramp stopped",
                    reason="changed_by_hand",
                    weight=rs.weight,
                ),
                ACTUATOR,
            )
            return self._end_job(job, "failed", f"weight changed by hand to {rs.weight}; ramp stopped")
        goal = backend.original_weight
        elapsed = self.a.clock() - float(job.params["started_at"])
        weight = ramp_weight(goal, elapsed, float(job.params["period"]), int(job.params["steps"]))
        if weight != rs.weight:
            self._write(
                target, weight, state="restoring", original=goal, previous=rs.weight, job_id=job.id, touch=False
            )
        if weight >= goal:
            return self._end_job(job, "done", f"{target} back at weight {goal}", progress=1.0, drop_backend=True)
        with self.ledger.transaction():
            self.ledger.update_job(job.id, progress=weight / goal, message=f"weight {weight} of {goal}")
        return False

    def reconcile(self) -> list[Outcome]:
        """Compare the ledger with the kernel after a start; finish interrupted writes, report drift."""
        outcomes = []
        path = self.settings.failover_track_file
        if path and not self.policy.dry_run:
            wanted = bool(self.ledger.active_failovers())
            if read_track_file(path) is not wanted:
                write_track_file(path, wanted)
                outcomes.append(
                    self._finish(
                        Outcome("failover", None, "applied", f"{path} set to {int(wanted)} from the ledger at start"),
                        ACTUATOR,
                    )
                )
        for backend in self.ledger.backends():
            outcome = self._reconcile_backend(backend)
            if outcome is not None:
                outcomes.append(self._finish(outcome, ACTUATOR))
        known = {b.target for b in self.ledger.backends()}
        for target in sorted({h.target for h in self.ledger.active_holds() if h.kind == "manual"} - known, key=str):
            outcome = self.converge(target)  # an operator's hold whose request a kill cut before the kernel write
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _reconcile_backend(self, backend: Backend) -> Outcome | None:
        target = backend.target
        _svc, rs = self.real_server(target)
        if rs is None:
            with self.ledger.transaction():
                self.ledger.delete_backend(target)
                closed = self.ledger.close_holds(target, state="removed", by="reconcile")
                for job in self.ledger.open_jobs(target):
                    self.ledger.finish_job(job.id, "failed", "real server gone after a restart")
            return Outcome(
                "reconcile", target, "not_found", f"{target} is no longer in the kernel table; {closed} hold(s) closed"
            )
        immediate_restore = backend.state == "restoring" and backend.job_id is None
        if rs.weight == backend.expected_weight:
            if not backend.write_pending:
                if immediate_restore:
                    with self.ledger.transaction():
                        self.ledger.delete_backend(target)
                return None
            with self.ledger.transaction():
                self.ledger.end_write(target)
                if immediate_restore:
                    self.ledger.delete_backend(target)
            return Outcome(
                "reconcile",
                target,
                "applied",
                f"{target}: interrupted write to weight {rs.weight} had reached the kernel",
                weight=rs.weight,
            )
        if backend.write_pending and rs.weight == backend.previous_weight:
            self._write(
                target,
                backend.expected_weight,
                state=backend.state,
                original=backend.original_weight,
                previous=rs.weight,
                job_id=backend.job_id,
                touch=False,
                done=immediate_restore,
            )
            return Outcome(
                "reconcile",
                target,
                "applied",
                f"{target}: interrupted write completed, weight {rs.weight} -> {backend.expected_weight}",
                weight=backend.expected_weight,
            )
        drift = f"weight is {rs.weight} in the kernel, the actuator set {backend.expected_weight}"
        if backend.drift == drift:
            return None
        with self.ledger.transaction():
            self.ledger.set_drift(target, drift)
        return Outcome(
            "reconcile",
            target,
            "drift",
            f"{target}: {drift} (changed by hand; left as it is)",
            reason="changed_by_hand",
            weight=rs.weight,
        )
