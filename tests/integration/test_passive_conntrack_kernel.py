"""Passive detection from conntrack events against the real kernel: judged on the first refusal, never on clients.

The detector (``passive.source: conntrack``) reads ctnetlink events, filtered
in the kernel, on the lab director with ``net.ipv4.vs.conntrack=1`` and a
conntrack rule per family (``lab.conntrack``), while a client makes 40 new
connections a second (Poisson arrivals). The rule is set to judge on one
failure (``min_failures: 1``, ``min_passes: 1``, ``chance: 0.05``), which this
source allows: a refusal here is the real server's RST to the SYN, never a
client's reset or an abandoned handshake (those were answered).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab import conntrack, synflood
from lab.topology import Lab, LabService, Node
from lvsguard.config.passive import PassiveConfig
from lvsguard.exporter.passive.metrics import HANDSHAKE_FAILURES, PassiveMetrics
from lvsguard.exporter.passive.rule import Verdict
from lvsguard.exporter.passive.runner import PassiveDetector
from tests.integration.test_passive_kernel import RATE, Client, Watch, _history, blackholed, refused
from tests.waiting import wait_for

pytestmark = pytest.mark.kernel

CONFIG = PassiveConfig(
    enabled=True, source="conntrack", handshake_timeout=2.0, min_failures=1, min_passes=1, chance=0.05
)


@pytest.fixture(scope="module")
def tracked(lab: Lab) -> Iterator[Lab]:
    conntrack.track(lab.director.netns)
    try:
        yield lab
    finally:
        conntrack.untrack(lab.director.netns)


@pytest.fixture
def watch(tracked: Lab) -> Iterator[Watch]:
    holder: list[Watch] = []
    detector = PassiveDetector(
        CONFIG,
        tracked.director.netns,
        PassiveMetrics(),
        on_verdict=lambda v: holder[0].verdicts.append((time.monotonic(), v)),
    )
    holder.append(Watch(detector))
    detector.start()
    try:
        time.sleep(0.5)  # the socket is bound (and ctnetlink loaded) before traffic starts
        yield holder[0]
    finally:
        detector.stop()


@dataclass
class Requests(Client):
    """The test's client, telling failed handshakes (refused, timed out) from requests cut after the handshake.

    The iptables rule that kills the listener also resets the connections
    already open to it: those requests fail whatever detects the kill.
    """

    handshakes_failed: list[float] = field(default_factory=list)

    def _one(self) -> None:
        family = socket.AF_INET6 if ":" in self.service.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            try:
                sock.connect((self.service.address, self.service.port))
            except OSError:
                self.handshakes_failed.append(time.monotonic())
                raise
            sock.sendall(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
            while sock.recv(4096):
                pass
        except OSError:
            self.failures.append(time.monotonic())
        finally:
            sock.close()
            self.done += 1


def _kill_and_wait(
    lab: Lab, watch: Watch, service: LabService, node: Node, port: int, *, drop: bool = False
) -> tuple[Verdict, int]:
    """Refuse (or drop) on ``node`` under client traffic; the verdict and how many client requests failed before it.

    The clock starts at the first failed request after the rule is in: the
    rule takes effect while ``iptables`` runs, a second or more under UML.
    """
    with Requests(lab, service) as client:
        time.sleep(5.0)  # the peers' history: half the window
        assert client.failures == [] and watch.verdicts == []
        ipv6 = ":" in service.address
        with blackholed(node, port, ipv6=ipv6) if drop else refused(node, port, ipv6=ipv6):
            wait_for(
                lambda: watch.verdicts,
                f"a passive verdict on {node.name} of {service}",
                timeout=10.0,
                detail=lambda: f"client: {client.done} done, {len(client.failures)} failed",
            )
        at, verdict = watch.verdicts[0]
        failed = [t for t in client.handshakes_failed if t <= at]
        cut = len([t for t in client.failures if t <= at]) - len(failed)
        time.sleep(0.5)
    print(f"\nfailed handshakes before the verdict, seconds before it: {[round(at - t, 3) for t in failed]}; {cut} cut")
    return verdict, len(failed)


@pytest.mark.parametrize("name", ["nat", "nat6"])
def test_a_refused_real_server_is_judged_on_its_first_refusal(tracked: Lab, watch: Watch, name: str) -> None:
    service = tracked.services[name]
    verdict, failed = _kill_and_wait(tracked, watch, service, tracked.real_servers[0], service.backends[0][0].port)
    assert (verdict.service, verdict.real_server, verdict.reason) == (
        service.key,
        service.real_server("rs1"),
        "refused",
    )
    assert {v.real_server for _, v in watch.verdicts} == {service.real_server("rs1")}
    # The verdict comes on the first refusal, or the first two when they come within milliseconds (rs1 gets
    # 20 a second, in bursts; the second fails while the verdict on the first is being made).
    assert verdict.failures <= 2 and failed <= 2, f"{failed} failed handshakes before the verdict: {verdict.message()}"
    print(f"\n{name}: verdict after {failed} failed handshakes at {RATE:g} new connections/s: {verdict.message()}")


@pytest.mark.parametrize("name", ["nat", "nat6"])
def test_a_blackholed_real_server_is_judged_by_the_handshake_timeout(tracked: Lab, watch: Watch, name: str) -> None:
    service, node = tracked.services[name], tracked.real_servers[1]
    verdict, failed = _kill_and_wait(tracked, watch, service, node, service.backends[1][0].port, drop=True)
    assert (verdict.real_server, verdict.reason) == (service.real_server("rs2"), "timeout")
    assert failed <= 1 + RATE * CONFIG.handshake_timeout, "the verdict came later than the handshake timeout"
    print(f"\n{name}, blackholed: verdict after {failed} failed requests: {verdict.message()}")


@pytest.mark.parametrize("name", ["nat", "nat6"])
def test_clients_failing_their_own_handshakes_get_no_verdict(tracked: Lab, watch: Watch, name: str) -> None:
    """Resets, abandoned handshakes and a spoofed SYN flood over normal traffic: all answered, none a failure.

    The flood comes from a range of the service's family, which the director routes out (``synflood.routed``).
    """
    service = tracked.services[name]
    with (
        synflood.routed(tracked.director.netns),
        Client(tracked, service),
        Client(tracked, service, mode="reset", rate=15),
        Client(tracked, service, mode="abandon", rate=10),
    ):
        flooded = 0
        for _ in range(20):
            flooded += synflood.syn_flood(tracked.client.netns, service.address, service.port, flooded, 100)
            time.sleep(1.0)
        time.sleep(CONFIG.handshake_timeout + 1.0)
    assert watch.verdicts == [], _history(watch)
    text = "".join(watch.detector.metrics.chunks())
    failed = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == HANDSHAKE_FAILURES.name]
    assert failed and not [s for s in failed if s.value], failed  # all answered: the clients' and the flood's


@pytest.mark.parametrize("name", ["dr", "dr6"])
def test_direct_routing_is_not_attributed(tracked: Lab, watch: Watch, name: str) -> None:
    """A DR connection's reply tuple is the VIP: its events are seen and dropped, no real server is judged."""
    service = tracked.services[name]
    with Client(tracked, service) as client, refused(tracked.real_servers[0], 80, ipv6=":" in service.address):
        time.sleep(3.0)
    events = watch.detector.events
    assert events is not None and events.unattributed >= client.done
    assert watch.verdicts == []
