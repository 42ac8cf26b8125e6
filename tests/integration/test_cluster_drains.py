"""Cluster-wide drain jobs through a real etcd (on the host's loopback): one owner, taken over when it dies.

First the records alone (``DrainStore``): the director that starts a drain
owns it under its lease; when the lease ends, directors racing to claim the
job are decided by one transaction, and a former owner cannot end it. Then
three actuators (whole apps with their cluster watch, announcer and drain
worker, each on its own fake kernel, as in test_cluster_holds.py): a drain
ends when every director reports 0 active connections, a drain with
``delete`` removes the real server from every kernel, an owner that dies
(its threads stopped without a word, as a kill -9) is replaced by one other
director which keeps the deadline. The kernel side runs in the lab VM
(test_cluster_drain_kernel.py).
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from lvsguard.actuator import client as cli_client
from lvsguard.actuator.openapi import document
from lvsguard.actuator.settings import RateLimit
from lvsguard.actuator.targets import Target
from lvsguard.cluster import drains
from lvsguard.cluster.drains import DrainJob, DrainStore
from lvsguard.cluster.etcd import EtcdClient
from lvsguard.config.cluster import ClusterConfig
from tests.etcdserver import EtcdServer
from tests.integration.test_cluster_holds import (  # noqa: F401
    ALICE,
    RS,
    WEB,
    Director,
    Start,
    directors,
    etcd,
    wait_weights,
)
from tests.unit.test_actuator_api import OpenAPI

TIMEOUT = 30.0  # seconds; generous: a loaded host slows every thread
TOKEN = "drain-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FromApp:
    """The CLI's HTTP client, answered by a director's app."""

    def __init__(self, d: Director):
        self.d = d

    def get(self, path: str) -> Any:
        assert path == "/api/v1/cluster"
        return self.d.app.test_client().get(path, headers=AUTH).get_json()


def wait_doc(d: Director, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def check() -> bool:
        reply = d.app.test_client().get("/api/v1/cluster", headers=AUTH)
        assert reply.status_code == 200, reply.get_data(as_text=True)
        found.update(reply.get_json())
        return ok(found)

    wait(check, "the cluster view")
    return found


def openapi(doc: dict[str, Any]) -> None:
    """``doc`` is what the OpenAPI document says ``GET /cluster`` answers."""
    jsonschema = pytest.importorskip("jsonschema")
    OpenAPI(document(), jsonschema).check("/api/v1/cluster", "get", 200, doc)


def store(etcd: EtcdServer, name: str, director: str, ttl: int = 3) -> DrainStore:
    config = ClusterConfig(store="etcd", endpoints=(etcd.url,), name=name, director=director)
    return DrainStore(EtcdClient([etcd.url]), config, ttl=ttl)


def wait(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        time.sleep(0.05)


# --- the records alone -----------------------------------------------------------------------


def test_the_director_that_starts_a_drain_owns_it(etcd: EtcdServer) -> None:
    lvs1 = store(etcd, "own", "lvs1")
    job, new = lvs1.start(WEB, RS[0], "lvs1/api alice", timeout=60, delete=True)
    assert new and job.owners == ("lvs1",) and job.delete
    view = lvs1.view()
    assert view.owners == {job.id: "lvs1"}
    assert view.job(job.id) == job
    again, new = store(etcd, "own", "lvs2").start(WEB, RS[0], "lvs2/api bob", timeout=5, delete=False)
    assert not new and again == job  # a second drain of the same real server joins the first: same deadline, owner


def test_exactly_one_of_many_directors_takes_an_ownerless_drain(etcd: EtcdServer) -> None:
    lvs1 = store(etcd, "race", "lvs1")
    job, _new = lvs1.start(WEB, RS[0], "lvs1/api alice", timeout=60, delete=False)
    lvs1.revoke()  # its lease ends: the owner key goes with it
    assert lvs1.view().owners == {}
    others = [store(etcd, "race", f"lvs{i}") for i in range(2, 8)]
    for s in others:
        s.lease()
    ready = threading.Barrier(len(others))
    won: dict[str, bool] = {}

    def claim(s: DrainStore) -> None:
        ready.wait()
        won[s.director] = s.claim(job)

    threads = [threading.Thread(target=claim, args=(s,)) for s in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, ok in won.items() if ok]
    assert len(winners) == 1, won
    view = lvs1.view()
    assert view.owners == {job.id: winners[0]}
    taken = view.job(job.id)
    assert taken is not None
    assert taken.owners == ("lvs1", winners[0])
    assert taken.deadline == job.deadline and taken.started_at == job.started_at  # not restarted


def test_an_owner_whose_lease_ended_cannot_end_the_job(etcd: EtcdServer) -> None:
    lvs1, lvs2 = store(etcd, "stale", "lvs1"), store(etcd, "stale", "lvs2")
    job, _new = lvs1.start(WEB, RS[0], "lvs1/api alice", timeout=60, delete=False)
    lease = lvs1.lease()
    EtcdClient([etcd.url]).call("lease/revoke", {"ID": str(lease)})  # as etcd does once the TTL passes unrenewed
    assert lvs2.claim(job)
    assert not lvs1.finish(job, "done", "lvs1 thinks it is done")
    current = lvs2.get(job.id)
    assert current is not None and current.running
    assert lvs2.finish(current, "done", "drained")
    ended = lvs2.get(job.id)
    assert ended is not None and (ended.state, ended.owners) == ("done", ("lvs1", "lvs2"))
    assert lvs2.view().owners == {}


def test_the_lease_expires_on_its_own_when_its_director_stops_renewing(etcd: EtcdServer) -> None:
    lvs1 = store(etcd, "expire", "lvs1", ttl=2)
    job, _new = lvs1.start(WEB, RS[0], "lvs1/api alice", timeout=60, delete=False)
    wait(lambda: lvs1.view().owners == {}, "the owner key gone with the lease")
    assert store(etcd, "expire", "lvs2").claim(job)


# --- three actuators -------------------------------------------------------------------------


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drains, "TTL", 3)  # a takeover within seconds, not the 10 s of production


def cluster_job(d: Director, i: int) -> DrainJob | None:
    worker = d.state.runner.drains
    assert worker is not None
    return worker.store.get(drains.job_id(WEB, RS[i]))


def owner(d: Director, i: int) -> str | None:
    worker = d.state.runner.drains
    assert worker is not None
    return worker.store.view().owners.get(drains.job_id(WEB, RS[i]))


def local_jobs(d: Director) -> list[tuple[str, str]]:
    return [(j.kind, j.state) for j in d.ledger.jobs()]


def present(d: Director, i: int) -> bool:
    svc = d.kernel.read().service(WEB)
    return svc is not None and svc.real_server(RS[i]) is not None


def fast(started: list[Director]) -> list[Director]:
    for d in started:
        assert d.state.runner.fleet is not None
        d.state.runner.fleet.interval = 0.2
    return started


def die(d: Director) -> None:
    """Stop every thread of ``d``'s actuator without a word to etcd: its leases run out as after a kill -9."""
    runner = d.state.runner
    runner._stop.set()
    for thread_owner in (runner.drains, runner.fleet):
        assert thread_owner is not None
        thread_owner._stop.set()
    assert runner.cluster is not None and runner.fleet is not None and runner.drains is not None
    runner.cluster.announce_soon.set()
    for t in (runner.drains._thread, runner.fleet._thread):
        assert t is not None
        t.join(5)
    runner.cluster.stop(3)
    runner.drains = runner.fleet = None  # the fixture's stop must not revoke or withdraw


def test_a_drain_through_one_director_ends_when_every_director_has_no_connection_left(
    directors: Start, short_lease: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    dir1, dir2, dir3 = fast(directors(3, job_poll_interval=0.2, tokens={"alice": TOKEN}))
    dir2.kernel.set_connections(WEB, RS[0], 7)
    dir3.kernel.set_connections(WEB, RS[0], 2)
    outcome = dir1.actions.hold(dir1.ledger, Target(WEB, RS[0]), ALICE, action="drain", drain_timeout=60)
    assert outcome.result == "applied", outcome
    assert outcome.details["drain"] == drains.job_id(WEB, RS[0])
    wait_weights([dir1, dir2, dir3], [0, 5, 5])
    time.sleep(2)  # several rounds of the owner: connections left on dir2 and dir3, it goes on
    job = cluster_job(dir1, 0)
    assert job is not None and job.running and owner(dir1, 0) == "dir1"

    # what the API, the CLI and the console show: the job, its owner, each director's connections
    doc = wait_doc(dir3, lambda doc: doc["drains"] and doc["drains"][0]["active"].get("dir3") == 2)
    openapi(doc)
    [drain] = doc["drains"]
    assert (drain["state"], drain["owner"], drain["owners"], drain["delete"]) == ("running", "dir1", ["dir1"], False)
    assert drain["active"] == {"dir1": 0, "dir2": 7, "dir3": 2}
    out = io.StringIO()
    monkeypatch.setattr(cli_client, "client_from_args", lambda args: FromApp(dir3))
    assert cli_client.cluster_from_api(argparse.Namespace(json=False), out) == 0
    line = next(line for line in out.getvalue().splitlines() if line.startswith("TCP") and "running until" in line)
    assert line.split()[2:6] == [str(RS[0]), "no", "dir1", "dir1"], line
    assert "(active: dir1 0, dir2 7, dir3 2)" in line
    page = dir3.app.test_client().get("/ui/cluster", headers=AUTH).get_data(as_text=True)
    assert 'id="cluster-drains"' in page and "dir2 7" in page

    dir2.kernel.set_connections(WEB, RS[0], 0)
    dir3.kernel.set_connections(WEB, RS[0], 0)
    wait(lambda: (j := cluster_job(dir1, 0)) is not None and j.state == "done", "the cluster drain done")
    job = cluster_job(dir1, 0)
    assert job is not None and job.owners == ("dir1",)
    assert "0 active connections on dir1, dir2, dir3" in job.message
    for d in (dir1, dir2, dir3):  # each director's own job shows the cluster's end; the hold stays
        wait(lambda d=d: local_jobs(d) == [("drain", "done")], f"{d.name}'s drain job done")
    assert [d.weights() for d in (dir1, dir2, dir3)] == [[0, 5, 5]] * 3


def test_an_owner_killed_mid_drain_is_replaced_by_one_director_which_deletes_everywhere(
    directors: Start, short_lease: None
) -> None:
    dir1, dir2, dir3 = fast(directors(3, job_poll_interval=0.2, tokens={"alice": TOKEN}))
    dir2.kernel.set_connections(WEB, RS[1], 4)
    target = Target(WEB, RS[1])
    outcome = dir1.actions.hold(dir1.ledger, target, ALICE, action="drain", drain_timeout=120, drain_delete=True)
    assert outcome.result == "applied", outcome
    wait_weights([dir1, dir2, dir3], [5, 0, 5])
    started = cluster_job(dir2, 1)
    assert started is not None and started.owners == ("dir1",)
    die(dir1)
    wait(lambda: owner(dir2, 1) in ("dir2", "dir3"), "another director owning the drain")
    new_owner = owner(dir2, 1)
    job = cluster_job(dir2, 1)
    assert job is not None and job.running and job.owners == ("dir1", new_owner)
    assert job.deadline == started.deadline  # finished from where it was: the deadline kept
    assert present(dir2, 1) and present(dir3, 1)  # 4 connections left on dir2: not yet
    dir2.kernel.set_connections(WEB, RS[1], 0)
    wait(lambda: not present(dir2, 1) and not present(dir3, 1), "rs2 deleted on dir2 and dir3")
    job = cluster_job(dir2, 1)
    assert job is not None and job.state == "done" and job.owners == ("dir1", new_owner)
    assert present(dir1, 1)  # its actuator is dead: its kernel as it was
    assert [h.state for h in dir2.ledger.holds() if h.target == target] == ["removed"]
    doc = wait_doc(  # the deletion shows as applied where the real server is gone; dir1 left with its lease
        dir2,
        lambda doc: [h["applied"] for h in doc["holds"]] == [{"dir2": True, "dir3": True}],
    )
    assert [(h["real_server"], h["action"]) for h in doc["holds"]] == [(str(RS[1]), "delete")]
    assert all(d["converged"] for d in doc["directors"])
    # a restore forgets the deletion: the cluster's records of rs2 are gone
    dir3.kernel.add_real_server(WEB, dir1.kernel.read().service(WEB).real_server(RS[1]))  # type: ignore[union-attr]
    assert dir3.actions.release(dir3.ledger, target, ALICE).result in ("noop", "applied", "not_found")
    assert cluster_job(dir3, 1) is None


def test_a_drain_whose_connections_last_times_out_at_its_deadline(directors: Start, short_lease: None) -> None:
    dir1, dir2 = fast(directors(2, job_poll_interval=0.2))
    dir2.kernel.set_connections(WEB, RS[2], 3)
    outcome = dir2.actions.hold(
        dir2.ledger, Target(WEB, RS[2]), ALICE, action="drain", drain_timeout=3, drain_delete=True
    )
    assert outcome.result == "applied", outcome
    wait(lambda: (j := cluster_job(dir1, 2)) is not None and j.state == "timeout", "the drain timed out")
    job = cluster_job(dir1, 2)
    assert job is not None and job.ended_at >= job.deadline
    assert "dir2: 3" in job.message
    assert present(dir1, 2) and present(dir2, 2)  # not deleted: it stays at weight 0
    wait_weights([dir1, dir2], [5, 5, 0])


class Killed(BaseException):
    """The director's process ends here (a kill -9): nothing after this point runs, nothing is answered."""


def test_a_director_killed_right_after_its_cluster_write_leaves_a_drain_the_others_finish(
    directors: Start, short_lease: None
) -> None:
    """The hold and the drain job are one etcd transaction: no death leaves a held real server that no job ends."""
    dir1, dir2, dir3 = fast(directors(3, job_poll_interval=0.2))
    runner = dir1.state.runner
    runner._stop.set()  # its retry loop and job threads: only the request below writes dir1's kernel
    assert runner.cluster is not None
    runner.cluster.stop(3)
    dir1.kernel.fail_writes = Killed()  # type: ignore[assignment]  # its first kernel write, after the cluster's
    with pytest.raises(Killed):
        dir1.actions.hold(dir1.ledger, Target(WEB, RS[1]), ALICE, action="drain", drain_timeout=120, drain_delete=True)
    die(dir1)
    assert dir1.weights() == [5, 5, 5]  # it never wrote its kernel
    wait_weights([dir2, dir3], [5, 0, 5])  # the hold is the cluster's: the others take it out
    wait(lambda: owner(dir2, 1) in ("dir2", "dir3"), "another director owning the drain once dir1's lease ended")
    job = cluster_job(dir2, 1)
    assert job is not None and job.owners == ("dir1", owner(dir2, 1)) and job.delete
    wait(lambda: not present(dir2, 1) and not present(dir3, 1), "rs2 drained and deleted on dir2 and dir3")
    job = cluster_job(dir2, 1)
    assert job is not None and job.state == "done"


def test_a_drain_this_directors_rules_refuse_leaves_neither_hold_nor_job(directors: Start) -> None:
    """The cluster's quorum allows it, this director's rate limit does not: the hold and its job leave together."""
    (dir1,) = directors(1, rate_limit=RateLimit(1, 600.0))
    assert dir1.actions.hold(dir1.ledger, Target(WEB, RS[1]), ALICE).result == "applied"  # the one write allowed
    outcome = dir1.actions.hold(dir1.ledger, Target(WEB, RS[0]), ALICE, action="drain", drain_timeout=60)
    assert (outcome.result, outcome.reason) == ("refused", "rate_limit"), outcome
    assert dir1.actions.cluster is not None
    assert [(h.real_server, h.action) for h in dir1.actions.cluster.snapshot()[0]] == [(RS[1], "quarantine")]
    assert cluster_job(dir1, 0) is None and owner(dir1, 0) is None
