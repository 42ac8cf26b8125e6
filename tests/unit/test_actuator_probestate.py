"""Probe state read from the exporter's ``/metrics`` (``actuator/probestate.py``).

The exposition is the exporter's own: ``exporter.probes.metrics.ProbeMetrics``
fed real ``ProbeResult``/``Health`` values renders it, so a change of the
exporter's format breaks these tests, not the console in production.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator

import pytest

from actuator.probestate import (
    MIN_AGE,
    SLOW_FACTOR,
    CheckState,
    ProbeSource,
    checks_of,
    fetch_lines,
    parse_probe_metrics,
)
from actuator.settings import Names
from actuator.targets import Target
from exporter.probes.metrics import ProbeMetrics
from exporter.probes.result import ProbeResult
from exporter.probes.state import Health
from lvsguard.model import RealServerKey, ServiceKey
from tests.fakes import FakeClock

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
V6 = ServiceKey.parse("TCP [2001:db8::10]:443")
MARK = ServiceKey.parse("FWM 7")
RS1, RS2 = RealServerKey.parse("10.0.1.1:80"), RealServerKey.parse("10.0.1.2:80")
RS6 = RealServerKey.parse("[2001:db8::1]:443")


def exposition(*observations: tuple[ServiceKey, RealServerKey, str, bool, float, bool, float]) -> str:
    """The exporter's probe families after ``(service, real server, check, ok, duration, healthy, changed_at)`` results."""
    metrics = ProbeMetrics()
    for service, rs, check, ok, duration, healthy, changed_at in observations:
        metrics.add((service, rs, check))
        health = Health(rise=2, fall=1, healthy=healthy, changes=1 if changed_at else 0, changed_at=changed_at)
        metrics.observe((service, rs, check), ProbeResult(ok, "", duration), health)
    return "".join(metrics.chunks())


def test_parse_reads_state_success_latency_and_change_of_every_check() -> None:
    text = 'ipvs_backend_weight{x="1"} 5\n' + exposition(
        (WEB, RS1, "tcp", True, 0.002, True, 0.0),
        (WEB, RS1, "http", False, 0.5, False, 1_700_000_100.0),
        (V6, RS6, "tcp", True, 0.004, True, 0.0),
        (MARK, RS2, "tcp", True, 0.001, True, 0.0),
    )
    raw = parse_probe_metrics(text.splitlines())
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
    before = parse_probe_metrics("".join(metrics.chunks()).splitlines())
    for duration in (0.002, 0.004):
        metrics.observe(key, ProbeResult(True, "", duration), Health(2, 1))
    now = parse_probe_metrics("".join(metrics.chunks()).splitlines())
    assert checks_of(now, before)[Target(WEB, RS1)][0].latency == pytest.approx(0.003)
    assert checks_of(now, now)[Target(WEB, RS1)][0].latency == pytest.approx(0.206 / 4)  # no new check: the mean of all


@pytest.mark.parametrize(
    "line",
    [
        'lvs_backend_healthy{proto="TCP",local_port="80",remote_address="10.0.1.1",remote_port="80",check="tcp"} 1',
        'lvs_backend_healthy{local_address="192.0.2.10",local_port="80",proto="TCP",remote_address="10.0.1.1",remote_port="80",check="tcp"} up',
        'lvs_backend_healthy{local_address="192.0.2.10",local_port="80",proto="BOGUS",remote_address="10.0.1.1",remote_port="80",check="tcp"} 1',
        "lvs_backend_healthy 1",
        "# HELP lvs_backend_healthy {",
    ],
    ids=["no-local-address", "bad-value", "bad-proto", "no-labels", "comment"],
)
def test_lines_that_name_no_real_server_are_skipped(line: str) -> None:
    assert parse_probe_metrics([line]) == {}


def test_escaped_label_values_and_config_names() -> None:
    names = Names(services={'we"b': WEB}, real_servers={WEB: {"rs\\1": RS1}})
    line = 'lvs_probe_success{service="we\\"b",real_server="rs\\\\1",check="a\\"b"} 0 1700000000000'
    raw = parse_probe_metrics([line], names)
    assert list(raw) == [(Target(WEB, RS1), 'a"b')]
    assert raw[(Target(WEB, RS1), 'a"b')].success is False


def test_view_states() -> None:
    fetch = lambda _url, _timeout: exposition((WEB, RS1, "tcp", False, 0.01, False, 5.0)).splitlines()
    view = ProbeSource("http://exporter/metrics", 1.0, fetch=fetch, clock=FakeClock()).view(Names())
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

    def __call__(self, _url: str, _timeout: float) -> list[str]:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.took)
        if self.error is not None:
            raise self.error
        return self.text.splitlines()


def test_source_reads_at_most_every_min_age_and_longer_after_a_slow_read() -> None:
    clock = FakeClock()
    fetch = Flaky(exposition((WEB, RS1, "tcp", True, 0.01, True, 0.0)))
    fetch.clock = clock
    source = ProbeSource("http://exporter/metrics", 1.0, fetch=fetch, clock=clock)
    source.view(Names())
    source.view(Names())
    assert fetch.calls == 1
    clock.advance(MIN_AGE)
    fetch.took = 0.5  # a slow exporter (a big table): read again only after SLOW_FACTOR times as long
    source.view(Names())
    assert fetch.calls == 2
    clock.advance(SLOW_FACTOR * 0.5 - 0.1)
    source.view(Names())
    assert fetch.calls == 2
    clock.advance(0.2)
    source.view(Names())
    assert fetch.calls == 3


def test_an_unreachable_exporter_makes_the_state_unknown_then_known_again() -> None:
    clock = FakeClock()
    fetch = Flaky(exposition((WEB, RS1, "tcp", True, 0.01, True, 0.0)))
    source = ProbeSource("http://exporter/metrics", 1.0, fetch=fetch, clock=clock)
    fetch.error = ConnectionRefusedError(111, "Connection refused")
    view = source.view(Names())
    assert (view.state, view.error, view.of(Target(WEB, RS1))) == ("unreachable", "Connection refused", ("unknown", ()))
    clock.advance(MIN_AGE)
    fetch.error = None
    view = source.view(Names())
    assert (view.state, view.of(Target(WEB, RS1))[0]) == ("ok", "healthy")
    clock.advance(MIN_AGE)
    fetch.error = TimeoutError("not read within 1 s")
    assert source.view(Names()).of(Target(WEB, RS1)) == ("unknown", ())
    clock.advance(MIN_AGE)
    fetch.error = http.client.IncompleteRead(b"", 100)  # the exporter died in the middle of its reply
    view = source.view(Names())
    assert view.state == "unreachable" and "IncompleteRead" in view.error


class Exporter(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` with ``status`` on every GET (a stand-in for the exporter's HTTP server)."""

    body = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
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


def test_fetch_lines_keeps_the_probe_lines_over_http(exporter: tuple[str, type[Exporter]]) -> None:
    url, handler = exporter
    handler.body = ("ipvs_up 1\n" + exposition((WEB, RS1, "tcp", True, 0.01, True, 0.0))).encode()
    lines = list(fetch_lines(url, 2.0))
    assert lines and all(line.startswith("lvs_") for line in lines)
    assert parse_probe_metrics(lines)[(Target(WEB, RS1), "tcp")].healthy is True


def test_fetch_lines_refuses_an_error_status(exporter: tuple[str, type[Exporter]]) -> None:
    url, handler = exporter
    handler.status = 500
    view = ProbeSource(url, 2.0).view(Names())
    assert view.state == "unreachable" and "500" in view.error


def test_nothing_listening_is_unknown_with_the_reason() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    view = ProbeSource(f"http://127.0.0.1:{port}/metrics", 1.0).view(Names())
    assert view.state == "unreachable" and view.error == "Connection refused"
