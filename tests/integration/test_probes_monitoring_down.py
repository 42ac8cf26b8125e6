"""Prometheus and Alertmanager die while the probes run: checks go on, the fast path still acts, the prometheus check holds.

Host-side, no kernel: real node_exporter, Prometheus and Alertmanager
processes, the real actuator (Flask app over waitress, real SQLite ledger) on
the in-memory table of ``tests/fakes.py``, and the real probe engine with the
real HTTP publishers. Two real servers: A is a TCP listener with a tcp check
published on the fast path (straight to the actuator, no Prometheus or
Alertmanager on the way); B is node_exporter, whose weight comes from a
prometheus check (``up * 50``: 50 %). A second engine publishes A's health to
Alertmanager. Then Prometheus and Alertmanager are killed (SIGKILL):

- the checks keep running (both engines' probe counts go on rising);
- B's prometheus check holds its last answer (healthy, no new weight: the
  weight 5 stays), says so in its result and logs ``prometheus_unreachable``;
- A's listener closes: the tcp check fails and the actuator quarantines A
  (weight 0 in the table) through the fast path;
- the Alertmanager publisher fails its posts (logged) without stopping its engine.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from lab.actuator import serving
from lab.monitoring import alertmanager_server, prometheus_config, prometheus_server, running_node_exporter
from lab.polling import poll as lab_poll
from lvsguard.actuator.app import create_app
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.exporter.probes.engine import CheckSpec, Damping, ProbeEngine
from lvsguard.exporter.probes.prometheus import UNREACHABLE, PrometheusChecker
from lvsguard.exporter.probes.publish import HTTPPublisher
from lvsguard.exporter.probes.tcp import TCPChecker
from lvsguard.model import RealServerKey, ServiceKey
from tests.fakes import FakeKernel, service
from tests.integration.test_probes_prometheus import scraped

TOKEN = "probes-0123456789abcdef"
WAIT = 60.0
SERVICE = ServiceKey.parse("TCP 192.0.2.10:80")


def poll(what: str, condition: Callable[[], Any], timeout: float = WAIT) -> Any:
    """The first true value of ``condition()``, polled every 0.1 s."""
    return lab_poll(what, condition, bool, timeout, interval=0.1)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def monitoring(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """node_exporter, Prometheus scraping it every second, and Alertmanager; all ready."""
    with ExitStack() as stack:
        node = stack.enter_context(running_node_exporter(tmp_path / "node"))
        prometheus = stack.enter_context(
            prometheus_server(tmp_path / "prometheus", prometheus_config({"node": [node]}, rule_files=()))
        )
        alertmanager = stack.enter_context(
            alertmanager_server(
                tmp_path / "alertmanager", {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}
            )
        )
        scraped(prometheus.url, node)
        yield {
            "node_port": int(node.rsplit(":", 1)[1]),
            "prometheus": prometheus.process,
            "prometheus_url": prometheus.url,
            "alertmanager": alertmanager.process,
            "alertmanager_url": alertmanager.url,
        }


@pytest.fixture
def actuator(tmp_path: Path, monitoring: dict[str, Any]) -> Iterator[tuple[str, FakeKernel, socket.socket]]:
    """(URL, table, A's listener): the real actuator over waitress, on a table with A (a TCP listener) and B (node_exporter)."""
    listener = socket.create_server(("127.0.0.1", 0))
    a_port = listener.getsockname()[1]
    kernel = FakeKernel(
        [service(str(SERVICE), (f"127.0.0.1:{a_port}", 10), (f"127.0.0.1:{monitoring['node_port']}", 10))]
    )
    settings = ActuatorSettings(tokens={"probes": TOKEN}, hold_down=0.0, min_healthy=ActuatorSettings().min_healthy)
    app = create_app(settings, kernel=kernel, ledger_path=str(tmp_path / "ledger.db"))
    state = app.extensions["lvsguard"]
    state.runner.begin()
    try:
        with serving(app) as url:
            yield url, kernel, listener
    finally:
        state.runner.stop()
        listener.close()


def weight(kernel: FakeKernel, address: str) -> int:
    key = RealServerKey.parse(address)
    return next(rs.weight for rs in kernel.read_service(SERVICE).real_servers if rs.key == key)


def test_probes_and_the_fast_path_outlive_prometheus_and_alertmanager(
    monitoring: dict[str, Any], actuator: tuple[str, FakeKernel, socket.socket]
) -> None:
    url, kernel, listener = actuator
    a = f"127.0.0.1:{listener.getsockname()[1]}"
    b = f"127.0.0.1:{monitoring['node_port']}"
    tcp = CheckSpec("tcp", TCPChecker(), interval=0.2, timeout=1.0, rise=1, fall=1)
    load = CheckSpec(
        "prometheus",
        PrometheusChecker(monitoring["prometheus_url"], 'up{instance="{address}:{port}"} * 50'),
        interval=0.2,
        timeout=1.0,
        rise=1,
        fall=1,
    )
    fast = ProbeEngine(
        lambda s, r: (tcp,) if str(r) == a else (load,),
        publisher=HTTPPublisher(url, mode="actuator", token=TOKEN),
        damping=Damping(1, 0.0),
    )
    via_alertmanager = ProbeEngine(
        lambda s, r: (tcp,) if str(r) == a else (),
        publisher=HTTPPublisher(monitoring["alertmanager_url"], mode="alertmanager"),
    )
    records = Records()
    logging.getLogger().addHandler(records)
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()

    async def run() -> None:
        fast.sync(kernel.read())
        via_alertmanager.sync(kernel.read())
        await stopping.wait()
        await fast.stop()
        await via_alertmanager.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        job_b = poll(
            "B's prometheus check is running", lambda: next((j for k, j in fast.jobs.items() if str(k[1]) == b), None)
        )
        poll("B's weight 50 % (5 of 10) from Prometheus, set through the actuator", lambda: weight(kernel, b) == 5)

        monitoring["prometheus"].send_signal(signal.SIGKILL)
        monitoring["alertmanager"].send_signal(signal.SIGKILL)
        monitoring["prometheus"].wait()
        monitoring["alertmanager"].wait()
        writes_before = len(kernel.writes)
        probes = (fast.stats.probes, via_alertmanager.stats.probes)

        held = poll(
            "B's check holds",
            lambda: job_b.last if job_b.last is not None and job_b.last.error == UNREACHABLE else None,
        )
        assert held.ok and held.weight_percent is None, held
        assert "holding the last answer" in held.message and monitoring["prometheus_url"] in held.message
        assert job_b.health.healthy
        poll(
            "prometheus_unreachable is logged", lambda: any("prometheus_unreachable" in line for line in records.lines)
        )

        listener.close()  # A stops answering: the fast path must still act
        poll("A quarantined through the actuator (weight 0)", lambda: weight(kernel, a) == 0)
        poll(
            "the Alertmanager publisher's failures are logged",
            lambda: any("probe_publish_failed" in line and "/api/v2/alerts" in line for line in records.lines),
        )
        poll(
            "both engines keep checking",
            lambda: fast.stats.probes > probes[0] + 20 and via_alertmanager.stats.probes > probes[1] + 10,
        )

        assert weight(kernel, b) == 5  # held: nothing was published for B while Prometheus was gone
        assert [w for w in kernel.writes[writes_before:] if w[2] == b] == []
        assert job_b.last is not None and job_b.last.error == UNREACHABLE and job_b.health.healthy
        assert sum("prometheus_unreachable" in line for line in records.lines) == 1  # said once, not per probe
    finally:
        loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        loop.close()
        logging.getLogger().removeHandler(records)
        for engine in (fast, via_alertmanager):
            if engine.publisher is not None:
                engine.publisher.close()
