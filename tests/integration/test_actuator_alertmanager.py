"""A real Alertmanager delivers to the actuator, which steers the real kernel; real traffic shows it.

Alertmanager (Debian ``prometheus-alertmanager``) runs the project's example
config (alerts/alertmanager.yml) with only the receiver's address and token
file swapped; the alert goes in through its v2 API, as Prometheus posts it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from lab import traffic
from lab.topology import Lab, LabService

from tests.integration.test_actuator_kernel import TOKEN, actuator, http, kernel_rs, nat, wait_for  # noqa: F401 (nat is a fixture)

pytestmark = pytest.mark.kernel

EXAMPLE = Path(__file__).resolve().parents[2] / "alerts" / "alertmanager.yml"


def alertmanager_binary() -> str:
    path = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if path is None:
        message = "Alertmanager is not installed (apt-get install prometheus-alertmanager)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def alertmanager_for(tmp_path: Path) -> Iterator[Any]:
    """Start a real Alertmanager whose actuator receiver is ``webhook_url``; yields a starter."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(webhook_url: str) -> str:
        config = yaml.safe_load(EXAMPLE.read_text())
        token_file = tmp_path / "lvsguard.token"
        token_file.write_text(TOKEN + "\n")
        for receiver in config["receivers"]:
            for webhook in receiver.get("webhook_configs", []):
                webhook["url"] = webhook_url
                webhook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = tmp_path / "alertmanager.log"
        process = subprocess.Popen(
            [alertmanager_binary(), f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"),
        )  # fmt: skip
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url, process, log), "Alertmanager to be ready", timeout=60)
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _ready(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"Alertmanager exited {process.returncode}: {log.read_text()}")
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def post_alert(alertmanager: str, labels: dict[str, str], *, resolved: bool = False) -> None:
    now = datetime.now(timezone.utc)
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": "real server does not answer"},
        "startsAt": (now - timedelta(minutes=1)).isoformat(),
        "generatorURL": "http://prometheus.test/graph",
    }
    if resolved:
        alert["endsAt"] = now.isoformat()
    request = urllib.request.Request(f"{alertmanager}/api/v2/alerts", data=json.dumps([alert]).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_alertmanager_quarantines_and_the_resolved_alert_restores(
    lab: Lab, nat: LabService, tmp_path: Path, alertmanager_for: Any
) -> None:
    rs2 = nat.real_server("rs2")
    labels = {"alertname": "LvsRealServerDown", "instance": "dir1:9910", "severity": "warning", "proto": "TCP",
              "local_address": nat.key.address, "local_port": str(nat.key.port), "local_mark": "",
              "remote_address": rs2.address, "remote_port": str(rs2.port), "lvsguard_action": "quarantine"}  # fmt: skip
    labels = {k: v for k, v in labels.items() if v}  # Alertmanager drops empty labels itself
    with actuator(lab, tmp_path) as url, traffic.hold_connections(lab, nat.address, nat.port, 6) as held:
        alertmanager = alertmanager_for(f"{url}/webhook/alertmanager")
        assert held["rs2"] > 0
        post_alert(alertmanager, labels)
        wait_for(lambda: kernel_rs(lab, nat, "rs2").weight == 0, "Alertmanager's notification to quarantine rs2", timeout=60)
        seen = traffic.http_get(lab, nat.address, nat.port, 30)
        assert "rs2" not in seen and sum(seen.values()) == 30
        assert kernel_rs(lab, nat, "rs2").active_connections == held["rs2"]
        _, ledger = http("GET", f"{url}/api/v1/ledger?active=true")
        [hold] = ledger["holds"]
        assert (hold["kind"], hold["alertname"], hold["source"]) == ("alert", "LvsRealServerDown", "alertmanager")
        assert len(hold["holder"]) == 16  # Alertmanager's own fingerprint
        post_alert(alertmanager, labels, resolved=True)
        wait_for(lambda: kernel_rs(lab, nat, "rs2").weight == 2, "the resolved notification to restore rs2", timeout=60)
        assert traffic.http_get(lab, nat.address, nat.port, 30)["rs2"] > 0
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            metrics_text = response.read().decode()
        assert 'lvsguard_actions_total{action="quarantine",result="applied",source="alertmanager"} 1.0' in metrics_text
        assert 'lvsguard_actions_total{action="restore",result="applied",source="alertmanager"} 1.0' in metrics_text
