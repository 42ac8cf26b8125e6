"""The probe series of the exporter's ``/metrics``: kept by the engine, rendered at scrape time.

Every series carries all backend labels (``BACKEND_LABELS``, as
``ipvs_backend_*`` with the default ``backend_labels``) plus ``check``, so
they join with the IPVS series and two checks of one real server never
collide. ``chunks()`` renders them as Prometheus text for the exporter's
``/metrics``, each check's lines kept between scrapes while its values stay
the same; the tests hold that text to prometheus_client's families of the same
state (``tests/exposition_oracle.py``). ``report()`` gives the same state as
the exporter's ``/probes.json``, which the actuator's console reads.

A check added ``shared`` (the default tcp checks of a table over the engine's
budget) keeps its own success, health and change series, but its durations go
to one histogram per service and check, whose real-server labels are empty:
17 histogram lines per real server would make a 100 000-real-server scrape
four times the size of the IPVS table's own (420 MB of text), for latency
figures nobody reads per real server at that scale.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from lvsguard.exporter.collector import BACKEND_LABELS, Names, NoNames, backend_label_values
from lvsguard.exporter.exposition import label_string
from lvsguard.exporter.probes.result import ProbeResult
from lvsguard.exporter.probes.state import Health
from lvsguard.model import RealServerKey, ServiceKey

CHECK = "check"
PROBE_LABELS: tuple[str, ...] = BACKEND_LABELS + (CHECK,)
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SUCCESS = ("lvs_probe_success", "gauge", "1 when the last check of the real server succeeded, 0 when it failed.")
DURATION = ("lvs_probe_duration_seconds", "histogram", "Time each check took, failures and timeouts included.")
HEALTHY = (
    "lvs_backend_healthy",
    "gauge",
    "1 while the real server is healthy by this check after rise/fall, 0 while it is not.",
)
CHANGES = (
    "lvs_backend_health_changes_total",
    "counter",
    "Health transitions of the real server by this check (after rise/fall).",
)
LAST_CHANGE = (
    "lvs_backend_health_last_change_timestamp_seconds",
    "gauge",
    "Unix time of the last health transition by this check; 0 when it never changed.",
)
FAMILIES = (SUCCESS, DURATION, HEALTHY, CHANGES, LAST_CHANGE)

JobKey = tuple[ServiceKey, RealServerKey, str]
Report = dict[str, list[dict[str, object]]]


def no_report() -> Report:
    """The probe report of an exporter whose probes are off: no check."""
    return {"checks": []}


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
    shared: _Series | None = None  # the per-service histogram its durations go to, if any
    members: int = 0  # of a shared histogram: the checks that feed it
    lines: tuple[str, str, str, str] | None = (
        None  # its success/healthy/changes/last-change lines, until a value changes
    )


_Hist = tuple[tuple[str, ...], str, list[int], float, int]  # labels, label text, buckets, sum, count


def _service_key(key: JobKey) -> tuple[ServiceKey, str]:
    return key[0], key[2]


class ProbeMetrics:
    """Per-check series; the engine writes from its loop thread, scrapes read from HTTP threads."""

    def __init__(self, names: Names | None = None):
        self.names: Names = names if names is not None else NoNames()
        self._series: dict[JobKey, _Series] = {}
        self._shared: dict[tuple[ServiceKey, str], _Series] = {}
        self._lock = threading.Lock()

    def add(self, key: JobKey, shared: bool = False) -> None:
        """Series for check ``key``; ``shared``: its durations go to its service's histogram."""
        service, real_server, check = key
        values = backend_label_values(service, real_server, self.names) + (check,)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(values, label_string(PROBE_LABELS, values))
            self._share(key, series, shared)

    def share(self, key: JobKey, shared: bool) -> None:
        """Move the durations of ``key`` to its service's histogram, or back to its own (which starts empty)."""
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                self._share(key, series, shared)

    def _share(self, key: JobKey, series: _Series, shared: bool) -> None:
        if (series.shared is not None) == shared:
            return
        if shared:
            group = self._shared.get(_service_key(key))
            if group is None:
                service, _, check = key
                values = backend_label_values(service, RealServerKey("", 0), self.names) + (check,)
                values = (
                    values[:2] + ("", "") + values[4:7] + ("",) + values[8:]
                )  # no real server: the service's histogram
                group = self._shared[_service_key(key)] = _Series(values, label_string(PROBE_LABELS, values))
            group.members += 1
            series.shared = group
        else:
            self._leave(key, series)
        series.buckets = [0] * len(BUCKETS)
        series.total, series.count = 0.0, 0

    def _leave(self, key: JobKey, series: _Series) -> None:
        group = series.shared
        if group is not None:
            group.members -= 1
            if group.members <= 0:
                self._shared.pop(_service_key(key), None)
            series.shared = None

    def remove(self, key: JobKey) -> None:
        with self._lock:
            series = self._series.pop(key, None)
            if series is not None:
                self._leave(key, series)

    def observe(self, key: JobKey, result: ProbeResult, health: Health) -> None:
        with self._lock:
            s = self._series.get(key)
            if s is None:
                return
            success, healthy = 1 if result.ok else 0, 1 if health.healthy else 0
            if s.lines is not None and (success != s.success or healthy != s.healthy or health.changes != s.changes):
                s.lines = None
            s.success = success
            h = s.shared if s.shared is not None else s
            i = bisect.bisect_left(BUCKETS, result.duration)
            if i < len(BUCKETS):
                h.buckets[i] += 1
            h.total += result.duration
            h.count += 1
            s.healthy = healthy
            s.changes = health.changes
            s.changed_at = health.changed_at

    def report(self) -> Report:
        """Every check's state, as ``/probes.json`` serves it (docs/probes.md describes the document).

        One object per check: its service and real server as an operator
        writes them, its name, ``healthy`` (after rise/fall), ``success`` (the
        last result), ``last_change`` (Unix time of the last transition, 0 =
        never), and the sum and count of its durations, null for a check whose
        durations go to its service's histogram (``shared``).
        """
        with self._lock:
            values = [
                (key, s.healthy, s.success, s.changed_at, s.shared is None, s.total, s.count)
                for key, s in self._series.items()
            ]
        return {
            "checks": [
                {
                    "service": str(service),
                    "real_server": str(real_server),
                    "check": check,
                    "healthy": healthy == 1,
                    "success": success == 1,
                    "last_change": changed_at,
                    "duration_seconds_sum": total if own else None,
                    "duration_seconds_count": count if own else None,
                }
                for (service, real_server, check), healthy, success, changed_at, own, total, count in values
            ]
        }

    def _lines(self) -> tuple[list[tuple[str, str, str, str]], list[_Hist]]:
        """The per-check lines of the four gauge/counter families (kept between scrapes while unchanged), and the histograms."""
        ok, up, changes, last = SUCCESS[0], HEALTHY[0], CHANGES[0], LAST_CHANGE[0]
        with self._lock:
            lines = []
            for s in self._series.values():
                cached = s.lines
                if cached is None:
                    t = s.text
                    cached = s.lines = (
                        f"{ok}{t} {s.success}\n",
                        f"{up}{t} {s.healthy}\n",
                        f"{changes}{t} {s.changes}\n",
                        f"{last}{t} {s.changed_at!r}\n",
                    )
                lines.append(cached)
            hists = [
                (s.labels, s.text, list(s.buckets), s.total, s.count) for s in self._series.values() if s.shared is None
            ]
            hists += [(g.labels, g.text, list(g.buckets), g.total, g.count) for g in self._shared.values()]
        return lines, hists

    def chunks(self) -> Iterator[str]:
        """The probe families as Prometheus text (the exporter's ``/metrics``)."""
        lines, hists = self._lines()
        if not lines:
            return
        head = {name: f"# HELP {name} {help_}\n# TYPE {name} {kind}\n" for name, kind, help_ in FAMILIES}
        yield head[SUCCESS[0]]
        yield "".join([x[0] for x in lines])
        out = [head[DURATION[0]]]
        les = [f',le="{_le(b)}"}} ' for b in BUCKETS] + [',le="+Inf"} ']
        for _, text, buckets, total, count in hists:
            base = f"{DURATION[0]}_bucket{text[:-1]}"
            counts = _cumulative(buckets) + [count]
            out += [f"{base}{le}{c}\n" for le, c in zip(les, counts)]
            out.append(f"{DURATION[0]}_sum{text} {total!r}\n{DURATION[0]}_count{text} {count}\n")
        yield "".join(out)
        yield head[HEALTHY[0]]
        yield "".join([x[1] for x in lines])
        yield head[CHANGES[0]]
        yield "".join([x[2] for x in lines])
        yield head[LAST_CHANGE[0]]
        yield "".join([x[3] for x in lines])


def _cumulative(buckets: list[int]) -> list[int]:
    out, running = [], 0
    for c in buckets:
        running += c
        out.append(running)
    return out


def _le(bound: float) -> str:
    return repr(bound)
