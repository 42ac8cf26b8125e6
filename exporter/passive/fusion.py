"""Passive verdicts to the actuator, and back only when an active check agrees.

A verdict takes the real server out at once: the probes' publisher posts a
firing alert (``LvsguardPassiveVerdict``, ``lvsguard_source=passive``,
``lvsguard_action=quarantine``, a fingerprint of its own per real server) to
the actuator's webhook, which applies its rules (quorum, rate limit,
hold-down, ledger) as for any alert and records source ``passive``. A real
server out has no traffic, so no absence of failures can tell that it is
well again: the alert is resolved only when

1. the verdict's hold-down has ended (``Judge.holddown``; it doubles for a
   real server that fails again soon after its return), and
2. every active check of the real server is healthy and passed ``rise``
   times in a row with results that came after the verdict.

A real server without an active check is not taken out: nothing could bring
it back. Its verdict is logged (``passive_not_acted``) and counted as
always. A real server whose checks are all gone (it left the table) is
released, so that its hold does not outlive it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from exporter.passive.conntable import Backend
from exporter.passive.rule import Judge, Verdict
from exporter.probes.engine import Standing
from exporter.probes.publish import Publisher, Transition
from lvsguard.labels import PASSIVE_SOURCE
from lvsguard.logs import event

log = logging.getLogger("lvsguard.exporter.passive")

CHECK = "passive"  # the alert's ``check`` label
Checks = Callable[[Collection[Backend]], dict[Backend, list[Standing]]]
"""The active checks of some real servers (``ProbeEngine.standing``)."""


@dataclass(frozen=True, slots=True)
class _Out:
    verdict: Verdict
    results: dict[str, int]  # each check's result count at the verdict: later ones are evidence


def up_since(check: Standing, results_then: int) -> bool:
    """The check is healthy and its newest ``rise`` results all passed and came after ``results_then``."""
    return check.healthy and min(check.passed, check.results - results_then) >= check.rise


class Fusion:
    """Sends verdicts on and releases them; runs on the detector's thread (``verdict`` and ``poll``)."""

    def __init__(self, publisher: Publisher, checks: Checks) -> None:
        self.publisher = publisher
        self.checks = checks
        self.out: dict[Backend, _Out] = {}  # the real servers this detector has sent out and not yet released

    def verdict(self, v: Verdict) -> bool:
        """Send ``v`` to the actuator; False when the real server has no active check (then it is only reported)."""
        backend = (v.service, v.real_server)
        standing = self.checks([backend]).get(backend, [])
        if not standing:
            event(
                log,
                logging.WARNING,
                "passive_not_acted",
                service=str(v.service),
                real_server=str(v.real_server),
                reason="no active check of this real server could bring it back",
            )
            return False
        self.out[backend] = _Out(v, {c.check: c.results for c in standing})
        self.publisher.transition(Transition(v.service, v.real_server, CHECK, False, v.message(), PASSIVE_SOURCE))
        return True

    def poll(self, judge: Judge, now: float) -> list[Backend]:
        """Release the real servers whose hold-down ended and whose active checks passed since: those released."""
        due = [b for b in self.out if judge.holddown(b, now) <= 0.0]
        if not due:
            return []
        standing = self.checks(due)
        released = []
        for backend in sorted(due, key=str):
            out = self.out[backend]
            checks = standing.get(backend, [])
            if checks and not all(up_since(c, out.results.get(c.check, 0)) for c in checks):
                continue
            why = ", ".join(f"{c.check} up" for c in checks) if checks else "no check left (the real server left)"
            service, real_server = backend
            self.publisher.transition(Transition(service, real_server, CHECK, True, why, PASSIVE_SOURCE))
            judge.released(backend, now)
            del self.out[backend]
            released.append(backend)
            event(
                log,
                logging.INFO,
                "passive_released",
                service=str(service),
                real_server=str(real_server),
                reason=why,
                out_s=f"{now - out.verdict.at:.1f}",
            )
        return released
