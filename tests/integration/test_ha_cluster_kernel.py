"""The two-director HA lab with ``cluster.store: etcd``: a failover never brings a held real server back.

``lab.ha.HALab`` with keepalived on both directors and lvsguard's exporter
and actuator as processes (in the VM's own namespace, ``--netns``), their
configs sharing holds through a one-member etcd of ``lab.etcd`` (the VM's own
namespace is on its LAN). An operator quarantines a real server through
dir1's actuator only; dir2's kernel follows through etcd, so when dir1 dies
and dir2 takes the VIPs, client traffic still never reaches the held server.
A restore through dir2 then brings it back on dir2, and on dir1 once it boots.
The other way round too: a real server held through dir2 while dir1 is down
stays out when dir1 returns and takes the VIPs back (keepalived's preemption).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from lab import traffic
from lab.etcd import ETCD, EtcdLab
from lab.ha import HALab, served_again
from lab.keepalived import available as keepalived_available
from lab.topology import in_lab_vm
from lvsguard.ipvs.netlink import NetlinkIPVS
from tests.waiting import json_request

pytestmark = pytest.mark.kernel

TOKEN = "ha-cluster-test-token-0123456789"
http = functools.partial(json_request, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
HELD = "rs2"
LATER = "rs3"  # held through dir2 while dir1 is down
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def ha_lab() -> Iterator[HALab]:
    if not (os.path.exists("/proc/net/ip_vs") and os.geteuid() == 0 and in_lab_vm()):
        pytest.skip("needs the lab VM (or FORCE=1 on a disposable host with IPVS)")
    if not keepalived_available():
        pytest.fail("keepalived is not installed (Debian package keepalived; make apt)")
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"needs {ETCD} (Debian package etcd-server)")
    etcd = EtcdLab(size=1)  # one member: the cluster's etcd is not what this tests, and the VM has 512 MiB
    etcd.build()
    section = f"cluster:\n  store: etcd\n  endpoints: [{etcd.endpoints[0]}]\n  name: ha\n  director: " + "{director}\n"
    lab = HALab(preempt=True, lvsguard_token=TOKEN, cluster=section)
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()
        etcd.teardown()


def weight(lab: HALab, director: str, real_server: str = HELD) -> int:
    """A real server's weight in ``director``'s kernel (-1: not there)."""
    key = lab.nat.real_server(real_server)
    with NetlinkIPVS(lab.director_named(director).netns) as kernel:
        svc = kernel.read().service(lab.nat.key)
    rs = svc.real_server(key) if svc is not None else None
    return rs.weight if rs is not None else -1


def wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not after {TIMEOUT:g} s")
        time.sleep(0.05)


def test_a_failover_never_brings_a_held_real_server_back(ha_lab: HALab) -> None:
    lab = ha_lab
    lab.wait_for_vip_owner("dir1")
    original = lab.nat.weights[HELD]
    url = {name: lab.lvsguard[name].actuator_url for name in ("dir1", "dir2")}
    status, body = http("POST", f"{url['dir1']}/api/v1/quarantine", {"service": "nat", "real_server": HELD})
    assert (status, body["result"]) == (200, "applied"), body
    wait(lambda: weight(lab, "dir2") == 0, f"{HELD} at weight 0 on dir2 (through etcd)")
    assert weight(lab, "dir1") == 0

    crashed = lab.crash("dir1")  # keepalived, exporter and actuator killed, links down: dir2 takes the VIPs
    lab.wait_for_vip_owner("dir2")
    served_again(lab, lab.nat, crashed)
    seen = traffic.http_get(lab, lab.nat.address, lab.nat.port, 12)
    assert sum(seen.values()) == 12 and seen[HELD] == 0, seen

    status, body = http("POST", f"{url['dir2']}/api/v1/restore", {"service": "nat", "real_server": HELD})
    assert (status, body["result"]) == (200, "applied"), body
    assert weight(lab, "dir2") == original
    lab.revive("dir1")  # its actuator starts again, reads the cluster (no hold left) and restores its kernel
    wait(lambda: weight(lab, "dir1") == original, f"{HELD} back at weight {original} on dir1 after its reboot")
    lab.wait_for_vip_owner("dir1")


class Clients:
    """A client making one request after another on new connections, counting who answered (failures too)."""

    def __init__(self, lab: HALab):
        self.lab = lab
        self.seen: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen.update(traffic.http_get(self.lab, self.lab.nat.address, self.lab.nat.port, 1, timeout=1.0))
            except (
                OSError,
                traffic.TrafficError,
            ):  # the VIPs moving between directors: a request may fail, none may reach a held server
                self.seen["(failed)"] += 1
                time.sleep(0.05)

    def __enter__(self) -> Clients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_preemption_never_brings_a_held_real_server_back(ha_lab: HALab) -> None:
    """dir1 down, a hold through dir2; dir1 boots and takes the VIPs back: neither held server serves."""
    lab = ha_lab
    lab.wait_for_vip_owner("dir1")
    original = {name: lab.nat.weights[name] for name in (HELD, LATER)}
    url = {name: lab.lvsguard[name].actuator_url for name in ("dir1", "dir2")}
    status, body = http("POST", f"{url['dir1']}/api/v1/quarantine", {"service": "nat", "real_server": HELD})
    assert (status, body["result"]) == (200, "applied"), body
    wait(lambda: weight(lab, "dir2") == 0, f"{HELD} at weight 0 on dir2 (through etcd)")

    crashed = lab.crash("dir1")
    lab.wait_for_vip_owner("dir2")
    served_again(lab, lab.nat, crashed)
    status, body = http("POST", f"{url['dir2']}/api/v1/quarantine", {"service": "nat", "real_server": LATER})
    assert (status, body["result"]) == (200, "applied"), body  # dir1 is down: it has not seen this hold
    assert weight(lab, "dir1", LATER) == original[LATER]  # its kernel kept the table of before the crash

    with Clients(lab) as clients:
        lab.revive("dir1")  # its actuator first (reads the cluster's holds), then keepalived: it preempts
        lab.wait_for_vip_owner("dir1")
        assert (weight(lab, "dir1", HELD), weight(lab, "dir1", LATER)) == (0, 0)
        served_again(lab, lab.nat, time.monotonic())
        time.sleep(1.0)  # a second of requests served by dir1
    assert clients.seen[HELD] == 0 and clients.seen[LATER] == 0, clients.seen
    assert sum(n for name, n in clients.seen.items() if name != "(failed)") > 0, clients.seen

    for name in (HELD, LATER):
        status, body = http("POST", f"{url['dir1']}/api/v1/restore", {"service": "nat", "real_server": name})
        assert (status, body["result"]) == (200, "applied"), body
    wait(
        lambda: all(weight(lab, d, n) == original[n] for d in ("dir1", "dir2") for n in (HELD, LATER)),
        f"{HELD} and {LATER} back at weights {original} on both directors",
    )
