"""Apply a plan through the kernel writer: every step tried, every failure named, none fatal.

The order is the plan's: services added and edited first, then the real
servers added, edited and drained, removed, and the services removed last.
Additions and edits go out pipelined, across services (the writer sends them
``BATCH`` to a sendmsg, one round trip each), so a table of 10 000 services
is a few hundred round trips, not 20 000.
A step the kernel refuses is recorded with the typed error that names its
object, and the rest goes on; a real server whose service could not be added
fails with its service's error. Removing what is already gone counts as done,
so applying the same plan twice is harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from lvsguard.errors import BulkFailed, KernelError, NoSuchDestination, NoSuchService
from lvsguard.model import RealServer, RealServerKey, ServiceKey, VirtualService
from lvsguard.table.plan import Op, Plan, RealServerStep, ServiceStep, Step

__all__ = ["ApplyResult", "Failure", "TableWriter", "apply"]


class TableWriter(Protocol):
    """The writes ``apply`` needs; ``lvsguard.ipvs.netlink.NetlinkIPVS`` has them all.

    The bulk ones send many requests per round trip; ``BulkFailed`` carries one
    typed error per object that failed, the others were written.
    """

    def add_services(self, services: Iterable[VirtualService]) -> int: ...

    def edit_service(self, svc: VirtualService) -> None: ...

    def delete_service(self, key: ServiceKey) -> None: ...

    def add_real_servers_to(self, servers: Iterable[tuple[ServiceKey, RealServer]]) -> int: ...

    def edit_real_servers_to(self, servers: Iterable[tuple[ServiceKey, RealServer]]) -> int: ...

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

    def one(self, step: Step, call: Callable[[], object], gone: type[KernelError] | None = None) -> None:
        try:
            call()
        except KernelError as exc:
            if gone is not None and isinstance(exc, gone):
                self.applied.append(step)
            else:
                self.failures.append(Failure(step, exc))
            return
        self.applied.append(step)

    def bulk(self, steps: Sequence[Step], call: Callable[[list[Step]], object]) -> list[Failure]:
        """One pipelined call for ``steps``; returns (and records) the failures of the call."""
        ready: list[Step] = []
        for step in steps:
            broken = self.broken.get(step.service)
            if broken is not None:  # of a service that could not be added
                self.failures.append(Failure(step, broken))
            else:
                ready.append(step)
        if not ready:
            return []
        failed: list[Failure] = []
        try:
            call(ready)
        except BulkFailed as exc:
            by_object: dict[tuple[ServiceKey | None, RealServerKey | None], Step] = {_object(s): s for s in ready}
            for err in exc.failures:
                key = (err.service, err.real_server)
                if key in by_object:
                    failed.append(Failure(by_object.pop(key), err))
            self.applied += by_object.values()
        except KernelError as exc:  # the whole call failed (the socket): none is known written
            failed = [Failure(s, exc) for s in ready]
        else:
            self.applied += ready
        self.failures += failed
        return failed


def _object(step: Step) -> tuple[ServiceKey | None, RealServerKey | None]:
    return (step.service, step.real_server if isinstance(step, RealServerStep) else None)


def _servers(steps: list[Step]) -> list[tuple[ServiceKey, RealServer]]:
    return [(s.service, s.after) for s in steps if isinstance(s, RealServerStep) and s.after is not None]


def _services(steps: list[Step]) -> list[VirtualService]:
    return [s.after for s in steps if isinstance(s, ServiceStep) and s.after is not None]


def apply(plan: Plan, writer: TableWriter) -> ApplyResult:
    """Run every writing step of ``plan`` through ``writer``; never raises a KernelError."""
    run = _Run(writer)
    steps = plan.operations
    of = {op: [s for s in steps if s.op is op] for op in Op}
    for failure in run.bulk(of[Op.ADD_SERVICE], lambda ready: writer.add_services(_services(ready))):
        run.broken[failure.step.service] = failure.error
    for step in of[Op.EDIT_SERVICE]:
        if isinstance(step, ServiceStep) and step.after is not None:
            run.one(step, partial(writer.edit_service, step.after))
    run.bulk(of[Op.ADD_REAL_SERVER], lambda ready: writer.add_real_servers_to(_servers(ready)))
    edits = of[Op.EDIT_REAL_SERVER] + of[Op.DRAIN_REAL_SERVER]
    run.bulk(edits, lambda ready: writer.edit_real_servers_to(_servers(ready)))
    for step in of[Op.REMOVE_REAL_SERVER]:
        if isinstance(step, RealServerStep):
            run.one(step, partial(writer.delete_real_server, step.service, step.real_server), NoSuchDestination)
    for step in of[Op.REMOVE_SERVICE]:
        run.one(step, partial(writer.delete_service, step.service), NoSuchService)
    return ApplyResult(tuple(run.applied), tuple(run.failures))
