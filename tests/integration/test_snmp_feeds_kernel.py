"""A running exporter's SNMP agent fed by its own probes, a real actuator's ledger and the director's addresses.

In the lab VM: the exporter's own wiring (``exporter.main.start_probes`` and
``start_snmp``, as ``lvsguard exporter`` calls them) runs in this process from
a YAML config, with tcp probes on the nat service publishing to a real
actuator (``lab.actuator.running_actuator``) that writes the lab's kernel
table and its ledger. net-snmp's ``snmpget`` with LVSGUARD-MIB loaded reads
the agent; a real ``snmptrapd`` receives its traps. One real server's port is
closed with a reset rule in its namespace (what a stopped listener answers)
and opened again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.actuator import running_actuator
from lab.polling import poll
from lab.topology import Lab
from lvsguard import config as config_module
from lvsguard.config import Config
from lvsguard.exporter.main import start_passive, start_probes, start_snmp
from lvsguard.exporter.probes.runner import ProbeRunner
from lvsguard.exporter.snmp import layout
from lvsguard.exporter.snmp.mibfiles import BaseMibsUnavailable, mib_search_path
from lvsguard.exporter.snmp.runner import RunningAgent
from lvsguard.model import Forward, RealServer, RealServerKey
from tests.integration.test_passive_kernel import Client, refused
from tests.integration.test_probes_kernel import port_closed
from tests.integration.test_snmp_kernel import trapd  # noqa: F401 - a fixture: a real snmptrapd logging to a file

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(shutil.which("snmpget") is None, reason="net-snmp clients not installed (Debian snmp)"),
]

TOKEN = "snmp-feeds-kernel-test-token-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(lab: Lab, tmp_path: Path, actuator_url: str, trap_port: int) -> Config:
    """The YAML an operator would write: tcp probes on nat publishing to the actuator, the ledger, the agent with traps."""
    token_file = tmp_path / "probes.token"
    token_file.write_text(f"probes:{TOKEN}\n")
    token_file.chmod(0o600)  # a secret file others can read is refused
    nat = lab.nat
    real_servers = "\n".join(f'      - {{name: {node}, address: "{key}"}}' for key, node in nat.backends)
    text = f"""
director:
  netns: {lab.director.netns}
services:
  - name: nat
    service: "{nat.key}"
    real_servers:
{real_servers}
actuator:
  ledger: {tmp_path / "ledger.db"}
  hold_down: 0s
  job_poll_interval: 0.2
probes:
  default_tcp: false
  refresh: 0.5
  publish: {{mode: actuator, url: "{actuator_url}", token_file: "{token_file}"}}
  checks:
    - {{service: nat, type: tcp, interval: 0.3, timeout: 0.3, rise: 1, fall: 2}}
snmp:
  listen: 127.0.0.1:0
  communities: [lab]
  max_age: 0.3
  trap_targets: ["127.0.0.1:{trap_port}"]
  trap_community: traps
"""
    path = tmp_path / "lvsguard.yaml"
    path.write_text(text)
    return config_module.load(path)


def oid(column: str, index: tuple[int, ...]) -> str:
    entry = {
        "lvsgRs": (layout.RS_ENTRY, layout.RS_COLUMNS),
        "lvsgProbe": (layout.PROBE_ENTRY, layout.PROBE_COLUMNS),
        "lvsgVip": (layout.VIP_ENTRY, layout.VIP_COLUMNS),
    }
    prefix, columns = next(v for k, v in entry.items() if column.startswith(k))
    subid = next(c.subid for c in columns if c.name == column)
    return "." + ".".join(map(str, layout.DEFAULT_BASE + prefix + (subid,) + index))


def get(agent: RunningAgent, mibs: str, oids: dict[str, str]) -> dict[str, str]:
    """One ``snmpget`` (a process start is slow under UML) with LVSGUARD-MIB loaded: key -> "NAME.INSTANCE = TYPE: value"."""
    cmd = [
        "snmpget",
        "-v2c",
        "-c",
        "lab",
        "-M",
        mibs,
        "-m",
        "LVSGUARD-MIB",
        "-t",
        "5",
        "-r",
        "1",
        f"127.0.0.1:{agent.address[1]}",
    ]
    out = subprocess.run([*cmd, *oids.values()], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == len(oids), out
    return {key: line.split("::", 1)[-1] for key, line in zip(oids, out)}


def rs_index(lab: Lab, key: RealServerKey) -> tuple[int, ...]:
    return layout.real_server_index(lab.nat.key, RealServer(key, 0, Forward.MASQ))


def trap_blocks(log_file: Path, name: str) -> list[str]:
    """The logged notifications of type ``name`` (snmptrapd writes each one's varbinds on one line, after a header line)."""
    text = log_file.read_text() if log_file.exists() else ""
    return [line for line in text.splitlines() if f"LVSGUARD-MIB::{name}" in line]


@pytest.fixture
def mibs() -> str:
    try:
        return mib_search_path()
    except BaseMibsUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def exporter(lab: Lab, tmp_path: Path, trapd: tuple[int, Path]) -> Iterator[tuple[RunningAgent, str]]:
    """The exporter's probes and SNMP agent beside a real actuator; yields the agent and the actuator's URL."""
    port = free_port()
    config = write_config(lab, tmp_path, f"http://127.0.0.1:{port}", trapd[0])
    assert config.actuator is not None
    settings = dataclasses.replace(config.actuator, tokens={"probes": TOKEN})  # tokens never sit in the config file
    with running_actuator(settings, lab.director.netns, config.actuator.ledger_path, port=port) as url:
        probes: ProbeRunner | None = start_probes(config, lab.director.netns)
        assert probes is not None
        agent = start_snmp(config, lab.director.netns, None, probes=probes, fifo=None)
        assert agent is not None
        try:
            yield agent, url
        finally:
            agent.stop()
            probes.stop()


def test_probe_health_ledger_holds_and_traps_from_a_running_exporter(lab: Lab, exporter, trapd, mibs: str) -> None:
    agent, url = exporter
    _, log_file = trapd
    oids: dict[str, str] = {}
    for key, node in lab.nat.backends:
        oids[f"{node} status"] = oid("lvsgRsStatus", rs_index(lab, key))
        oids[f"{node} hold"] = oid("lvsgRsQuarantineState", rs_index(lab, key))
        oids[f"{node} probe"] = oid("lvsgProbeLastResult", rs_index(lab, key) + layout.text_index("tcp"))
    oids["vip"] = oid("lvsgVipOwned", layout.address_index(lab.nat.address))
    values = lambda: {k: v.rpartition(": ")[2] for k, v in get(agent, mibs, oids).items()}
    nodes = [node for _, node in lab.nat.backends]
    alive = {
        **{f"{n} status": "alive(1)" for n in nodes},
        **{f"{n} hold": "none(1)" for n in nodes},
        **{f"{n} probe": "success(1)" for n in nodes},
    }
    healthy = lambda v: all(v[k] == alive[k] for k in alive)
    first = poll("nat real servers alive over SNMP", values, healthy, 20, interval=0.3)
    on_director = subprocess.run(
        ["ip", "-n", lab.director.netns, "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert first["vip"] == ("true(1)" if f" {lab.nat.address}/" in on_director else "false(2)")
    assert "lvsgRsStatus." in get(agent, mibs, {"name": oids["rs1 status"]})["name"]  # names resolve through the MIB

    rs1 = lab.nat.real_server("rs1")
    with port_closed(lab, "rs1", rs1.port) as reopen:
        out = ("dead(2)", "quarantined(2)", "failure(2)")
        poll(
            "rs1 dead and quarantined over SNMP",
            values,
            lambda v: (v["rs1 status"], v["rs1 hold"], v["rs1 probe"]) == out,
            20,
            interval=0.3,
        )
        with urllib.request.urlopen(f"{url}/api/v1/services", timeout=10) as response:
            services = json.load(response)["services"]
        nat = next(s for s in services if s["service"] == str(lab.nat.key))
        hold = next(r for r in nat["real_servers"] if r["real_server"] == str(rs1))["holds"][0]
        actor = f"alert {hold['alertname']} ({hold['holder']})"  # the actuator's name for the alert that holds it

        instance = f'tcp.ipv4."{lab.nat.address}".{lab.nat.port}.0.ipv4."{rs1.address}".{rs1.port}'
        rs1_traps = lambda name: [t for t in trap_blocks(log_file, name) if f"{instance} " in t]
        health = poll("health-change trap for rs1", lambda: rs1_traps("lvsgRsHealthChange"), bool, 20, interval=0.3)
        assert len(health) == 1, health
        for varbind in (
            f"lvsgRsName.{instance} = STRING: rs1",
            f"lvsgRsStatus.{instance} = INTEGER: dead(2)",
            f'lvsgVsName.tcp.ipv4."{lab.nat.address}".{lab.nat.port}.0 = STRING: nat',
            f'lvsgVsRealServersUp.tcp.ipv4."{lab.nat.address}".{lab.nat.port}.0 = Gauge32: {len(lab.nat.backends) - 1}',
            f'lvsgVsRealServersTotal.tcp.ipv4."{lab.nat.address}".{lab.nat.port}.0 = Gauge32: {len(lab.nat.backends)}',
        ):
            assert varbind in health[0], (varbind, health[0])
        quarantined = poll("quarantine trap for rs1", lambda: rs1_traps("lvsgRsQuarantined"), bool, 20, interval=0.3)
        assert (
            f'lvsgNotifyActor.0 = STRING: "{actor}"' in quarantined[0]
            or f"lvsgNotifyActor.0 = STRING: {actor}" in quarantined[0]
        ), quarantined
        assert f"lvsgRsQuarantineState.{instance} = INTEGER: quarantined(2)" in quarantined[0]
        reopen()
        poll("rs1 alive again over SNMP", values, healthy, 20, interval=0.3)
        restored = poll("restore trap for rs1", lambda: rs1_traps("lvsgRsRestored"), bool, 20, interval=0.3)
        assert f"lvsgNotifyOriginalWeight.0 = INTEGER: {lab.nat.weights['rs1']}" in restored[0], restored
    health = rs1_traps("lvsgRsHealthChange")  # dead, then alive: nothing twice, nothing at start
    assert len(health) == 2 and f"lvsgRsStatus.{instance} = INTEGER: alive(1)" in health[1], health
    assert "Unknown" not in log_file.read_text()


def test_passive_columns_from_a_running_exporter(lab: Lab, tmp_path: Path, mibs: str) -> None:
    """The exporter's passive detector (``passive.enabled``) and its SNMP agent: a refused rs1 under client traffic.

    No probes: the verdict is reported only, and its hold-down runs
    (``holddown_min``) without touching the weight; lvsgRsTable serves the
    refused handshakes, the verdict and the seconds left of the hold-down.
    """
    path = tmp_path / "lvsguard.yaml"
    path.write_text(
        lab.config_yaml(listen="127.0.0.1:0")
        + "probes: {enabled: false}\n"
        + "passive: {enabled: true, interval: 0.2s, handshake_timeout: 2s, holddown_min: 120s}\n"
        + "snmp: {listen: 127.0.0.1:0, communities: [lab], max_age: 0.3}\n"
    )
    config = config_module.load(path)
    passive = start_passive(config, lab.director.netns)
    assert passive is not None
    agent = start_snmp(config, lab.director.netns, None, passive=passive)
    assert agent is not None
    columns = ("lvsgRsHandshakeRefused", "lvsgRsHandshakeTimeouts", "lvsgRsPassiveVerdicts", "lvsgRsPassiveHoldDown")
    oids = {f"{node} {c}": oid(c, rs_index(lab, key)) for key, node in lab.nat.backends for c in columns}
    values = lambda: {k: int(v.rpartition(": ")[2].split()[0]) for k, v in get(agent, mibs, oids).items()}
    try:
        assert set(values().values()) == {0}  # nothing failed yet
        with Client(lab, lab.nat):
            time.sleep(3.0)  # the peers' history
            with refused(lab.real_servers[0], lab.nat.real_server("rs1").port):
                judged = poll(
                    "a passive verdict on rs1 over SNMP",
                    values,
                    lambda v: v["rs1 lvsgRsPassiveVerdicts"] >= 1,
                    20,
                    interval=0.3,
                )
        types = {k: v.split(" = ", 1)[1].split(":", 1)[0] for k, v in get(agent, mibs, oids).items()}
    finally:
        agent.stop()
        passive.stop()
    assert {types[f"rs1 {c}"] for c in columns[:3]} == {"Counter64"} and types["rs1 lvsgRsPassiveHoldDown"] == "Gauge32"
    assert judged["rs1 lvsgRsHandshakeRefused"] >= 2, judged
    assert 0 < judged["rs1 lvsgRsPassiveHoldDown"] <= 120, judged
    for node in ("rs2", "rs3"):  # the peers served their clients
        assert [judged[f"{node} {c}"] for c in columns] == [0, 0, 0, 0], judged
