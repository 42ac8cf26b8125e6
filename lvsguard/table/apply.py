"""Apply a plan through the kernel writer: every step tried, every failure named, none fatal.

The order is the plan's: services added and edited first, then the real
servers added and edited (one pipelined call per service: the writer sends
them ``BATCH`` to a sendmsg), drained, removed, and the services removed last.
A step the kernel refuses is recorded with the typed error that names its
object, and the rest goes on; a real server whose service could not be added
fails with its service's error. Removing what is already gone counts as done,
so applying the same plan twice is harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lvsguard.errors import BulkFailed, KernelError, NoSuchDestination, NoSuchService
from lvsguard.model import RealServer, RealServerKey, ServiceKey, VirtualService
from lvsguard.table.plan import Op, Plan, RealServerStep, ServiceStep, Step

__all__ = ["ApplyResult", "Failure", "TableWriter", "apply"]


class TableWriter(Protocol):
    """The writes ``apply`` needs; ``lvsguard.ipvs.netlink.NetlinkIPVS`` has them all."""

    def add_service(self, svc: VirtualService) -> None: ...

    def edit_service(self, svc: VirtualService) -> None: ...

    def delete_service(self, key: ServiceKey) -> None: ...

    def add_real_servers(self, service: ServiceKey, servers: Iterable[RealServer]) -> int: ...

    def edit_real_servers(self, service: ServiceKey, servers: Iterable[RealServer]) -> int: ...

    def delete_real_server(self, service: ServiceKey, key: RealServerKey) -> None: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """A step the kernel refused, with its typed error (which names the object)."""

    step: Step
    error: KernelError

    def __str__(self) -> str:
        return str(self.error)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What was written and what failed; ``applied`` + ``failures`` cover every writing step."""

    applied: tuple[Step, ...]
    failures: tuple[Failure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        head = f"{len(self.applied)} operation{'s' if len(self.applied) != 1 else ''} applied"
        if not self.failures:
            return head
        return f"{head}, {len(self.failures)} failed:\n" + "\n".join(f"  {f}" for f in self.failures)


class _Run:
    def __init__(self, writer: TableWriter) -> None:
        self.writer = writer
        self.applied: list[Step] = []
        self.failures: list[Failure] = []
        self.broken: dict[ServiceKey, KernelError] = {}  # services that could not be added

    def one(self, step: Step, call: Callable[[], None], gone: type[KernelError] | None = None) -> None:
        try:
            call()
        except KernelError as exc:
            if gone is not None and isinstance(exc, gone):
                self.applied.append(step)
                return
            self.failures.append(Failure(step, exc))
            if step.op is Op.ADD_SERVICE:
                self.broken[step.service] = exc
            return
        self.applied.append(step)

    def batch(self, service: ServiceKey, steps: Sequence[RealServerStep], call: Callable[..., int]) -> None:
        """One pipelined call for ``steps`` of one service; BulkFailed names the ones that failed."""
        if service in self.broken:
            self.failures += [Failure(s, self.broken[service]) for s in steps]
            return
        servers = [s.after for s in steps if s.after is not None]
        try:
            call(service, servers)
        except BulkFailed as exc:
            by_key = {s.real_server: s for s in steps}
            failed = set()
            for err in exc.failures:
                step = by_key.get(err.real_server) if err.real_server is not None else None
                if step is not None:
                    self.failures.append(Failure(step, err))
                    failed.add(step.real_server)
            self.applied += [s for s in steps if s.real_server not in failed]
        except KernelError as exc:  # the whole call failed (no such service, the socket): none is known written
            self.failures += [Failure(s, exc) for s in steps]
        else:
            self.applied += steps


def apply(plan: Plan, writer: TableWriter) -> ApplyResult:
    """Run every writing step of ``plan`` through ``writer``; never raises a KernelError."""
    run = _Run(writer)
    by_service: dict[tuple[Op, ServiceKey], list[RealServerStep]] = {}
    for step in plan.operations:
        if isinstance(step, ServiceStep):
            if by_service:
                _flush(run, by_service)
            _service(run, step)
        elif step.op in (Op.ADD_REAL_SERVER, Op.EDIT_REAL_SERVER, Op.DRAIN_REAL_SERVER):
            by_service.setdefault((_batch_kind(step.op), step.service), []).append(step)
        else:
            _flush(run, by_service)
            _remove_real_server(run, step)
    _flush(run, by_service)
    return ApplyResult(tuple(run.applied), tuple(run.failures))


def _remove_real_server(run: _Run, step: RealServerStep) -> None:
    service, key = step.service, step.real_server
    run.one(step, lambda: run.writer.delete_real_server(service, key), NoSuchDestination)


def _batch_kind(op: Op) -> Op:
    return Op.ADD_REAL_SERVER if op is Op.ADD_REAL_SERVER else Op.EDIT_REAL_SERVER


def _flush(run: _Run, pending: dict[tuple[Op, ServiceKey], list[RealServerStep]]) -> None:
    for (kind, service), steps in pending.items():
        call = run.writer.add_real_servers if kind is Op.ADD_REAL_SERVER else run.writer.edit_real_servers
        run.batch(service, steps, call)
    pending.clear()


def _service(run: _Run, step: ServiceStep) -> None:
    writer = run.writer
    if step.op is Op.ADD_SERVICE and step.after is not None:
        after = step.after
        run.one(step, lambda: writer.add_service(after))
    elif step.op is Op.EDIT_SERVICE and step.after is not None:
        after = step.after
        run.one(step, lambda: writer.edit_service(after))
    elif step.op is Op.REMOVE_SERVICE:
        key = step.service
        run.one(step, lambda: writer.delete_service(key), NoSuchService)
