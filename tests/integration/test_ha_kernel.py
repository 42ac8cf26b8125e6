"""Two directors with real keepalived (VRRPv3) and the IPVS sync daemon, driven by two real actuators.

The module builds its own cluster, ``lab.ha.HALab`` (the shared ``lab`` fixture
builds the single-director one), and one actuator per director in this process
(waitress on loopback, netlink in that director's namespace), each with its
director's keepalived track file and role file. Traffic comes from the client
namespace through the VRRP addresses. Tests run in file order and each one
leaves dir1 holding the VIPs, with no failover requested.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab import traffic
from lab.actuator import running_actuator
from lab.ha import (
    HALab,
    alertmanager_config,
    open_held,
    open_synced,
    served_again,
    survivors,
    sync_roles,
    sync_state,
    synced_connections,
)
from lab.keepalived import available as keepalived_available
from lab.monitoring import running_alertmanager
from lab.topology import LabService, in_lab_vm
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.exporter.collector import IPVSCollector
from lvsguard.exporter.exposition import Exposition
from lvsguard.exporter.keepalived import KeepalivedFifo
from lvsguard.ipvs.addresses import local_addresses
from lvsguard.ipvs.netlink import NetlinkIPVS
from tests.fakes import am_alert, am_payload
from tests.waiting import json_request, wait_for

pytestmark = pytest.mark.kernel

TOKEN = "ha-kernel-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
http = functools.partial(json_request, headers=AUTH)
HELD = 20  # long-lived connections per service in the sync tests
PORTS = {"dir1": 19921, "dir2": 19922}  # each actuator knows its peer's URL before either starts


@contextmanager
def actuator(lab: HALab, name: str, ledger: Path) -> Iterator[str]:
    """A running actuator for director ``name``, its peer the other director's; yields its base URL."""
    director = lab.director_named(name)
    peer = next(other for other in PORTS if other != name)
    settings = ActuatorSettings(
        tokens={"test": TOKEN},
        hold_down=0.0,
        job_poll_interval=0.2,
        failover_track_file=str(lab.track_file(name)),
        role_file=str(lab.role_file(name)),
        failover_peer_url=f"http://127.0.0.1:{PORTS[peer]}",
    )
    with running_actuator(settings, director.netns, str(ledger), port=PORTS[name]) as url:
        yield url


@pytest.fixture(scope="module")
def ha_lab() -> Iterator[HALab]:
    """The two-director cluster with preemption; torn down at the module's end."""
    if not (os.path.exists("/proc/net/ip_vs") and os.geteuid() == 0):
        pytest.skip("needs a kernel with IPVS and root (run it in the lab VM: make test)")
    if not in_lab_vm():
        pytest.skip("builds namespaces, IPVS services and keepalived: runs inside lab/vm.sh, or with FORCE=1")
    if not keepalived_available():
        pytest.fail("keepalived is not installed (Debian package keepalived; make apt)")
    cluster = HALab(preempt=True)
    cluster.build()
    try:
        yield cluster
    finally:
        cluster.teardown()


@pytest.fixture(scope="module")
def actuators(ha_lab: HALab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Base URLs of the actuators of dir1 and dir2."""
    directory = tmp_path_factory.mktemp("actuators")
    with ExitStack() as stack:
        yield {name: stack.enter_context(actuator(ha_lab, name, directory / f"{name}.db")) for name in ("dir1", "dir2")}


@pytest.fixture
def primary(ha_lab: HALab) -> Iterator[HALab]:
    """Checks that dir1 holds the VIPs before the test, and gives them back to it afterwards."""
    ha_lab.wait_for_vip_owner("dir1")
    yield ha_lab
    for name in ("dir1", "dir2"):
        if ha_lab.track_file(name).read_text().strip() != "0":
            ha_lab.track_file(name).write_text("0\n")
    if (
        ha_lab.vip_owners() != ("dir1",)
        or not all(k.running for k in ha_lab.keepalived.values())
        or not ha_lab.preempt
        or not ha_lab.sync
    ):
        ha_lab.restart_keepalived(preempt=True)


# --- the cluster -----------------------------------------------------------------------


def test_the_primary_holds_the_vips_and_every_service_answers_through_them(primary: HALab) -> None:
    lab = primary
    assert lab.vip_owners() == ("dir1",)
    assert lab.keepalived["dir1"].wait_for_role(("MASTER",)) == "MASTER"
    assert lab.keepalived["dir2"].wait_for_role(("BACKUP",)) == "BACKUP"
    n = len(lab.real_servers)
    for service in (lab.nat, lab.dr, lab.nat6):
        seen = traffic.http_get(lab, service.address, service.port, 2 * n)
        assert set(seen) == {rs.name for rs in lab.real_servers}, service
    assert sum(traffic.udp_exchange(lab, lab.udp.address, lab.udp.port, n).values()) == n


def test_the_sync_daemon_follows_the_vrrp_role(primary: HALab) -> None:
    lab = primary
    assert wait_for(
        lambda: sync_roles(lab, "dir1") == {"master"}, "dir1: master sync daemon", detail=lambda: sync_state(lab)
    )
    assert wait_for(
        lambda: sync_roles(lab, "dir2") == {"backup"}, "dir2: backup sync daemon", detail=lambda: sync_state(lab)
    )
    lab.track_file("dir1").write_text("1\n")
    lab.wait_for_vip_owner("dir2")
    assert wait_for(
        lambda: sync_roles(lab, "dir2") == {"master"},
        "dir2: master sync daemon after the failover",
        detail=lambda: sync_state(lab),
    )
    assert wait_for(
        lambda: sync_roles(lab, "dir1") == {"backup"},
        "dir1: backup sync daemon after the failover",
        detail=lambda: sync_state(lab),
    )


def test_the_exporter_reports_vrrp_state_sync_daemons_and_vip_ownership(primary: HALab) -> None:
    lab = primary
    fifo = KeepalivedFifo("unused: fed by the lab's FIFO follower")
    lab.keepalived["dir1"].listeners.append(fifo.feed)
    try:
        lab.track_file("dir1").write_text("1\n")
        lab.wait_for_vip_owner("dir2")
        wait_for(lambda: fifo.states().get("VI_1") and fifo.states()["VI_1"].state == "fault", "dir1 exported as fault")
        scraped = wait_for(
            lambda: scrape_swapped(lab),
            "the exporters to show the sync daemons swapped",
            detail=lambda: sync_state(lab),
        )
        lab.track_file("dir1").write_text("0\n")
        lab.wait_for_vip_owner("dir1")
        wait_for(lambda: fifo.states()["VI_1"].state == "master", "dir1 exported as master again")
    finally:
        lab.keepalived["dir1"].listeners.remove(fifo.feed)
    assert fifo.states()["VI_1"].priority == 150 and fifo.states()["VI_1"].transitions >= 3  # fault, backup, master
    owned = {
        name: {s.labels["vip"] for s in samples["lvs_director_vip_owned"] if s.value == 1}
        for name, samples in scraped.items()
    }
    assert owned == {"dir1": set(), "dir2": {lab.nat.address, lab.dr.address, lab.nat6.address}}


def running_roles(samples: dict[str, list[Any]]) -> set[str]:
    return {s.labels["role"] for s in samples["ipvs_sync_daemon_up"] if s.value == 1}


def scrape_swapped(lab: HALab) -> dict[str, dict[str, list[Any]]] | None:
    """Both directors' scrapes once they show dir2's sync daemon as master and dir1's as backup, else None."""
    scraped = {name: scrape(lab, name) for name in ("dir1", "dir2")}
    if (running_roles(scraped["dir1"]), running_roles(scraped["dir2"])) == ({"backup"}, {"master"}):
        return scraped
    return None


def scrape(lab: HALab, name: str) -> dict[str, list[Any]]:
    """One scrape of the exporter's text for director ``name``, parsed: samples by family name."""
    netns = lab.director_named(name).netns
    with NetlinkIPVS(netns) as reader:
        collector = IPVSCollector(reader, addresses=lambda: local_addresses(netns))
        text = Exposition(collector).render()
    return {family.name: list(family.samples) for family in text_string_to_metric_families(text)}


# --- failover through the actuator -----------------------------------------------------


def test_failover_through_the_actuator_moves_the_vips_and_release_brings_them_back(
    primary: HALab, actuators: dict[str, str], record_property: Callable[[str, object], None]
) -> None:
    lab = primary
    status, body = http("POST", f"{actuators['dir1']}/api/v1/failover", {"reason": "kernel test"})
    replied = time.monotonic()
    moved = lab.wait_for_vip_owner("dir2", poll=0.002)
    served = served_again(lab, lab.nat, replied)
    assert status == 200 and body["result"] == "applied", body
    record_property("failover_seconds", round(moved, 3))
    print(
        f"\nfailover: VIPs on dir2 alone {moved * 1000:.0f} ms after the actuator's reply, "
        f"the client served through dir2 after {served * 1000:.0f} ms"
    )
    seen = traffic.http_get(lab, lab.nat.address, lab.nat.port, 6)
    assert sum(seen.values()) == 6
    assert lab.keepalived["dir1"].wait_for_role(("FAULT",)) == "FAULT"
    status, director = http("GET", f"{actuators['dir1']}/api/v1/director")
    assert status == 200 and director["role"] == "fault" and director["failover"]["requested"] is True
    assert [h["reason"] for h in director["failover"]["holders"]] == ["kernel test"]

    status, body = http("POST", f"{actuators['dir1']}/api/v1/failover/release", {})
    assert status == 200 and body["result"] == "applied", body
    back = lab.wait_for_vip_owner("dir1", poll=0.002)
    print(f"release: VIPs back on dir1 (preempt) {back * 1000:.0f} ms after the actuator's reply")
    assert lab.track_file("dir1").read_text().strip() == "0"
    status, audit = http("GET", f"{actuators['dir1']}/api/v1/audit")
    assert [e["action"] for e in audit["events"]][:2] == ["failover", "failover"]


def test_long_lived_connections_survive_a_failover_with_connection_sync(primary: HALab) -> None:
    lab = primary
    held = open_synced(lab, [lab.nat, lab.dr], HELD)
    try:
        lab.track_file("dir1").write_text("1\n")
        lab.wait_for_vip_owner("dir2")
        served_again(lab, lab.nat, time.monotonic())
        alive = {name: survivors(socks) for name, socks in held.items()}
    finally:
        for socks in held.values():
            for sock in socks:
                sock.close()
    print(f"\nwith sync: {alive} of {HELD} held connections per service survived the failover")
    assert alive == {"nat": HELD, "dr": HELD}


def test_without_connection_sync_the_long_lived_connections_break(primary: HALab) -> None:
    lab = primary
    lab.restart_keepalived(preempt=True, sync=False)
    assert (sync_roles(lab, "dir1"), sync_roles(lab, "dir2")) == (set(), set())
    held = {service.name: open_held(lab, service, HELD) for service in (lab.nat, lab.dr)}
    try:
        time.sleep(2.5)  # longer than the master's sync flush interval (2 s)
        assert synced_connections(lab, "dir2", held["nat"] + held["dr"]) == 0
        lab.track_file("dir1").write_text("1\n")
        lab.wait_for_vip_owner("dir2")
        served_again(lab, lab.nat, time.monotonic())
        alive = {name: survivors(socks) for name, socks in held.items()}
    finally:
        for socks in held.values():
            for sock in socks:
                sock.close()
    print(f"\nwithout sync: {alive} of {HELD} held connections per service survived the failover")
    assert alive == {"nat": 0, "dr": 0}
    assert sum(traffic.http_get(lab, lab.nat.address, lab.nat.port, 3).values()) == 3  # new connections are fine


def test_a_quarantine_sent_to_both_actuators_survives_the_failover(primary: HALab, actuators: dict[str, str]) -> None:
    lab, nat = primary, primary.nat
    key = nat.real_server("rs1")
    alert = am_alert("ha-q-rs1", service=str(nat.key), real_server=str(key), lvsguard_action="quarantine")
    for url in actuators.values():  # Alertmanager's receiver lists both directors' actuators
        status, body = http("POST", f"{url}/webhook/alertmanager", am_payload(alert))
        assert status == 200 and body["results"][0]["result"] == "applied", body
    for director in lab.directors:
        with NetlinkIPVS(director.netns) as kernel:
            assert kernel.read_service(nat.key).real_server(key).weight == 0, director.name  # type: ignore[union-attr]
    status, body = http("POST", f"{actuators['dir1']}/api/v1/failover", {"reason": "quarantine test"})
    assert status == 200, body
    lab.wait_for_vip_owner("dir2")
    served_again(lab, nat, time.monotonic())
    seen = traffic.http_get(lab, nat.address, nat.port, 12)
    assert sum(seen.values()) == 12 and "rs1" not in seen
    resolved = am_alert(
        "ha-q-rs1", status="resolved", service=str(nat.key), real_server=str(key), lvsguard_action="quarantine"
    )
    for url in actuators.values():
        status, body = http("POST", f"{url}/webhook/alertmanager", am_payload(resolved))
        assert status == 200, body
    status, body = http("POST", f"{actuators['dir1']}/api/v1/failover/release", {})
    assert status == 200, body
    lab.wait_for_vip_owner("dir1")
    for director in lab.directors:
        with NetlinkIPVS(director.netns) as kernel:
            assert kernel.read_service(nat.key).real_server(key).weight == nat.weights["rs1"], director.name  # type: ignore[union-attr]


def test_a_failover_is_refused_while_the_peer_cannot_take_over_and_nothing_changes(
    primary: HALab, actuators: dict[str, str]
) -> None:
    lab = primary
    lab.stop_keepalived("dir2")
    role = lab.keepalived["dir2"].role()
    status, body = http("POST", f"{actuators['dir1']}/api/v1/failover", {"reason": "peer is down"})
    assert status == 409 and body["result"] == "refused" and "peer director" in body["message"], (role, body)
    assert lab.track_file("dir1").read_text().strip() == "0"
    time.sleep(0.5)  # longer than the failover takes when it is allowed (about 0.1 s)
    assert lab.vip_owners() == ("dir1",)
    status, director = http("GET", f"{actuators['dir1']}/api/v1/director")
    assert director["role"] == "master" and director["failover"]["holders"] == []
    status, audit = http("GET", f"{actuators['dir1']}/api/v1/audit")
    assert (audit["events"][0]["action"], audit["events"][0]["result"]) == ("failover", "refused")
    print(f"\nrefused while dir2's keepalived is stopped (its role file: {role!r}): {body['message']}")


# --- Alertmanager delivers to both directors ---------------------------------------------


@pytest.fixture
def alertmanager(actuators: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager running alerts/alertmanager.yml, its two actuator URLs pointed at dir1's and dir2's actuators.

    Only the addresses, the token file and the quarantine route's
    ``group_interval`` (10 s -> 1 s, so the resolved notification comes quickly)
    differ from the example.
    """
    if shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None:
        if os.environ.get("CI"):
            pytest.fail("Alertmanager is not installed (apt-get install prometheus-alertmanager)")
        pytest.skip("Alertmanager is not installed (apt-get install prometheus-alertmanager)")
    token_file = tmp_path / "lvsguard.token"
    token_file.write_text(TOKEN + "\n")
    urls = {name: f"{url}/webhook/alertmanager" for name, url in actuators.items()}
    with running_alertmanager(tmp_path / "am", alertmanager_config(urls, token_file, group_interval="1s")) as url:
        yield url


def post_alert(alertmanager: str, labels: dict[str, str], *, resolved: bool = False) -> None:
    """One alert into Alertmanager's v2 API, as Prometheus posts it."""
    now = datetime.now(UTC)
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": "real server does not answer"},
        "startsAt": (now - timedelta(minutes=1)).isoformat(),
    }
    if resolved:
        alert["endsAt"] = now.isoformat()
    request = urllib.request.Request(
        f"{alertmanager}/api/v2/alerts", data=json.dumps([alert]).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def weights(lab: HALab, service: LabService, real_server: str) -> dict[str, int]:
    """The kernel weight of ``real_server`` of ``service`` on each director."""
    found = {}
    for director in lab.directors:
        with NetlinkIPVS(director.netns) as kernel:
            found[director.name] = kernel.read_service(service.key).real_server(service.real_server(real_server)).weight  # type: ignore[union-attr]
    return found


def test_alertmanager_delivers_one_alert_to_both_actuators_and_the_quarantine_survives_a_failover(
    primary: HALab, actuators: dict[str, str], alertmanager: str
) -> None:
    lab, nat = primary, primary.nat
    rs1 = nat.real_server("rs1")
    labels = {
        "alertname": "LvsRealServerDown",
        "instance": "dir1:9910",
        "severity": "warning",
        "proto": "TCP",
        "local_address": nat.key.address,
        "local_port": str(nat.key.port),
        "remote_address": rs1.address,
        "remote_port": str(rs1.port),
        "lvsguard_action": "quarantine",
    }
    post_alert(alertmanager, labels)
    wait_for(
        lambda: weights(lab, nat, "rs1") == {"dir1": 0, "dir2": 0},
        "Alertmanager's notification to quarantine rs1 on both directors",
        timeout=30,
        detail=lambda: str(weights(lab, nat, "rs1")),
    )
    holders = set()
    for name, url in actuators.items():
        _, ledger = http("GET", f"{url}/api/v1/ledger?active=true")
        [hold] = ledger["holds"]
        assert (hold["kind"], hold["source"], hold["real_server"]) == ("alert", "alertmanager", str(rs1)), (name, hold)
        holders.add(hold["holder"])
    assert len(holders) == 1  # one alert, Alertmanager's one fingerprint, on both
    status, body = http("POST", f"{actuators['dir1']}/api/v1/failover", {"reason": "alertmanager test"})
    assert status == 200, body
    lab.wait_for_vip_owner("dir2")
    served_again(lab, nat, time.monotonic())
    seen = traffic.http_get(lab, nat.address, nat.port, 12)
    assert sum(seen.values()) == 12 and "rs1" not in seen, seen
    post_alert(alertmanager, labels, resolved=True)
    wait_for(
        lambda: weights(lab, nat, "rs1") == {"dir1": nat.weights["rs1"], "dir2": nat.weights["rs1"]},
        "the resolved notification to restore rs1 on both directors",
        timeout=30,
        detail=lambda: str(weights(lab, nat, "rs1")),
    )
    assert traffic.http_get(lab, nat.address, nat.port, 12)["rs1"] > 0  # through dir2, still active
    status, body = http("POST", f"{actuators['dir1']}/api/v1/failover/release", {})
    assert status == 200, body
    lab.wait_for_vip_owner("dir1")
    served_again(lab, nat, time.monotonic())  # the client's ARP follows the VIPs back before the next test


# --- recovery policies ------------------------------------------------------------------


def test_stopping_the_active_keepalived_hands_over_and_preemption_takes_the_vips_back(primary: HALab) -> None:
    lab = primary
    lab.stop_keepalived("dir1")
    lab.wait_for_vip_owner("dir2")
    served_again(lab, lab.nat, time.monotonic())
    assert sum(traffic.http_get(lab, lab.nat.address, lab.nat.port, 6).values()) == 6
    lab.start_keepalived(("dir1",))
    lab.wait_for_vip_owner("dir1")
    assert lab.keepalived["dir2"].wait_for_role(("BACKUP",)) == "BACKUP"
    served_again(lab, lab.dr, time.monotonic())
    assert sum(traffic.http_get(lab, lab.dr.address, lab.dr.port, 6).values()) == 6


def test_with_nopreempt_the_returning_primary_stays_backup(primary: HALab, actuators: dict[str, str]) -> None:
    lab = primary
    lab.restart_keepalived(preempt=False)
    status, body = http("POST", f"{actuators['dir1']}/api/v1/failover", {"reason": "nopreempt test"})
    assert status == 200, body
    lab.wait_for_vip_owner("dir2")
    status, body = http("POST", f"{actuators['dir1']}/api/v1/failover/release", {})
    assert status == 200, body
    assert lab.keepalived["dir1"].wait_for_role(("BACKUP",)) == "BACKUP"
    time.sleep(1.0)  # more than twice the master-down interval (about 0.4 s): a preempting dir1 would be MASTER by now
    assert lab.vip_owners() == ("dir2",)
    assert lab.keepalived["dir1"].role() == "BACKUP"
    served_again(lab, lab.nat, time.monotonic())
    assert sum(traffic.http_get(lab, lab.nat.address, lab.nat.port, 6).values()) == 6
    # Handing the VIPs back takes a failover of dir2.
    status, body = http("POST", f"{actuators['dir2']}/api/v1/failover", {"reason": "give them back"})
    assert status == 200, body
    lab.wait_for_vip_owner("dir1")
    status, body = http("POST", f"{actuators['dir2']}/api/v1/failover/release", {})
    assert status == 200, body
    assert lab.keepalived["dir2"].wait_for_role(("BACKUP",)) == "BACKUP"
    assert lab.vip_owners() == ("dir1",)
