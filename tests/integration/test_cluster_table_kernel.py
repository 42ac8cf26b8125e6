"""Three directors build their IPVS tables from the cluster's desired table in a three-member etcd.

All real: Debian's etcd 3.4 in three namespaces (lab.etcd), three
``lvsguard actuator`` processes with ``table.source: cluster``, each in its
director's namespace (lab.cluster), ``lvsguard apply --cluster`` run as a
command, and every kernel read back with ``ipvsadm -Sn``.

One scenario, in order: the first push builds all three tables; a push that
adds a service, changes a weight and removes a real server while director 3's
actuator is down changes the other two, and director 3 once it starts again;
director 2 rebooted (its table flushed) while cut off etcd builds the table it
had from its ledger, and converges to a push made meanwhile once the link
comes back; a weight changed by hand in director 2's kernel is drift there
(``lvsguard_table_drift``), left with ``drift: report`` and put back to the
cluster's weight with ``drift: correct``; a table of 25 000 real servers,
more than etcd takes in one request, reaches all three kernels, and one weight
changed in it writes one chunk.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from lab.cluster import ClusterLab, running, web_service
from lvsguard.cluster.table import MAX_REQUEST

pytestmark = pytest.mark.kernel

NAMES = ("dir1", "dir2", "dir3")
BIG_TIMEOUT = 300.0  # seconds for 25 000 real servers in three kernels (30-50 s measured on a busy host)
FIRST = {"rs1": ("10.0.1.2:8080", 3), "rs2": ("10.0.1.3:8080", 2), "rs3": ("10.0.1.4:8080", 1)}
SECOND = {"rs1": ("10.0.1.2:8080", 5), "rs2": ("10.0.1.3:8080", 2)}  # rs1's weight changed, rs3 removed
API = {
    "name": "api",
    "service": "TCP 192.0.2.11:443",
    "scheduler": "rr",
    "forward": "masq",
    "real_servers": [{"name": "api1", "address": "10.0.2.2:8443", "weight": 4}],
}
THIRD = {"rs1": ("10.0.1.2:8080", 5), "rs2": ("10.0.1.3:8080", 7)}


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterLab]:
    with running(3, table_source="cluster") as lab:
        yield lab


def tables_equal(cluster: ClusterLab, names: tuple[str, ...], *needles: str) -> Callable[[], bool]:
    """Whether the directors' ``ipvsadm -Sn`` are the same and hold every needle."""

    def check() -> bool:
        saved = {cluster.saved(name) for name in names}
        return len(saved) == 1 and all(needle in next(iter(saved)) for needle in needles)

    return check


def revisions(cluster: ClusterLab, names: tuple[str, ...] = NAMES) -> set[float | None]:
    return {cluster.metric(name, "lvsguard_cluster_table_revision") for name in names}


def test_no_table_is_built_before_the_first_push(cluster: ClusterLab) -> None:
    assert all("-A" not in cluster.saved(name) for name in NAMES)


def test_the_first_push_builds_every_table(cluster: ClusterLab) -> None:
    out = cluster.push([web_service(FIRST)])
    assert "Written" in out
    seconds = cluster.wait(
        tables_equal(cluster, NAMES, "-A -t 192.0.2.10:80 -s wrr", "-r 10.0.1.4:8080 -m -w 1"),
        "the first table on all three",
    )
    print(f"three kernels built {seconds:.2f} s after apply --cluster returned")
    cluster.wait(lambda: len(revisions(cluster)) == 1 and 0 not in revisions(cluster), "one revision")


def test_a_director_down_during_a_push_converges_when_it_starts(cluster: ClusterLab) -> None:
    cluster.kill("dir3")
    before = cluster.saved("dir3")
    cluster.push([web_service(SECOND), API])
    cluster.wait(
        tables_equal(cluster, ("dir1", "dir2"), "-A -t 192.0.2.11:443 -s rr", "-r 10.0.1.2:8080 -m -w 5"),
        "the second table on dir1 and dir2",
    )
    assert "10.0.1.4:8080" not in cluster.saved("dir1")
    assert cluster.saved("dir3") == before  # its actuator is down: its kernel is as it was
    cluster.start("dir3")
    cluster.wait_ready("dir3")
    cluster.wait(tables_equal(cluster, NAMES, "-A -t 192.0.2.11:443 -s rr"), "dir3 converged after its start")
    cluster.wait(lambda: len(revisions(cluster)) == 1, "one revision")
    status, out = cluster.diff("dir3")  # a director's own diff plans its kernel against the cluster's table
    assert status == 0, out
    assert "The cluster's table: revision" in out and "(etcd)" in out


def test_a_director_started_without_etcd_builds_its_cached_table_and_converges(cluster: ClusterLab) -> None:
    d2 = cluster.director("dir2")
    cluster.kill("dir2")
    cluster.flush("dir2")  # as after a reboot
    assert "-A" not in cluster.saved("dir2")
    cluster.etcd.partition(d2.netns)
    try:
        cluster.start("dir2")
        cluster.wait_ready("dir2", store_up=False)
        cluster.wait(tables_equal(cluster, NAMES, "-A -t 192.0.2.11:443 -s rr"), "dir2's cached table")
        assert cluster.metric("dir2", "lvsguard_cluster_store_up") == 0
        cluster.push([web_service(THIRD), API])
        cluster.wait(tables_equal(cluster, ("dir1", "dir3"), "-r 10.0.1.3:8080 -m -w 7"), "the third table elsewhere")
        assert "-r 10.0.1.3:8080 -m -w 2" in cluster.saved("dir2")  # cut off: still the table it had
        status, out = cluster.diff("dir2")  # etcd out of reach: against the table the ledger cached
        assert status == 0, out
        assert "cached in" in out
    finally:
        cluster.etcd.heal(d2.netns)
    seconds = cluster.wait(tables_equal(cluster, NAMES, "-r 10.0.1.3:8080 -m -w 7"), "dir2 converged")
    print(f"dir2 converged {seconds:.1f} s after the partition healed")
    cluster.wait(lambda: len(revisions(cluster)) == 1, "one revision")


def drift_series(cluster: ClusterLab, name: str) -> list[str]:
    return [line for line in cluster.metrics(name).splitlines() if line.startswith("lvsguard_table_drift{")]


def reconfigure(cluster: ClusterLab, name: str, **table: str | None) -> None:
    """Director ``name``'s config with these ``table`` keys (None: left out), reloaded (SIGHUP); once it is."""
    d = cluster.director(name)
    path = d.directory / "lvsguard.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["table"].update(table)
    doc["table"] = {key: value for key, value in doc["table"].items() if value is not None}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    before = d.log.read_text(errors="replace").count("reload_done")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    cluster.wait(lambda: d.log.read_text(errors="replace").count("reload_done") > before, f"{name}'s reload")


def test_a_hand_change_on_one_director_is_drift_reported_or_corrected_to_the_cluster_table(
    cluster: ClusterLab,
) -> None:
    cluster.wait(tables_equal(cluster, NAMES, "-r 10.0.1.3:8080 -m -w 7"), "the third table on all three")
    netns = cluster.director("dir2").netns
    edit = ["ip", "netns", "exec", netns, "ipvsadm", "-e", "-t", "192.0.2.10:80", "-r", "10.0.1.3:8080", "-m", "-w"]

    reconfigure(cluster, "dir2", drift="report", drift_interval="2s")
    subprocess.run([*edit, "9"], check=True)  # the cluster's table has rs2 at 7
    cluster.wait(lambda: bool(drift_series(cluster, "dir2")), "lvsguard_table_drift on dir2")
    [series] = drift_series(cluster, "dir2")
    assert 'remote_address="10.0.1.3"' in series and 'field="weight"' in series and series.endswith(" 1.0"), series
    assert drift_series(cluster, "dir1") == [] and drift_series(cluster, "dir3") == []
    time.sleep(5)  # more drift rounds: report leaves the hand change
    assert "-r 10.0.1.3:8080 -m -w 9" in cluster.saved("dir2")
    subprocess.run([*edit, "7"], check=True)  # put back by hand
    cluster.wait(lambda: not drift_series(cluster, "dir2"), "the drift series gone")

    reconfigure(cluster, "dir2", drift="correct", drift_interval="2s")
    subprocess.run([*edit, "9"], check=True)
    cluster.wait(tables_equal(cluster, NAMES, "-r 10.0.1.3:8080 -m -w 7"), "dir2 corrected to the cluster's 7")
    cluster.wait(lambda: not drift_series(cluster, "dir2"), "the drift series gone")
    status, body = cluster.call("dir2", "/api/v1/audit")
    assert status == 200
    corrections = [e for e in body["events"] if e["action"] == "table_apply" and e["actor"] == "drift"]
    assert len(corrections) == 1 and "1 real server to change" in corrections[0]["message"], corrections
    reconfigure(cluster, "dir2", drift=None, drift_interval=None)


def big_services(services: int, reals: int) -> list[dict[str, Any]]:
    """``services`` × ``reals`` real servers (NAT, wrr) as config, beside the lab's own services."""
    return [
        {
            "name": f"big{i}",
            "service": f"TCP 10.100.{i // 256}.{i % 256}:80",
            "scheduler": "wrr",
            "forward": "masq",
            "real_servers": [
                {"name": f"big{i}-{j}", "address": f"172.20.{i % 256}.{j % 256}:{8000 + j // 256}", "weight": 1 + j % 5}
                for j in range(reals)
            ],
        }
        for i in range(services)
    ]


def test_three_directors_converge_on_a_table_above_one_etcd_request(cluster: ClusterLab) -> None:
    big = big_services(250, 100)  # 25 000 real servers: more JSON than etcd takes in one request
    [written] = [line for line in cluster.push([web_service(THIRD), API, *big]).splitlines() if "Written" in line]
    found = re.search(r"revision (\d+) .*: (\d+) of its (\d+) chunks written \((\d+) bytes\)", written)
    assert found is not None, written
    assert int(found.group(4)) > MAX_REQUEST and int(found.group(3)) > 1, written
    revision = float(found.group(1))
    seconds = cluster.wait(lambda: revisions(cluster) == {revision}, "the big table applied on all three", BIG_TIMEOUT)
    saved = {name: cluster.saved(name) for name in NAMES}
    assert len(set(saved.values())) == 1 and saved["dir1"].count("\n-a -t 10.100.") == 25_000
    print(f"three kernels with 25 000 real servers {seconds:.1f} s after apply --cluster returned: {written}")

    weight = 5 if big[120]["real_servers"][7]["weight"] != 5 else 4
    big[120]["real_servers"][7]["weight"] = weight  # one weight
    [written] = [line for line in cluster.push([web_service(THIRD), API, *big]).splitlines() if "Written" in line]
    found = re.search(r"revision (\d+) .*: 1 of its \d+ chunks written", written)
    assert found is not None, written
    cluster.wait(lambda: revisions(cluster) == {float(found.group(1))}, "the one weight applied on all three")
    assert all(f"-r 172.20.120.7:8000 -m -w {weight}" in cluster.saved(name) for name in NAMES)
