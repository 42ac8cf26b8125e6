"""keepalived's VRRP state, followed from its notify FIFO (config ``director.keepalived_fifo``).

keepalived writes one line per transition to the FIFO named by ``notify_fifo``
(or ``vrrp_notify_fifo``), in order::

    INSTANCE "VI_1" MASTER 150
    INSTANCE "VI_1" FAULT 150
    GROUP "G1" BACKUP

A FIFO has one reader: every line goes to exactly one of the processes that read
it. Give the exporter its own FIFO (``vrrp_notify_fifo`` for it, ``notify_fifo``
for a role-file writer, or the other way round). The FIFO only reports
transitions, so an instance appears after its first transition once the
exporter runs. Start the exporter before keepalived, or restart keepalived.

Series (``chunks()``, served after the IPVS families):

- ``lvs_director_vrrp_state{instance,state}``: 1 for the current state, 0 for
  the other states (master, backup, fault, stop)
- ``lvs_director_vrrp_priority{instance}``: the priority in the last line
- ``lvs_director_vrrp_transitions_total{instance}``: lines seen since start
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from lvsguard.errors import FifoError
from lvsguard.logs import event

STATES = ("master", "backup", "fault", "stop")
STATE = (
    "lvs_director_vrrp_state",
    "gauge",
    "keepalived VRRP state of the instance, from its notify FIFO: 1 for the current state.",
)
PRIORITY = ("lvs_director_vrrp_priority", "gauge", "keepalived VRRP priority of the instance at its last transition.")
TRANSITIONS = (
    "lvs_director_vrrp_transitions",
    "counter",
    "keepalived VRRP transitions of the instance seen since the exporter started.",
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceState:
    state: str  # lower case: master, backup, fault, stop
    priority: int | None
    transitions: int


def parse_line(line: str) -> tuple[str, str, int | None] | None:
    """``INSTANCE "VI_1" MASTER 150`` -> ("VI_1", "master", 150); None for other lines (groups, garbage)."""
    parts = line.split()
    if len(parts) < 3 or parts[0] != "INSTANCE":
        return None
    state = parts[2].lower()
    if state not in STATES:
        return None
    priority = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
    return parts[1].strip('"'), state, priority


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class KeepalivedFifo:
    """Follows one notify FIFO in a daemon thread; ``chunks()`` for the exporter's ``/metrics``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._states: dict[str, InstanceState] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the FIFO (read-write: never end-of-file while keepalived restarts) and follow it."""
        try:
            self._fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise FifoError(f"director.keepalived_fifo {self.path}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self._follow, name="keepalived-fifo", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        assert self._fd is not None
        with os.fdopen(self._fd, "r", encoding="utf-8", errors="replace") as fifo:
            for line in fifo:
                self.feed(line)

    def feed(self, line: str) -> None:
        """Take one FIFO line into account (the follower thread calls it; tests may too)."""
        parsed = parse_line(line)
        if parsed is None:
            return
        instance, state, priority = parsed
        with self._lock:
            before = self._states.get(instance)
            self._states[instance] = InstanceState(state, priority, (before.transitions if before else 0) + 1)
        event(
            log,
            logging.INFO,
            "vrrp_state",
            instance=instance,
            state=state,
            priority="" if priority is None else priority,
        )

    def states(self) -> dict[str, InstanceState]:
        with self._lock:
            return dict(self._states)

    def chunks(self) -> Iterator[str]:
        """The VRRP series as Prometheus text (the exporter's ``/metrics``)."""
        states = self.states()
        if not states:
            return
        out = [f"# HELP {STATE[0]} {STATE[2]}\n# TYPE {STATE[0]} {STATE[1]}\n"]
        for instance, s in sorted(states.items()):
            out += [
                f'{STATE[0]}{{instance="{_escape(instance)}",state="{name}"}} {int(s.state == name)}\n'
                for name in STATES
            ]
        out.append(f"# HELP {PRIORITY[0]} {PRIORITY[2]}\n# TYPE {PRIORITY[0]} {PRIORITY[1]}\n")
        out += [
            f'{PRIORITY[0]}{{instance="{_escape(i)}"}} {s.priority}\n'
            for i, s in sorted(states.items())
            if s.priority is not None
        ]
        out.append(f"# HELP {TRANSITIONS[0]}_total {TRANSITIONS[2]}\n# TYPE {TRANSITIONS[0]}_total {TRANSITIONS[1]}\n")
        out += [
            f'{TRANSITIONS[0]}_total{{instance="{_escape(i)}"}} {s.transitions}\n' for i, s in sorted(states.items())
        ]
        yield "".join(out)


class Chunks(Protocol):
    """A source of extra families: text chunks of the exposition format."""

    def chunks(self) -> Iterator[str]: ...


class Extras:
    """Several extra-family sources served one after the other (probes, keepalived)."""

    def __init__(self, *sources: Chunks | None) -> None:
        self.sources = tuple(s for s in sources if s is not None)

    def chunks(self) -> Iterator[str]:
        for source in self.sources:
            yield from source.chunks()
