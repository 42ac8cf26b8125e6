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
comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from lab.cluster import ClusterLab, running, web_service

pytestmark = pytest.mark.kernel

NAMES = ("dir1", "dir2", "dir3")
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
