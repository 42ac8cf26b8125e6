"""``table.manage`` turned off and on again, on the lab's kernel, with the real actuator.

1. Managed (``drift: correct`` every second): the actuator builds the NAT
   service at start; rs1 is quarantined.
2. ``manage: false`` and SIGHUP: the reload leaves the kernel as it is. Hand
   changes with ``ipvsadm`` (a weight, the scheduler, a real server deleted,
   one added, a service added, the quarantined real server's weight) stay,
   over several drift rounds: nothing is corrected, no drift is reported, no
   table run is audited, ``POST /api/v1/table/apply`` is refused (409), and the
   services are still observed and named.
3. ``manage: true`` again, by ``lvsguard apply``: one whole plan makes the
   kernel the config's (a reload of an unchanged config would plan nothing),
   the quarantined real server held at 0, and what lvsguard did not create
   left alone under ``prune: owned``, removed under ``prune: exact``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.topology import Lab
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import ServiceKey
from tests.integration.test_reload_actuator import wait_until
from tests.integration.test_table_actuator_kernel import (  # noqa: F401 - director and actuator are fixtures
    TOKEN,
    Actuator,
    actuator,
    director,
    write_config,
)

pytestmark = pytest.mark.kernel

EXTRA_RS = "10.0.1.9:8080"
EXTRA_SERVICE = ServiceKey("TCP", "192.0.2.99", 80)


def save(actuator: Actuator, doc: dict[str, Any]) -> None:
    actuator.config.write_text(yaml.safe_dump(doc, sort_keys=False))


def table_of(director: NetlinkIPVS, lab: Lab) -> dict[str, Any]:
    """The NAT service as the kernel has it: scheduler and {real server: weight}, lab names where there is one."""
    svc = director.read_service(lab.nat.key)
    named = {key: name for key, name in lab.nat.backends}
    return {
        "scheduler": svc.scheduler,
        "weights": {named.get(rs.key, str(rs.key)): rs.weight for rs in svc.real_servers},
    }


def services_in(director: NetlinkIPVS) -> set[ServiceKey]:
    return {svc.key for svc in director.read().services}


def table_events(actuator: Actuator) -> list[dict[str, Any]]:
    return [e for e in actuator.call("/api/v1/audit")[1]["events"] if e["action"] == "table_apply"]


def drift_series(actuator: Actuator) -> list[str]:
    with urllib.request.urlopen(actuator.url + "/metrics", timeout=10) as reply:
        return [line for line in reply.read().decode().splitlines() if line.startswith("lvsguard_table_drift{")]


@pytest.mark.parametrize("prune", ["owned", "exact"])
def test_manage_off_leaves_the_kernel_and_on_again_applies_the_whole_config(
    prune: str, lab: Lab, director: NetlinkIPVS, actuator: Actuator
) -> None:
    nat = lab.nat
    write_config(actuator.config, director.read_service(nat.key), lab)
    doc = yaml.safe_load(actuator.config.read_text())
    doc["table"].update(prune=prune, drift="correct", drift_interval="1s")
    doc["actuator"]["retry_interval"] = "1s"
    save(actuator, doc)
    config = {rs["name"]: rs["weight"] for rs in doc["services"][0]["real_servers"]}
    scheduler = doc["services"][0]["scheduler"]
    director.delete_service(nat.key)

    actuator.start()  # 1. managed: the table is built
    assert table_of(director, lab) == {"scheduler": scheduler, "weights": config}
    status, body = actuator.call("/api/v1/quarantine", {"service": "web", "real_server": "rs1", "reason": "disk"})
    assert (status, body["result"]) == (200, "applied")
    others = services_in(director) - {nat.key}
    assert others if prune == "owned" else not others, "exact: the lab's other services are not in the config"

    doc["table"]["manage"] = False  # 2. unmanaged: observe and name
    save(actuator, doc)
    actuator.hup()
    wait_until(lambda: actuator.log.read_text().count("reload_done") == 1, "the reload", actuator.log)
    assert table_of(director, lab) == {"scheduler": scheduler, "weights": {**config, "rs1": 0}}, "the reload left it"
    applied = len(table_events(actuator))
    vip = f"{nat.address}:{nat.port}"
    lab.ipvsadm("-E", "-t", vip, "-s", "rr")
    lab.set_weight(nat, "rs2", config["rs2"] + 5)
    lab.set_weight(nat, "rs1", 9)  # the quarantined one, by hand
    lab.ipvsadm("-d", "-t", vip, "-r", str(nat.real_server("rs3")))
    lab.ipvsadm("-a", "-t", vip, "-r", EXTRA_RS, "-m", "-w", "4")
    lab.ipvsadm("-A", "-t", f"{EXTRA_SERVICE.address}:{EXTRA_SERVICE.port}", "-s", "rr")
    by_hand = {"scheduler": "rr", "weights": {"rs1": 9, "rs2": config["rs2"] + 5, EXTRA_RS: 4}}
    time.sleep(4)  # four retry rounds, four drift intervals: a managed table would have been put back by now
    assert table_of(director, lab) == by_hand, "not corrected while unmanaged"
    assert EXTRA_SERVICE in services_in(director)
    assert drift_series(actuator) == [] and " table_drift " not in actuator.log.read_text()
    assert len(table_events(actuator)) == applied, "no table run while unmanaged"
    status, body = actuator.call("/api/v1/table/apply", {})
    assert status == 409 and "table.manage is not true" in body["error"], body
    listed = {s["service"]: s for s in actuator.call("/api/v1/services")[1]["services"]}
    assert listed[str(nat.key)]["name"] == "web", "still named"
    real_servers = {rs["real_server"]: rs["name"] for rs in listed[str(nat.key)]["real_servers"]}
    assert real_servers[str(nat.real_server("rs2"))] == "rs2" and EXTRA_RS in real_servers, "observed"

    doc["table"]["manage"] = True  # 3. managed again, by lvsguard apply
    save(actuator, doc)
    command = [sys.executable, "-m", "lvsguard.cli", "apply", "--config", str(actuator.config), "--url", actuator.url]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "LVSGUARD_TOKEN": TOKEN}, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr + actuator.log.read_text()
    assert "applied in this process" not in done.stdout, "the running actuator applied it"
    wanted = {"scheduler": scheduler, "weights": {**config, "rs1": 0}}  # the hold wins
    if prune == "owned":  # lvsguard did not create them: left alone
        wanted["weights"][EXTRA_RS] = 4
        assert EXTRA_SERVICE in services_in(director) and others <= services_in(director)
    else:
        assert services_in(director) == {nat.key}
    assert table_of(director, lab) == wanted, done.stdout
    [event] = table_events(actuator)[: len(table_events(actuator)) - applied]
    assert event["actor"] == "env" and "1 service to change" in event["message"], event
    assert "1 real server to add" in event["message"], event
    holds = actuator.call("/api/v1/ledger?active=true")[1]["holds"]
    assert [(h["real_server"], h["reason"]) for h in holds] == [(str(nat.real_server("rs1")), "disk")]


def test_apply_refuses_a_config_that_does_not_manage(lab: Lab, tmp_path: Path) -> None:
    """``lvsguard apply`` with ``manage: false`` writes nothing and says why, naming the file."""
    config = tmp_path / "lvsguard.yaml"
    config.write_text(lab.config_yaml())
    before = {(svc.key, rs.key, rs.weight) for svc in lab.read_table().services for rs in svc.real_servers}
    done = subprocess.run(
        [sys.executable, "-m", "lvsguard.cli", "apply", "--config", str(config), "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"lvsguard: {config}") and "table.manage: is not true" in done.stderr, done.stderr
    assert {(svc.key, rs.key, rs.weight) for svc in lab.read_table().services for rs in svc.real_servers} == before


def test_a_quarantined_real_server_deleted_by_hand_comes_back_at_0(
    lab: Lab, director: NetlinkIPVS, actuator: Actuator
) -> None:
    """ipvsadm -d of a managed, quarantined real server: the drift correction adds it back held, the hold kept."""
    nat = lab.nat
    write_config(actuator.config, director.read_service(nat.key), lab)
    doc = yaml.safe_load(actuator.config.read_text())
    doc["table"].update(drift="correct", drift_interval="1s")
    doc["actuator"]["retry_interval"] = "1s"
    save(actuator, doc)
    actuator.start()
    status, body = actuator.call("/api/v1/quarantine", {"service": "web", "real_server": "rs1", "reason": "disk"})
    assert (status, body["result"]) == (200, "applied")
    rs1 = nat.real_server("rs1")
    lab.ipvsadm("-d", "-t", f"{nat.address}:{nat.port}", "-r", str(rs1))
    wait_until(lambda: "rs1" in table_of(director, lab)["weights"], "rs1 back", actuator.log)
    assert table_of(director, lab)["weights"]["rs1"] == 0, "back in rotation: the quarantine was lost"
    holds = actuator.call("/api/v1/ledger?active=true")[1]["holds"]
    assert [(h["real_server"], h["reason"]) for h in holds] == [(str(rs1), "disk")]
