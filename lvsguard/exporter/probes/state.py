"""Rise/fall and weight damping: pure logic, no I/O, no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Health:
    """A real server's health after rise/fall (keepalived's and HAProxy's meaning).

    It starts healthy: a director that starts, or a real server that appears,
    is not quarantined before its checks had a chance. ``fall`` consecutive
    failures make it unhealthy; ``rise`` consecutive successes healthy again.
    """

    rise: int
    fall: int
    healthy: bool = True
    streak: int = 0  # consecutive results that disagree with ``healthy``
    changes: int = 0
    changed_at: float = 0.0  # wall-clock time of the last transition (0: never)

    def update(self, ok: bool, now: float) -> bool:
        """Count one result; True when it made the state change."""
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (self.rise if ok else self.fall):
            return False
        self.healthy = ok
        self.streak = 0
        self.changes += 1
        self.changed_at = now
        return True


@dataclass(slots=True)
class Damper:
    """Lets a weight through only when it moved by ``min_step`` and ``min_interval`` seconds passed.

    A move to or from 0 is always let through: draining and coming back are
    not load noise.
    """

    min_step: int
    min_interval: float
    last: int | None = None
    last_at: float = float("-inf")

    def offer(self, weight: int, now: float) -> int | None:
        """The weight to publish now, or None to keep the last one."""
        last = self.last
        if last is not None:
            if weight == last:
                return None
            edge = weight == 0 or last == 0
            if not edge and (abs(weight - last) < self.min_step or now - self.last_at < self.min_interval):
                return None
        self.last = weight
        self.last_at = now
        return weight


MAX_WEIGHT = 65535
"""The largest weight the actuator's API (and ipvsadm) takes: an agent's 1e300 % stops here."""


def weight_of(full: int, percent: float) -> int:
    """A percentage of ``full`` as a weight: 0% is 0, anything above rounds to at least 1, and at most MAX_WEIGHT."""
    if percent <= 0:
        return 0
    return min(MAX_WEIGHT, max(1, round(full * min(percent, 1e9) / 100.0)))
