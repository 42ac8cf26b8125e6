"""Passive verdicts to the actuator, and back only when an active check agrees.

A verdict takes the real server out at once: a publisher of its own (the
probes' ``probes.publish`` URL and token, its own thread and kept-alive
connection, so that it never waits behind a probe's post or its retries) posts
a firing alert (``LvsguardPassiveVerdict``, ``lvsguard_source=passive``,
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

The list of real servers out lives in this process: a restarted exporter
reads the passive holds still active from the actuator (``holds``, the
ledger's ``GET /api/v1/ledger``) and releases them the same way.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from lvsguard.exporter.passive.conntable import Backend
from lvsguard.exporter.passive.rule import Judge, Verdict
from lvsguard.exporter.probes.engine import Standing
from lvsguard.exporter.probes.publish import HTTP_TIMEOUT, Publisher, Transition, fingerprint
from lvsguard.labels import PASSIVE_SOURCE
from lvsguard.logs import event
from lvsguard.model import RealServerKey, ServiceKey

log = logging.getLogger("lvsguard.exporter.passive")

CHECK = "passive"  # the alert's ``check`` label
Checks = Callable[[Collection[Backend]], dict[Backend, list[Standing]]]
"""The active checks of some real servers (``ProbeEngine.standing``)."""
Holds = Callable[[], list[Backend]]
"""The real servers a passive verdict holds at the actuator now (read once at start)."""
ADOPT_RETRY = 30.0  # seconds between two attempts to read the actuator's holds
MAX_HOLDS = 1000  # the most the actuator's ledger endpoint lists at once


@dataclass(frozen=True, slots=True)
class _Out:
    at: float  # the verdict's time (the rule's clock), or when this process found the hold
    results: dict[str, int]  # each check's result count at the verdict: later ones are evidence (absent: 0)


def actuator_holds(url: str, token: str) -> Holds:
    """The passive holds still active at the actuator at ``url`` (its ledger endpoint; never through a proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def read() -> list[Backend]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(
            f"{url.rstrip('/')}/api/v1/ledger?active=true&limit={MAX_HOLDS}", headers=headers
        )
        with opener.open(request, timeout=HTTP_TIMEOUT) as reply:
            doc = json.load(reply)
        return passive_backends(doc["holds"])

    return read


def passive_backends(holds: list[dict[str, Any]]) -> list[Backend]:
    """The real servers of the active passive holds among the actuator ledger's ``holds``.

    A passive hold shared through the cluster store (``cluster.share: [passive]``)
    is in the ledger as source ``cluster``, holder ``passive <alertname>/<fingerprint>``.
    """
    out = []
    for h in holds:
        if h["state"] != "active":
            continue
        if h["source"] == PASSIVE_SOURCE:
            holder = h["holder"]
        elif h["source"] == "cluster" and h["holder"].startswith(f"{PASSIVE_SOURCE} "):
            holder = h["holder"].rsplit("/", 1)[-1]
        else:
            continue
        backend = (ServiceKey.parse(h["service"]), RealServerKey.parse(h["real_server"]))
        if holder == fingerprint(*backend, CHECK, PASSIVE_SOURCE):
            out.append(backend)
    return list(dict.fromkeys(out))  # a local hold and a cluster mirror of the same verdict: one


def up_since(check: Standing, results_then: int) -> bool:
    """The check is healthy and its newest ``rise`` results all passed and came after ``results_then``."""
    return check.healthy and min(check.passed, check.results - results_then) >= check.rise


class Fusion:
    """Sends verdicts on and releases them; runs on the detector's thread (``verdict`` and ``poll``).

    ``publisher`` is the fusion's own: the detector closes it when it stops.
    """

    def __init__(self, publisher: Publisher, checks: Checks, *, holds: Holds | None = None) -> None:
        self.publisher = publisher
        self.checks = checks
        self.out: dict[Backend, _Out] = {}  # the real servers this detector has sent out and not yet released
        self._holds = holds  # None once read
        self._holds_at = float("-inf")

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
        self.out[backend] = _Out(v.at, {c.check: c.results for c in standing})
        self.publisher.transition(Transition(v.service, v.real_server, CHECK, False, v.message(), PASSIVE_SOURCE))
        return True

    def poll(self, judge: Judge, now: float) -> list[Backend]:
        """Release the real servers whose hold-down ended and whose active checks passed since: those released."""
        self._adopt(now)
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
                out_s=f"{now - out.at:.1f}",
            )
        return released

    def _adopt(self, now: float) -> None:
        """Take on the passive holds an earlier run of the exporter left at the actuator (until it answers)."""
        if self._holds is None or now < self._holds_at:
            return
        try:
            found = self._holds()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._holds_at = now + ADOPT_RETRY
            event(log, logging.WARNING, "passive_holds_unread", reason=str(exc)[:300], retry_s=f"{ADOPT_RETRY:g}")
            return
        self._holds = None
        for backend in found:
            self.out.setdefault(backend, _Out(now, {}))
        if found:
            event(log, logging.INFO, "passive_holds_found", count=len(found))
