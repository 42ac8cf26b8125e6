"""Passive detection against the real kernel: a refused real server is judged, clients' own failures are not.

The detector (exporter.passive) reads the director's /proc/net/ip_vs_conn
and its weights every 0.2 s while a client makes 40 new connections a second. A real server
whose listener is gone (its kernel answers the SYN with a RST, as for a closed
port: an iptables REJECT --reject-with tcp-reset on the port) is judged within
a few failed requests, for NAT and for direct routing, over IPv4 and IPv6, and a
blackholed one (its SYNs dropped) by the handshake timeout; clients that reset their
own connections, abandon their handshakes, and a SYN flood from a spoofed
range (of the service's family) get no verdict at all. The lab's real servers send their DR replies back
through the director; ``direct_return`` gives one a leg on the client LAN, so
that the director sees only the client's side, as in a textbook DR setup.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab import passive_soak, synflood
from lab.topology import Lab, LabService, Node
from lvsguard.config.passive import PassiveConfig
from lvsguard.exporter.passive.metrics import HANDSHAKE_FAILURES, PassiveMetrics
from lvsguard.exporter.passive.rule import Verdict
from lvsguard.exporter.passive.runner import PassiveDetector
from lvsguard.ipvs import open_reader
from lvsguard.ipvs.netns import entered
from tests.integration.test_reload import Exporter
from tests.waiting import wait_for

pytestmark = pytest.mark.kernel

RATE = 40.0  # new connections a second
CONFIG = PassiveConfig(enabled=True, interval=0.2, handshake_timeout=2.0)


def _sh(netns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *args], check=True, capture_output=True)


@contextmanager
def refused(node: Node, port: int, *, ipv6: bool = False) -> Iterator[None]:
    """The real server's listener on ``port`` is gone: its kernel answers each SYN with a RST."""
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "REJECT", "--reject-with", "tcp-reset"]
    tool = "ip6tables-legacy" if ipv6 else "iptables-legacy"
    _sh(node.netns, tool, "-I", *rule)
    try:
        yield
    finally:
        _sh(node.netns, tool, "-D", *rule)


@contextmanager
def blackholed(node: Node, port: int, *, ipv6: bool = False) -> Iterator[None]:
    """The real server drops the SYNs to ``port``: no answer at all."""
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
    tool = "ip6tables-legacy" if ipv6 else "iptables-legacy"
    _sh(node.netns, tool, "-I", *rule)
    try:
        yield
    finally:
        _sh(node.netns, tool, "-D", *rule)


@contextmanager
def direct_return(
    lab: Lab, node: Node, address: str = "198.51.100.31", address6: str = "2001:db8:c::31"
) -> Iterator[None]:
    """Give ``node`` a leg on the client LAN: its replies to clients bypass the director (textbook DR), both families."""
    port = f"c-{node.name}x"
    _sh(lab.switch, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth9", "netns", node.netns)
    _sh(lab.switch, "ip", "link", "set", port, "master", "br-client", "up")
    _sh(node.netns, "ip", "addr", "add", f"{address}/24", "dev", "eth9")
    _sh(node.netns, "ip", "addr", "add", f"{address6}/64", "dev", "eth9", "nodad")
    _sh(node.netns, "ip", "link", "set", "eth9", "up")
    try:
        yield
    finally:
        _sh(lab.switch, "ip", "link", "del", port)


@dataclass
class Client:
    """New connections at ``rate`` a second on average, in a thread: one HTTP request each, or a reset or abandoned handshake."""

    lab: Lab
    service: LabService
    rate: float = RATE
    mode: str = "request"  # request | reset (RST right after the handshake) | abandon (closed before the SYN-ACK)
    failures: list[float] = field(default_factory=list)  # monotonic times of failed requests
    done: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _one(self) -> None:
        family = socket.AF_INET6 if ":" in self.service.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if self.mode == "abandon":
                sock.setblocking(False)
                try:
                    sock.connect((self.service.address, self.service.port))
                except BlockingIOError:
                    pass
                return
            sock.settimeout(1.0)
            sock.connect((self.service.address, self.service.port))
            if self.mode == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            sock.sendall(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
            while sock.recv(4096):
                pass
        except OSError:
            self.failures.append(time.monotonic())
        finally:
            sock.close()
            self.done += 1

    def _run(self) -> None:
        """Poisson arrivals: evenly paced clients would fall in step with the round-robin scheduler."""
        rng = random.Random(self.mode)
        with entered(self.lab.client.netns):
            next_at = time.monotonic()
            while not self._stop.is_set():
                self._one()
                next_at += rng.expovariate(self.rate)
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Client:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass
class Watch:
    """The detector on its thread, its verdicts collected."""

    detector: PassiveDetector
    verdicts: list[tuple[float, Verdict]] = field(default_factory=list)


@pytest.fixture
def watch(lab: Lab) -> Iterator[Watch]:
    holder: list[Watch] = []
    detector = PassiveDetector(
        CONFIG,
        lab.director.netns,
        PassiveMetrics(),
        on_verdict=lambda v: holder[0].verdicts.append((time.monotonic(), v)),
        weights=open_reader(lab.director.netns),  # as the exporter's table source reads them
    )
    holder.append(Watch(detector))
    detector.start()
    try:
        time.sleep(0.5)  # the baseline pass
        yield holder[0]
    finally:
        detector.stop()


def _kill_and_wait(
    lab: Lab, watch: Watch, service: LabService, node: Node, port: int, *, drop: bool = False
) -> tuple[Verdict, int]:
    """Refuse (or drop) on ``node`` under client traffic; the verdict and how many client requests failed before it."""
    with Client(lab, service) as client:
        time.sleep(5.0)  # the peers' history: half the window
        assert client.failures == [] and watch.verdicts == []
        ipv6 = ":" in service.address
        with blackholed(node, port, ipv6=ipv6) if drop else refused(node, port, ipv6=ipv6):
            killed_at = time.monotonic()
            wait_for(
                lambda: watch.verdicts,
                f"a passive verdict on {node.name} of {service}",
                timeout=10.0,
                detail=lambda: (
                    f"client: {client.done} done, {len(client.failures)} failed\n"
                    + "".join(watch.detector.metrics.chunks())
                ),
            )
        at, verdict = watch.verdicts[0]
        failed = sum(1 for t in client.failures if killed_at <= t <= at)
        time.sleep(0.5)
    return verdict, failed


@pytest.mark.parametrize("name", ["nat", "dr", "nat6", "dr6"])
def test_a_refused_real_server_is_judged_alone(lab: Lab, watch: Watch, name: str) -> None:
    service = lab.services[name]
    node = lab.real_servers[0]
    verdict, failed = _kill_and_wait(lab, watch, service, node, service.backends[0][0].port)
    assert (verdict.service, verdict.real_server, verdict.reason) == (
        service.key,
        service.real_server("rs1"),
        "refused",
    )
    assert {v.real_server for _, v in watch.verdicts} == {service.real_server("rs1")}
    assert failed <= 15, f"{failed} failed requests before the verdict"
    print(f"\n{name}: verdict after {failed} failed requests at {RATE:g} new connections/s: {verdict.message()}")


@pytest.mark.parametrize("name", ["dr", "dr6"])
def test_refused_behind_direct_routing_is_a_timeout(lab: Lab, watch: Watch, name: str) -> None:
    """The RST goes straight to the client: the director sees the SYN only, and judges by the handshake timeout."""
    service, node = lab.services[name], lab.real_servers[2]
    with direct_return(lab, node):
        verdict, failed = _kill_and_wait(lab, watch, service, node, 80)
    assert (verdict.real_server, verdict.reason) == (service.real_server("rs3"), "timeout")
    assert failed <= 2 * RATE / len(lab.real_servers) * (CONFIG.handshake_timeout + 1.0)
    print(f"\n{name}, direct return: verdict after {failed} failed requests: {verdict.message()}")


@pytest.mark.parametrize("name", ["nat", "dr", "nat6", "dr6"])
def test_a_blackholed_real_server_is_judged_by_the_handshake_timeout(lab: Lab, watch: Watch, name: str) -> None:
    service, node = lab.services[name], lab.real_servers[1]
    verdict, failed = _kill_and_wait(lab, watch, service, node, service.backends[1][0].port, drop=True)
    assert (verdict.real_server, verdict.reason) == (service.real_server("rs2"), "timeout")
    assert {v.real_server for _, v in watch.verdicts} == {service.real_server("rs2")}
    print(f"\n{name}, blackholed: verdict after {failed} failed requests: {verdict.message()}")


@pytest.mark.parametrize("name", ["nat", "dr", "nat6", "dr6"])
def test_clients_failing_their_own_handshakes_get_no_verdict(lab: Lab, watch: Watch, name: str) -> None:
    """Resets, abandoned handshakes and a spoofed SYN flood, over normal traffic: they fail on every peer alike."""
    service = lab.services[name]
    with (
        Client(lab, service),
        Client(lab, service, mode="reset", rate=15),
        Client(lab, service, mode="abandon", rate=10),
    ):
        flooded = 0
        for _ in range(20):
            flooded += synflood.syn_flood(lab.client.netns, service.address, service.port, flooded, 100)
            time.sleep(1.0)
    time.sleep(CONFIG.handshake_timeout + 1.0)
    text = "".join(watch.detector.metrics.chunks())  # what /metrics serves
    failures = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == HANDSHAKE_FAILURES.name]
    total = sum(s.value for s in failures)
    assert total > 2000, f"the detector saw only {total} failed handshakes"
    assert watch.verdicts == [], _history(watch)


def _history(watch: Watch) -> str:
    """What the rule saw of each real server: (attempts, failures) of its recent passes, oldest first."""
    lines = [v.message() for _, v in watch.verdicts]
    for (service, rs), b in watch.detector.judge._backends.items():
        passes = " ".join(f"{p.attempts}/{sum(p.failures.values())}" for p in b.history)
        lines.append(f"{service} {rs}: {passes}")
    return "\n".join(lines)


def test_the_exporter_serves_the_verdict(lab: Lab, tmp_path: Path) -> None:
    """``lvsguard exporter`` with ``passive.enabled``: the verdict in its log and the series on /metrics."""
    config = tmp_path / "lvsguard.yaml"
    config.write_text(
        lab.config_yaml(listen="127.0.0.1:0") + "probes: {enabled: false}\npassive: {enabled: true, interval: 0.2s}\n"
    )
    exporter = Exporter(config)  # it logs passive_started before exporter_started
    try:
        assert any("passive_started" in line for line in exporter.log)
        with Client(lab, lab.nat):
            time.sleep(3.0)
            with refused(lab.real_servers[0], 8080):
                exporter.wait_for(r"passive_verdict service=\"TCP 192.0.2.10:80\" real_server=10.0.1.2:8080 ")
        text = exporter.metrics()
    finally:
        exporter.stop()
    labels = (
        'local_address="192.0.2.10",local_port="80",remote_address="10.0.1.2",remote_port="8080",'
        'proto="TCP",local_mark="",service="nat",real_server="rs1"'
    )
    refusals = re.search(rf'lvs_backend_handshake_failures_total{{{labels},reason="refused"}} (\d+)', text)
    assert refusals is not None and int(refusals.group(1)) >= 2, text
    verdicts = re.search(rf"lvs_backend_passive_verdicts_total{{{labels}}} (\d+)", text)
    assert verdicts is not None and int(verdicts.group(1)) >= 1, text  # 2 when the refusal outlasted a hold-down


FLOOD = 30.0  # spoofed SYNs a second: the peers' failure share stays under 1 - margin beside 40 requests a second


@pytest.mark.parametrize("name", ["nat", "dr6"])
def test_a_real_server_taken_out_by_someone_else_during_a_flood_is_not_judged(
    lab: Lab, watch: Watch, name: str
) -> None:
    """An operator's weight 0 on rs1 during a SYN flood, then its restore, twice: no verdict on rs1 or its peers.

    Out, rs1 gets no new connection, but the flood's handshakes it had
    (SYN_RECV, answered into nowhere) time out over the next handshake
    timeout: every handshake of it that ends then fails, while its peers fail
    only the flood's share. Those are the clients' doing, on a real server
    someone else took out.
    """
    service = lab.services[name]
    full = service.weights["rs1"]
    flood = passive_soak.Flood(lab, [service], FLOOD)
    with synflood.routed(lab.director.netns), Client(lab, service):
        flood.start()
        try:
            time.sleep(CONFIG.window)  # the peers' history: a whole window of traffic and flood
            for _ in range(2):
                lab.set_weight(service, "rs1", 0)
                time.sleep(CONFIG.handshake_timeout + 3.0)  # its handshakes end, all flooded ones failing
                lab.set_weight(service, "rs1", full)
                time.sleep(CONFIG.handshake_timeout + 3.0)  # it gets traffic and flood again
        finally:
            flood.stop()
            lab.set_weight(service, "rs1", full)
    assert flood.sent > 0
    assert watch.verdicts == [], _history(watch)
