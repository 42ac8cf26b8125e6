"""Rise/fall, damping, the engine following a table, the probe metrics and the publisher's payloads."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lvsguard.actuator.webhook import parse_payload
from lvsguard.exporter.probes.engine import CheckSpec, Damping, ProbeEngine, default_plan
from lvsguard.exporter.probes.metrics import ProbeMetrics
from lvsguard.exporter.probes.publish import HTTPPublisher, Transition, WeightChange, fingerprint
from lvsguard.exporter.probes.result import ProbeResult, Target
from lvsguard.exporter.probes.state import Damper, Health, weight_of
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService
from tests.exposition_oracle import fast_and_slow

SVC = ServiceKey.parse("TCP 192.0.2.10:80")


def rs(address: str, port: int, weight: int = 3) -> RealServer:
    return RealServer(RealServerKey.parse(f"{address}:{port}"), weight=weight, forward=Forward.MASQ)


def table(*servers: RealServer) -> Table:
    return Table((VirtualService(SVC, scheduler="wrr", real_servers=servers),), source="netlink")


def test_health_rise_and_fall() -> None:
    h = Health(rise=2, fall=3)
    assert [h.update(ok, t) for t, ok in enumerate([False, False, True, False, False, False, True, True], 1)] == [
        False,
        False,
        False,
        False,
        False,
        True,
        False,
        True,
    ]
    assert (h.healthy, h.changes, h.changed_at) == (True, 2, 8)


def test_damper_step_interval_and_edges() -> None:
    d = Damper(min_step=2, min_interval=10)
    assert d.offer(10, 0) == 10
    assert d.offer(9, 20) is None  # step too small
    assert d.offer(6, 5) is None  # too soon
    assert d.offer(6, 11) == 6
    assert d.offer(0, 12) == 0  # drain goes through at once
    assert d.offer(10, 13) == 10  # and so does coming back
    assert d.offer(10, 30) is None


def test_weight_of() -> None:
    assert (weight_of(10, 50), weight_of(3, 1), weight_of(3, 0), weight_of(4, 100)) == (5, 1, 0, 4)


def test_a_huge_percentage_is_the_largest_weight_the_actuator_takes() -> None:
    """Found by fuzzing agent replies: 1e300 % was a 300-digit weight the actuator refuses with a 400."""
    assert (weight_of(10, 1e300), weight_of(65535, 200), weight_of(1, 6553500)) == (65535, 65535, 65535)


class Scripted:
    """A checker that answers from a list (pure engine logic: no network)."""

    kind = "scripted"

    def __init__(self, results: list[ProbeResult]):
        self.results = results

    async def check(self, target: Target) -> ProbeResult:
        return self.results.pop(0) if self.results else ProbeResult(True, "ok")


class Recorder:
    def __init__(self) -> None:
        self.events: list[Transition | WeightChange] = []

    def transition(self, change: Transition) -> None:
        self.events.append(change)

    def weight(self, change: WeightChange) -> None:
        self.events.append(change)

    def close(self) -> None:
        pass


def test_engine_records_transitions_and_damped_weights() -> None:
    recorder = Recorder()
    spec = CheckSpec("agent", Scripted([]), rise=1, fall=2)
    engine = ProbeEngine(lambda s, r: (spec,), publisher=recorder, damping=Damping(min_step=1, min_interval=0))

    async def body() -> None:
        engine.sync(table(rs("10.0.1.1", 8080, weight=4)))
        job = next(iter(engine.jobs.values()))
        for result in [
            ProbeResult(True, "up", weight_percent=50),
            ProbeResult(False, "down"),
            ProbeResult(False, "down"),
            ProbeResult(True, "up 100%", weight_percent=100),
        ]:
            engine.record(job, result)
        await engine.stop()

    asyncio.run(body())
    kinds = [(type(e).__name__, getattr(e, "healthy", getattr(e, "weight", None))) for e in recorder.events]
    assert kinds == [("WeightChange", 2), ("Transition", False), ("Transition", True), ("WeightChange", 4)]


def test_engine_follows_the_table_with_tcp_checks_on_real_ports() -> None:
    """Real listeners on 127.0.0.1: one up, one closed; the set follows the table."""

    async def body() -> dict[str, Any]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        up_port = server.sockets[0].getsockname()[1]
        probe = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        down_port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        metrics = ProbeMetrics()
        fast = lambda s, r: tuple(
            CheckSpec(c.name, c.checker, interval=0.05, timeout=0.5, rise=1, fall=1) for c in default_plan(s, r)
        )
        engine = ProbeEngine(fast, metrics=metrics, publisher=Recorder())
        engine.sync(table(rs("127.0.0.1", up_port), rs("127.0.0.1", down_port), rs("127.0.0.1", 0)))
        assert len(engine.jobs) == 2  # port 0 gets no tcp check
        for _ in range(100):
            await asyncio.sleep(0.02)
            if all(j.last is not None for j in engine.jobs.values()) and engine.stats.probes >= 6:
                break
        state = {str(k[1]): j.health.healthy for k, j in engine.jobs.items()}
        text = "".join(metrics.chunks())
        engine.sync(table(rs("127.0.0.1", up_port)))
        remaining = len(engine.jobs)
        after = "".join(metrics.chunks())
        await engine.stop()
        server.close()
        return {"state": state, "text": text, "remaining": remaining, "after": after, "up": up_port, "down": down_port}

    out = asyncio.run(body())
    assert out["state"] == {f"127.0.0.1:{out['up']}": True, f"127.0.0.1:{out['down']}": False}
    samples = {
        (s.name, s.labels["remote_port"]): s.value
        for f in text_string_to_metric_families(out["text"])
        for s in f.samples
        if s.name in ("lvs_backend_healthy", "lvs_probe_success", "lvs_backend_health_changes_total")
    }
    assert (
        samples[("lvs_backend_healthy", str(out["up"]))] == 1
        and samples[("lvs_backend_healthy", str(out["down"]))] == 0
    )
    assert samples[("lvs_backend_health_changes_total", str(out["down"]))] == 1
    assert out["remaining"] == 1 and str(out["down"]) not in out["after"]


def test_metrics_fast_path_equals_registry_path() -> None:
    metrics = ProbeMetrics()
    key = (SVC, RealServerKey.parse("10.0.1.2:8080"), "http")
    metrics.add(key)
    health = Health(1, 1)
    health.update(False, 1700000000.5)
    metrics.observe(key, ProbeResult(False, "503", 0.003, "UnexpectedStatus"), health)
    metrics.observe(key, ProbeResult(False, "503", 0.2), health)

    fast, slow = fast_and_slow(metrics)
    assert fast == slow
    labels = dict(next(k for k in fast if k[0] == "lvs_backend_healthy")[1])
    assert labels["remote_address"] == "10.0.1.2" and labels["check"] == "http" and labels["local_port"] == "80"
    assert (
        fast[
            ("lvs_probe_duration_seconds_count", next(k for k in fast if k[0] == "lvs_probe_duration_seconds_count")[1])
        ]
        == 2
    )
    assert [v for k, v in fast.items() if k[0] == "lvs_backend_health_last_change_timestamp_seconds"] == [1700000000.5]


class _Sink(BaseHTTPRequestHandler):
    posts: list[tuple[str, dict[str, str], Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).posts.append((self.path, dict(self.headers), body))
        reply = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[str]:
    _Sink.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def wait_posts(n: int) -> list[tuple[str, dict[str, str], Any]]:
    for _ in range(200):
        if len(_Sink.posts) >= n:
            break
        time.sleep(0.01)
    return _Sink.posts


def test_actuator_publisher_posts_valid_webhook_payloads_and_weights(sink: str) -> None:
    key = RealServerKey.parse("10.0.1.2:8080")
    publisher = HTTPPublisher(sink, token="secret-token-0123456789")
    publisher.transition(Transition(SVC, key, "http", False, "503"))
    publisher.transition(Transition(SVC, key, "http", True, "200"))
    publisher.weight(WeightChange(SVC, key, "agent", 2, "up 50%"))
    posts = wait_posts(3)
    publisher.close()
    assert [p[0] for p in posts] == ["/webhook/alertmanager", "/webhook/alertmanager", "/api/v1/weight"]
    assert posts[0][1]["Authorization"] == "Bearer secret-token-0123456789"
    firing, resolved = (parse_payload(p[2]).alerts[0] for p in posts[:2])  # the actuator's own validator accepts them
    assert (firing.status, resolved.status) == ("firing", "resolved")
    assert firing.fingerprint == resolved.fingerprint == fingerprint(SVC, key, "http")
    assert firing.labels["lvsguard_action"] == "quarantine" and firing.labels["remote_address"] == "10.0.1.2"
    assert posts[2][2] == {"service": "TCP 192.0.2.10:80", "real_server": "10.0.1.2:8080", "weight": 2}


def test_alertmanager_publisher_posts_v2_alerts(sink: str) -> None:
    publisher = HTTPPublisher(sink, mode="alertmanager")
    publisher.transition(Transition(SVC, RealServerKey.parse("10.0.1.3:8080"), "tcp", False, "refused"))
    posts = wait_posts(1)
    publisher.close()
    path, _, body = posts[0]
    assert (
        path == "/api/v2/alerts"
        and isinstance(body, list)
        and set(body[0]) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    )
    assert body[0]["labels"]["check"] == "tcp"


def test_alertmanager_publisher_resends_firing_alerts_until_resolved(sink: str) -> None:
    key = RealServerKey.parse("10.0.1.3:8080")
    publisher = HTTPPublisher(sink, mode="alertmanager")
    publisher.resend = 0.2
    publisher.transition(Transition(SVC, key, "tcp", False, "refused"))
    posts = wait_posts(3)  # the transition, then resends
    publisher.transition(Transition(SVC, key, "tcp", True, "connected"))
    time.sleep(0.5)
    count = len(_Sink.posts)
    time.sleep(0.5)
    publisher.close()
    assert all(p[2][0]["labels"]["remote_address"] == "10.0.1.3" for p in posts[:3])
    assert posts[1][2][0]["endsAt"] > posts[0][2][0]["startsAt"]  # each resend pushes endsAt ahead
    assert len(_Sink.posts) == count  # resolved: no more resends
