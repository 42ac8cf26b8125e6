"""A cluster-wide drain with long-lived connections through three real IPVS kernels; its owner killed mid-drain.

All real: Debian's etcd 3.4 in three namespaces, three ``lvsguard actuator``
processes each in its director's namespace (lab.cluster), each director with
its own client and real servers, so that every kernel has its own ESTABLISHED
connections (lab.servers' ``/hold``, through IPVS NAT). The table is built by
the lab (``manage=False``: a drain with ``delete`` is refused on a table the
config owns).

In order: a drain through director 2 whose connections stay open; its owner
(director 2) is killed with SIGKILL; another director takes the lease and
ends the job at the deadline the drain started with, the real server held at
weight 0 everywhere. Then a drain with ``delete`` through director 1; its
owner killed mid-drain; the director that takes it over waits for the live
directors' connections to end and deletes the real server on both; director
1, started again, deletes it too.
"""

from __future__ import annotations

import calendar
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from lab.cluster import ClusterLab, running

pytestmark = pytest.mark.kernel

FULL = {"rs1": 3, "rs2": 2, "rs3": 1}
HELD = 12  # long-lived connections per director: wrr 3:2:1 gives each real server some


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterLab]:
    with running(3, traffic=True, manage=False) as lab:
        yield lab


def drains(cluster: ClusterLab, name: str) -> list[dict[str, Any]]:
    status, doc = cluster.call(name, "/api/v1/cluster")
    assert status == 200, doc
    found: list[dict[str, Any]] = doc["drains"]
    return found


def drain_of(cluster: ClusterLab, name: str, real_server: str) -> dict[str, Any]:
    [job] = [j for j in drains(cluster, name) if j["real_server"] == real_server]
    return job


def epoch(text: str) -> float:
    base, _, fraction = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")


def test_every_director_has_its_own_connections(cluster: ClusterLab) -> None:
    assert all(cluster.weights(d.name) == FULL for d in cluster.directors)
    with cluster.hold("dir1", HELD) as held:
        assert sum(held.values()) == HELD
        assert cluster.active("dir1")["rs2"] > 0
        assert cluster.active("dir2")["rs2"] == 0  # the other kernels see none of them


def test_a_killed_owner_is_replaced_and_the_drain_times_out_at_its_own_deadline(cluster: ClusterLab) -> None:
    address = "10.0.1.4:8080"  # rs3
    with ExitStack() as stack:
        for d in cluster.directors:
            stack.enter_context(cluster.hold(d.name, HELD))
        cluster.wait(lambda: all(cluster.active(d.name)["rs3"] > 0 for d in cluster.directors), "rs3 active")
        status, reply = cluster.call("dir2", "/api/v1/drain", {"service": "web", "real_server": "rs3", "timeout": 40})
        assert (status, reply["result"]) == (202, "applied"), reply
        cluster.wait(lambda: all(cluster.weights(d.name)["rs3"] == 0 for d in cluster.directors), "rs3 at 0")
        job = drain_of(cluster, "dir1", address)
        assert (job["state"], job["owner"], job["owners"]) == ("running", "dir2", ["dir2"]), job
        deadline = epoch(job["deadline"])

        cluster.kill("dir2")  # SIGKILL mid-drain: its lease runs out
        try:
            cluster.wait(lambda: drain_of(cluster, "dir1", address)["owner"] in ("dir1", "dir3"), "a new owner")
            job = drain_of(cluster, "dir3", address)
            new_owner = job["owner"]
            assert job["owners"] == ["dir2", new_owner] and job["state"] == "running", job
            assert epoch(job["deadline"]) == deadline  # taken over from where it was, not restarted
            print(f"{new_owner} took the drain over; {deadline - time.time():.0f} s left to its deadline")
            cluster.wait(lambda: drain_of(cluster, "dir1", address)["state"] != "running", "the drain's end")
            job = drain_of(cluster, "dir1", address)
            assert (job["state"], job["owners"]) == ("timeout", ["dir2", new_owner]), job
            assert epoch(job["ended_at"]) >= deadline  # connections open: not before its deadline
            assert "stays at weight 0" in job["message"]
            for name in ("dir1", "dir2", "dir3"):  # held, not deleted (dir2: its kernel as it was)
                assert cluster.weights(name)["rs3"] == 0
        finally:
            cluster.start("dir2")
            cluster.wait_ready("dir2")
    status, reply = cluster.call("dir3", "/api/v1/restore", {"service": "web", "real_server": "rs3"})
    assert (status, reply["result"]) == (200, "applied"), reply
    cluster.wait(lambda: all(cluster.weights(d.name) == FULL for d in cluster.directors), "rs3 restored")
    assert drains(cluster, "dir1") == []  # the restore forgot the drain


def test_a_killed_owner_is_replaced_and_the_drain_deletes_the_real_server_everywhere(cluster: ClusterLab) -> None:
    address = "10.0.1.3:8080"  # rs2
    with ExitStack() as on_dir1:
        on_dir1.enter_context(cluster.hold("dir1", HELD))
        with ExitStack() as others:
            for name in ("dir2", "dir3"):
                others.enter_context(cluster.hold(name, HELD))
            cluster.wait(lambda: all(cluster.active(d.name)["rs2"] > 0 for d in cluster.directors), "rs2 active")
            status, reply = cluster.call(
                "dir1", "/api/v1/drain", {"service": "web", "real_server": "rs2", "timeout": 300, "delete": True}
            )
            assert (status, reply["result"]) == (202, "applied"), reply
            cluster.wait(lambda: all(cluster.weights(d.name)["rs2"] == 0 for d in cluster.directors), "rs2 at 0")
            deadline = epoch(drain_of(cluster, "dir2", address)["deadline"])

            cluster.kill("dir1", signal.SIGKILL)
            cluster.wait(lambda: drain_of(cluster, "dir2", address)["owner"] in ("dir2", "dir3"), "a new owner")
            job = drain_of(cluster, "dir3", address)
            assert job["owners"] == ["dir1", job["owner"]] and job["state"] == "running", job
            assert epoch(job["deadline"]) == deadline
            assert all(cluster.weights(name)["rs2"] == 0 for name in ("dir2", "dir3"))  # still there: connections
        # the live directors' connections end (dir1's stay: a dead director is not waited for)
        seconds = cluster.wait(
            lambda: all("rs2" not in cluster.weights(name) for name in ("dir2", "dir3")), "rs2 deleted"
        )
        print(f"rs2 deleted on dir2 and dir3 {seconds:.1f} s after their connections ended")
        job = drain_of(cluster, "dir2", address)
        assert job["state"] == "done" and job["owners"][0] == "dir1" and len(job["owners"]) == 2, job
        assert time.time() < deadline  # done because every connection ended, not at the deadline
        assert cluster.weights("dir1")["rs2"] == 0  # no actuator, no change
        cluster.start("dir1")
        cluster.wait_ready("dir1")
        cluster.wait(lambda: "rs2" not in cluster.weights("dir1"), "rs2 deleted on dir1 after its restart")
    assert all(cluster.weights(d.name) == {"rs1": 3, "rs3": 1} for d in cluster.directors)
