"""Passive detection fused with an active check, end to end: a real exporter, a real actuator, the lab's kernel.

``lvsguard exporter`` runs with ``passive.enabled`` and a tcp check of one
service's real servers every 5 s, publishing to a real actuator (in this
process, on loopback). A client makes 40 new connections a second through
the VIP. rs1's listener is killed (its kernel answers each SYN with a RST:
``refused`` from test_passive_kernel), or its SYNs are dropped (``blackholed``):
the passive verdict sets its weight to 0 in the kernel long before the 5 s
check could (a blackholed one after the handshake timeout), recorded with source
``passive``. The listener stays dead past the verdict's hold-down: the weight
stays 0, since the check still fails. Then it listens again, and the weight
comes back only after the check has passed ``rise`` times. The check's own
``fall`` (5 at 5 s) is far longer than the outage, so the passive verdict is
the only hold on rs1: what brings it back is the passive release. (At ``fall:
3`` a loaded host, with the iptables rule taking seconds to go and a check
timing out on a live server, let the check fall too.)

Both sources: ``table`` (the connection table read every 0.2 s) and
``conntrack`` (events, judged on the first refusal; conntrack on in the
director, ``lab.conntrack``), each on the NAT service with three kills. One
kill each covers the rest: the table source on ``dr``, ``nat6`` and ``dr6``
refused and on ``dr6`` blackholed, the conntrack source (NAT only: DR events
name no real server) on ``nat6`` refused and ``nat`` blackholed.

Figures are printed (pytest -s): failed client requests per kill, time to
weight 0, time from the listener's return to the weight's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import conntrack
from lab.actuator import running_actuator
from lab.topology import Lab, LabService
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.ipvs.netlink import NetlinkIPVS
from tests.integration.test_passive_kernel import RATE, Client, blackholed, refused
from tests.integration.test_reload import Exporter
from tests.waiting import wait_for

pytestmark = pytest.mark.kernel

TOKEN = "passive-fusion-kernel-token-0123456789"
INTERVAL = 5.0  # the active check's
RISE = 2
HOLDDOWN = 5.0
OUTAGE = HOLDDOWN + 3.0  # the listener stays dead past the hold-down: the check, not the clock, decides
SOURCES = {
    "table": "{enabled: true, interval: 0.2s, handshake_timeout: 2s, holddown_min: %gs}",
    "conntrack": "{enabled: true, source: conntrack, handshake_timeout: 2s, min_failures: 1, min_passes: 1,"
    " chance: 0.05, holddown_min: %gs}",
}


@dataclass(frozen=True)
class Case:
    source: str  # "table" or "conntrack"
    service: str  # the lab service's name
    drop: bool  # blackholed (SYNs dropped) rather than refused
    kills: int

    def __str__(self) -> str:
        return f"{self.source}-{self.service}-{'blackholed' if self.drop else 'refused'}"


CASES = [
    Case("table", "nat", False, 3),
    Case("conntrack", "nat", False, 3),
    Case("table", "dr", False, 1),
    Case("table", "nat6", False, 1),
    Case("table", "dr6", False, 1),
    Case("table", "dr6", True, 1),
    Case("conntrack", "nat6", False, 1),
    Case("conntrack", "nat", True, 1),
]


@dataclass
class Kill:
    failed_before_zero: int  # client requests that failed from the kill until the weight was 0
    failed_after_zero: int  # and after (connections already on their way to rs1)
    to_zero: float  # seconds from the kill command's return to weight 0 in the kernel
    first_failure_to_zero: float  # seconds from the first failed request to weight 0
    back_after: float  # seconds from the listener's return to the weight's


Rig = tuple[Case, Exporter, str, NetlinkIPVS]


@pytest.fixture(params=CASES, ids=str)
def rig(lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    case: Case = request.param
    source, service = case.source, lab.services[case.service]
    if source == "conntrack":
        conntrack.track(lab.director.netns)
        request.addfinalizer(lambda: conntrack.untrack(lab.director.netns))
    token = tmp_path / "token"
    token.write_text(f"probes:{TOKEN}\n")
    token.chmod(0o600)
    settings = ActuatorSettings(tokens={"probes": TOKEN}, hold_down=0.0, job_poll_interval=0.2)
    ledger = str(tmp_path / "ledger.db")
    reader = NetlinkIPVS(lab.director.netns)
    with running_actuator(settings, lab.director.netns, ledger) as url:
        config = tmp_path / "lvsguard.yaml"
        config.write_text(
            lab.config_yaml(listen="127.0.0.1:0")
            + "probes:\n"
            + f"  checks: [{{type: tcp, service: {service.name}, interval: {INTERVAL:g}s, timeout: 1s, rise: {RISE},"
            + " fall: 5}]\n"
            + f"  publish: {{url: '{url}', token_file: '{token}'}}\n"
            + f"passive: {SOURCES[source] % HOLDDOWN}\n"
        )
        exporter = Exporter(config)
        try:
            yield case, exporter, ledger, reader
        finally:
            exporter.stop()
            for name, w in service.weights.items():
                if _weight(reader, service, name) != w:
                    lab.set_weight(service, name, w)
            reader.close()


def exporter_source(exporter: Exporter) -> str:
    return "conntrack" if any("source=conntrack" in line for line in exporter.log) else "table"


def _weight(reader: NetlinkIPVS, service: LabService, name: str) -> int:
    svc = reader.read().service(service.key)
    assert svc is not None
    rs = svc.real_server(service.real_server(name))
    assert rs is not None
    return rs.weight


def test_a_killed_listener_is_out_at_once_and_back_when_the_check_sees_it(lab: Lab, rig: Rig) -> None:
    case, exporter, ledger_path, reader = rig
    service, node = lab.services[case.service], lab.real_servers[0]
    key, full = service.real_server("rs1"), service.weights["rs1"]
    ipv6 = ":" in service.address
    kills: list[Kill] = []
    with Client(lab, service) as client:
        for _ in range(case.kills):
            time.sleep(5.0)  # the peers' history, and more than one hold-down since the last return
            assert _weight(reader, service, "rs1") == full
            before = len(client.failures)
            with blackholed(node, key.port, ipv6=ipv6) if case.drop else refused(node, key.port, ipv6=ipv6):
                killed_at = time.monotonic()
                wait_for(lambda: _weight(reader, service, "rs1") == 0, "rs1 at weight 0", timeout=10.0, step=0.02)
                zero_at = time.monotonic()
                time.sleep(max(0.0, killed_at + OUTAGE - time.monotonic()))
                assert _weight(reader, service, "rs1") == 0, "rs1 came back while its listener was dead"
            reopened_at = time.monotonic()
            wait_for(
                lambda: _weight(reader, service, "rs1") == full,
                "rs1 back",
                timeout=RISE * INTERVAL + 10.0,
                step=0.05,
                detail=lambda: "\n".join(line for line in exporter.log if "passive" in line)[-4000:],
            )
            back_at = time.monotonic()
            failures = client.failures[before:]
            kills.append(
                Kill(
                    failed_before_zero=sum(1 for t in failures if t <= zero_at),
                    failed_after_zero=sum(1 for t in failures if t > zero_at),
                    to_zero=zero_at - killed_at,
                    first_failure_to_zero=zero_at - failures[0] if failures else 0.0,
                    back_after=back_at - reopened_at,
                )
            )
            exporter.wait_for(
                rf'passive_released service="{re.escape(str(service.key))}" real_server={re.escape(str(key))}'
                r' reason="tcp up"'
            )
    for n, k in enumerate(kills, 1):
        print(
            f"\n{case}: kill {n} at {RATE:g} new connections/s, check every {INTERVAL:g} s:"
            f" {k.failed_before_zero} failed requests before weight 0 (+{k.failed_after_zero} after), weight 0"
            f" {k.to_zero:.2f} s after the kill command returned ({k.first_failure_to_zero:.2f} s after the first"
            f" failed request), back {k.back_after:.1f} s after the listener"
        )
    assert exporter_source(exporter) == case.source
    if not case.drop:  # a blackholed one is judged a handshake timeout after its first SYN: printed above
        assert all(k.to_zero < INTERVAL for k in kills), kills  # before a 5 s check could have seen it
    assert all(k.back_after >= 0.5 for k in kills), kills  # not at the listener's return: at the check's passes
    ledger = Ledger.open(ledger_path)
    try:
        events = [(e.source, e.action, e.result) for e in ledger.audit_events(limit=1000) if e.real_server == str(key)]
    finally:
        ledger.close()
    assert events.count(("passive", "quarantine", "applied")) == case.kills, events
    assert events.count(("passive", "restore", "applied")) == case.kills, events
    assert {source for source, _, _ in events} == {"passive"}, events  # the check never fell: the verdict's hold only
    assert not [line for line in exporter.log if "passive_holds_unread" in line]  # it read the actuator's holds
    text = exporter.metrics()
    assert "lvs_backend_passive_verdicts_total" in text
