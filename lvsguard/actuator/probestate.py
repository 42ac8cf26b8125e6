"""Probe state and latency of each real server, read from the local exporter's ``/probes.json``.

Why from the exporter: the health checks run in the exporter's process
(``lvsguard/exporter/probes``), and the actuator hears from them only when a real
server changes state, and only with ``probes.publish``. The exporter serves
every check's state and duration totals as JSON (``/probes.json``, beside its
``/metrics``; the document is ``exporter.probes.metrics.ProbeMetrics.report``,
described in docs/probes.md), so the actuator reads it from beside
``actuator.exporter_url`` (the exporter's ``/metrics`` URL): one read at a
time, at most every :data:`MIN_AGE` seconds (longer when a read is slow), each
bounded by ``exporter_timeout``. An exporter out of reach makes the state
"unknown"; it is never an error of the page or the API.

Why JSON and not the Prometheus text of ``/metrics``: the text has one owner
of its format (the exporter) and one parser worth using (prometheus_client's),
and that parser is slow: for the probes of 1 000 real servers (5 000 wanted
lines, the 16 000 others skipped before parsing) a read took 375 ms with it
against 168 ms with the small parser of our own this module used to carry,
and the exporter rendered its whole IPVS table for each read. A read of
``/probes.json`` took 32 ms, and costs the exporter only the probes' state
(figures in bench/README.md). Each check names its service and real server as an
operator writes them, so no label is mapped back to a real server.

Parsing is a pure function over the decoded document (:func:`parse_probe_report`).
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin

from flask import Flask

from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.actuator.targets import Target, TargetError
from lvsguard.logs import event

log = logging.getLogger(__name__)

MIN_AGE = 2.0  # seconds a read is reused (the console refreshes every 2 s)
SLOW_FACTOR = (
    10.0  # a read that took t seconds is reused for at least SLOW_FACTOR * t: at most a tenth of the exporter's time
)
MAX_BYTES = 256 * 1024 * 1024  # a report larger than this is not read to its end
READ_SIZE = 256 * 1024  # bytes read at a time (the deadline is checked between reads)
REPORT = "probes.json"  # the exporter's probe report, beside its /metrics (lvsguard/exporter/server.py)

CheckKey = tuple[Target, str]


@dataclass(frozen=True, slots=True)
class CheckState:
    """One check of one real server, as the exporter last reported it."""

    check: str  # the check's name, or its type
    healthy: bool | None  # after rise/fall; None when the exporter did not say
    success: bool | None  # the last check's own result
    latency: float | None  # seconds: mean of the checks since the previous read (of all checks on the first read)
    last_change: float  # Unix time of the last health transition; 0 = never


@dataclass(frozen=True, slots=True)
class Raw:
    """What the report gives for one check; latency needs two reads (the durations' sum and count)."""

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


def report_url(exporter_url: str) -> str:
    """The exporter's ``/probes.json`` beside ``exporter_url`` (its ``/metrics``; a bare ``http://host:port`` works too)."""
    return urljoin(exporter_url, REPORT)


def parse_probe_report(doc: object) -> dict[CheckKey, Raw]:
    """The checks of the exporter's probe report, by (real server, check).

    A document of another shape is a ValueError (the read fails: the state
    is unknown). A check whose service or real server does not parse, or
    whose values have the wrong type, is skipped: the console shows what it can.
    """
    checks = doc.get("checks") if isinstance(doc, dict) else None
    if not isinstance(checks, list):
        raise ValueError("not the exporter's probe report (no list of checks)")
    found: dict[CheckKey, Raw] = {}
    for check in checks:
        try:
            target = Target.parse(_text(check["service"]), _text(check["real_server"]))
            found[(target, _text(check["check"]))] = Raw(
                _flag(check["healthy"]),
                _flag(check["success"]),
                _number(check["duration_seconds_sum"]),
                _number(check["duration_seconds_count"]),
                _number(check["last_change"]),
            )
        except (KeyError, TypeError, ValueError, TargetError):
            continue
    return found


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"not true or false: {value!r}")
    return value


def _number(value: object) -> float:
    """A number; null (a check whose durations go to its service's histogram) is 0: no latency of its own."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


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


Fetch = Callable[[str, float], object]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""No proxy from the environment: the exporter is on this director (the URL is from the config, http(s) checked there)."""


def fetch_report(url: str, timeout: float) -> object:
    """The decoded JSON at ``url`` (read within ``timeout`` seconds in all); OSError, ValueError or HTTPException on failure."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with OPENER.open(request, timeout=timeout) as response:
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        parts, size = [], 0
        while part := response.read(READ_SIZE):
            size += len(part)
            if size > MAX_BYTES:
                raise OSError(f"more than {MAX_BYTES // 2**20} MiB")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not read within {timeout:g} s")
            parts.append(part)
    return json.loads(b"".join(parts))


class ProbeSource:
    """Reads ``url`` at most every MIN_AGE seconds; one read at a time, others get the last view."""

    def __init__(
        self, url: str, timeout: float, *, fetch: Fetch = fetch_report, clock: Callable[[], float] = time.time
    ):
        self.url = url  # the configured exporter_url (the exporter's /metrics): what the console names
        self.timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._view = ProbeView("unreachable", url, "not read yet")
        self._raw: dict[CheckKey, Raw] = {}
        self._next = 0.0  # clock time of the next read

    def view(self) -> ProbeView:
        """The current view, read again when it is old enough (never raises)."""
        if self._clock() < self._next or not self._lock.acquire(blocking=self._view.read_at == 0):
            return self._view
        try:
            if self._clock() >= self._next:
                self._read()
        finally:
            self._lock.release()
        return self._view

    def _read(self) -> None:
        started = self._clock()
        try:
            raw = parse_probe_report(self._fetch(report_url(self.url), self.timeout))
        except (
            OSError,
            ValueError,
            RecursionError,
            http.client.HTTPException,
        ) as exc:  # refused, timed out, cut short, garbled
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
    return source.view()
