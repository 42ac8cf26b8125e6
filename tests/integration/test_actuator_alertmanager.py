"""A real Alertmanager delivers to the actuator, which steers the real kernel; real traffic shows it.

Alertmanager (Debian ``prometheus-alertmanager``) runs the project's example
config (alerts/alertmanager.yml) with only the receiver's address and token
file swapped; the alert goes in through its v2 API, as Prometheus posts it.
"""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lab import traffic
from lab.monitoring import alertmanager_config, post_alerts, running_alertmanager
from lab.topology import Lab, LabService
from tests.integration.test_actuator_kernel import TOKEN, actuator, http, kernel_rs, nat, wait_for  # noqa: F401 (nat is a fixture)
from tests.integration.test_alerts_alertmanager import require_alertmanager

pytestmark = pytest.mark.kernel


@pytest.fixture
def alertmanager_for(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start a real Alertmanager whose actuator receiver is ``webhook_url``; yields a starter."""
    require_alertmanager()
    token_file = tmp_path / "lvsguard.token"
    token_file.write_text(TOKEN + "\n")
    with ExitStack() as stack:
        started = itertools.count(1)

        def start(webhook_url: str) -> str:
            workdir = tmp_path / f"alertmanager-{next(started)}"
            return stack.enter_context(running_alertmanager(workdir, alertmanager_config([webhook_url], token_file)))

        yield start


def post_alert(alertmanager: str, labels: dict[str, str], *, resolved: bool = False) -> None:
    now = datetime.now(UTC)
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": "real server does not answer"},
        "startsAt": (now - timedelta(minutes=1)).isoformat(),
        "generatorURL": "http://prometheus.test/graph",
    }
    if resolved:
        alert["endsAt"] = now.isoformat()
    post_alerts(alertmanager, [alert])


def test_alertmanager_quarantines_and_the_resolved_alert_restores(
    lab: Lab, nat: LabService, tmp_path: Path, alertmanager_for: Callable[[str], str]
) -> None:
    rs2 = nat.real_server("rs2")
    labels = {
        "alertname": "LvsRealServerDown",
        "instance": "dir1:9910",
        "severity": "warning",
        "proto": "TCP",
        "local_address": nat.key.address,
        "local_port": str(nat.key.port),
        "local_mark": "",
        "remote_address": rs2.address,
        "remote_port": str(rs2.port),
        "lvsguard_action": "quarantine",
    }
    labels = {k: v for k, v in labels.items() if v}  # Alertmanager drops empty labels itself
    with actuator(lab, tmp_path) as url, traffic.hold_connections(lab, nat.address, nat.port, 6) as held:
        alertmanager = alertmanager_for(f"{url}/webhook/alertmanager")
        assert held["rs2"] > 0
        post_alert(alertmanager, labels)
        wait_for(
            lambda: kernel_rs(lab, nat, "rs2").weight == 0, "Alertmanager's notification to quarantine rs2", timeout=60
        )
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
