"""Passive verdicts through the probes' publisher into a real actuator (fake kernel), released by an active check.

The detector reads a connection table written by the test, the engine's
check results are recorded by hand (no probe leaves the host), the publisher
posts over HTTP to the actuator app served by waitress: the path of a
verdict is the production one from the table to the kernel's weight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from flask import Flask

from lab.actuator import serving
from lvsguard.actuator.current import current_actions
from lvsguard.actuator.ledger import Ledger, locked_ledger
from lvsguard.actuator.settings import ActuatorSettings, Quorum
from lvsguard.actuator.webhook import parse_payload
from lvsguard.config import loads
from lvsguard.config.passive import PassiveConfig
from lvsguard.exporter.collector import NoNames
from lvsguard.exporter.main import start_passive
from lvsguard.exporter.passive.fusion import CHECK, Fusion, actuator_holds, passive_backends, up_since
from lvsguard.exporter.passive.metrics import PassiveMetrics
from lvsguard.exporter.passive.rule import Judge, Verdict
from lvsguard.exporter.passive.runner import PassiveDetector
from lvsguard.exporter.probes import publish
from lvsguard.exporter.probes.engine import CheckSpec, ProbeEngine, Standing
from lvsguard.exporter.probes.publish import (
    ALERTNAME,
    PASSIVE_ALERTNAME,
    HTTPPublisher,
    Transition,
    alert,
    fingerprint,
    webhook_payload,
)
from lvsguard.exporter.probes.result import ProbeResult
from lvsguard.exporter.probes.tcp import TCPChecker
from lvsguard.labels import PASSIVE_SOURCE
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService
from tests.fakes import FakeKernel, am_alert, am_payload, fake_app, kernel_of, service
from tests.waiting import wait_for

TOKEN = "passive-fusion-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SVC = ServiceKey.parse("TCP 192.0.2.10:80")
RS = [RealServerKey.parse(f"10.0.1.{i}:8080") for i in (2, 3, 4)]
DEAD = RS[0]
HEADER = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
SPEC = CheckSpec("tcp", TCPChecker(), interval=3600.0, rise=2, fall=1)  # results come from the test, never a probe


def conn_line(cport: int, state: str, rs: RealServerKey) -> str:
    a, b, c, d = (int(x) for x in rs.address.split("."))
    return f"TCP C633640A {cport:04X} C000020A 0050 {a:02X}{b:02X}{c:02X}{d:02X} {rs.port:04X} {state:<11} {10:7d}\n"


@dataclass
class Rig:
    """A detector on a written table, an engine with one tcp check a real server, the actuator they publish to."""

    app: Flask
    detector: PassiveDetector
    engine: ProbeEngine
    table: Path
    now: list[float]
    url: str
    port: int = 1000
    verdicts: list[Verdict] = field(default_factory=list)

    def pass_(self, *, dead: bool) -> list[Verdict]:
        """One second of traffic, ten connections a real server, DEAD's refused when ``dead``; then a tick."""
        self.now[0] += 1.0
        rows = []
        for rs in RS:
            state = "CLOSE" if dead and rs == DEAD else "TIME_WAIT"
            rows += [conn_line(self.port + i, state, rs) for i in range(10)]
            self.port += 10
        self.table.write_text(HEADER + "".join(rows))
        return self.detector.tick()

    def kill(self) -> Verdict:
        for _ in range(10):
            if got := self.pass_(dead=True):
                return got[0]
        raise AssertionError("no verdict")

    def check(self, ok: bool, rs: RealServerKey = DEAD) -> None:
        """One result of ``rs``'s tcp check, as the engine's thread records it."""
        self.engine.record(self.engine.jobs[(SVC, rs, "tcp")], ProbeResult(ok, "connected" if ok else "refused"))

    def weight(self, rs: RealServerKey = DEAD) -> int:
        return kernel_of(self.app).weight(SVC, rs)

    def wait_weight(self, expected: int) -> None:
        wait_for(lambda: self.weight() == expected, f"weight {expected} for {DEAD}", timeout=5.0)

    def audit(self) -> list[tuple[str, str, str, str]]:
        ledger = Ledger.open(self.app.config["LVSGUARD_LEDGER"])
        try:
            return [(e.source, e.action, e.result, e.real_server) for e in reversed(ledger.audit_events())]
        finally:
            ledger.close()


def _table() -> Table:
    return Table(
        (VirtualService(SVC, scheduler="wrr", real_servers=tuple(RealServer(rs, 5, Forward.MASQ) for rs in RS)),),
        source="netlink",
    )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with _rig(tmp_path, ActuatorSettings(tokens={"probes": TOKEN}, hold_down=0.0)) as r:
        yield r


@contextmanager
def _rig(tmp_path: Path, settings: ActuatorSettings, *, with_checks: bool = True) -> Iterator[Rig]:
    kernel = FakeKernel([service(str(SVC), *((str(rs), 5) for rs in RS))])
    app = fake_app(settings, kernel, str(tmp_path / "ledger.db"))
    engine = ProbeEngine(lambda s, r: (SPEC,) if with_checks else (), hot_path=False, jitter=lambda: 1.0)
    table = tmp_path / "ip_vs_conn"
    table.write_text(HEADER)
    now = [100.0]
    loop = asyncio.new_event_loop()
    with serving(app) as url:
        publisher = HTTPPublisher(url, token=TOKEN)
        loop.run_until_complete(_sync(engine, _table()))
        detector = PassiveDetector(
            PassiveConfig(enabled=True, holddown_min=5.0),
            None,
            PassiveMetrics(),
            fusion=Fusion(publisher, engine.standing),
            path=str(table),
            clock=lambda: now[0],
        )
        rig = Rig(app, detector, engine, table, now, url)
        detector.on_verdict = rig.verdicts.append
        detector.tick()  # the baseline
        try:
            yield rig
        finally:
            publisher.close()
            loop.run_until_complete(engine.stop())
            loop.close()


async def _sync(engine: ProbeEngine, table: Table) -> None:
    engine.sync(table)  # the checks are due in an hour: nothing is probed


def test_the_alert_of_a_verdict_names_the_real_server_and_the_source() -> None:
    change = Transition(SVC, DEAD, CHECK, False, "real server 10.0.1.2:8080 of TCP 192.0.2.10:80: 4 of 4", "passive")
    one = alert(change, NoNames(), 1_700_000_000.0)
    body = webhook_payload([one])
    assert one["status"] == "firing" and one["endsAt"] == "0001-01-01T00:00:00Z"
    assert one["labels"] == {
        "alertname": PASSIVE_ALERTNAME,
        "lvsguard_source": "passive",
        "lvsguard_action": "quarantine",
        "check": "passive",
        "local_address": "192.0.2.10",
        "local_port": "80",
        "remote_address": "10.0.1.2",
        "remote_port": "8080",
        "proto": "TCP",
    }
    assert one["annotations"]["summary"].startswith("passive verdict on real server 10.0.1.2:8080")
    assert body["commonLabels"] == {"alertname": PASSIVE_ALERTNAME}
    # its own hold: not the hold of a check that happens to be named "passive"
    assert one["fingerprint"] == fingerprint(SVC, DEAD, CHECK, "passive") != fingerprint(SVC, DEAD, CHECK)
    (parsed,) = parse_payload(body).alerts  # the actuator's own validator takes it
    assert parsed.labels["lvsguard_source"] == "passive"
    probe = alert(Transition(SVC, DEAD, "tcp", False, "refused"), NoNames(), 0.0)
    assert probe["labels"]["alertname"] == ALERTNAME and "lvsguard_source" not in probe["labels"]


def test_a_verdict_quarantines_through_the_actuator_as_source_passive(rig: Rig) -> None:
    for _ in range(3):
        rig.pass_(dead=False)
    verdict = rig.kill()
    assert verdict.real_server == DEAD
    rig.wait_weight(0)
    assert ("passive", "quarantine", "applied", str(DEAD)) in rig.audit()
    text = rig.app.test_client().get("/metrics").get_data(as_text=True)
    assert 'lvsguard_actions_total{action="quarantine",result="applied",source="passive"} 1.0' in text
    with rig.app.app_context():
        ledger = Ledger.open(rig.app.config["LVSGUARD_LEDGER"])
        (hold,) = ledger.active_holds()
        assert (hold.kind, hold.source, hold.alertname) == ("alert", "passive", PASSIVE_ALERTNAME)
        assert hold.holder == fingerprint(SVC, DEAD, CHECK, "passive")


def test_the_active_check_brings_it_back_only_after_the_holddown(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(5):
        rig.check(True)  # passes before the verdict are no evidence
    rig.pass_(dead=False)
    verdict = rig.kill()
    rig.wait_weight(0)
    assert verdict.holddown == 5.0
    rig.check(True)
    rig.check(True)  # rise 2: up, but the hold-down runs
    for _ in range(3):
        rig.now[0] += 1.0
        rig.detector.tick()
    time.sleep(0.3)
    assert rig.weight() == 0 and rig.detector.fusion is not None and rig.detector.fusion.out
    rig.now[0] = verdict.at + verdict.holddown
    with caplog.at_level(logging.INFO, logger="lvsguard.exporter.passive"):
        rig.detector.tick()
    rig.wait_weight(5)
    assert "passive_released" in caplog.text and 'reason="tcp up"' in caplog.text
    assert ("passive", "restore", "applied", str(DEAD)) in rig.audit()


def test_no_release_while_the_check_is_down_or_not_yet_risen(rig: Rig) -> None:
    for _ in range(5):
        rig.check(True)
    rig.pass_(dead=False)
    verdict = rig.kill()
    rig.wait_weight(0)
    rig.now[0] = verdict.at + 60.0  # the hold-down is long over
    rig.detector.tick()
    rig.check(False)  # the check sees it down: unhealthy (fall 1)
    rig.detector.tick()
    rig.check(True)  # one pass of rise 2
    rig.detector.tick()
    time.sleep(0.3)
    assert rig.weight() == 0
    rig.check(True)
    rig.detector.tick()
    rig.wait_weight(5)


def test_a_verdict_soon_after_the_release_holds_twice_as_long(rig: Rig) -> None:
    """The doubling counts from the release the active check made, not from the end of the hold-down."""
    rig.pass_(dead=False)
    first = rig.kill()
    rig.now[0] = first.at + 30.0  # the check took its time to see it up
    rig.check(True)
    rig.check(True)
    rig.detector.tick()
    rig.wait_weight(5)
    second = rig.kill()  # dead again within one hold-down of its return
    assert second.holddown == 2 * first.holddown
    rig.wait_weight(0)


def test_a_restarted_exporter_finds_its_holds_and_releases_them(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.pass_(dead=False)
    rig.kill()
    rig.wait_weight(0)
    publisher = HTTPPublisher(rig.url, token=TOKEN)  # the new process: nothing in memory
    fusion = Fusion(publisher, rig.engine.standing, holds=actuator_holds(rig.url, TOKEN))
    try:
        with caplog.at_level(logging.INFO, logger="lvsguard.exporter.passive"):
            assert fusion.poll(rig.detector.judge, rig.now[0] + 60.0) == []  # found, but no check passed yet
            assert list(fusion.out) == [(SVC, DEAD)] and "passive_holds_found count=1" in caplog.text
            rig.check(True)
            rig.check(True)
            assert fusion.poll(rig.detector.judge, rig.now[0] + 61.0) == [(SVC, DEAD)]
        rig.wait_weight(5)
    finally:
        publisher.close()


def test_an_actuator_out_of_reach_is_asked_again_later(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []

    def holds() -> list[tuple[ServiceKey, RealServerKey]]:
        calls.append(0.0)
        if len(calls) == 1:
            raise OSError("connection refused")
        return []

    fusion = Fusion(_NoPublisher(), lambda backends: {}, holds=holds)
    judge = Judge()
    with caplog.at_level(logging.WARNING, logger="lvsguard.exporter.passive"):
        fusion.poll(judge, 0.0)
        fusion.poll(judge, 10.0)
        fusion.poll(judge, 31.0)
        fusion.poll(judge, 90.0)
    assert len(calls) == 2 and caplog.text.count("passive_holds_unread") == 1


class _NoPublisher:
    def transition(self, change: Transition) -> None:
        raise AssertionError(change)

    def weight(self, change: object) -> None:
        raise AssertionError(change)

    def close(self) -> None:
        pass


def test_without_an_active_check_a_verdict_is_only_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _rig(tmp_path, ActuatorSettings(tokens={"probes": TOKEN}, hold_down=0.0), with_checks=False) as r:
        r.pass_(dead=False)
        with caplog.at_level(logging.WARNING, logger="lvsguard.exporter.passive"):
            verdict = r.kill()
        time.sleep(0.3)
        assert verdict.real_server == DEAD and r.weight() == 5 and r.audit() == []
    assert "passive_not_acted" in caplog.text and "no active check" in caplog.text


def test_a_quarantine_the_quorum_refuses_waits_and_is_retried(tmp_path: Path) -> None:
    """min_healthy 2 of 3 with one real server out already: the verdict's hold waits until the quorum allows it."""
    settings = ActuatorSettings(tokens={"probes": TOKEN}, hold_down=0.0, min_healthy=Quorum(2))
    with _rig(tmp_path, settings) as r:
        api = r.app.test_client()
        other = {"service": str(SVC), "real_server": str(RS[1])}
        assert api.post("/api/v1/quarantine", json=other, headers=AUTH).get_json()["result"] == "applied"
        r.pass_(dead=False)
        r.kill()
        wait_for(lambda: ("passive", "quarantine", "refused", str(DEAD)) in r.audit(), "a refusal", timeout=5.0)
        assert r.weight() == 5
        text = api.get("/metrics").get_data(as_text=True)
        assert 'lvsguard_actions_total{action="quarantine",result="refused",source="passive"} 1.0' in text
        assert 'lvsguard_refusals_total{action="quarantine",reason="quorum"} 1.0' in text
        with r.app.app_context():
            assert [o.result for o in current_actions().retry_pending(locked_ledger)] == ["refused"]
        assert api.post("/api/v1/restore", json=other, headers=AUTH).get_json()["result"] == "applied"
        with r.app.app_context():
            assert [o.result for o in current_actions().retry_pending(locked_ledger)] == ["applied"]
        assert r.weight() == 0
        assert [a for a in r.audit() if a[0] == "passive"] == [
            ("passive", "quarantine", "refused", str(DEAD)),  # once: the retry's refusal is not audited again
            ("passive", "quarantine", "applied", str(DEAD)),
        ]


def test_the_webhook_refuses_a_source_it_does_not_know(rig: Rig) -> None:
    payload = am_payload(am_alert("x1", real_server=str(DEAD), lvsguard_action="quarantine", lvsguard_source="cron"))
    r = rig.app.test_client().post("/webhook/alertmanager", json=payload, headers=AUTH)
    (result,) = r.get_json()["results"]
    assert result["result"] == "ignored" and "lvsguard_source='cron'" in result["message"]
    assert rig.weight() == 5


@pytest.mark.parametrize(
    ("standing", "then", "up"),
    [
        (Standing("tcp", True, 10, 10, 2), 8, True),
        (Standing("tcp", True, 10, 10, 2), 9, False),  # one result since the verdict, rise 2
        (Standing("tcp", True, 10, 1, 2), 0, False),  # passed once in a row
        (Standing("tcp", False, 10, 1, 2), 0, False),
        (Standing("tcp", True, 3, 3, 2), 0, True),
    ],
)
def test_up_since(standing: Standing, then: int, up: bool) -> None:
    assert up_since(standing, then) is up


def test_the_exporter_without_publishing_probes_only_reports(caplog: pytest.LogCaptureFixture) -> None:
    config = loads("passive: {enabled: true}\nprobes: {enabled: false}\n")
    with caplog.at_level(logging.WARNING, logger="lvsguard.exporter.main"):
        detector = start_passive(config, None, None)
    assert detector is not None
    try:
        assert detector.fusion is None
        assert "passive_report_only" in caplog.text and "no probes run" in caplog.text
    finally:
        detector.stop()


def test_a_restarted_exporter_finds_its_holds_shared_through_the_cluster_too() -> None:
    """``cluster.share: [passive]``: the actuator's ledger has the hold as a cluster mirror, found all the same."""
    fp = fingerprint(SVC, DEAD, CHECK, PASSIVE_SOURCE)
    other = fingerprint(SVC, RS[1], CHECK, "")

    def hold(source: str, holder: str, real_server: RealServerKey = DEAD, state: str = "active") -> dict[str, str]:
        return {
            "source": source,
            "holder": holder,
            "service": str(SVC),
            "real_server": str(real_server),
            "state": state,
        }

    holds = [
        hold("passive", fp),
        hold("cluster", f"passive IPVSBackendPassiveDown/{fp}", RS[1]),  # a fingerprint of another real server
        hold("cluster", f"passive IPVSBackendPassiveDown/{fp}"),
        hold("cluster", f"alertmanager IPVSBackendDown/{other}", RS[1]),
        hold("cluster", f"dir1/api alice/{fp}"),
        hold("passive", fp, state="released"),
    ]
    assert passive_backends(holds) == [(SVC, DEAD)]


class _Receiver:
    """An HTTP receiver that holds every probe alert until ``release``; records what arrived, in order."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.arrived: list[str] = []
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name = body["alerts"][0]["labels"]["alertname"]
                receiver.arrived.append(name)
                if name == ALERTNAME:
                    receiver.release.wait(20.0)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_verdict_does_not_wait_behind_a_probe_post_the_actuator_is_slow_to_answer() -> None:
    """The verdict has its own sender: a probe's post (or its retries) in flight does not hold it back."""
    receiver = _Receiver()
    loop = asyncio.new_event_loop()
    engine = ProbeEngine(lambda s, r: (SPEC,), hot_path=False, jitter=lambda: 1.0)
    loop.run_until_complete(_sync(engine, _table()))
    config = loads(f"passive: {{enabled: true}}\nprobes:\n  publish: {{mode: actuator, url: '{receiver.url}'}}\n")
    probes = SimpleNamespace(publisher=HTTPPublisher(receiver.url), engine=engine)
    detector = start_passive(config, None, probes)  # type: ignore[arg-type]  # the runner's two parts it uses
    assert detector is not None and detector.fusion is not None
    try:
        probes.publisher.transition(Transition(SVC, RS[1], "tcp", False, "refused"))
        wait_for(lambda: receiver.arrived == [ALERTNAME], "the probe's post at the receiver", timeout=10.0)
        verdict = Verdict(SVC, DEAD, "refused", 1, 1, 1.0, 0.0, 5.0, 0.0)
        assert detector.fusion.verdict(verdict)
        wait_for(
            lambda: PASSIVE_ALERTNAME in receiver.arrived,
            "the verdict's post while the probe's is unanswered",
            timeout=10.0,
        )
    finally:
        receiver.release.set()
        detector.stop()
        probes.publisher.close()
        receiver.close()
        loop.run_until_complete(engine.stop())
        loop.close()


def test_the_verdicts_publisher_keeps_a_connection_open_to_the_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Open before the first verdict, and again when the receiver closes it while idle (waitress: after 15 s).

    A verdict then goes out on an open connection, not after a TCP handshake
    and the actuator's accept: verdicts come minutes apart, far beyond any
    receiver's idle timeout.
    """
    monkeypatch.setattr(publish, "KEEP_WARM", 0.1)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10.0)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    loop = asyncio.new_event_loop()
    engine = ProbeEngine(lambda s, r: (SPEC,), hot_path=False, jitter=lambda: 1.0)
    loop.run_until_complete(_sync(engine, _table()))
    config = loads(f"passive: {{enabled: true}}\nprobes:\n  publish: {{mode: alertmanager, url: '{url}'}}\n")
    probes = SimpleNamespace(publisher=HTTPPublisher(url, mode="alertmanager"), engine=engine)
    detector = start_passive(config, None, probes)  # type: ignore[arg-type]  # the runner's two parts it uses
    try:
        first, _ = listener.accept()  # with no verdict to send
        first.close()  # the receiver's idle timeout
        second, _ = listener.accept()  # opened again, still with nothing to send
        second.close()
    finally:
        listener.close()
        if detector is not None:
            detector.stop()
        probes.publisher.close()
        loop.run_until_complete(engine.stop())
        loop.close()
