"""Probes against the lab's real servers, transitions through a real actuator into the real kernel.

The probe engine runs on a thread inside the director's namespace (its
sockets reach the real servers from there); the publisher's thread stays in
the test's namespace, where the actuator listens on loopback. A real
server's port is closed by a reject rule in its own namespace (``tcp reset``:
what a stopped listener answers), and opened again by deleting the rule.
Times are printed (pytest -s), never asserted.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lab import traffic
from lab.actuator import running_actuator
from lab.topology import Lab, LabService
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.agent import Agent, AgentOptions
from lvsguard.agent import serve as serve_agent
from lvsguard.exporter.probes.agent import AgentChecker
from lvsguard.exporter.probes.engine import CheckSpec, Damping, Plan, ProbeEngine
from lvsguard.exporter.probes.metrics import ProbeMetrics
from lvsguard.exporter.probes.publish import HTTPPublisher
from lvsguard.exporter.probes.tcp import TCPChecker
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.netns import entered
from tests.integration.test_actuator_alertmanager import alertmanager_for  # noqa: F401 - a fixture: the project's Alertmanager config
from tests.integration.test_actuator_kernel import TOKEN as AM_TOKEN  # the token that fixture's Alertmanager sends
from tests.waiting import wait_for as shared_wait_for

pytestmark = pytest.mark.kernel

TOKEN = "probe-kernel-test-token-0123456789"
wait_for = functools.partial(shared_wait_for, timeout=20.0, step=0.01)
AGENT_PORT = 5555


@contextmanager
def actuator(lab: Lab, tmp_path: Path, extra_tokens: dict[str, str] | None = None) -> Iterator[str]:
    settings = ActuatorSettings(tokens={"probes": TOKEN, **(extra_tokens or {})}, hold_down=0.0, job_poll_interval=0.2)
    with running_actuator(settings, lab.director.netns, str(tmp_path / "ledger.db")) as url:
        yield url


@contextmanager
def engine(
    lab: Lab, plan: Plan, url: str, damping: Damping = Damping(), mode: str = "actuator"
) -> Iterator[ProbeEngine]:
    """A running engine in the director's namespace, publishing to the actuator (or Alertmanager) at ``url``."""
    publisher = HTTPPublisher(url, mode=mode, token=TOKEN)  # its thread lives here, beside the actuator
    probes = ProbeEngine(plan, metrics=ProbeMetrics(), publisher=publisher, damping=damping)
    loop = asyncio.new_event_loop()
    reader = NetlinkIPVS(lab.director.netns)
    main = loop.create_task(probes.run(reader, refresh=0.5))
    failure: list[BaseException] = []

    def run() -> None:
        with entered(lab.director.netns):
            try:
                loop.run_until_complete(main)
            except asyncio.CancelledError:
                pass
            except BaseException as exc:
                failure.append(exc)

    thread = threading.Thread(target=run, name="probe-engine", daemon=True)
    thread.start()
    try:
        yield probes
    finally:
        try:
            loop.call_soon_threadsafe(main.cancel)
        except RuntimeError:
            pass  # the loop already ended (a failure, reported below)
        thread.join(10)
        publisher.close()
        reader.close()
        loop.close()
    assert not failure, failure


def nat_only(lab: Lab, spec: CheckSpec) -> Plan:
    return lambda service, real_server: (spec,) if service == lab.nat.key else ()


def weight(lab: Lab, service: LabService, name: str) -> int:
    svc = lab.read_table().service(service.key)
    assert svc is not None
    return svc.real_server(service.real_server(name)).weight  # type: ignore[union-attr]


def reject(netns: str, port: int, op: str) -> None:
    """Add (-A) or delete (-D) a rule that resets TCP connections to ``port`` (iptables-legacy: the lab
    kernel's nf_tables has no ip/inet families, see lab.topology)."""
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "REJECT", "--reject-with", "tcp-reset"]
    subprocess.run(["ip", "netns", "exec", netns, "iptables-legacy", op, *rule], check=True)


@contextmanager
def port_closed(lab: Lab, name: str, port: int) -> Iterator[Callable[[], None]]:
    """Close ``port`` of real server ``name`` (connections get a reset); the yielded function opens it again."""
    netns = lab.node(name).netns
    reject(netns, port, "-A")
    opened = False

    def reopen() -> None:
        nonlocal opened
        if not opened:
            reject(netns, port, "-D")
            opened = True

    try:
        yield reopen
    finally:
        reopen()


@pytest.fixture
def nat(lab: Lab) -> Iterator[LabService]:
    service = lab.nat
    yield service
    for name, w in service.weights.items():
        if weight(lab, service, name) != w:
            lab.set_weight(service, name, w)


def test_closed_port_is_quarantined_in_the_kernel_and_restored(lab: Lab, nat: LabService, tmp_path: Path) -> None:
    spec = CheckSpec("tcp", TCPChecker(), interval=0.1, timeout=0.1, rise=2, fall=1)
    with actuator(lab, tmp_path) as url, engine(lab, nat_only(lab, spec), url) as probes:
        wait_for(
            lambda: len(probes.jobs) == 3 and all(j.last is not None for j in probes.jobs.values()),
            "first probes of nat",
        )
        job = probes.jobs[(nat.key, nat.real_server("rs1"), "tcp")]
        kernel = NetlinkIPVS(lab.director.netns)  # a fast poll for the times; the assertions use ipvsadm's view
        rs1 = lambda: kernel.read_service(nat.key).real_server(nat.real_server("rs1")).weight  # type: ignore[union-attr]
        times = []
        try:
            for _ in range(5):
                before = (
                    time.time()
                )  # the rule takes effect while its command runs (forking this process is slow under UML)
                with port_closed(lab, "rs1", nat.real_server("rs1").port) as reopen:
                    closed_at = time.time()
                    wait_for(lambda: rs1() == 0, "rs1 quarantined", step=0.002)
                    quarantined, detected = time.time() - closed_at, job.health.changed_at - closed_at
                    rule_took = closed_at - before
                    assert weight(lab, nat, "rs1") == 0
                    seen = traffic.http_get(lab, nat.address, nat.port, 20)
                    assert "rs1" not in seen and sum(seen.values()) == 20  # no client request failed, none reached rs1
                    reopen()
                    opened_at = time.time()
                    wait_for(lambda: rs1() == 3, "rs1 restored", step=0.002)
                    times.append((rule_took, detected, quarantined, time.time() - opened_at))
        finally:
            kernel.close()
        healthy = {str(k[1]): j.health.healthy for k, j in probes.jobs.items()}
    print("\nprobe tcp interval 0.1 s timeout 0.1 s fall 1 rise 2 (seconds, from the end of the iptables command):")
    for rule_took, detected, quarantined, restored in times:
        print(
            f"  iptables took {rule_took:.3f}; port closed -> unhealthy {detected:+.3f}, -> weight 0 in the kernel {quarantined:.3f};"
            f" port open -> weight back {restored:.3f}"
        )
    assert all(healthy.values()) and traffic.http_get(lab, nat.address, nat.port, 30)["rs1"] > 0


def test_quorum_keeps_the_last_real_server(lab: Lab, nat: LabService, tmp_path: Path) -> None:
    spec = CheckSpec("tcp", TCPChecker(), interval=0.1, timeout=0.2, rise=1, fall=1)
    port = nat.real_server("rs1").port
    with actuator(lab, tmp_path) as url, engine(lab, nat_only(lab, spec), url) as probes:
        wait_for(lambda: len(probes.jobs) == 3, "nat's probes")
        with port_closed(lab, "rs1", port), port_closed(lab, "rs2", port), port_closed(lab, "rs3", port):
            wait_for(lambda: not any(j.health.healthy for j in probes.jobs.values()), "every nat real server unhealthy")
            wait_for(
                lambda: [weight(lab, nat, n) for n in ("rs1", "rs2", "rs3")].count(0) == 2, "two of three quarantined"
            )
            time.sleep(1.0)  # the actuator retries refused holds: the last one must still stand after that
            weights = [weight(lab, nat, n) for n in ("rs1", "rs2", "rs3")]
            assert weights.count(0) == 2, f"min_healthy 1 must keep one real server in: {weights}"
        wait_for(lambda: [weight(lab, nat, n) for n in ("rs1", "rs2", "rs3")] == [3, 2, 1], "all three restored")


def test_agent_weight_halves_and_maint_quarantines(lab: Lab, nat: LabService, tmp_path: Path) -> None:
    """lvsguard agent on rs2 (its namespace): 50% from its load (load 1 on 2 CPUs), then maint.

    The load is given, not read: forking a command from this big process costs
    seconds under UML; the command source is tested on the host (test_agent.py).
    """
    maint = tmp_path / "maint"
    agent = Agent(AgentOptions(load="loadavg", maint_file=str(maint)), loadavg=lambda: 1.0, cpus=2)
    agent_loop = asyncio.new_event_loop()
    agent_task = agent_loop.create_task(serve_agent(agent, "", AGENT_PORT))

    def run_agent() -> None:
        with entered(lab.node("rs2").netns):
            try:
                agent_loop.run_until_complete(agent_task)
            except asyncio.CancelledError:
                pass

    threading.Thread(target=run_agent, daemon=True).start()
    rs2 = nat.real_server("rs2")
    spec = CheckSpec("agent", AgentChecker(), interval=0.5, timeout=0.5, rise=1, fall=1, port=AGENT_PORT)
    plan: Plan = lambda service, real_server: (spec,) if (service, real_server) == (nat.key, rs2) else ()
    try:
        with actuator(lab, tmp_path) as url, engine(lab, plan, url, Damping(min_step=1, min_interval=0)):
            wait_for(lambda: weight(lab, nat, "rs2") == 1, "rs2 at 50% of weight 2")
            maint.touch()
            wait_for(lambda: weight(lab, nat, "rs2") == 0, "rs2 in maintenance")
            maint.unlink()
            wait_for(lambda: weight(lab, nat, "rs2") == 1, "rs2 back at 50%")
    finally:
        agent_loop.call_soon_threadsafe(agent_task.cancel)


def test_alertmanager_mode_through_a_real_alertmanager(
    lab: Lab, nat: LabService, tmp_path: Path, alertmanager_for: Any
) -> None:
    """publish.mode alertmanager: the project's example Alertmanager config routes the probe's alert to the actuator."""
    spec = CheckSpec("tcp", TCPChecker(), interval=0.2, timeout=0.2, rise=1, fall=1)
    with actuator(lab, tmp_path, extra_tokens={"alertmanager": AM_TOKEN}) as url:
        alertmanager = alertmanager_for(f"{url}/webhook/alertmanager")
        with engine(lab, nat_only(lab, spec), alertmanager, mode="alertmanager"):
            with port_closed(lab, "rs3", nat.real_server("rs3").port):
                wait_for(
                    lambda: weight(lab, nat, "rs3") == 0, "rs3 quarantined through Alertmanager", timeout=60, step=0.2
                )
            wait_for(lambda: weight(lab, nat, "rs3") == 1, "rs3 restored through Alertmanager", timeout=60, step=0.2)
