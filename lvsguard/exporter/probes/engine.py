"""The probe engine: one asyncio loop runs every check of every real server.

Scheduling is one heap of (due time, job) and one loop timer, not a task and a
sleep per check: the timer fires when the earliest check is due, starts every
check that is due, and re-arms. It fires at most every ``SLACK_SHARE`` of the
shortest interval (between ``TICK`` and ``MAX_SLACK``: 2 ms at 100 ms, 20 ms
at 1 s), so checks due close together start in one wake-up of the loop, which
costs about as much CPU as a probe. The first slot of a check is jittered over
one interval (thousands of checks do not fire at once), later ones keep a
fixed cadence, and a check that overran its slot runs at once rather than
piling up.

Checks with a hot path (tcp, plain http: a ``begin`` method) run as bare
sockets in the engine's epoll set (``poller.Poller``); their deadlines sit in
a second heap served by the same timer. A tick polls the probes it started
before it returns (a connect to loopback or over a veth is done when
``connect`` returns): one loop turn less per tick. Every other check runs as an asyncio
task bounded by ``asyncio.timeout`` (the checker is cancelled, a script's
process group is killed). Results go through rise/fall (``state.Health``); a
transition, and a damped weight change from a check that reports load, go to
the publisher.

Which checks run comes from a ``Plan``: with no config, a ``tcp`` check on
every real server's own port. ``run`` re-reads the kernel table every
``refresh`` seconds and adds or cancels checks as real servers come and go.

Big tables: the default checks together stay under ``default_rate`` probes a
second, and under what ``default_cpu_share`` of a core buys at the CPU cost
per probe the engine measures on its own thread (their interval stretches,
logged once per change of more than a quarter) and then export
their durations per service, not per real server (``metrics``); the table is
re-read no more often than ``REFRESH_FACTOR`` times what one read and sync
took. The engine shares the exporter's process: this keeps it from taking the
interpreter, and the scrape's size, away from the scrapes.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from lvsguard.exporter.probes.metrics import JobKey, ProbeMetrics
from lvsguard.exporter.probes.poller import Poller
from lvsguard.exporter.probes.publish import Publisher, Transition, WeightChange
from lvsguard.exporter.probes.result import Checker, ProbeResult, Target
from lvsguard.exporter.probes.state import Damper, Health, weight_of
from lvsguard.exporter.probes.tcp import TCPChecker
from lvsguard.ipvs import TableReader
from lvsguard.logs import event
from lvsguard.model import RealServerKey, ServiceKey, Table

log = logging.getLogger(__name__)

DEFAULT_REFRESH = 2.0
DEFAULT_RATE = 1000  # default (unconfigured) probes per second at most, all real servers together
DEFAULT_CPU_SHARE = 0.1  # and no more than this share of the engine thread's CPU, at the cost per probe measured
REFRESH_FACTOR = 10  # the table is re-read at most every REFRESH_FACTOR x (read + sync time)
TICK = 0.002  # the scheduler's timer fires at most this often
SLACK_SHARE = 0.02  # and at most every this share of the shortest check interval (checks due meanwhile start together)
MAX_SLACK = 0.02  # seconds: the most a check may start after its slot for the sake of batching
EAGER_BACKOFF = 32  # ticks without the early poll after one that found no probe done (remote real servers)
BUDGET_PERIOD = 5.0  # seconds between two looks at the default checks' budget (besides each table read)


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One check as configured: its name (the ``check`` label), checker and timing.

    ``default`` marks the unconfigured tcp check every real server gets; only
    those stretch their interval under the engine's ``default_rate``.
    """

    name: str
    checker: Checker
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    port: int | None = None  # None: the real server's own port
    default: bool = False


Plan = Callable[[ServiceKey, RealServerKey], tuple[CheckSpec, ...]]


_TCP = CheckSpec("tcp", TCPChecker(), default=True)


def default_plan(service: ServiceKey, real_server: RealServerKey) -> tuple[CheckSpec, ...]:
    """With no config: a tcp check on the real server's own port.

    Not for UDP services (no generic UDP check exists: a datagram service may
    ignore a probe it does not understand), nor for port 0 (fwmark real
    servers often have none); configure those in ``probes.checks``.
    """
    return (_TCP,) if real_server.port and service.protocol != "UDP" else ()


def stretched_interval(checks: int, interval: float, rate: float) -> float:
    """The interval that keeps ``checks`` checks under ``rate`` probes a second (``interval`` when they already are)."""
    if checks <= 0 or rate <= 0:
        return interval
    return max(interval, checks / rate)


@dataclass(frozen=True, slots=True)
class Damping:
    """Weight changes from agent/prometheus/script checks: a minimum step (in weight units) and interval (s)."""

    min_step: int = 1
    min_interval: float = 10.0


@dataclass(slots=True)
class _Job:
    key: JobKey
    spec: CheckSpec
    target: Target
    health: Health
    damper: Damper
    interval: float = 0.0  # spec.interval, or longer for a default check over the budget
    task: asyncio.Task[ProbeResult] | None = None  # the check in flight as a task (checks without a hot path)
    last: ProbeResult | None = None
    inflight: Any = None  # the hot-path probe in flight (has cancel()), _PENDING while it starts, or None
    due: float = 0.0  # the slot of the check in flight or next
    live: bool = True  # False once the real server left: a late result is dropped
    results: int = 0  # results so far
    passed: int = 0  # consecutive passing results, the newest last


@dataclass(frozen=True, slots=True)
class Standing:
    """One check of a real server as another thread sees it (the passive detector's release asks this)."""

    check: str
    healthy: bool  # after rise/fall
    results: int  # results so far: compared with an earlier reading, how many came since
    passed: int  # consecutive passing results, the newest last
    rise: int


_PENDING = object()


@dataclass(slots=True)
class _Stats:
    probes: int = 0
    lateness: list[float] = field(default_factory=list)  # seconds each probe started after its slot (when kept)


class ProbeEngine:
    """Runs ``plan``'s checks for every real server of the tables it is given (on one event loop)."""

    def __init__(
        self,
        plan: Plan = default_plan,
        *,
        metrics: ProbeMetrics | None = None,
        publisher: Publisher | None = None,
        damping: Damping = Damping(),
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        keep_lateness: bool = False,
        default_rate: float = DEFAULT_RATE,
        default_cpu_share: float = DEFAULT_CPU_SHARE,
        cpu_clock: Callable[[], float] = time.thread_time,
        hot_path: bool = True,
    ):
        self.plan = plan
        self.metrics = metrics if metrics is not None else ProbeMetrics()
        self.publisher = publisher
        self.damping = damping
        self.clock = clock
        self.jitter = jitter
        self.stats = _Stats()
        self.default_rate = default_rate
        self.default_cpu_share = default_cpu_share
        self.cpu_per_probe: float | None = None  # the engine thread's CPU seconds per probe since the previous sync
        self._cpu_clock = cpu_clock
        self._cpu_mark: tuple[float, int] | None = None
        self.default_interval: float | None = None  # the stretched interval of the default checks, None: as configured
        self.refresh_wait = DEFAULT_REFRESH  # the wait before the next table read (stretched on big tables)
        self._keep_lateness = keep_lateness
        self._hot_path = hot_path and Poller.available()
        self._jobs: dict[JobKey, _Job] = {}
        self._full: dict[tuple[ServiceKey, RealServerKey], int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: Poller | None = None
        self._due: list[tuple[float, int, _Job]] = []  # checks to start
        self._deadlines: list[tuple[float, int, _Job, Any]] = []  # hot-path probes in flight
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._slack = TICK  # the timer's least distance from now: TICK, or SLACK_SHARE of the shortest interval
        self._eager_skip = 0  # ticks left before the next early poll of the probes a tick started
        self._logged_interval: float | None = None
        self._stretched = False
        self._defaults: tuple[int, float] = (0, 1.0)  # default checks in the table, their configured interval
        self._next_budget = 0.0

    @property
    def jobs(self) -> dict[JobKey, _Job]:
        return self._jobs

    def standing(
        self, backends: Collection[tuple[ServiceKey, RealServerKey]]
    ) -> dict[tuple[ServiceKey, RealServerKey], list[Standing]]:
        """The checks of each of ``backends`` that has any, read from another thread.

        The job dictionary is copied in one step first (the engine's thread
        adds and drops jobs); each job's fields are read as they are.
        """
        wanted = set(backends)
        out: dict[tuple[ServiceKey, RealServerKey], list[Standing]] = {}
        for (service, real_server, check), job in list(self._jobs.items()):
            if (service, real_server) in wanted and job.live:
                out.setdefault((service, real_server), []).append(
                    Standing(check, job.health.healthy, job.results, job.passed, job.spec.rise)
                )
        return out

    def sync(self, table: Table) -> None:
        """Start checks for new real servers and cancel those of real servers that left (call on the loop)."""
        loop = self._loop = asyncio.get_running_loop()
        if self._hot_path and self._poller is None:
            self._poller = Poller(loop)
        wanted: dict[JobKey, tuple[CheckSpec, Target]] = {}
        full = self._full
        present = set()
        for svc in table.services:
            skey = svc.key
            for rs in svc.real_servers:
                rkey = rs.key
                pair = (skey, rkey)
                present.add(pair)
                if (
                    rs.weight > 0 and pair not in full
                ):  # the full weight is the first non-zero one seen (ours may have lowered it since)
                    full[pair] = rs.weight
                for spec in self.plan(skey, rkey):
                    port = spec.port if spec.port is not None else rkey.port
                    wanted[(skey, rkey, spec.name)] = (spec, Target(rkey.address, port))
        jobs = self._jobs
        for key in [k for k in jobs if k not in wanted]:
            self._drop(jobs.pop(key))
            self.metrics.remove(key)
        default_interval = self._budget(spec for spec, _ in wanted.values())
        stretched = default_interval is not None  # the default checks' durations then go to per-service histograms
        regroup = stretched != self._stretched
        self._stretched = stretched
        now = loop.time()
        metrics = self.metrics
        for key, (spec, target) in wanted.items():
            job = jobs.get(key)
            interval = default_interval if spec.default and default_interval is not None else spec.interval
            if job is None:
                job = _Job(
                    key,
                    spec,
                    target,
                    Health(spec.rise, spec.fall),
                    Damper(self.damping.min_step, self.damping.min_interval),
                    interval,
                )
                jobs[key] = job
                metrics.add(key, shared=spec.default and stretched)
                self._schedule(job, now + interval * self.jitter(), now)
            else:
                job.interval = interval
                if regroup and spec.default:
                    metrics.share(key, stretched)
        if len(full) > len(present) or any(k not in present for k in full):
            self._full = {k: v for k, v in full.items() if k in present}
        self._set_slack()
        self._cpu_mark = (self._cpu_clock(), self.stats.probes)

    def affordable_rate(self) -> float:
        """Default probes a second allowed now: ``default_rate``, or fewer where a probe costs more than
        ``default_cpu_share`` of the engine thread's CPU allows (the cost is measured between two syncs,
        so a slow machine, or a virtual one whose system calls are dear, stretches the default checks further)."""
        cpu, probes = self._cpu_clock(), self.stats.probes
        mark = self._cpu_mark  # taken at the end of the previous sync: a sync's own work is not a probe's
        if mark is not None and probes - mark[1] >= 100:
            self.cpu_per_probe = (cpu - mark[0]) / (probes - mark[1])
        if not self.cpu_per_probe or self.cpu_per_probe <= 0:
            return self.default_rate
        return min(self.default_rate, self.default_cpu_share / self.cpu_per_probe)

    def _budget(self, specs: Any) -> float | None:
        """The default checks' interval under ``affordable_rate()`` (None: as configured), logged when it changes much."""
        count, configured = 0, 0.0
        for spec in specs:
            if spec.default:
                count += 1
                configured = spec.interval
        self._defaults = (count, configured)
        return self._interval_for(count, configured)

    def _rebudget(self, now: float) -> None:
        """Between two table reads: the default checks' interval again from the CPU per probe measured since."""
        self._next_budget = now + BUDGET_PERIOD
        count, configured = self._defaults
        if not count:
            return
        before = self.default_interval
        interval = self._interval_for(count, configured)
        self._cpu_mark = (self._cpu_clock(), self.stats.probes)
        if interval == before:
            return
        stretched = interval is not None
        regroup = stretched != self._stretched
        self._stretched = stretched
        for job in self._jobs.values():
            if job.spec.default:
                job.interval = interval if interval is not None else job.spec.interval
                if regroup:
                    self.metrics.share(job.key, stretched)
        self._set_slack()

    def _set_slack(self) -> None:
        """The timer's least distance from now: SLACK_SHARE of the shortest interval, between TICK and MAX_SLACK.

        Checks due within one slack of each other start in one wake-up of the
        loop (a wake-up costs about as much CPU as a probe); a check starts at
        most one slack after its slot (20 ms at a 1 s interval, 2 ms at 100 ms).
        """
        shortest = min((job.interval for job in self._jobs.values()), default=1.0)
        self._slack = min(MAX_SLACK, max(TICK, SLACK_SHARE * shortest))

    def _interval_for(self, count: int, configured: float) -> float | None:
        rate = self.affordable_rate()
        stretched = stretched_interval(count, configured, rate) if count else configured
        interval = stretched if count and stretched > configured else None
        self.default_interval = interval
        logged = self._logged_interval
        if interval != logged and (interval is None or logged is None or abs(interval - logged) > 0.25 * logged):
            if interval is not None:
                event(
                    log,
                    logging.WARNING,
                    "probe_default_interval_stretched",
                    checks=count,
                    interval=round(interval, 3),
                    configured=configured,
                    max_rate=round(rate, 1),
                    cpu_per_probe_ms=round(1000 * self.cpu_per_probe, 3) if self.cpu_per_probe else "",
                )
            else:
                event(log, logging.INFO, "probe_default_interval_restored", checks=count, interval=configured)
            self._logged_interval = interval
        return interval

    async def run(self, reader: TableReader, refresh: float = DEFAULT_REFRESH) -> None:
        """Follow the kernel table (read off the loop) until cancelled; a failed read keeps the checks running."""
        loop = asyncio.get_running_loop()
        failing = ""
        try:
            while True:
                started = time.monotonic()
                try:
                    table = await loop.run_in_executor(None, reader.read)
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    if reason != failing:
                        event(log, logging.WARNING, "probe_table_read_failed", reason=reason)
                    failing = reason
                else:
                    failing = ""
                    self.sync(table)
                self.refresh_wait = max(refresh, REFRESH_FACTOR * (time.monotonic() - started))
                await asyncio.sleep(self.refresh_wait)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Cancel every check in flight and the scheduler; the jobs and their last results stay readable."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")
        self._due.clear()
        tasks = []
        for job in self._jobs.values():
            if job.inflight is not None and job.inflight is not _PENDING:
                job.inflight.cancel()
            job.inflight = None
            if job.task is not None:
                job.task.cancel()
                tasks.append(job.task)
        self._deadlines.clear()
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- scheduling ----------------------------------------------------------------------

    def _schedule(self, job: _Job, due: float, now: float) -> None:
        job.due = due
        heapq.heappush(self._due, (due, next(self._seq), job))
        if due < self._timer_at:
            self._arm(due, now)

    def _arm(self, when: float, now: float) -> None:
        loop = self._loop
        assert loop is not None
        when = max(when, now + self._slack)
        if when >= self._timer_at:  # the armed timer comes first anyway
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, float("-inf")  # no arming while ticking: the end of the tick arms once
        loop = self._loop
        assert loop is not None
        now = loop.time()
        try:
            self._run_due(now)
        finally:
            self._timer_at = float("inf")
            due, deadlines = self._due, self._deadlines
            nxt = min(due[0][0] if due else float("inf"), deadlines[0][0] if deadlines else float("inf"))
            if nxt != float("inf"):
                self._arm(nxt, now)

    def _run_due(self, now: float) -> None:
        """Start every check due at ``now`` and fail every hot-path probe past its deadline."""
        poller = self._poller
        if poller is not None:
            poller.now = now  # the start time of the probes started now (no clock read each)
        if now >= self._next_budget:
            self._rebudget(now)
        due = self._due
        lateness = self.stats.lateness if self._keep_lateness else None
        ready = []  # popped first: a check that ends at once and is due again waits for the next tick
        while due and due[0][0] <= now:
            slot, _, job = heapq.heappop(due)
            if job.live:
                ready.append(job)
                if lateness is not None:
                    lateness.append(now - slot)
        for job in ready:
            try:
                self._start(job, now)
            except Exception as exc:
                job.inflight = None
                self._complete(
                    job,
                    ProbeResult(
                        False, f"{job.spec.name} {job.target}: {type(exc).__name__}: {exc}", 0.0, type(exc).__name__
                    ),
                    now,
                )
        if ready and poller is not None and len(poller):
            # connects that completed inside connect() (loopback, veth, a real server on the director) end now, not one
            # loop turn later; where they never do (remote real servers) the poll is tried again only every EAGER_BACKOFF ticks
            if self._eager_skip:
                self._eager_skip -= 1
            elif not poller.dispatch():
                self._eager_skip = EAGER_BACKOFF
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, job, inflight = heapq.heappop(deadlines)
            if job.inflight is inflight:  # still waiting: the probe took too long
                inflight.cancel()
                job.inflight = None
                spec = job.spec
                self._complete(
                    job,
                    ProbeResult(
                        False,
                        f"{spec.name} {job.target}: no answer within {spec.timeout:g} s",
                        spec.timeout,
                        "TimeoutError",
                    ),
                    now,
                )
        while (
            deadlines and deadlines[0][2].inflight is not deadlines[0][3]
        ):  # that probe ended: no wake-up for its deadline
            heapq.heappop(deadlines)

    def _start(self, job: _Job, now: float) -> None:
        spec = job.spec
        begin = getattr(spec.checker, "begin", None) if self._poller is not None else None
        if begin is None:
            task = asyncio.ensure_future(probe(spec, job.target))
            job.task = task
            task.add_done_callback(functools.partial(self._task_done, job))
            return
        job.inflight = _PENDING
        inflight = begin(self._poller, job.target, self._finish, job)
        if job.inflight is _PENDING:  # not finished while starting (a refused connect finishes at once)
            job.inflight = inflight
            deadline = now + spec.timeout
            heapq.heappush(self._deadlines, (deadline, next(self._seq), job, inflight))
            if deadline < self._timer_at:
                self._arm(deadline, now)

    def _task_done(self, job: _Job, task: asyncio.Task[ProbeResult]) -> None:
        job.task = None
        if task.cancelled() or not job.live:
            return
        assert self._loop is not None
        self._complete(job, task.result(), self._loop.time())

    def _finish(self, job: _Job, result: ProbeResult) -> None:
        """A hot-path probe of ``job`` ended (its ``done``): now is the poller's batch time."""
        assert self._poller is not None
        self._complete(job, result, self._poller.now)

    def _complete(self, job: _Job, result: ProbeResult, now: float) -> None:
        """A check of ``job`` ended at ``now`` (loop time): record it and book the next slot."""
        job.inflight = None
        if not job.live:
            return
        self.record(job, result)
        slot = job.due + job.interval
        self._schedule(job, slot if slot > now else now, now)

    def _drop(self, job: _Job) -> None:
        job.live = False
        if job.inflight is not None and job.inflight is not _PENDING:
            job.inflight.cancel()
        job.inflight = None
        if job.task is not None:
            job.task.cancel()

    # --- results -------------------------------------------------------------------------

    def record(self, job: _Job, result: ProbeResult) -> None:
        """Rise/fall, metrics, and what to publish, for one result of ``job``."""
        self.stats.probes += 1
        job.last = result
        job.results += 1
        job.passed = job.passed + 1 if result.ok else 0
        reports_weight = result.weight is not None or result.weight_percent is not None
        # the wall clock only where it is used (a transition's time, the damper): most results change nothing
        now = self.clock() if result.ok != job.health.healthy or reports_weight else 0.0
        service, real_server, check = job.key
        if job.health.update(result.ok, now):
            if self.publisher is not None:  # first: its thread posts while this one logs
                self.publisher.transition(Transition(service, real_server, check, job.health.healthy, result.message))
            event(
                log,
                logging.WARNING if not job.health.healthy else logging.INFO,
                "probe_transition",
                check=check,
                service=str(service),
                real_server=str(real_server),
                healthy=job.health.healthy,
                reason=result.message,
            )
        self.metrics.observe(job.key, result, job.health)
        if job.health.healthy and result.ok and reports_weight:
            self._weight(job, result, now)

    def _weight(self, job: _Job, result: ProbeResult, now: float) -> None:
        service, real_server, check = job.key
        full = self._full.get((service, real_server), 1)
        weight = result.weight if result.weight is not None else weight_of(full, result.weight_percent or 0.0)
        published = job.damper.offer(weight, now)
        if published is not None and self.publisher is not None:
            self.publisher.weight(WeightChange(service, real_server, check, published, result.message))


async def probe(spec: CheckSpec, target: Target) -> ProbeResult:
    """One check of ``target`` bounded by ``spec.timeout``; never raises (but for cancellation)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(spec.timeout):
            return await spec.checker.check(target)
    except TimeoutError:
        return ProbeResult(
            False,
            f"{spec.name} {target}: no answer within {spec.timeout:g} s",
            time.perf_counter() - started,
            "TimeoutError",
        )
    except Exception as exc:
        return ProbeResult(
            False,
            f"{spec.name} {target}: {type(exc).__name__}: {exc}",
            time.perf_counter() - started,
            type(exc).__name__,
        )
