"""The probe engine: one asyncio loop runs every check of every real server.

Each check of each real server is one task that sleeps until its next slot:
the first slot is jittered over one interval (thousands of checks do not fire
at once), later ones keep a fixed cadence, and a check that overran its slot
runs at once rather than piling up. ``timeout`` bounds every check
(``asyncio.timeout``: the checker is cancelled, a script's process group is
killed). Results go through rise/fall (``state.Health``); a transition, and a
damped weight change from a check that reports load, go to the publisher.

Which checks run comes from a ``Plan``: with no config, a ``tcp`` check on
every real server's own port. ``run`` re-reads the kernel table every
``refresh`` seconds and adds or cancels checks as real servers come and go.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from exporter.probes.metrics import JobKey, ProbeMetrics
from exporter.probes.publish import Publisher, Transition, WeightChange
from exporter.probes.result import Checker, ProbeResult, Target
from exporter.probes.state import Damper, Health, weight_of
from exporter.probes.tcp import TCPChecker
from lvsguard.ipvs import TableReader
from lvsguard.logs import event
from lvsguard.model import RealServerKey, ServiceKey, Table

log = logging.getLogger("exporter.probes")

DEFAULT_REFRESH = 2.0


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One check as configured: its name (the ``check`` label), checker and timing."""

    name: str
    checker: Checker
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    port: int | None = None  # None: the real server's own port


Plan = Callable[[ServiceKey, RealServerKey], tuple[CheckSpec, ...]]


_TCP = CheckSpec("tcp", TCPChecker())


def default_plan(service: ServiceKey, real_server: RealServerKey) -> tuple[CheckSpec, ...]:
    """With no config: a tcp check on the real server's own port.

    Not for UDP services (no generic UDP check exists: a datagram service may
    ignore a probe it does not understand), nor for port 0 (fwmark real
    servers often have none); configure those in ``probes.checks``.
    """
    return (_TCP,) if real_server.port and service.protocol != "UDP" else ()


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
    task: asyncio.Task[None] | None = None
    last: ProbeResult | None = None


@dataclass(slots=True)
class _Stats:
    probes: int = 0
    lateness: list[float] = field(default_factory=list)  # seconds each probe started after its slot (sampled)


class ProbeEngine:
    """Runs ``plan``'s checks for every real server of the tables it is given."""

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
    ):
        self.plan = plan
        self.metrics = metrics if metrics is not None else ProbeMetrics()
        self.publisher = publisher
        self.damping = damping
        self.clock = clock
        self.jitter = jitter
        self.stats = _Stats()
        self._keep_lateness = keep_lateness
        self._jobs: dict[JobKey, _Job] = {}
        self._full: dict[tuple[ServiceKey, RealServerKey], int] = {}

    @property
    def jobs(self) -> dict[JobKey, _Job]:
        return self._jobs

    def sync(self, table: Table) -> None:
        """Start checks for new real servers and cancel those of real servers that left (call on the loop)."""
        wanted: dict[JobKey, tuple[CheckSpec, Target]] = {}
        for svc in table.services:
            for rs in svc.real_servers:
                if rs.weight > 0:  # the full weight is the first non-zero one seen (ours may have lowered it since)
                    self._full.setdefault((svc.key, rs.key), rs.weight)
                for spec in self.plan(svc.key, rs.key):
                    port = spec.port if spec.port is not None else rs.key.port
                    wanted[(svc.key, rs.key, spec.name)] = (spec, Target(rs.key.address, port))
        for key in [k for k in self._jobs if k not in wanted]:
            job = self._jobs.pop(key)
            if job.task is not None:
                job.task.cancel()
            self.metrics.remove(key)
        for key, (spec, target) in wanted.items():
            if key not in self._jobs:
                job = _Job(key, spec, target, Health(spec.rise, spec.fall), Damper(self.damping.min_step, self.damping.min_interval))
                self._jobs[key] = job
                self.metrics.add(key)
                job.task = asyncio.get_running_loop().create_task(self._loop(job), name=f"probe {spec.name} {target}")
        live = {(s, r) for s, r, _ in self._jobs}
        self._full = {k: v for k, v in self._full.items() if k in live}

    async def run(self, reader: TableReader, refresh: float = DEFAULT_REFRESH) -> None:
        """Follow the kernel table (read off the loop) until cancelled; a failed read keeps the checks running."""
        loop = asyncio.get_running_loop()
        failing = ""
        try:
            while True:
                try:
                    table = await loop.run_in_executor(None, reader.read)
                except Exception as exc:  # noqa: BLE001 - a failed read is logged once; the checks go on
                    reason = f"{type(exc).__name__}: {exc}"
                    if reason != failing:
                        event(log, logging.WARNING, "probe_table_read_failed", reason=reason)
                    failing = reason
                else:
                    failing = ""
                    self.sync(table)
                await asyncio.sleep(refresh)
        finally:
            await self.stop()

    async def stop(self) -> None:
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        interval = job.spec.interval
        slot = loop.time() + interval * self.jitter()
        while True:
            delay = slot - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            started = loop.time()
            if self._keep_lateness:
                self.stats.lateness.append(started - slot)
            self.record(job, await probe(job.spec, job.target))
            slot += interval
            if slot < loop.time():
                slot = loop.time()

    def record(self, job: _Job, result: ProbeResult) -> None:
        """Rise/fall, metrics, and what to publish, for one result of ``job``."""
        self.stats.probes += 1
        job.last = result
        now = self.clock()
        service, real_server, check = job.key
        if job.health.update(result.ok, now):
            event(log, logging.WARNING if not job.health.healthy else logging.INFO, "probe_transition",
                  check=check, service=str(service), real_server=str(real_server),
                  healthy=job.health.healthy, reason=result.message)  # fmt: skip
            if self.publisher is not None:
                self.publisher.transition(Transition(service, real_server, check, job.health.healthy, result.message))
        self.metrics.observe(job.key, result, job.health)
        if job.health.healthy and result.ok and (result.weight is not None or result.weight_percent is not None):
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
        return ProbeResult(False, f"{spec.name} {target}: no answer within {spec.timeout:g} s", time.perf_counter() - started, "TimeoutError")
    except Exception as exc:  # noqa: BLE001 - a checker bug must not stop the engine: it is a failed check
        return ProbeResult(False, f"{spec.name} {target}: {type(exc).__name__}: {exc}", time.perf_counter() - started, type(exc).__name__)
