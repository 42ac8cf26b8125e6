"""Plan and apply under real traffic: a changed scheduler and weight and a removed real server lose nothing.

Through the lab's NAT service (three real servers, HTTP), a client makes new
connections without pause while long-lived connections are held open; the
service's scheduler, one real server's weight and another's presence change
in one plan. No request may fail, the service's counters keep counting (an
edit in place, not a delete and add), and the held connections to the real
servers that stay are still established. The lab's table is put back after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from lab import traffic
from lab.topology import Lab
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.table.apply import apply
from lvsguard.table.desired import DesiredTable, make_real_server, make_service
from lvsguard.table.plan import Op, plan

pytestmark = pytest.mark.kernel


class Client(threading.Thread):
    """New HTTP connections through the VIP, one after the other, until stopped; counts answers and failures."""

    def __init__(self, lab: Lab, address: str, port: int) -> None:
        super().__init__(daemon=True)
        self.lab, self.address, self.port = lab, address, port
        self.answered = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.answered += sum(traffic.http_get(self.lab, self.address, self.port, 1, timeout=2.0).values())
            except Exception as exc:  # every failure is the finding: keep it, keep going
                self.failures.append(repr(exc))

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


@pytest.fixture
def director(lab: Lab) -> Iterator[NetlinkIPVS]:
    with NetlinkIPVS(lab.director.netns) as ipvs:
        try:
            yield ipvs
        finally:
            lab.reset_services()


def test_scheduler_weight_and_removal_under_traffic(lab: Lab, director: NetlinkIPVS) -> None:
    nat = lab.nat
    rs1, rs2 = nat.real_server("rs1"), nat.real_server("rs2")  # rs3 leaves the config
    before = director.read_service(nat.key)
    kept = {rs.key: rs for rs in before.real_servers}
    desired = DesiredTable(
        (
            make_service(
                nat.key,
                "rr" if before.scheduler != "rr" else "wlc",
                real_servers=(
                    make_real_server(rs1, kept[rs1].forward, kept[rs1].weight + 3),
                    make_real_server(rs2, kept[rs2].forward, kept[rs2].weight),
                ),
            ),
        )
    )
    traffic.http_get(lab, nat.address, nat.port, 6)  # the counters start from something
    with traffic.hold_connections(lab, nat.address, nat.port, 6) as held:
        client = Client(lab, nat.address, nat.port)
        client.start()
        try:
            traffic_before = client.answered
            while client.answered < traffic_before + 5:  # traffic is flowing before the change
                client.stopping.wait(0.05)
            current = director.read_service(nat.key)
            steps = plan(desired, [current], prune="exact", only={nat.key}, drain=False)
            assert [s.op for s in steps.steps] == [Op.EDIT_SERVICE, Op.EDIT_REAL_SERVER, Op.REMOVE_REAL_SERVER]
            result = apply(steps, director)
            answered_at_change = client.answered
            while client.answered < answered_at_change + 20:  # and after it
                client.stopping.wait(0.05)
        finally:
            client.stop()
        assert result.ok, str(result)
        assert client.failures == []
        after = director.read_service(nat.key)
        assert after.scheduler == desired.services[0].scheduler
        assert {rs.key: rs.weight for rs in after.real_servers} == {
            rs1: kept[rs1].weight + 3,
            rs2: kept[rs2].weight,
        }
        # Not reset: the service's counter holds every connection of the test, those before the change
        # included (a delete and add would have started it again). The kernel folds it every 2 s.
        made = 6 + sum(held.values()) + client.answered
        deadline = time.monotonic() + 6
        while director.read_service(nat.key).stats.connections < made and time.monotonic() < deadline:
            time.sleep(0.25)
        assert director.read_service(nat.key).stats.connections >= made
        for rs in after.real_servers:
            name = nat.name_of(rs.key)
            assert rs.active_connections >= held[name], f"{name}: held connections lost"
