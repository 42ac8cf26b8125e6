"""Probe state read from the exporter's ``/probes.json`` (``lvsguard/actuator/probestate.py``).

The report is the exporter's own: ``exporter.probes.metrics.ProbeMetrics``
fed real ``ProbeResult``/``Health`` values writes it, so a change of the
exporter's format breaks these tests, not the console in production.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from lvsguard.actuator.probestate import (
    MIN_AGE,
    SLOW_FACTOR,
    CheckState,
    ProbeSource,
    Raw,
    checks_of,
    fetch_report,
    parse_probe_report,
    report_url,
)
from lvsguard.actuator.targets import Target
from lvsguard.exporter.probes.metrics import ProbeMetrics
from lvsguard.exporter.probes.result import ProbeResult
from lvsguard.exporter.probes.state import Health
from lvsguard.model import RealServerKey, ServiceKey
from tests.fakes import FakeClock

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
V6 = ServiceKey.parse("TCP [2001:db8::10]:443")
MARK = ServiceKey.parse("FWM 7")
RS1, RS2 = RealServerKey.parse("10.0.1.1:80"), RealServerKey.parse("10.0.1.2:80")
RS6 = RealServerKey.parse("[2001:db8::1]:443")


def exposition(*observations: tuple[ServiceKey, RealServerKey, str, bool, float, bool, float]) -> str:
    """The exporter's probe report after ``(service, real server, check, ok, duration, healthy, changed_at)`` results."""
    metrics = ProbeMetrics()
    for service, rs, check, ok, duration, healthy, changed_at in observations:
        metrics.add((service, rs, check))
        health = Health(rise=2, fall=1, healthy=healthy, changes=1 if changed_at else 0, changed_at=changed_at)
        metrics.observe((service, rs, check), ProbeResult(ok, "", duration), health)
    return json.dumps(metrics.report())


def test_parse_reads_state_success_latency_and_change_of_every_check() -> None:
    text = exposition(
        (WEB, RS1, "tcp", True, 0.002, True, 0.0),
        (WEB, RS1, "http", False, 0.5, False, 1_700_000_100.0),
        (V6, RS6, "tcp", True, 0.004, True, 0.0),
        (MARK, RS2, "tcp", True, 0.001, True, 0.0),
    )
    raw = parse_probe_report(json.loads(text))
    assert set(raw) == {
        (Target(WEB, RS1), "tcp"),
        (Target(WEB, RS1), "http"),
        (Target(V6, RS6), "tcp"),
        (Target(MARK, RS2), "tcp"),
    }
    http = raw[(Target(WEB, RS1), "http")]
    assert (http.healthy, http.success, http.total, http.count, http.last_change) == (
        False,
        False,
        0.5,
        1,
        1_700_000_100.0,
    )
    checks = checks_of(raw, {})
    assert checks[Target(WEB, RS1)] == (
        CheckState("http", False, False, 0.5, 1_700_000_100.0),
        CheckState("tcp", True, True, 0.002, 0.0),
    )
    assert checks[Target(V6, RS6)][0].latency == pytest.approx(0.004)


def test_latency_is_the_mean_of_the_checks_between_two_reads() -> None:
    metrics = ProbeMetrics()
    key = (WEB, RS1, "tcp")
    metrics.add(key)
    for duration in (0.1, 0.1):
        metrics.observe(key, ProbeResult(True, "", duration), Health(2, 1))
    before = parse_probe_report(metrics.report())
    for duration in (0.002, 0.004):
        metrics.observe(key, ProbeResult(True, "", duration), Health(2, 1))
    now = parse_probe_report(metrics.report())
    assert checks_of(now, before)[Target(WEB, RS1)][0].latency == pytest.approx(0.003)
    assert checks_of(now, now)[Target(WEB, RS1)][0].latency == pytest.approx(0.206 / 4)  # no new check: the mean of all


GOOD = {
    "service": "TCP 192.0.2.10:80",
    "real_server": "10.0.1.1:80",
    "check": "tcp",
    "healthy": True,
    "success": True,
    "duration_seconds_sum": 0.5,
    "duration_seconds_count": 2,
    "last_change": 0.0,
}


@pytest.mark.parametrize(
    "check",
    [
        {**GOOD, "service": "192.0.2.10:80"},
        {**GOOD, "real_server": "10.0.1.1"},
        {**GOOD, "service": "BOGUS 192.0.2.10:80"},
        {**GOOD, "healthy": "up"},
        {**GOOD, "duration_seconds_sum": "0.5"},
        {k: v for k, v in GOOD.items() if k != "success"},
        {**GOOD, "service": 80},
        {**GOOD, "check": ["tcp"]},
        "tcp",
    ],
    ids=[
        "no-protocol",
        "no-port",
        "bad-proto",
        "bad-healthy",
        "bad-sum",
        "no-success",
        "service-number",
        "check-list",
        "not-an-object",
    ],
)
def test_checks_that_name_no_real_server_or_garble_a_value_are_skipped(check: object) -> None:
    assert parse_probe_report({"checks": [check, GOOD]}) == {(Target(WEB, RS1), "tcp"): Raw(True, True, 0.5, 2.0, 0.0)}


@pytest.mark.parametrize("doc", [[], {}, {"checks": {}}, "checks", None], ids=["list", "empty", "map", "text", "null"])
def test_a_document_that_is_no_report_is_an_error(doc: object) -> None:
    with pytest.raises(ValueError, match="not the exporter's probe report"):
        parse_probe_report(doc)


def test_any_check_name_and_a_fwmark_service_come_through() -> None:
    raw = parse_probe_report(json.loads(exposition((MARK, RS2, 'a"b\\c\n', False, 0.1, True, 0.0))))
    assert list(raw) == [(Target(MARK, RS2), 'a"b\\c\n')]
    assert raw[(Target(MARK, RS2), 'a"b\\c\n')].success is False


def test_a_shared_check_has_no_latency_of_its_own() -> None:
    metrics = ProbeMetrics()
    key = (WEB, RS1, "tcp")
    metrics.add(key, shared=True)  # its durations go to its service's histogram
    metrics.observe(key, ProbeResult(True, "", 0.01), Health(2, 1))
    assert checks_of(parse_probe_report(metrics.report()), {})[Target(WEB, RS1)] == (
        CheckState("tcp", True, True, None, 0.0),
    )


@pytest.mark.parametrize(
    ("exporter_url", "expected"),
    [
        ("http://127.0.0.1:9910/metrics", "http://127.0.0.1:9910/probes.json"),
        ("http://127.0.0.1:9910", "http://127.0.0.1:9910/probes.json"),
        ("https://director/lvs/metrics", "https://director/lvs/probes.json"),
    ],
    ids=["metrics", "bare", "behind-a-prefix"],
)
def test_the_report_is_read_beside_the_metrics(exporter_url: str, expected: str) -> None:
    assert report_url(exporter_url) == expected


def test_view_states() -> None:
    fetch = lambda _url, _timeout: json.loads(exposition((WEB, RS1, "tcp", False, 0.01, False, 5.0)))
    view = ProbeSource("http://exporter/metrics", 1.0, fetch=fetch, clock=FakeClock()).view()
    assert view.state == "ok"
    assert view.of(Target(WEB, RS1))[0] == "unhealthy"
    assert view.of(Target(WEB, RS2)) == ("unchecked", ())


class Flaky:
    """A fetch that answers with ``text`` or raises ``error``, and counts its calls."""

    def __init__(self, text: str):
        self.text = text
        self.error: Exception | None = None
        self.calls = 0
        self.took = 0.0
        self.clock: FakeClock | None = None

    def __call__(self, _url: str, _timeout: float) -> object:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.took)
        if self.error is not None:
            raise self.error
        return json.loads(self.text)


def test_source_reads_at_most_every_min_age_and_longer_after_a_slow_read() -> None:
    clock = FakeClock()
    fetch = Flaky(exposition((WEB, RS1, "tcp", True, 0.01, True, 0.0)))
    fetch.clock = clock
    source = ProbeSource("http://exporter/metrics", 1.0, fetch=fetch, clock=clock)
    source.view()
    source.view()
    assert fetch.calls == 1
    clock.advance(MIN_AGE)
    fetch.took = 0.5  # a slow exporter (a big table): read again only after SLOW_FACTOR times as long
    source.view()
    assert fetch.calls == 2
    clock.advance(SLOW_FACTOR * 0.5 - 0.1)
    source.view()
    assert fetch.calls == 2
    clock.advance(0.2)
    source.view()
    assert fetch.calls == 3


def test_an_unreachable_exporter_makes_the_state_unknown_then_known_again() -> None:
    clock = FakeClock()
    fetch = Flaky(exposition((WEB, RS1, "tcp", True, 0.01, True, 0.0)))
    source = ProbeSource("http://exporter/metrics", 1.0, fetch=fetch, clock=clock)
    fetch.error = ConnectionRefusedError(111, "Connection refused")
    view = source.view()
    assert (view.state, view.error, view.of(Target(WEB, RS1))) == ("unreachable", "Connection refused", ("unknown", ()))
    clock.advance(MIN_AGE)
    fetch.error = None
    view = source.view()
    assert (view.state, view.of(Target(WEB, RS1))[0]) == ("ok", "healthy")
    clock.advance(MIN_AGE)
    fetch.error = TimeoutError("not read within 1 s")
    assert source.view().of(Target(WEB, RS1)) == ("unknown", ())
    clock.advance(MIN_AGE)
    fetch.error = http.client.IncompleteRead(b"", 100)  # the exporter died in the middle of its reply
    view = source.view()
    assert view.state == "unreachable" and "IncompleteRead" in view.error


class Exporter(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` with ``status`` on every GET (a stand-in for the exporter's HTTP server)."""

    body = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[tuple[str, type[Exporter]]]:
    handler = type("Handler", (Exporter,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics", handler
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_report_reads_the_report_over_http(exporter: tuple[str, type[Exporter]]) -> None:
    url, handler = exporter
    handler.body = exposition((WEB, RS1, "tcp", True, 0.01, True, 0.0)).encode()
    assert parse_probe_report(fetch_report(report_url(url), 2.0))[(Target(WEB, RS1), "tcp")].healthy is True


def test_a_reply_that_is_not_json_is_unknown(exporter: tuple[str, type[Exporter]]) -> None:
    url, handler = exporter
    handler.body = b"ipvs_up 1\n"  # an exporter that answers with something else
    view = ProbeSource(url, 2.0).view()
    assert view.state == "unreachable" and "Expecting value" in view.error


def test_json_nested_too_deep_is_unknown(exporter: tuple[str, type[Exporter]]) -> None:
    url, handler = exporter
    handler.body = b"[" * 100_000  # json.loads gives up with RecursionError, not ValueError
    assert ProbeSource(url, 2.0).view().state == "unreachable"


def test_fetch_report_refuses_an_error_status(exporter: tuple[str, type[Exporter]]) -> None:
    url, handler = exporter
    handler.status = 500
    view = ProbeSource(url, 2.0).view()
    assert view.state == "unreachable" and "500" in view.error


def test_nothing_listening_is_unknown_with_the_reason() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    view = ProbeSource(f"http://127.0.0.1:{port}/metrics", 1.0).view()
    assert view.state == "unreachable" and view.error == "Connection refused"
