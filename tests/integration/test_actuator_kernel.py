"""The actuator against the real kernel, with real traffic through the lab's NAT service.

The actuator is served by waitress on loopback (the test's namespace); its
netlink socket lives in the lab's director namespace. Webhook and API calls go
over real HTTP. Every test leaves the lab's weights as it found them.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from lab import traffic
from lab.actuator import running_actuator
from lab.topology import Lab, LabService
from lvsguard.actuator.settings import ActuatorSettings, Quorum
from tests.fakes import am_alert, am_payload
from tests.waiting import json_request
from tests.waiting import wait_for as shared_wait_for

pytestmark = pytest.mark.kernel

TOKEN = "kernel-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
http = functools.partial(json_request, headers=AUTH)
wait_for = functools.partial(shared_wait_for, timeout=20.0, step=0.2)  # jobs and counters move on their own clock


@contextmanager
def actuator(lab: Lab, tmp_path: Path, **overrides: Any) -> Iterator[str]:
    """A running actuator (job threads on) for the lab's director; yields its base URL."""
    settings = ActuatorSettings(**{"tokens": {"test": TOKEN}, "hold_down": 0.0, "job_poll_interval": 0.2, **overrides})
    with running_actuator(settings, lab.director.netns, str(tmp_path / "ledger.db")) as url:
        yield url


@pytest.fixture
def nat(lab: Lab) -> Iterator[LabService]:
    """The NAT service (wrr 3, 2, 1); its weights are put back afterwards."""
    service = lab.nat
    yield service
    current = {service.name_of(rs.key): rs for rs in lab.read_table().service(service.key).real_servers}  # type: ignore[union-attr]
    if set(current) != set(service.weights):
        lab.reset_services()
        return
    for name, weight in service.weights.items():
        if current[name].weight != weight:
            lab.set_weight(service, name, weight)


def kernel_rs(lab: Lab, service: LabService, name: str):  # type: ignore[no-untyped-def]
    svc = lab.read_table().service(service.key)
    assert svc is not None, f"{service} is gone from the kernel table"
    return svc.real_server(service.real_server(name))


def backend_alert(service: LabService, name: str, fingerprint: str, **labels: str) -> dict[str, Any]:
    key = service.real_server(name)
    return am_alert(fingerprint, service=str(service.key), real_server=str(key), **labels)


def test_webhook_quarantine_sends_new_connections_elsewhere_while_held_ones_finish(
    lab: Lab, nat: LabService, tmp_path: Path
) -> None:
    firing = backend_alert(nat, "rs1", "9f1c2d", lvsguard_action="quarantine")
    with actuator(lab, tmp_path) as url, traffic.hold_connections(lab, nat.address, nat.port, 6) as held:
        assert held["rs1"] > 0, f"no held connection reached rs1: {held}"
        status, reply = http("POST", f"{url}/webhook/alertmanager", am_payload(firing))
        assert (status, reply["results"][0]["result"]) == (200, "applied")
        assert kernel_rs(lab, nat, "rs1").weight == 0  # ipvsadm's view, not ours
        seen = traffic.http_get(lab, nat.address, nat.port, 30)
        assert "rs1" not in seen and sum(seen.values()) == 30
        assert kernel_rs(lab, nat, "rs1").active_connections == held["rs1"]  # existing connections are still up
        status, reply = http("POST", f"{url}/webhook/alertmanager", am_payload({**firing, "status": "resolved"}))
        assert (status, reply["results"][0]["weight"]) == (200, 3)
        assert kernel_rs(lab, nat, "rs1").weight == 3
        assert traffic.http_get(lab, nat.address, nat.port, 30)["rs1"] > 0


def test_two_alerts_and_a_manual_hold_on_one_real_server(lab: Lab, nat: LabService, tmp_path: Path) -> None:
    alerts = [
        backend_alert(nat, "rs2", fp, lvsguard_action="quarantine", alertname=name)
        for fp, name in (("a1", "BackendDown"), ("a2", "HighLatency"))
    ]
    with actuator(lab, tmp_path) as url:
        http("POST", f"{url}/webhook/alertmanager", am_payload(*alerts))
        http("POST", f"{url}/webhook/alertmanager", am_payload(*alerts))  # a second Alertmanager of the HA pair
        http("POST", f"{url}/api/v1/quarantine", {"service": str(nat.key), "real_server": str(nat.real_server("rs2"))})
        http("POST", f"{url}/webhook/alertmanager", am_payload(*({**a, "status": "resolved"} for a in alerts)))
        assert kernel_rs(lab, nat, "rs2").weight == 0  # the manual hold outlives both alerts
        status, reply = http(
            "POST", f"{url}/api/v1/restore", {"service": str(nat.key), "real_server": str(nat.real_server("rs2"))}
        )
        assert (status, reply["weight"]) == (200, 2)
        _, audit = http("GET", f"{url}/api/v1/audit?limit=20")
        writes = [e for e in audit["events"] if e["result"] == "applied"]
        assert [e["action"] for e in writes] == ["restore", "quarantine"]  # one write out, one back, despite five calls


def test_drain_waits_for_a_long_lived_connection(lab: Lab, nat: LabService, tmp_path: Path) -> None:
    target = {"service": str(nat.key), "real_server": str(nat.real_server("rs1"))}
    with actuator(lab, tmp_path) as url:
        with traffic.hold_connections(lab, nat.address, nat.port, 6) as held:
            assert held["rs1"] > 0
            status, reply = http("POST", f"{url}/api/v1/drain", {**target, "timeout": 60})
            assert status == 202
            job_url = f"{url}/api/v1/jobs/{reply['job_id']}"
            job = wait_for(
                lambda: (j := http("GET", job_url)[1])["message"].endswith("active connections left") and j,
                "a drain step",
            )
            assert job["state"] == "running" and job["message"] == f"{held['rs1']} active connections left"
            assert "rs1" not in traffic.http_get(lab, nat.address, nat.port, 12)
        done = wait_for(lambda: (j := http("GET", job_url)[1])["state"] != "running" and j, "the drain to finish")
        assert (done["state"], done["progress"]) == ("done", 1.0)
        assert kernel_rs(lab, nat, "rs1").weight == 0
        http("POST", f"{url}/api/v1/restore", target)
        assert kernel_rs(lab, nat, "rs1").weight == 3


def test_drain_with_delete_removes_the_real_server_once_idle(lab: Lab, nat: LabService, tmp_path: Path) -> None:
    target = {"service": str(nat.key), "real_server": str(nat.real_server("rs3"))}
    with actuator(lab, tmp_path) as url:
        status, reply = http("POST", f"{url}/api/v1/drain", {**target, "timeout": 30, "delete": True})
        assert status == 202
        wait_for(lambda: http("GET", f"{url}/api/v1/jobs/{reply['job_id']}")[1]["state"] == "done", "drain and delete")
        assert lab.read_table().service(nat.key).real_server(nat.real_server("rs3")) is None  # type: ignore[union-attr]
        status, reply = http("POST", f"{url}/api/v1/add", {**target, "weight": 1})
        assert (status, reply["result"]) == (200, "applied")
        rs3 = kernel_rs(lab, nat, "rs3")
        assert (rs3.weight, rs3.forward.label) == (1, "masq")


def test_quorum_refusal_is_applied_later_when_another_server_returns(lab: Lab, nat: LabService, tmp_path: Path) -> None:
    alerts = [backend_alert(nat, name, f"q-{name}", lvsguard_action="quarantine") for name in ("rs1", "rs2")]
    with actuator(lab, tmp_path, min_healthy=Quorum(2), retry_interval=0.2) as url:
        _, reply = http("POST", f"{url}/webhook/alertmanager", am_payload(*alerts))
        results = [r["result"] for r in reply["results"]]
        assert results == ["applied", "refused"] and "min 2" in reply["results"][1]["message"]
        assert kernel_rs(lab, nat, "rs2").weight == 2
        http("POST", f"{url}/webhook/alertmanager", am_payload({**alerts[0], "status": "resolved"}))
        wait_for(lambda: kernel_rs(lab, nat, "rs2").weight == 0, "the refused quarantine to be applied")
        assert kernel_rs(lab, nat, "rs1").weight == 3
        http("POST", f"{url}/webhook/alertmanager", am_payload({**alerts[1], "status": "resolved"}))
        assert kernel_rs(lab, nat, "rs2").weight == 2


ACTUATOR_MAIN = """
import sys
from lvsguard.actuator.app import serve
from lvsguard.actuator.settings import ActuatorSettings, Quorum
serve(ActuatorSettings(tokens={"test": sys.argv[1]}, hold_down=0.0, job_poll_interval=0.2, slow_start=float(sys.argv[5])),
      listen=sys.argv[2], netns=sys.argv[3], ledger_path=sys.argv[4])
"""


@contextmanager
def actuator_process(lab: Lab, ledger: Path, port: int, slow_start: float = 0.0) -> Iterator[subprocess.Popen[bytes]]:
    """The actuator as its own process (so that it can be killed with SIGKILL)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ACTUATOR_MAIN,
            TOKEN,
            f"127.0.0.1:{port}",
            lab.director.netns,
            str(ledger),
            str(slow_start),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        wait_for(lambda: _answers(port) or proc.poll() is not None, "the actuator to listen", timeout=60)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def _answers(port: int) -> bool:
    try:
        http("GET", f"http://127.0.0.1:{port}/api/v1/jobs")
        return True
    except OSError:
        return False


def test_kill_9_during_a_drain_and_during_a_slow_start(lab: Lab, nat: LabService, tmp_path: Path) -> None:
    target = {"service": str(nat.key), "real_server": str(nat.real_server("rs1"))}
    ledger, port = tmp_path / "ledger.db", 19911
    url = f"http://127.0.0.1:{port}"
    with ExitStack() as connections:
        held = connections.enter_context(traffic.hold_connections(lab, nat.address, nat.port, 6))
        assert held["rs1"] > 0
        with actuator_process(lab, ledger, port) as proc:
            _, reply = http("POST", f"{url}/api/v1/drain", {**target, "timeout": 120})
            job_url = f"{url}/api/v1/jobs/{reply['job_id']}"
            wait_for(lambda: http("GET", job_url)[1]["message"].endswith("active connections left"), "a drain step")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        with actuator_process(lab, ledger, port, slow_start=4.0) as proc:
            assert http("GET", job_url)[1]["state"] == "running"  # resumed after the kill, not lost
            connections.close()  # the long-lived connections end: the resumed drain can finish
            done = wait_for(lambda: (j := http("GET", job_url)[1])["state"] != "running" and j, "the resumed drain")
            assert (done["state"], kernel_rs(lab, nat, "rs1").weight) == ("done", 0)
            _, reply = http("POST", f"{url}/api/v1/restore", target)
            assert reply["job_id"] is not None and kernel_rs(lab, nat, "rs1").weight == 1  # the ramp's first step
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    with actuator_process(lab, ledger, port, slow_start=4.0):
        ramp_url = f"{url}/api/v1/jobs/{reply['job_id']}"
        final = wait_for(lambda: (j := http("GET", ramp_url)[1])["state"] != "running" and j, "the resumed slow start")
        assert final["state"] == "done" and kernel_rs(lab, nat, "rs1").weight == 3
        _, ledger_view = http("GET", f"{url}/api/v1/ledger")
        assert ledger_view["backends"] == []  # ledger and kernel agree: nothing held, nothing pending
