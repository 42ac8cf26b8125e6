"""Probe state and latency of each real server, read from the local exporter's ``/metrics``.

Why from the exporter: the health checks run in the exporter's process
(``exporter/probes``), and the actuator hears from them only when a real
server changes state, and only with ``probes.publish``. The exporter's
``/metrics`` already has every check's state and timings (``lvs_backend_healthy``,
``lvs_probe_success``, ``lvs_probe_duration_seconds``,
``lvs_backend_health_last_change_timestamp_seconds``; docs/probes.md), so the
actuator reads it from ``actuator.exporter_url``: one read at a time, at most
every :data:`MIN_AGE` seconds (longer when a read is slow), each bounded by
``exporter_timeout``. An exporter out of reach makes the state "unknown"; it is
never an error of the page or the API.

Parsing is a pure function over the text (:func:`parse_probe_metrics`); only
the ``lvs_`` lines are looked at, so the IPVS series of a big table cost one
``startswith`` each.
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from flask import Flask

from actuator.settings import ActuatorSettings, Names
from actuator.targets import Target, TargetError, target_from_labels
from lvsguard.logs import event

log = logging.getLogger(__name__)

MIN_AGE = 2.0  # seconds a read is reused (the console refreshes every 2 s)
SLOW_FACTOR = (
    10.0  # a read that took t seconds is reused for at least SLOW_FACTOR * t: at most a tenth of the exporter's time
)
MAX_BYTES = 512 * 1024 * 1024  # a /metrics larger than this is not read to its end

HEALTHY = "lvs_backend_healthy"
SUCCESS = "lvs_probe_success"
DURATION_SUM = "lvs_probe_duration_seconds_sum"
DURATION_COUNT = "lvs_probe_duration_seconds_count"
LAST_CHANGE = "lvs_backend_health_last_change_timestamp_seconds"
WANTED = (HEALTHY, SUCCESS, DURATION_SUM, DURATION_COUNT, LAST_CHANGE)
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}\s+(\S+)")
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

CheckKey = tuple[Target, str]


@dataclass(frozen=True, slots=True)
class CheckState:
    """One check of one real server, as the exporter last reported it."""

    check: str  # the ``check`` label (the check's name, or its type)
    healthy: bool | None  # after rise/fall; None when the exporter had no such series
    success: bool | None  # the last check's own result
    latency: float | None  # seconds: mean of the checks since the previous read (of all checks on the first read)
    last_change: float  # Unix time of the last health transition; 0 = never


@dataclass(frozen=True, slots=True)
class Raw:
    """What the text gives for one check; latency needs two reads (the histogram's sum and count)."""

    healthy: bool | None = None
    success: bool | None = None
    total: float = 0.0
    count: float = 0.0
    last_change: float = 0.0


@dataclass(frozen=True, slots=True)
class ProbeView:
    """The probe state of every checked real server at one read; ``state`` says whether it is known."""

    state: str  # "ok" (read), "off" (no exporter_url), "unreachable" (the last read failed)
    source: str = ""  # the exporter_url
    error: str = ""  # why the state is unknown
    read_at: float = 0.0  # Unix time of the read the values come from; 0 = never
    checks: Mapping[Target, tuple[CheckState, ...]] = field(default_factory=dict)

    def of(self, target: Target) -> tuple[str, tuple[CheckState, ...]]:
        """The real server's state (healthy, unhealthy, unchecked or unknown) and its checks."""
        if self.state != "ok":
            return "unknown", ()
        checks = self.checks.get(target, ())
        if not checks or all(c.healthy is None for c in checks):
            return "unchecked", checks
        return ("unhealthy" if any(c.healthy is False for c in checks) else "healthy"), checks


def _unescape(text: str) -> str:
    return re.sub(r'\\[\\"n]', lambda m: ESCAPES[m.group(0)], text)


def parse_probe_metrics(lines: Iterable[str], names: Names = Names()) -> dict[CheckKey, Raw]:
    """The probe series of a Prometheus text exposition, by (real server, check); other lines are skipped.

    A series whose labels name no real server (a hand-edited exposition, a
    mismatched ``backend_labels``) is skipped: the console shows what it can.
    """
    found: dict[CheckKey, dict[str, float]] = {}
    for line in lines:
        if not line.startswith("lvs_"):
            continue
        m = SAMPLE.match(line)
        if m is None or m.group(1) not in WANTED:
            continue
        labels = {k: _unescape(v) for k, v in LABEL.findall(m.group(2))}
        try:
            value = float(m.group(3))
            target = target_from_labels(labels, names)
        except (ValueError, TargetError):
            continue
        found.setdefault((target, labels.get("check", "")), {})[m.group(1)] = value
    return {key: _raw(values) for key, values in found.items()}


def _raw(values: Mapping[str, float]) -> Raw:
    def flag(name: str) -> bool | None:
        return None if name not in values else values[name] >= 0.5

    return Raw(
        flag(HEALTHY),
        flag(SUCCESS),
        values.get(DURATION_SUM, 0.0),
        values.get(DURATION_COUNT, 0.0),
        values.get(LAST_CHANGE, 0.0),
    )


def checks_of(now: Mapping[CheckKey, Raw], before: Mapping[CheckKey, Raw]) -> dict[Target, tuple[CheckState, ...]]:
    """Check states from this read and the previous one: latency is the mean of the checks in between."""
    out: dict[Target, list[CheckState]] = {}
    for (target, check), raw in sorted(now.items(), key=lambda item: (str(item[0][0].real_server), item[0][1])):
        prev = before.get((target, check))
        latency = None
        if prev is not None and raw.count > prev.count:
            latency = (raw.total - prev.total) / (raw.count - prev.count)
        elif raw.count > 0:
            latency = raw.total / raw.count
        out.setdefault(target, []).append(CheckState(check, raw.healthy, raw.success, latency, raw.last_change))
    return {target: tuple(checks) for target, checks in out.items()}


Fetch = Callable[[str, float], Iterable[str]]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""No proxy from the environment: the exporter is on this director (the URL is from the config, http(s) checked there)."""


def fetch_lines(url: str, timeout: float) -> Iterable[str]:
    """The exposition's lines (read within ``timeout`` seconds in all); OSError or http.client.HTTPException on failure."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with OPENER.open(request, timeout=timeout) as response:
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        lines, size = [], 0
        for raw in response:
            size += len(raw)
            if size > MAX_BYTES:
                raise OSError(f"more than {MAX_BYTES // 2**20} MiB")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not read within {timeout:g} s")
            if raw.startswith(b"lvs_"):
                lines.append(raw.decode("utf-8", "replace"))
        return lines


class ProbeSource:
    """Reads ``url`` at most every MIN_AGE seconds; one read at a time, others get the last view."""

    def __init__(self, url: str, timeout: float, *, fetch: Fetch = fetch_lines, clock: Callable[[], float] = time.time):
        self.url = url
        self.timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._view = ProbeView("unreachable", url, "not read yet")
        self._raw: dict[CheckKey, Raw] = {}
        self._next = 0.0  # clock time of the next read

    def view(self, names: Names) -> ProbeView:
        """The current view, read again when it is old enough (never raises)."""
        if self._clock() < self._next or not self._lock.acquire(blocking=self._view.read_at == 0):
            return self._view
        try:
            if self._clock() >= self._next:
                self._read(names)
        finally:
            self._lock.release()
        return self._view

    def _read(self, names: Names) -> None:
        started = self._clock()
        try:
            raw = parse_probe_metrics(self._fetch(self.url, self.timeout), names)
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timed out, cut short, garbled
            reason = _reason(exc)
            if self._view.state != "unreachable" or self._view.error != reason:
                event(log, logging.WARNING, "probe_state_unknown", exporter_url=self.url, reason=reason)
            self._view = ProbeView("unreachable", self.url, reason, self._view.read_at)
            self._raw = {}
        else:
            self._view = ProbeView("ok", self.url, "", self._clock(), checks_of(raw, self._raw))
            self._raw = raw
        self._next = self._clock() + max(MIN_AGE, SLOW_FACTOR * (self._clock() - started))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        inner = exc.reason
        return str(inner.strerror if isinstance(inner, OSError) and inner.strerror else inner)
    if isinstance(exc, http.client.HTTPException):
        return f"its reply was cut short or garbled ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


_sources_lock = threading.Lock()


def probe_view(app: Flask) -> ProbeView:
    """The probe state for ``app``'s current settings (a reload may change ``exporter_url``)."""
    settings: ActuatorSettings = app.config["LVSGUARD_SETTINGS"]
    if not settings.exporter_url:
        return ProbeView("off")
    with _sources_lock:
        source: ProbeSource | None = app.extensions.get("lvsguard_probes")
        if source is None or source.url != settings.exporter_url or source.timeout != settings.exporter_timeout:
            source = ProbeSource(settings.exporter_url, settings.exporter_timeout)
            app.extensions["lvsguard_probes"] = source
    return source.view(settings.names)
