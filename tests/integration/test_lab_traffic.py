"""The lab carries real traffic through every kind of IPVS service, and the kernel counts it exactly.

Traffic goes once through every service (module fixture ``sent``); each test
then checks one service: the real servers that answered follow the scheduler
and the weights, and the kernel's per-real-server connection counters (read
with ``ipvsadm -Ln --stats --exact``) moved by exactly what the client did.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from lab import bigtable, ipvsadm, traffic
from lab.topology import ConnectionCounts, Lab, LabService
from lvsguard.model import Forward, RealServerKey, ServiceKey, VirtualService

pytestmark = pytest.mark.kernel

ROUNDS = 4  # whole scheduler cycles per port: rr and wrr then split exactly by weight


@dataclass(frozen=True)
class Sent:
    """What the client did through one service."""

    before: ConnectionCounts  # the kernel's counters before the traffic
    by_port: dict[int, Counter[str]]  # client-side port -> real servers that answered

    @property
    def total(self) -> Counter[str]:
        return sum(self.by_port.values(), Counter())


def cycle_split(service: LabService, rounds: int) -> Counter[str]:
    """Connections per real server over ``rounds`` whole cycles of rr (one each) or wrr (its weight)."""
    weights = service.weights
    if service.config.scheduler == "rr":
        return Counter({name: rounds for name in weights})
    assert service.config.scheduler == "wrr", f"no exact split known for {service.config.scheduler}"
    return Counter({name: weight * rounds for name, weight in weights.items() if weight})


def cycle_length(service: LabService) -> int:
    return sum(cycle_split(service, 1).values())


def send(lab: Lab, service: LabService, port: int, n: int) -> Counter[str]:
    if service.key.protocol == "UDP":
        return traffic.udp_exchange(lab, service.address, port, n)
    return traffic.http_get(lab, service.address, port, n)


@pytest.fixture(scope="module")
def sent(lab: Lab) -> dict[str, Sent]:
    """ROUNDS cycles of new connections through every port of every service."""
    result = {}
    for service in lab.services.values():
        before = lab.connections(service)
        n = ROUNDS * cycle_length(service)
        result[service.name] = Sent(before, {port: send(lab, service, port, n) for port in service.ports})
    return result


SERVICES = ["nat", "dr", "fwmark", "nat6", "dr6", "udp"]


@pytest.mark.parametrize("name", SERVICES)
def test_real_servers_answer_in_the_weighted_split(lab: Lab, sent: dict[str, Sent], name: str) -> None:
    service = lab.services[name]
    for port, seen in sent[name].by_port.items():
        assert seen == cycle_split(service, ROUNDS), f"{service} port {port}"


@pytest.mark.parametrize("name", SERVICES)
def test_kernel_counts_exactly_the_clients_connections(lab: Lab, sent: dict[str, Sent], name: str) -> None:
    service = lab.services[name]
    expected = sent[name].total
    delta = lab.wait_for_connections(service, sent[name].before, expected)
    assert delta == ConnectionCounts(sum(expected.values()), expected)


def shape(services: Iterable[VirtualService]) -> dict[ServiceKey, tuple[str, set[tuple[RealServerKey, int, Forward]]]]:
    """Scheduler and real servers (key, weight, forwarding) of each service, whatever the listing order."""
    return {s.key: (s.scheduler, {(rs.key, rs.weight, rs.forward) for rs in s.real_servers}) for s in services}


def test_director_table_is_the_lab_config(lab: Lab) -> None:
    assert shape(lab.read_table().services) == shape(s.config for s in lab.services.values())


def active_connections(lab: Lab, service: LabService) -> Counter[str]:
    kernel = lab.read_table().service(service.key)
    assert kernel is not None
    return +Counter({service.name_of(rs.key): rs.active_connections for rs in kernel.real_servers})


def settled_active_connections(lab: Lab, service: LabService, expected: Counter[str]) -> Counter[str]:
    """Active counts change with the TCP states IPVS sees; give a closing FIN a moment to pass."""
    deadline = time.monotonic() + 5.0
    while (active := active_connections(lab, service)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return active


def test_held_connections_are_active_on_their_real_servers(lab: Lab) -> None:
    service = lab.nat
    assert settled_active_connections(lab, service, Counter()) == Counter()
    with traffic.hold_connections(lab, service.address, service.port, 2 * cycle_length(service)) as held:
        assert held == cycle_split(service, 2)
        assert active_connections(lab, service) == held
    assert settled_active_connections(lab, service, Counter()) == Counter()


def test_weight_zero_takes_new_connections_away(lab: Lab) -> None:
    service = lab.nat
    drained = service.backends[0][1]
    lab.set_weight(service, drained, 0)
    try:
        seen = traffic.http_get(lab, service.address, service.port, 3 * cycle_length(service))
    finally:
        lab.set_weight(service, drained, service.weights[drained])
    assert drained not in seen
    assert sum(seen.values()) == 3 * cycle_length(service)
    assert (
        lab.read_table().service(service.key).real_server(service.real_server(drained)).weight
        == service.weights[drained]
    )


def test_big_table_is_built_as_planned(lab: Lab) -> None:
    """lab.bigtable (used by the scale tests and benchmarks) creates exactly plan(); ipvsadm is the witness."""
    big = bigtable.build(services=50, per_service=200, netns="lvs-big-test")
    try:
        listed = ipvsadm.read_table(netns=big.netns)
    finally:
        bigtable.destroy(big.netns)
    assert big.real_server_count == 10_000
    assert listed.real_server_count == 10_000
    assert shape(listed.services) == shape(big.services)
