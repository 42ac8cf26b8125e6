"""The bundled Alertmanager example, run by a real Alertmanager on loopback.

Only the receiver's address and token file are swapped for a local recorder;
routes, timings and inhibitions are the file's own. Alerts go in through
Alertmanager's v2 API, as Prometheus sends them. No IPVS kernel is needed.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lab.monitoring import (
    MonitoringError,
    alertmanager_alerts,
    alertmanager_config,
    binary,
    post_alerts,
    running_alertmanager,
)

TOKEN = "test-token-3f9c"
WAIT = 30.0  # seconds: a guard against a hung Alertmanager, not a timing assertion

SERVICE = {"instance": "dir1:9910", "local_address": "192.0.2.10", "local_port": "80", "proto": "TCP", "service": "web"}
OTHER_SERVICE = {"instance": "dir1:9910", "local_address": "192.0.2.11", "local_port": "80", "proto": "TCP"}


def require_alertmanager() -> None:
    """Skip without Alertmanager on a developer's machine; fail in CI, where it must be installed."""
    try:
        binary(["prometheus-alertmanager", "alertmanager"], "prometheus-alertmanager")
    except MonitoringError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


class Recorder:
    """A webhook endpoint that keeps every request: path, Authorization header, JSON body."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorder.requests.put((self.path, self.headers.get("Authorization", ""), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhook/alertmanager"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, predicate: Any) -> tuple[str, str, dict[str, Any]]:
        """The first recorded request whose body satisfies ``predicate``; others are kept."""
        deadline = time.monotonic() + WAIT
        skipped = []
        try:
            while True:
                request = self.requests.get(timeout=max(0.0, deadline - time.monotonic()))
                if predicate(request[2]):
                    return request
                skipped.append(request)
        except queue.Empty:
            raise AssertionError(f"no matching webhook call within {WAIT} s; got {skipped}") from None
        finally:
            for request in skipped:
                self.requests.put(request)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.server.shutdown()


@pytest.fixture
def alertmanager(tmp_path: Path, recorder: Recorder) -> Iterator[str]:
    """A real Alertmanager with the example config, its webhook pointed at the recorder."""
    require_alertmanager()
    token_file = tmp_path / "lvsguard.token"
    token_file.write_text(TOKEN + "\n")
    with running_alertmanager(tmp_path / "alertmanager", alertmanager_config([recorder.url], token_file)) as url:
        yield url


def alert(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A firing alert as Prometheus posts it: startsAt is when it started firing, now.

    (An older startsAt would make Alertmanager flush its group at once, without
    group_wait, as it does for alerts that are already old.)
    """
    return {
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": name},
        "startsAt": datetime.now(UTC).isoformat(),
        "generatorURL": "http://prometheus.test/graph",
    }


def real_server_down(service: dict[str, str], address: str) -> dict[str, Any]:
    labels = {
        **service,
        "remote_address": address,
        "remote_port": "80",
        "severity": "warning",
        "lvsguard_action": "quarantine",
    }
    return alert("LvsRealServerDown", labels)


def has_alert(body: dict[str, Any], status: str, remote_address: str) -> bool:
    return any(a["status"] == status and a["labels"].get("remote_address") == remote_address for a in body["alerts"])


def test_action_alert_reaches_the_actuator_with_the_token_and_resolves(alertmanager: str, recorder: Recorder) -> None:
    firing = real_server_down(SERVICE, "10.0.1.2")
    post_alerts(alertmanager, [firing])

    path, authorization, body = recorder.next(lambda b: has_alert(b, "firing", "10.0.1.2"))
    assert path == "/webhook/alertmanager"
    assert authorization == f"Bearer {TOKEN}"
    assert body["version"] == "4"
    assert body["receiver"] == "lvsguard-actuator"
    assert [a["labels"] for a in body["alerts"]] == [firing["labels"]]
    assert body["groupLabels"] == firing["labels"], "the action route groups by every label ('...')"

    post_alerts(alertmanager, [{**firing, "endsAt": datetime.now(UTC).isoformat()}])
    _, _, body = recorder.next(lambda b: has_alert(b, "resolved", "10.0.1.2"))
    assert body["status"] == "resolved"


def test_alert_without_action_never_reaches_the_actuator(alertmanager: str, recorder: Recorder) -> None:
    post_alerts(alertmanager, [alert("LvsVipNotHeld", {"vip": "192.0.2.10", "severity": "critical"})])
    post_alerts(alertmanager, [real_server_down(SERVICE, "10.0.1.7")])

    _, _, body = recorder.next(lambda b: has_alert(b, "firing", "10.0.1.7"))
    assert all(a["labels"]["alertname"] == "LvsRealServerDown" for a in body["alerts"])
    while not recorder.requests.empty():
        _, _, other = recorder.requests.get()
        assert all(a["labels"]["alertname"] != "LvsVipNotHeld" for a in other["alerts"])


def test_service_down_inhibits_its_real_server_alerts_only(alertmanager: str, recorder: Recorder) -> None:
    service_down = alert("LvsServiceDown", {**SERVICE, "severity": "critical"})
    post_alerts(
        alertmanager, [service_down, real_server_down(SERVICE, "10.0.1.3"), real_server_down(OTHER_SERVICE, "10.0.1.4")]
    )

    recorder.next(lambda b: has_alert(b, "firing", "10.0.1.4"))
    states = {
        a["labels"]["remote_address"]: a["status"] for a in alertmanager_alerts(alertmanager, "LvsRealServerDown")
    }
    assert states["10.0.1.3"]["state"] == "suppressed"
    assert states["10.0.1.3"]["inhibitedBy"], "inhibited by the LvsServiceDown alert"
    assert states["10.0.1.4"]["state"] == "active"
    while not recorder.requests.empty():
        _, _, body = recorder.requests.get()
        assert not has_alert(body, "firing", "10.0.1.3"), "an inhibited alert was sent to the actuator"
