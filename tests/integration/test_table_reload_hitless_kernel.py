"""One reload of the real actuator that changes much, under traffic: nothing lost where nothing changed.

The actuator owns the lab's whole table (``table.manage``, the lab's own
config). Clients open new HTTP connections without pause through the NAT
and the DR services and hold long-lived ones open through both. One SIGHUP
then brings a config in which the NAT service has another scheduler, a
real server with a new weight, a real server added (rs1's port 80) and one
removed (rs3: drained to weight 0 while busy), a service added (TCP
192.0.2.10:81) and one removed (the idle UDP service). No client request
fails, the DR service's counters keep counting, every held connection is
still established, and the new service answers.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from lab import traffic
from lab.topology import Lab
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import RealServerKey, ServiceKey
from tests.integration.test_reload_actuator import wait_until
from tests.integration.test_table_actuator_kernel import (  # noqa: F401 - director and actuator are fixtures
    Actuator,
    actuator,
    director,
)
from tests.integration.test_table_hitless_kernel import Client

pytestmark = pytest.mark.kernel

ADDED = ServiceKey("TCP", "192.0.2.10", 81)


def services_of(director: NetlinkIPVS) -> set[ServiceKey]:
    return {svc.key for svc in director.read().services}


def changed(doc: dict[str, Any], lab: Lab) -> dict[str, Any]:
    """``doc`` with the NAT service changed in every way, a service added and the UDP one removed."""
    doc = yaml.safe_load(yaml.safe_dump(doc))
    nat = next(s for s in doc["services"] if s["name"] == "nat")
    nat["scheduler"] = "rr" if nat["scheduler"] != "rr" else "wlc"
    by_name = {rs["name"]: rs for rs in nat["real_servers"]}
    by_name["rs2"]["weight"] += 3
    rs1 = lab.nat.real_server("rs1")
    nat["real_servers"] = [rs for rs in nat["real_servers"] if rs["name"] != "rs3"]
    nat["real_servers"].append({"name": "rs1-80", "address": f"{rs1.address}:80", "weight": 1})
    doc["services"] = [s for s in doc["services"] if s["name"] != "udp"]
    doc["services"].append(
        {
            "name": "added",
            "service": str(ADDED),
            "scheduler": "rr",
            "forward": "masq",
            "real_servers": [{"name": "a1", "address": f"{lab.node('rs2').ipv4}:8080"}],
        }
    )
    return doc


def test_one_reload_changes_much_and_loses_nothing(lab: Lab, director: NetlinkIPVS, actuator: Actuator) -> None:
    nat, dr = lab.nat, lab.dr
    doc = yaml.safe_load(lab.config_yaml(table=True))
    doc["actuator"] = {"hold_down": "0s", "drain_timeout": "300s"}
    actuator.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    actuator.start()  # the kernel has the lab's table: adopted, nothing written
    traffic.http_get(lab, dr.address, dr.port, 6)
    dr_before = director.read_service(dr.key).stats.connections
    with (
        traffic.hold_connections(lab, nat.address, nat.port, 6) as held_nat,
        traffic.hold_connections(lab, dr.address, dr.port, 6) as held_dr,
    ):
        clients = [Client(lab, nat.address, nat.port), Client(lab, dr.address, dr.port)]
        for client in clients:
            client.start()
        try:
            while min(c.answered for c in clients) < 5:
                clients[0].stopping.wait(0.05)
            new = changed(doc, lab)
            actuator.config.write_text(yaml.safe_dump(new, sort_keys=False))
            actuator.hup()
            rs3 = nat.real_server("rs3")
            wait_until(
                lambda: (
                    ADDED in services_of(director)
                    and lab.udp.key not in services_of(director)
                    and weights(director, nat.key).get(rs3, 0) == 0
                ),
                "the reload applied",
                actuator.log,
            )
            answered = [c.answered for c in clients]
            while any(c.answered < a + 20 for c, a in zip(clients, answered, strict=True)):
                clients[0].stopping.wait(0.05)
        finally:
            for client in clients:
                client.stop()
        assert [c.failures for c in clients] == [[], []], "a client request failed across the reload"
        after = director.read_service(nat.key)
        wanted = next(s for s in new["services"] if s["name"] == "nat")
        assert after.scheduler == wanted["scheduler"]
        assert weights(director, nat.key) == {
            **{RealServerKey.parse(rs["address"]): rs["weight"] for rs in wanted["real_servers"]},
            **({rs3: 0} if held_nat.get("rs3") else {}),  # busy with held connections: drained, else removed
        }
        for svc, held in ((nat, held_nat), (dr, held_dr)):
            active = {rs.key: rs.active_connections for rs in director.read_service(svc.key).real_servers}
            lost = {name: count for name, count in held.items() if active.get(svc.real_server(name), 0) < count}
            assert not lost, f"{svc.name}: held connections lost: {lost}"
        made = dr_before + sum(held_dr.values()) + clients[1].answered
        deadline = time.monotonic() + 6
        while director.read_service(dr.key).stats.connections < made and time.monotonic() < deadline:
            time.sleep(0.25)
        assert director.read_service(dr.key).stats.connections >= made, "the untouched service was reset"
    assert sum(traffic.http_get(lab, ADDED.address, ADDED.port, 2).values()) == 2, "the added service answers"
    [event] = [e for e in actuator.call("/api/v1/audit")[1]["events"] if e["action"] == "table_apply"][:1]
    assert event["actor"] == "reload" and "1 service to add" in event["message"], event


def weights(director: NetlinkIPVS, key: ServiceKey) -> dict[RealServerKey, int]:
    return {rs.key: rs.weight for rs in director.read_service(key).real_servers}
