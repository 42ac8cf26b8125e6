"""The actuator owns the lab's NAT service (``table.manage``): a reboot and a reload, on the lab's kernel.

- Reboot: the actuator quarantines a real server and stops; the table is
  flushed (as a reboot leaves it); the actuator started again rebuilds the
  service from the config, with the quarantined real server at weight 0 and
  its hold still in the ledger.
- Reload under traffic: a new weight in the config and SIGHUP reach the
  kernel with no failed client request, the service's counters not reset and
  the long-lived connections still established.
- ``lvsguard diff`` reads the running actuator's ledger: a quarantined real
  server whose config weight changes is held at 0 with a new restore weight,
  not a weight to write.
- kill -9 during a large apply (2 000 services x 10 real servers, the
  actuator's start): the restarted actuator writes only what is missing, and
  the audit has both runs, the first one saying it did not finish.
- A drain survives kill -9: a busy real server that left the config is at
  weight 0; the actuator killed and started again keeps draining it and
  removes it when the first drain's timeout is up, not a whole timeout later.

The actuator is the real one (``python -m lvsguard.cli actuator`` in the
lab's director namespace); the lab's table is put back after each test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import traffic
from lab.topology import Lab
from lvsguard import cli
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import RealServerKey, ServiceKey, VirtualService
from lvsguard.table.importers import ipvsadm as ipvsadm_importer
from lvsguard.table.importers import render
from lvsguard.table.load import load_table, service_mapping
from lvsguard.table.plan import plan
from tests.integration.test_reload_actuator import call, free_port, wait_until
from tests.integration.test_table_hitless_kernel import Client

pytestmark = pytest.mark.kernel

TOKEN = "table-secret-0123456789"
DYING = """\
import os, signal, sys
from lvsguard import cli
from lvsguard.ipvs.netlink import NetlinkIPVS
whole = NetlinkIPVS.add_real_servers_to
def half_then_die(self, servers):
    servers = list(servers)
    whole(self, servers[: len(servers) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
NetlinkIPVS.add_real_servers_to = half_then_die
sys.exit(cli.main(sys.argv[1:]))
"""
"""``lvsguard actuator`` killed between two pipelined batches of its first apply, on every run however fast."""


def write_config(path: Path, svc: VirtualService, lab: Lab, weights: dict[str, int] | None = None) -> None:
    """A managed config holding the NAT service as the kernel has it (``weights`` by node name wins)."""
    nat = lab.nat
    mapping = service_mapping(svc, "web", {key: node for key, node in nat.backends})
    for rs in mapping["real_servers"]:
        rs["weight"] = (weights or {}).get(rs["name"], rs["weight"])
    doc = {"table": {"manage": True, "prune": "owned"}, "services": [mapping], "actuator": {"hold_down": "0s"}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


class Actuator:
    """``lvsguard actuator`` in the director's namespace, on a ledger and config of the test's."""

    def __init__(self, lab: Lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.config, self.log = tmp / "lvsguard.yaml", tmp / "actuator.log"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, dying: bool = False, within: float = 30.0) -> None:
        """Start it and wait ``within`` seconds until it answers; ``dying``: it SIGKILLs itself in its first batch
        of real servers."""
        env = {**os.environ, "LVSGUARD_TOKEN": TOKEN}
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *(["-c", DYING] if dying else ["-m", "lvsguard.cli"]),
                    "actuator",
                    "--netns",
                    self.lab.director.netns,
                    "--config",
                    str(self.config),
                    "--ledger",
                    str(self.tmp / "actuator.db"),
                    "--listen",
                    self.url.removeprefix("http://"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if dying:
            self.proc.wait(timeout=120)
            return
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self.call("/api/v1/services")[0] == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        pytest.fail(f"the actuator did not answer within {within:.0f} s; its log:\n{self.log.read_text()}")

    def call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        return call(self.url, TOKEN, path, body)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)


@pytest.fixture
def director(lab: Lab) -> Iterator[NetlinkIPVS]:
    with NetlinkIPVS(lab.director.netns) as ipvs:
        try:
            yield ipvs
        finally:
            lab.reset_services()


@pytest.fixture
def actuator(lab: Lab, tmp_path: Path, director: NetlinkIPVS) -> Iterator[Actuator]:
    running = Actuator(lab, tmp_path)
    try:
        yield running
    finally:
        running.stop()
        assert "Traceback" not in running.log.read_text()


def test_a_flushed_table_is_rebuilt_at_start_with_the_quarantine_kept(
    lab: Lab, director: NetlinkIPVS, actuator: Actuator
) -> None:
    nat = lab.nat
    before = director.read_service(nat.key)
    write_config(actuator.config, before, lab)
    actuator.start()
    status, body = actuator.call("/api/v1/quarantine", {"service": "web", "real_server": "rs1", "reason": "disk"})
    assert (status, body["result"]) == (200, "applied")
    actuator.stop()

    director.delete_service(nat.key)  # the reboot: the service and its real servers are gone
    actuator.start()
    after = director.read_service(nat.key)
    weights = {nat.name_of(rs.key): rs.weight for rs in after.real_servers}
    expected = {nat.name_of(rs.key): rs.weight for rs in before.real_servers}
    assert weights == {**expected, "rs1": 0}, "rebuilt, the quarantined real server still out"
    assert after.scheduler == before.scheduler
    holds = actuator.call("/api/v1/ledger?active=true")[1]["holds"]
    assert [(h["real_server"], h["reason"]) for h in holds] == [(str(nat.real_server("rs1")), "disk")]
    log = actuator.log.read_text()
    assert "table_apply" in log and "not_found" not in log, "the hold was not closed as gone"


def test_a_reload_with_a_new_weight_under_traffic_loses_nothing(
    lab: Lab, director: NetlinkIPVS, actuator: Actuator
) -> None:
    nat = lab.nat
    before = director.read_service(nat.key)
    write_config(actuator.config, before, lab)
    actuator.start()
    rs2 = nat.real_server("rs2")
    weight = next(rs.weight for rs in before.real_servers if rs.key == rs2)
    traffic.http_get(lab, nat.address, nat.port, 6)
    with traffic.hold_connections(lab, nat.address, nat.port, 6) as held:
        client = Client(lab, nat.address, nat.port)
        client.start()
        try:
            answered = client.answered
            while client.answered < answered + 5:
                client.stopping.wait(0.05)
            write_config(actuator.config, before, lab, {"rs2": weight + 4})
            actuator.hup()
            deadline = time.monotonic() + 20
            while (
                time.monotonic() < deadline
                and {rs.key: rs.weight for rs in director.read_service(nat.key).real_servers}[rs2] != weight + 4
            ):
                time.sleep(0.1)
            answered = client.answered
            while client.answered < answered + 20:
                client.stopping.wait(0.05)
        finally:
            client.stop()
        after = director.read_service(nat.key)
        assert {rs.key: rs.weight for rs in after.real_servers}[rs2] == weight + 4, actuator.log.read_text()
        assert client.failures == []
        for rs in after.real_servers:
            name = nat.name_of(rs.key)
            assert rs.active_connections >= held[name], f"{name}: held connections lost"
        made = 6 + sum(held.values()) + client.answered
        deadline = time.monotonic() + 6
        while director.read_service(nat.key).stats.connections < made and time.monotonic() < deadline:
            time.sleep(0.25)
        assert director.read_service(nat.key).stats.connections >= made, "the service was not replaced"
    audit = actuator.call("/api/v1/audit")[1]["events"]
    assert [e["actor"] for e in audit if e["action"] == "table_apply"][:1] == ["reload"]

    kept = director.read_service(nat.key)
    write_config(actuator.config, before, lab, {"rs2": -1})  # refused whole: the running table stays
    actuator.hup()
    wait_until(lambda: "reload_failed" in actuator.log.read_text(), "the refused reload", actuator.log)
    assert f"{actuator.config}:" in actuator.log.read_text() and "must be 0..65535, got -1" in actuator.log.read_text()
    assert [(rs.key, rs.weight) for rs in director.read_service(nat.key).real_servers] == [
        (rs.key, rs.weight) for rs in kept.real_servers
    ]


def test_a_service_the_kernel_refuses_is_named_and_the_rest_applied(
    lab: Lab, director: NetlinkIPVS, actuator: Actuator
) -> None:
    nat = lab.nat
    before = director.read_service(nat.key)
    write_config(actuator.config, before, lab)
    actuator.start()
    doc = yaml.safe_load(actuator.config.read_text())
    doc["services"].append({"name": "odd", "service": "TCP 192.0.2.250:81", "scheduler": "nosuch"})
    doc["services"][0]["real_servers"][1]["weight"] = 6
    actuator.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    status, body = actuator.call("/api/v1/table/apply", {})
    assert status == 502, body
    assert [f["service"] for f in body["failures"]] == ["TCP 192.0.2.250:81"]
    assert "no scheduler 'nosuch'" in body["failures"][0]["message"]
    name = doc["services"][0]["real_servers"][1]["name"]
    assert {nat.name_of(rs.key): rs.weight for rs in director.read_service(nat.key).real_servers}[name] == 6


def test_apply_in_process_when_no_actuator_runs_then_through_the_actuator(
    lab: Lab, director: NetlinkIPVS, actuator: Actuator
) -> None:
    nat = lab.nat
    before = director.read_service(nat.key)
    write_config(actuator.config, before, lab, {"rs2": 7})
    director.delete_service(nat.key)
    command = [
        sys.executable,
        "-m",
        "lvsguard.cli",
        "apply",
        "--config",
        str(actuator.config),
        "--netns",
        lab.director.netns,
        "--ledger",
        str(actuator.tmp / "actuator.db"),
        "--url",
        actuator.url,  # nobody listens there yet
    ]
    env = {**os.environ, "LVSGUARD_TOKEN": TOKEN}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied in this process" in done.stdout
    assert {nat.name_of(rs.key): rs.weight for rs in director.read_service(nat.key).real_servers}["rs2"] == 7

    actuator.start()  # the in-process apply released the ledger's lock
    write_config(actuator.config, before, lab, {"rs2": 8})
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied in this process" not in done.stdout
    assert {nat.name_of(rs.key): rs.weight for rs in director.read_service(nat.key).real_servers}["rs2"] == 8
    actors = [e["actor"] for e in actuator.call("/api/v1/audit")[1]["events"] if e["action"] == "table_apply"]
    assert actors[0] == "env" and len(actors) >= 2  # the token's name (LVSGUARD_TOKEN), then the CLI user's run


def test_a_drain_out_of_the_config_resumes_after_kill_9(lab: Lab, director: NetlinkIPVS, actuator: Actuator) -> None:
    nat = lab.nat
    rs2 = nat.real_server("rs2")
    write_config(actuator.config, director.read_service(nat.key), lab)
    doc = yaml.safe_load(actuator.config.read_text())
    doc["actuator"].update(drain_timeout="10s", retry_interval="1s")
    actuator.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    actuator.start()
    with traffic.hold_connections(lab, nat.address, nat.port, 9) as held:
        assert held["rs2"] > 0, held
        doc["services"][0]["real_servers"] = [r for r in doc["services"][0]["real_servers"] if r["name"] != "rs2"]
        actuator.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        actuator.hup()
        wait_until(lambda: weights(director, nat.key).get(rs2) == 0, "rs2 drained", actuator.log)
        drained = time.monotonic()
        time.sleep(4)
        actuator.kill()
        actuator.start()
        restarted = time.monotonic()
        assert weights(director, nat.key).get(rs2) == 0, "still busy: still draining after the restart"
        wait_until(lambda: rs2 not in weights(director, nat.key), "rs2 removed", actuator.log)
        removed = time.monotonic()
    assert 9 <= removed - drained <= 14, f"removed {removed - drained:.1f} s after its drain began (timeout 10 s)"
    assert removed - restarted < 9, "the restart did not start the drain's timer again"
    audit = actuator.call("/api/v1/audit")[1]["events"]
    assert [e["actor"] for e in audit if e["action"] == "table_apply"][:1] == ["retry"]


def weights(ipvs: NetlinkIPVS, key: ServiceKey) -> dict[RealServerKey, int]:
    return {rs.key: rs.weight for rs in ipvs.read_service(key).real_servers}


def test_diff_reads_the_running_actuators_ledger(
    lab: Lab, director: NetlinkIPVS, actuator: Actuator, capsys: pytest.CaptureFixture[str]
) -> None:
    nat = lab.nat
    before = director.read_service(nat.key)
    rs1 = nat.real_server("rs1")
    weight = next(rs.weight for rs in before.real_servers if rs.key == rs1)
    write_config(actuator.config, before, lab)
    actuator.start()
    status, body = actuator.call("/api/v1/quarantine", {"service": "web", "real_server": "rs1", "reason": "disk"})
    assert (status, body["result"]) == (200, "applied")
    write_config(actuator.config, before, lab, {"rs1": weight + 3})
    command = ["diff", "--config", str(actuator.config), "--netns", lab.director.netns]
    ledger = ["--ledger", str(actuator.tmp / "actuator.db")]
    assert cli.main(command + ledger) == 2
    printed = capsys.readouterr().out
    line = f"~ {nat.key} {rs1}: held at 0, restored to {weight + 3} (the ledger says {weight}); quarantine by env (api): disk"
    assert printed.startswith("No changes: the kernel's table matches the config.\n") and line in printed, printed
    assert cli.main(command) == 2
    assert f"~ {rs1}: weight 0 → {weight + 3}" in capsys.readouterr().out, "without the ledger: a weight to write"

    actuator.hup()
    wait_until(lambda: cli.main(command + ledger) == 0, "the reload recording the restore weight", actuator.log)
    assert f"  {nat.key} {rs1}: held at 0, restored to {weight + 3}; quarantine by env" in capsys.readouterr().out
    assert weights(director, nat.key)[rs1] == 0


def test_killed_during_a_large_apply_the_restarted_actuator_converges(
    lab: Lab, director: NetlinkIPVS, actuator: Actuator
) -> None:
    rules = []
    for i in range(2000):
        vip = f"198.18.{i // 250}.{i % 250 + 1}:80"
        rules.append(f"-A -t {vip} -s wrr")
        rules += [f"-a -t {vip} -r 198.19.{(i * 10 + j) // 250}.{(i * 10 + j) % 250 + 1}:80 -m -w 1" for j in range(10)]
    doc = yaml.safe_load(render(ipvsadm_importer.parse("\n".join(rules) + "\n", "rules")))
    doc["actuator"] = {"hold_down": "0s"}
    actuator.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    _, desired, _ = load_table(doc)
    lab_services = len(director.read().services)

    actuator.start(dying=True)
    assert actuator.proc is not None and actuator.proc.returncode == -signal.SIGKILL, actuator.log.read_text()
    table = director.read()
    assert len(table.services) == lab_services + 2000
    ours = [svc for svc in table.services if svc.key in desired]
    assert sum(len(svc.real_servers) for svc in ours) == 10_000, "half the real servers, then the kill"

    actuator.start(within=120)  # it answers once its start apply is done (20-40 s here: 7 s of them load the config)
    table = director.read()
    assert plan(desired, table, prune="owned").empty, "the table complete"
    ours = [svc for svc in table.services if svc.key in desired]
    assert len(table.services) == lab_services + 2000 and sum(len(svc.real_servers) for svc in ours) == 20_000
    assert all(len(svc.real_servers) == 10 for svc in ours), "a service with its real servers, no more, no less"
    events = [e for e in actuator.call("/api/v1/audit")[1]["events"] if e["action"] == "table_apply"]
    assert [(e["actor"], e["result"]) for e in events] == [("start", "applied"), ("start", "error")]
    assert events[0]["message"] == "table: 10000 real servers to add; 10000 applied"
    assert events[1]["message"] == (
        "table: 2000 services to add; 20000 real servers to add; not finished: the actuator stopped during the apply"
    )
