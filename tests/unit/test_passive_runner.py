"""The detector's tick: read, judge, count, log and hand each verdict on; a table it cannot read pauses it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from lvsguard.config.passive import PassiveConfig
from lvsguard.errors import KernelError
from lvsguard.exporter.passive.metrics import PassiveMetrics
from lvsguard.exporter.passive.rule import Verdict
from lvsguard.exporter.passive.runner import PassiveDetector
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, VirtualService
from tests.fakes import FakeKernel

HEADER = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"


def line(cport: int, state: str, dest: str) -> str:
    return f"TCP C633640A {cport:04X} C000020A 0050 {dest} 1F90 {state:<11} {10:7d}\n"


def test_a_refused_real_server_is_handed_on_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = tmp_path / "ip_vs_conn"
    table.write_text(HEADER)
    now = [0.0]
    got: list[Verdict] = []
    detector = PassiveDetector(
        PassiveConfig(enabled=True),
        None,
        PassiveMetrics(),
        on_verdict=got.append,
        path=str(table),
        clock=lambda: now[0],
    )
    detector.tick()  # the baseline
    port = 1000
    for _ in range(5):
        now[0] += 1.0
        rows = []
        for dest, state in (("0A000102", "CLOSE"), ("0A000103", "TIME_WAIT"), ("0A000104", "TIME_WAIT")):
            rows += [line(port + i, state, dest) for i in range(10)]
            port += 10
        table.write_text(HEADER + "".join(rows))
        with caplog.at_level(logging.WARNING, logger="lvsguard.exporter.passive"):
            detector.tick()
    assert [v.real_server for v in got] == [RealServerKey.parse("10.0.1.2:8080")]
    assert "passive_verdict" in caplog.text and "real_server=10.0.1.2:8080" in caplog.text


def test_a_missing_table_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    detector = PassiveDetector(PassiveConfig(enabled=True), None, PassiveMetrics(), path=str(tmp_path / "none"))
    with caplog.at_level(logging.INFO, logger="lvsguard.exporter.passive"):
        assert detector.tick() == [] and detector.tick() == []
        (tmp_path / "none").write_text(HEADER)
        detector.tick()
    assert caplog.text.count("passive_paused") == 1 and "passive_resumed" in caplog.text


def test_conntrack_events_are_judged_as_they_come(caplog: pytest.LogCaptureFixture) -> None:
    """``source: conntrack``: answered handshakes on two peers, then one refusal: a verdict on it at the next tick."""
    import socket

    from lvsguard.exporter.passive.ctevents import ConntrackEvents
    from tests.unit.test_passive_ctevents import messages

    recorded = messages()  # 0/1: rs1 NEW, refused; 4/5: rs2 NEW, answered; 12/13: rs3 NEW, answered
    now = [0.0]
    got: list[Verdict] = []
    config = PassiveConfig(enabled=True, source="conntrack", min_failures=1, min_passes=1, chance=0.05)
    detector = PassiveDetector(config, None, PassiveMetrics(), on_verdict=got.append, clock=lambda: now[0])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    detector.events = ConntrackEvents(ours, clock=lambda: now[0])
    try:
        for _ in range(30):  # 30 s of two clean peers: their window is full
            now[0] += 1.0
            for i in (4, 5, 12, 13):
                theirs.send(recorded[i])
            assert detector.tick() == []
        theirs.send(recorded[0])
        theirs.send(recorded[1])
        with caplog.at_level(logging.WARNING, logger="lvsguard.exporter.passive"):
            detector.tick()
    finally:
        ours.close()
        theirs.close()
    assert [(v.real_server, v.reason, v.failures) for v in got] == [
        (RealServerKey.parse("10.0.1.2:8080"), "refused", 1)
    ]
    assert "passive_verdict" in caplog.text


def _rs1_refusing(
    tmp_path: Path, weights: FakeKernel, start: float
) -> tuple[Callable[[float], list[Verdict]], list[Verdict]]:
    """A detector on a table file, after its baseline pass; a function that writes one pass and ticks at a time.

    Each pass holds rs1's ten refusals and its peers' twenty clean connections;
    the function answers the verdicts of that tick, the list gathers them all.
    """
    table = tmp_path / "ip_vs_conn"
    table.write_text(HEADER)
    now = [start]
    got: list[Verdict] = []
    detector = PassiveDetector(
        PassiveConfig(enabled=True, handshake_timeout=2.0),
        None,
        PassiveMetrics(),
        on_verdict=got.append,
        path=str(table),
        clock=lambda: now[0],
        weights=weights,
    )
    detector.tick()  # the baseline
    port = [1000]

    def one_pass(at: float) -> list[Verdict]:
        now[0] = at
        rows = []
        for dest, state in (("0A000102", "CLOSE"), ("0A000103", "TIME_WAIT"), ("0A000104", "TIME_WAIT")):
            rows += [line(port[0] + i, state, dest) for i in range(10)]
            port[0] += 10
        table.write_text(HEADER + "".join(rows))
        return list(detector.tick())

    return one_pass, got


def _refusals_to_rs1(tmp_path: Path, weights: FakeKernel, seconds: int, start: float) -> list[Verdict]:
    """``seconds`` of passes, each with rs1's ten refusals and its peers' twenty clean connections; the verdicts."""
    one_pass, got = _rs1_refusing(tmp_path, weights, start)
    for second in range(1, seconds + 1):
        one_pass(start + second)
    return got


SERVICE = VirtualService(
    ServiceKey.parse("TCP 192.0.2.10:80"),
    "wrr",
    real_servers=tuple(RealServer(RealServerKey.parse(f"10.0.1.{i}:8080"), 1, Forward.MASQ) for i in (2, 3, 4)),
)
RS1 = RealServerKey.parse("10.0.1.2:8080")


def test_a_real_server_at_weight_0_is_not_judged(tmp_path: Path) -> None:
    """Out by someone else's hand, its failures are what it had before: a flood's timeouts, not its own."""
    kernel = FakeKernel([SERVICE])
    kernel.set_weight(SERVICE.key, RS1, 0)
    assert _refusals_to_rs1(tmp_path, kernel, 10, 0.0) == []
    assert {v.real_server for v in _refusals_to_rs1(tmp_path, FakeKernel([SERVICE]), 10, 0.0)} == {RS1}


def test_a_real_server_back_at_a_weight_is_judged_after_one_handshake_timeout(tmp_path: Path) -> None:
    """Back, its handshakes succeed at once and a flood's fail a handshake timeout later: not compared before."""
    kernel = FakeKernel([SERVICE])
    kernel.set_weight(SERVICE.key, RS1, 0)
    one_pass, got = _rs1_refusing(tmp_path, kernel, 0.0)
    times = []
    for second in range(1, 8):
        if second == 2:
            kernel.set_weight(SERVICE.key, RS1, 1)
        times += [float(second) for _ in one_pass(float(second))]
    assert [v.real_server for v in got] == [RS1]
    assert times[0] >= 2.0 + 2.0 + 1.0  # back at 2 s, settled at 4 s, then two failing passes


def test_weights_that_cannot_be_read_leave_every_real_server_judged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = FakeKernel([SERVICE])
    kernel.fail_reads = KernelError("IPVS is not there")
    with caplog.at_level(logging.WARNING, logger="lvsguard.exporter.passive"):
        assert {v.real_server for v in _refusals_to_rs1(tmp_path, kernel, 10, 0.0)} == {RS1}
    assert caplog.text.count("passive_weights_unread") == 1
