"""One session of the action layer: a view of the kernel table, the ledger, and the record of each decision.

A session runs under the layer's lock (:class:`actuator.actions.Actions` opens it). The
jobs (``holds``, ``members``, ``director``, ``steps``, ``reconcile``) decide; the
session reads the kernel once per service, writes the kernel in crash-safe order
(:meth:`Session.write`), and audits, counts and logs each outcome (:meth:`Session.finish`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lvsguard.actuator.actions.outcome import ALERT_SOURCES, Actor, Outcome
from lvsguard.actuator.actions.view import ServiceView
from lvsguard.actuator.ledger import Backend, Ledger
from lvsguard.actuator.states import WARNINGS, HoldState, JobKind, JobState, Result, Source
from lvsguard.actuator.targets import Target
from lvsguard.errors import BulkFailed, KernelError, NoSuchDestination, NoSuchService, PolicyRefused, RefusedForNow
from lvsguard.logs import event
from lvsguard.model import RealServer, RealServerKey, ServiceKey, Table

if TYPE_CHECKING:
    from lvsguard.actuator.actions.writer import Actions

log = logging.getLogger(__name__)

LOG_EACH = 8
"""A batch with more decisions than this logs one summary line plus one line per warning (refused,
drift, error) instead of one line per decision: a log line costs system calls, and the audit trail
has every decision anyway."""


@dataclass(frozen=True, slots=True)
class _QueuedWrite:
    """A kernel write of a batch session, waiting for the intents' commit."""

    target: Target
    rs: RealServer
    before: Backend | None  # the backend row before this write's intent (to undo it)
    touch: bool
    done: bool


@dataclass(frozen=True, slots=True)
class _Entry:
    """One decision as the audit trail and the log have it."""

    source: str
    actor: str
    action: str
    result: str
    target: Target | None
    reason: str
    message: str
    details: dict[str, Any]

    def write(self, ledger: Ledger) -> None:
        ledger.audit(
            source=self.source,
            actor=self.actor,
            action=self.action,
            result=self.result,
            target=self.target,
            reason=self.reason,
            message=self.message,
            details=self.details,
        )

    def log(self, actor: Actor) -> None:
        level = logging.WARNING if self.result in WARNINGS else logging.INFO
        event(
            log,
            level,
            "action",
            action=self.action,
            result=self.result,
            reason=self.reason or "-",
            target=self.target or "-",
            source=actor.source,
            actor=actor.name,
            alertname=actor.alertname or "-",
            message=self.message,
        )


class Session:
    """A batch of actions under the lock, with a view of the services they touch."""

    def __init__(
        self, actions: Actions, ledger: Ledger, table: Table | None, *, batch: bool = False, cached: bool = False
    ):
        self._actions = actions
        self.batch = batch
        self.cached = cached
        self._queued: list[_QueuedWrite] = []
        self._audits: list[tuple[_Entry, Actor]] = []
        self._jobs: list[int] = []
        self.failed: dict[Target, str] = {}
        """After a batch: real servers whose kernel write failed, with the kernel's message."""
        self.ledger = ledger
        self.kernel = actions._kernel
        self.policy = actions.policy
        self.settings = actions.settings
        self.metrics = actions.metrics
        self.clock = actions.clock
        self.drains = actions.drains
        self._views = actions.views
        self._services: dict[ServiceKey, ServiceView | None] = {}
        if table is not None:
            self._services = {svc.key: ServiceView(svc.key, svc.real_servers) for svc in table.services}
            actions.services_seen = set(self._services)
            self._complete = True
            now = self._views.clock()
            for view in self._services.values():
                if view is not None:
                    self._views.remember(view, now)
        else:
            self._complete = False

    # kernel view

    def service(self, key: ServiceKey) -> ServiceView | None:
        """The service as the kernel has it (read once per session); None when absent."""
        if key in self._services:
            return self._services[key]
        if self._complete:
            return None
        now = self._views.clock()
        if self.cached:
            shared = self._views.fresh(key, now)
            if shared is not None:
                self._services[key] = shared
                return shared
        try:
            svc: ServiceView | None = ServiceView(key, self.kernel.read_real_servers(key))
        except NoSuchService:
            svc = None
            self._views.forget(key)
            self._actions.services_seen.discard(key)
        self._services[key] = svc
        if svc is not None:
            self._views.remember(svc, now)
            self._actions.services_seen.add(key)
        return svc

    def real_server(self, target: Target) -> tuple[ServiceView | None, RealServer | None]:
        svc = self.service(target.service)
        return svc, (svc.real_server(target.real_server) if svc else None)

    def forget(self, key: ServiceKey) -> None:
        """Read ``key`` afresh next time (it changed, or a write to it failed)."""
        self._services.pop(key, None)
        self._views.forget(key)
        self._complete = False

    def replace_rs(self, target: Target, rs: RealServer) -> None:
        view = self._services.get(target.service)
        if view is not None:
            view.update(rs)

    # recording

    def finish(self, outcome: Outcome, actor: Actor, *, audit: bool = True) -> Outcome:
        """Audit and count an outcome; a noop is only counted.

        A refusal repeated by a retry or a re-sent alert (same real server, action
        and reason) is audited and counted once; an operator's every attempt is.
        """
        if not audit:
            self.metrics.action(outcome.action, outcome.result, actor.source)
            return outcome
        refusals = self._actions.refusals
        key = (outcome.target, outcome.action) if outcome.target else None
        if outcome.result == Result.REFUSED and key is not None:
            if refusals.get(key) == outcome.reason and actor.source in (Source.ACTUATOR, *ALERT_SOURCES):
                return outcome
            refusals[key] = outcome.reason
            self.metrics.refusal(outcome.action, outcome.reason)
        elif outcome.result == Result.REFUSED:  # the director's own actions (failover) have no real server
            self.metrics.refusal(outcome.action, outcome.reason)
        elif key is not None and outcome.result in (Result.APPLIED, Result.RECORDED):
            refusals.pop(key, None)
        details = dict(outcome.details)
        if outcome.weight is not None:
            details["weight"] = outcome.weight
        if outcome.job_id is not None:
            details["job_id"] = outcome.job_id
        entry = _Entry(
            actor.source,
            actor.audit_name,
            outcome.action,
            outcome.result,
            outcome.target,
            outcome.reason,
            outcome.message,
            details,
        )
        self.metrics.action(outcome.action, outcome.result, actor.source)
        if self.batch:
            self._audits.append((entry, actor))  # audited and logged after the kernel writes, with their real result
            return outcome
        with self.ledger.transaction():
            entry.write(self.ledger)
        entry.log(actor)
        return outcome

    def refused(self, action: str, target: Target, exc: PolicyRefused, actor: Actor, **extra: Any) -> Outcome:
        retry = exc.retry_after if isinstance(exc, RefusedForNow) else None
        return self.finish(
            Outcome(action, target, Result.REFUSED, str(exc), exc.reason, retry_after=retry, **extra), actor
        )

    def absent(self, action: str, target: Target, svc: ServiceView | None, actor: Actor) -> Outcome:
        """The target is not in the kernel table: recorded and answered, never raised."""
        listed = target.real_server in self.settings.real_servers_allowed.get(target.service, frozenset())
        where = (
            f"no service {target.service}"
            if svc is None
            else f"no real server {target.real_server} in {target.service}"
        )
        note = " (the config lists it)" if listed else ""
        return self.finish(Outcome(action, target, Result.NOT_FOUND, f"{where} in the kernel table{note}"), actor)

    def ignore(self, actor: Actor, action: str, message: str, result: Result, *, audit: bool = True) -> Outcome:
        """An alert the layer takes no action on (no rule, bad labels, a kernel error): audited and counted."""
        if audit:
            with self.ledger.transaction():
                self.ledger.audit(
                    source=actor.source,
                    actor=f"{actor.alertname}/{actor.name}",
                    action=action,
                    result=result,
                    message=message,
                )
        self.metrics.action(action, result, actor.source)
        return Outcome(action, None, result, message)

    def settled(self, outcome: Outcome) -> Outcome:
        """``outcome`` as the end of the batch left it: an error when its real server's kernel write failed."""
        if outcome.result == Result.APPLIED and outcome.target in self.failed:
            return outcome.not_applied(self.failed[outcome.target])
        return outcome

    # writing

    def write(
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
            self.replace_rs(target, rs)
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
            self.forget(target.service)
            raise
        with self.ledger.transaction():
            self.ledger.end_write(target)
            if touch:
                self.ledger.touch(target)
            if done:
                self.ledger.delete_backend(target)
        self.replace_rs(target, rs)
        return rs

    def delete(self, target: Target, actor: Actor, rs: RealServer) -> Outcome:
        """Delete ``rs`` from the kernel and close everything the ledger has about it."""
        backend = self.ledger.backend(target)
        self.kernel.delete_real_server(target.service, target.real_server)
        self.forget(target.service)
        with self.ledger.transaction():
            closed = self.ledger.close_holds(target, state=HoldState.REMOVED, by=str(actor))
            self.ledger.delete_backend(target)
            for job in self.ledger.open_jobs(target):
                if job.kind == JobKind.SLOW_START:
                    self.ledger.finish_job(job.id, JobState.CANCELLED, "real server deleted")
            self.ledger.touch(target)
        if rs.weight > 0:
            self.policy.record_write()
        original = backend.original_weight if backend is not None else rs.weight
        return Outcome(
            "remove",
            target,
            Result.APPLIED,
            f"{target} deleted (weight was {original}; {closed} hold(s) closed)",
            details={"original_weight": original},
        )

    def start_job(self, job_id: int) -> None:
        if self.batch:
            self._jobs.append(job_id)  # its thread must see the committed job
        else:
            self._actions.start_job(job_id)

    def flush(self) -> None:
        """End a batch: commit the intents, write the kernel, commit confirmations and audit, start jobs.

        One kernel write per real server, the last queued one (a SET_DEST replaces the
        real server's whole state, so the earlier ones of the batch change nothing the
        last does not), all of a service's in one pipelined request. A real server whose
        write failed keeps the kernel state from before the batch, its ledger row goes
        back to what it was then, and its audit event says ``error`` (:meth:`settled`
        gives the same for the caller's outcomes).
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
                if entry.target in self.failed and entry.result == Result.APPLIED:
                    entry = replace(
                        entry, result=Result.ERROR, message=f"{entry.message}: not applied, {self.failed[entry.target]}"
                    )
                entry.write(self.ledger)
                entries.append((entry, actor))
        _log_batch(entries)
        for target in self.failed:
            self.forget(target.service)
        for job_id in self._jobs:
            self._actions.start_job(job_id)

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


def _log_batch(entries: list[tuple[_Entry, Actor]]) -> None:
    """One line per decision, or (``LOG_EACH``) one per warning and a summary of the rest."""
    if len(entries) <= LOG_EACH:
        for entry, actor in entries:
            entry.log(actor)
        return
    counts: dict[str, int] = {}
    for entry, actor in entries:
        if entry.result in WARNINGS:
            entry.log(actor)
        else:
            key = f"{entry.action}_{entry.result}"
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
