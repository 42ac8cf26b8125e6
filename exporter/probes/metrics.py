"""The probe series of the exporter's ``/metrics``: kept by the engine, rendered at scrape time.

Every series carries all backend labels (``BACKEND_LABELS``, as
``ipvs_backend_*`` with the default ``backend_labels``) plus ``check``, so
they join with the IPVS series and two checks of one real server never
collide. Both exposition paths read the same state: ``families()`` for
prometheus_client, ``chunks()`` for the exporter's fast text path.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from exporter.collector import BACKEND_LABELS, Names, NoNames, backend_label_values
from exporter.exposition import label_string
from exporter.probes.result import ProbeResult
from exporter.probes.state import Health
from lvsguard.model import RealServerKey, ServiceKey

CHECK = "check"
PROBE_LABELS: tuple[str, ...] = BACKEND_LABELS + (CHECK,)
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SUCCESS = ("lvs_probe_success", "gauge", "1 when the last check of the real server succeeded, 0 when it failed.")
DURATION = ("lvs_probe_duration_seconds", "histogram", "Time each check took, failures and timeouts included.")
HEALTHY = ("lvs_backend_healthy", "gauge", "1 while the real server is healthy by this check after rise/fall, 0 while it is not.")
CHANGES = ("lvs_backend_health_changes_total", "counter", "Health transitions of the real server by this check (after rise/fall).")
LAST_CHANGE = (
    "lvs_backend_health_last_change_timestamp_seconds",
    "gauge",
    "Unix time of the last health transition by this check; 0 when it never changed.",
)
FAMILIES = (SUCCESS, DURATION, HEALTHY, CHANGES, LAST_CHANGE)

JobKey = tuple[ServiceKey, RealServerKey, str]


@dataclass(slots=True)
class _Series:
    labels: tuple[str, ...]
    text: str  # the rendered {..} label string
    success: int = 1
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    count: int = 0
    healthy: int = 1
    changes: int = 0
    changed_at: float = 0.0


class ProbeMetrics:
    """Per-check series; the engine writes from its loop thread, scrapes read from HTTP threads."""

    def __init__(self, names: Names | None = None):
        self.names: Names = names if names is not None else NoNames()
        self._series: dict[JobKey, _Series] = {}
        self._lock = threading.Lock()

    def add(self, key: JobKey) -> None:
        service, real_server, check = key
        values = backend_label_values(service, real_server, self.names) + (check,)
        with self._lock:
            self._series.setdefault(key, _Series(values, label_string(PROBE_LABELS, values)))

    def remove(self, key: JobKey) -> None:
        with self._lock:
            self._series.pop(key, None)

    def observe(self, key: JobKey, result: ProbeResult, health: Health) -> None:
        with self._lock:
            s = self._series.get(key)
            if s is None:
                return
            s.success = 1 if result.ok else 0
            i = bisect.bisect_left(BUCKETS, result.duration)
            if i < len(BUCKETS):
                s.buckets[i] += 1
            s.total += result.duration
            s.count += 1
            s.healthy = 1 if health.healthy else 0
            s.changes = health.changes
            s.changed_at = health.changed_at

    def snapshot(self) -> list[_Series]:
        with self._lock:
            return [
                _Series(s.labels, s.text, s.success, list(s.buckets), s.total, s.count, s.healthy, s.changes, s.changed_at)
                for s in self._series.values()
            ]

    def families(self) -> Iterator[Metric]:
        """prometheus_client families (the registry path)."""
        series = self.snapshot()
        if not series:
            return
        labels = list(PROBE_LABELS)
        success = GaugeMetricFamily(SUCCESS[0], SUCCESS[2], labels=labels)
        duration = HistogramMetricFamily(DURATION[0], DURATION[2], labels=labels)
        healthy = GaugeMetricFamily(HEALTHY[0], HEALTHY[2], labels=labels)
        changes = CounterMetricFamily(CHANGES[0], CHANGES[2], labels=labels)
        last = GaugeMetricFamily(LAST_CHANGE[0], LAST_CHANGE[2], labels=labels)
        for s in series:
            values = list(s.labels)
            success.add_metric(values, s.success)
            cumulative = _cumulative(s.buckets)
            duration.add_metric(values, [(_le(b), c) for b, c in zip(BUCKETS, cumulative)] + [("+Inf", s.count)], s.total)
            healthy.add_metric(values, s.healthy)
            changes.add_metric(values, s.changes)
            last.add_metric(values, s.changed_at)
        yield from (success, duration, healthy, changes, last)

    def chunks(self) -> Iterator[str]:
        """The same families as Prometheus text (the exporter's fast path)."""
        series = self.snapshot()
        if not series:
            return
        head = {name: f"# HELP {name} {help_}\n# TYPE {name} {kind}\n" for name, kind, help_ in FAMILIES}
        yield head[SUCCESS[0]] + "".join(f"{SUCCESS[0]}{s.text} {s.success}\n" for s in series)
        out = [head[DURATION[0]]]
        les = [f',le="{_le(b)}"}} ' for b in BUCKETS] + [',le="+Inf"} ']
        for s in series:
            base = f"{DURATION[0]}_bucket{s.text[:-1]}"
            counts = _cumulative(s.buckets) + [s.count]
            out += [f"{base}{le}{c}\n" for le, c in zip(les, counts)]
            out.append(f"{DURATION[0]}_sum{s.text} {s.total!r}\n{DURATION[0]}_count{s.text} {s.count}\n")
        yield "".join(out)
        yield head[HEALTHY[0]] + "".join(f"{HEALTHY[0]}{s.text} {s.healthy}\n" for s in series)
        yield head[CHANGES[0]] + "".join(f"{CHANGES[0]}{s.text} {s.changes}\n" for s in series)
        yield head[LAST_CHANGE[0]] + "".join(f"{LAST_CHANGE[0]}{s.text} {s.changed_at!r}\n" for s in series)


def _cumulative(buckets: list[int]) -> list[int]:
    out, running = [], 0
    for c in buckets:
        running += c
        out.append(running)
    return out


def _le(bound: float) -> str:
    return repr(bound)
