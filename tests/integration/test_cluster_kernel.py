"""Three directors, each with its own IPVS table and actuator, share their holds through a three-member etcd.

All real: Debian's etcd 3.4 in three namespaces (lab.etcd), three
``lvsguard actuator`` processes each in its director's namespace with its
table built from its config (lab.cluster), the weights read back from each
kernel through netlink.

One scenario, in order (each step builds on the last): a quarantine through
director 1 takes the real server out on all three; director 1's actuator is
killed; a restore through director 2 brings it back on the other two, and on
director 1 once its actuator is started again; director 3 cut off etcd keeps
its table and its API while a quarantine happens elsewhere, says so in its
metrics, and converges when the link comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab.cluster import ClusterLab, running

pytestmark = pytest.mark.kernel

FULL = {"rs1": 3, "rs2": 2, "rs3": 1}


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterLab]:
    with running(3) as lab:
        yield lab


def everywhere(
    cluster: ClusterLab, expected: dict[str, int], names: tuple[str, ...] = ("dir1", "dir2", "dir3")
) -> bool:
    return all(cluster.weights(name) == expected for name in names)


def store_up(cluster: ClusterLab, name: str, value: int) -> Callable[[], bool]:
    return lambda: cluster.metric(name, "lvsguard_cluster_store_up") == value


def test_every_director_built_its_table(cluster: ClusterLab) -> None:
    assert everywhere(cluster, FULL)


def test_a_quarantine_through_director_1_is_weight_0_on_all_three(cluster: ClusterLab) -> None:
    status, reply = cluster.call(
        "dir1", "/api/v1/quarantine", {"service": "web", "real_server": "rs2", "reason": "disk"}
    )
    assert (status, reply["result"]) == (200, "applied"), reply
    assert cluster.weights("dir1")["rs2"] == 0  # at once on the director that took it
    cluster.wait(lambda: everywhere(cluster, {**FULL, "rs2": 0}), "rs2 at weight 0 on all three")
    _status, ledger = cluster.call("dir3", "/api/v1/ledger")
    holds = [(h["source"], h["holder"]) for h in ledger["holds"]]
    assert holds == [("cluster", "dir1/api env")]  # LVSGUARD_TOKEN is the token named "env"


def test_killed_director_1_then_a_restore_through_director_2_restores_all(cluster: ClusterLab) -> None:
    cluster.kill("dir1")
    assert cluster.weights("dir1")["rs2"] == 0  # its kernel keeps what it had
    status, reply = cluster.call("dir2", "/api/v1/restore", {"service": "web", "real_server": "rs2"})
    assert (status, reply["result"]) == (200, "applied"), reply
    cluster.wait(lambda: everywhere(cluster, FULL, ("dir2", "dir3")), "rs2 restored on dir2 and dir3")
    assert cluster.weights("dir1")["rs2"] == 0  # no actuator, no change
    cluster.start("dir1")
    cluster.wait_ready("dir1")
    cluster.wait(lambda: everywhere(cluster, FULL), "rs2 restored on dir1 after its restart")


def test_a_director_cut_off_etcd_keeps_its_table_and_converges_when_it_rejoins(cluster: ClusterLab) -> None:
    d3 = cluster.director("dir3")
    cluster.etcd.partition(d3.netns)
    try:
        cluster.wait(lambda: cluster.metric("dir3", "lvsguard_cluster_store_up") == 0, "dir3 reporting etcd down")
        status, reply = cluster.call("dir1", "/api/v1/quarantine", {"service": "web", "real_server": "rs3"})
        assert (status, reply["result"]) == (200, "applied"), reply
        cluster.wait(lambda: everywhere(cluster, {**FULL, "rs3": 0}, ("dir1", "dir2")), "rs3 out on dir1 and dir2")
        assert cluster.weights("dir3") == FULL  # its last known state, kept
        status, reply = cluster.call("dir3", "/api/v1/quarantine", {"service": "web", "real_server": "rs1"})
        assert (status, reply["result"], reply.get("reason")) == (502, "error", "cluster_store"), reply
        assert cluster.weights("dir3") == FULL
    finally:
        cluster.etcd.heal(d3.netns)
    seconds = cluster.wait(lambda: everywhere(cluster, {**FULL, "rs3": 0}), "dir3 converged after the partition")
    assert cluster.metric("dir3", "lvsguard_cluster_store_up") == 1
    print(f"dir3 converged {seconds:.1f} s after the partition healed")


def test_one_etcd_member_lost_changes_nothing_two_lost_keep_the_last_state(cluster: ClusterLab) -> None:
    etcd = cluster.etcd
    etcd.kill("etcd1")  # the endpoint every director tries first: their clients fail over
    try:
        status, reply = cluster.call("dir2", "/api/v1/restore", {"service": "web", "real_server": "rs3"})
        assert (status, reply["result"]) == (200, "applied"), reply
        cluster.wait(lambda: everywhere(cluster, FULL), "rs3 restored on all three with one etcd member down")
        etcd.kill("etcd2")  # no quorum left
        status, reply = cluster.call("dir1", "/api/v1/quarantine", {"service": "web", "real_server": "rs1"})
        assert (status, reply["result"], reply.get("reason")) == (502, "error", "cluster_store"), reply
        # etcd3 got the transaction and could not commit it: it may still do so once the quorum is back
        assert "not confirmed by the cluster store" in reply["message"], reply
        for d in cluster.directors:
            cluster.wait(store_up(cluster, d.name, 0), f"{d.name} reporting etcd down")
        assert everywhere(cluster, FULL)  # every director keeps its last state
    finally:
        etcd.start("etcd1")
        etcd.start("etcd2")
    etcd.wait_ready(("etcd1", "etcd2"))
    for d in cluster.directors:
        cluster.wait(store_up(cluster, d.name, 1), f"{d.name} reporting etcd up again")
    status, reply = cluster.call("dir1", "/api/v1/quarantine", {"service": "web", "real_server": "rs1"})
    # "noop" when etcd committed the unconfirmed transaction of the outage once its quorum was back
    assert (status, reply["result"]) in ((200, "applied"), (200, "noop")), reply
    cluster.wait(lambda: everywhere(cluster, {**FULL, "rs1": 0}), "rs1 out on all three after etcd's return")


def test_the_fleet_view_shows_every_director_and_a_restore_answers_once_all_kernels_changed(
    cluster: ClusterLab,
) -> None:
    def fleet(name: str = "dir3") -> dict[str, Any]:
        status, doc = cluster.call(name, "/api/v1/cluster")
        assert status == 200, doc
        return doc

    def directors() -> list[tuple[str, bool]]:
        return [(d["director"], d["converged"]) for d in fleet()["directors"]]

    cluster.wait(lambda: directors() == [("dir1", True), ("dir2", True), ("dir3", True)], "all converged")
    assert [h["applied"] for h in fleet()["holds"]] == [{"dir1": True, "dir2": True, "dir3": True}]  # rs1
    status, reply = cluster.call("dir3", "/api/v1/restore", {"service": "web", "real_server": "rs1"})
    assert (status, reply["result"]) == (200, "applied"), reply
    assert reply["directors"] == {"dir1": "applied", "dir2": "applied", "dir3": "applied"}, reply
    assert everywhere(cluster, FULL)  # the reply came once every kernel had it back: no wait here
    assert fleet("dir1")["holds"] == []

    cluster.kill("dir2")  # SIGKILL: no withdrawal; its lease ends its record
    try:
        seconds = cluster.wait(
            lambda: [d["director"] for d in fleet()["directors"] if not d["stale"]] == ["dir1", "dir3"],
            "dir2 gone from the fleet view (or shown stale)",
        )
        print(f"a killed director left the fleet view after {seconds:.1f} s")
    finally:
        cluster.start("dir2")
        cluster.wait_ready("dir2")
