"""Holds shared through a real etcd (on the host's loopback) by three actuators, each on its own (fake) kernel.

The kernel side of the same scenario runs in the lab VM (test_cluster_kernel.py);
here the actuators are whole apps (``create_app`` with their cluster watch
started), so what is proven is the action layer, the records, the
compare-and-swap quorum and the watch against a real etcd.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from lvsguard.actuator.actions import Actions, Actor, Outcome
from lvsguard.actuator.app import ActuatorState
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import ActuatorSettings, Quorum, RateLimit
from lvsguard.actuator.targets import Target
from lvsguard.cluster.etcd import EtcdClient
from lvsguard.config.cluster import ClusterConfig
from lvsguard.model import RealServerKey, ServiceKey
from tests.etcdserver import EtcdServer, free_port, running_etcd
from tests.fakes import FakeKernel, am_alert, am_payload, fake_app, service

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
RS = [RealServerKey.parse(f"10.0.1.{i}:80") for i in range(1, 4)]
ALICE, BOB = Actor("api", "alice"), Actor("api", "bob")
AM_TOKEN = "am-secret-01234567890"
CONVERGE_TIMEOUT = 30.0  # seconds; generous: a loaded host (lab VMs beside it) slows every thread


@dataclass
class Director:
    name: str
    app: Flask
    kernel: FakeKernel
    ledger: Ledger

    @property
    def state(self) -> ActuatorState:
        state: ActuatorState = self.app.extensions["lvsguard"]
        return state

    @property
    def actions(self) -> Actions:
        return self.state.actions

    def hold(self, i: int, actor: Actor = ALICE, *, action: str = "quarantine", reason: str = "") -> Outcome:
        return self.actions.hold(self.ledger, Target(WEB, RS[i]), actor, action=action, reason=reason)

    def release(self, i: int, actor: Actor = ALICE) -> Outcome:
        return self.actions.release(self.ledger, Target(WEB, RS[i]), actor)

    def alert(self, status: str, fingerprint: str = "fp1", i: int = 0, **labels: str) -> dict[str, Any]:
        """One Alertmanager notification to this director's webhook (quarantine ``RS[i]``); its reply entry."""
        alert = am_alert(fingerprint, status=status, real_server=str(RS[i]), lvsguard_action="quarantine", **labels)
        reply = self.app.test_client().post(
            "/webhook/alertmanager", json=am_payload(alert), headers={"Authorization": f"Bearer {AM_TOKEN}"}
        )
        assert reply.status_code == 200, reply.get_json()
        entry: dict[str, Any] = reply.get_json()["results"][0]
        return entry

    def weights(self) -> list[int]:
        return [self.kernel.weight(WEB, rs) for rs in RS]

    def metric(self, name: str) -> float | None:
        value = self.state.registry.get_sample_value(name)
        return value


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


Start = Callable[..., list[Director]]


@pytest.fixture
def directors(etcd: EtcdServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Start]:
    """Start ``n`` directors on the cluster ``test-<name>`` (a fresh prefix per test)."""
    started: list[Director] = []
    name = request.node.name.replace("_", "-")[:40].strip("-")

    def start(
        n: int = 3,
        *,
        endpoints: tuple[str, ...] | None = None,
        real_servers: list[RealServerKey] = RS,
        share: tuple[str, ...] = ("operator",),
        **settings: Any,
    ) -> list[Director]:
        for i in range(1, n + 1):
            cluster = ClusterConfig(
                store="etcd", endpoints=endpoints or (etcd.url,), name=name, director=f"dir{i}", share=share
            )
            tokens = {"alertmanager": AM_TOKEN, **settings.get("tokens", {})}
            config = ActuatorSettings(
                hold_down=0.0, retry_interval=0.2, cluster=cluster, **(settings | {"tokens": tokens})
            )
            kernel = FakeKernel([service(str(WEB), *((str(rs), 5) for rs in real_servers))])
            path = str(tmp_path / f"dir{i}.db")
            app = fake_app(config, kernel, path)
            director = Director(f"dir{i}", app, kernel, Ledger.open(path))
            sync = director.state.runner.cluster
            assert sync is not None
            sync.idle_timeout, sync.retry = 1.0, 0.2  # a partition is noticed within 1 s
            director.state.runner.begin()
            started.append(director)
        return started

    yield start
    for director in started:
        director.state.runner.stop(timeout=3)
        director.ledger.close()


def wait_weights(directors: list[Director], expected: list[int], timeout: float = CONVERGE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = {d.name: d.weights() for d in directors}
        if all(w == expected for w in seen.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"weights {seen}, expected {expected} on every director")
        time.sleep(0.02)


def test_a_quarantine_on_one_director_takes_the_real_server_out_on_all(directors: Start) -> None:
    d1, d2, d3 = directors(3)
    out = d1.hold(0, reason="disk")
    assert out.result == "applied" and d1.weights() == [0, 5, 5]  # at once on the director that took it
    assert out.details["cluster"] == "dir1/api alice"
    wait_weights([d1, d2, d3], [0, 5, 5])
    mirror = d2.ledger.active_holds(Target(WEB, RS[0]))
    assert [(h.source, h.holder, h.action, h.reason) for h in mirror] == [
        ("cluster", "dir1/api alice", "quarantine", "disk")
    ]
    assert d2.metric("lvsguard_cluster_store_up") == 1
    assert d2.metric("lvsguard_cluster_pending_holds") == 0


def test_a_restore_on_another_director_brings_it_back_everywhere(directors: Start) -> None:
    d1, d2, d3 = directors(3)
    d1.hold(1)
    wait_weights([d1, d2, d3], [5, 0, 5])
    back = d2.release(1, BOB)
    assert back.result == "applied", back.message
    wait_weights([d1, d2, d3], [5, 5, 5])
    assert all(not d.ledger.active_holds() for d in (d1, d2, d3))


def test_a_drain_is_shared_too(directors: Start) -> None:
    d1, d2 = directors(2)
    out = d1.hold(2, action="drain")
    assert out.result == "applied" and out.job_id is not None
    wait_weights([d1, d2], [5, 5, 0])
    assert [h.action for h in d2.ledger.active_holds()] == ["drain"]


def test_the_quorum_is_one_transaction_across_directors(directors: Start) -> None:
    """min_healthy 2 of 3: two directors taking out a different real server at once, only one may win."""
    d1, d2, d3 = directors(3, min_healthy=Quorum(2))
    for _round in range(5):
        barrier = threading.Barrier(2)
        results: dict[str, Outcome] = {}

        def take(d: Director, i: int, actor: Actor) -> None:
            barrier.wait()
            results[d.name] = d.hold(i, actor)

        threads = [
            threading.Thread(target=take, args=(d1, 0, ALICE)),
            threading.Thread(target=take, args=(d2, 1, BOB)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(o.result for o in results.values()) == ["applied", "refused"], results
        refused = next(o for o in results.values() if o.result == "refused")
        assert refused.reason == "quorum" and "min 2" in refused.message
        winner = 0 if results["dir1"].result == "applied" else 1
        expected = [0 if i == winner else 5 for i in range(3)]
        wait_weights([d1, d2, d3], expected)
        assert d1.release(winner).result == "applied"
        wait_weights([d1, d2, d3], [5, 5, 5])


def test_a_refused_local_rule_leaves_no_cluster_hold(directors: Start, etcd: EtcdServer) -> None:
    (d1,) = directors(1, min_healthy=Quorum(3))
    out = d1.hold(0)
    assert out.result == "refused" and out.reason == "quorum"
    assert d1.actions.cluster is not None
    assert d1.actions.cluster.snapshot()[0] == []
    assert d1.weights() == [5, 5, 5]


def test_unreachable_etcd_refuses_the_action_and_keeps_the_kernel(directors: Start) -> None:
    (d1,) = directors(1, endpoints=(f"http://127.0.0.1:{free_port()}",))
    out = d1.hold(0)
    assert (out.result, out.reason) == ("error", "cluster_store")
    assert "cannot be reached" in out.message and "Connection refused" in out.message
    assert d1.weights() == [5, 5, 5]
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while d1.metric("lvsguard_cluster_store_up") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d1.metric("lvsguard_cluster_store_up") == 0


def test_an_etcd_outage_keeps_the_last_state_and_converges_when_it_ends(directors: Start, etcd: EtcdServer) -> None:
    d1, d2 = directors(2)
    d1.hold(0)
    wait_weights([d1, d2], [0, 5, 5])
    writer = EtcdClient([etcd.url])
    etcd.kill()
    try:
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while d2.metric("lvsguard_cluster_store_up") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d2.metric("lvsguard_cluster_store_up") == 0
        assert d2.weights() == [0, 5, 5]  # the last known state, kept
        assert d1.release(0).result == "error"  # an operator's action needs the store
        assert d1.weights() == [0, 5, 5]
    finally:
        etcd.start()
    # meanwhile (as another director would) a restore and a new hold land in etcd
    assert d1.actions.cluster is not None
    store = d1.actions.cluster
    store.release(WEB, RS[0])
    store.take(WEB, RS[2], "dir9/api carol", action="quarantine")
    wait_weights([d1, d2], [5, 5, 0])
    assert d2.metric("lvsguard_cluster_store_up") == 1
    writer.close()


def test_concurrent_conflicting_actions_keep_the_quorum_and_one_state(directors: Start) -> None:
    """Rounds of actions from three directors at once (property-based): the quorum is never broken, no hold
    is lost, and every director ends with the cluster's state.

    Four real servers, ``min_healthy`` 2. In a round each director quarantines or restores a real server
    of its own (three different ones), all at once behind a barrier; a quarantine may be refused only
    for the quorum. After each round: the cluster holds exactly the real servers whose quarantine was
    applied and not restored since, never more than two, and every kernel shows exactly those at weight 0.
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    four = [RealServerKey.parse(f"10.0.1.{i}:80") for i in range(1, 5)]
    group = directors(3, real_servers=four, min_healthy=Quorum(2))
    store = group[0].actions.cluster
    assert store is not None
    rounds = st.lists(
        st.tuples(st.permutations(range(4)), st.tuples(st.booleans(), st.booleans(), st.booleans())),
        min_size=1,
        max_size=4,
    )

    def weights(d: Director) -> list[int]:
        return [d.kernel.weight(WEB, rs) for rs in four]

    def settle(expected_out: set[int]) -> None:
        expected = [0 if i in expected_out else 5 for i in range(4)]
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while any(weights(d) != expected for d in group):
            if time.monotonic() > deadline:
                raise AssertionError({d.name: weights(d) for d in group} | {"expected": expected})
            time.sleep(0.02)

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rounds)
    def run(plan: list[tuple[list[int], tuple[bool, bool, bool]]]) -> None:
        out: set[int] = set()
        for order, quarantines in plan:
            barrier = threading.Barrier(3)
            results: dict[int, Outcome] = {}

            def act(d: Director, i: int, take: bool) -> None:
                target = Target(WEB, four[i])
                barrier.wait()
                if take:
                    results[i] = d.actions.hold(d.ledger, target, Actor("api", d.name))
                else:
                    results[i] = d.actions.release(d.ledger, target, Actor("api", d.name))

            jobs = [(group[k], order[k], quarantines[k]) for k in range(3)]
            threads = [threading.Thread(target=act, args=job) for job in jobs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for _d, i, take in jobs:
                outcome = results[i]
                if take and outcome.result in ("applied", "recorded", "noop"):
                    out.add(i)
                elif take:
                    assert (outcome.result, outcome.reason) == ("refused", "quorum"), outcome
                else:
                    assert outcome.result in ("applied", "noop", "recorded"), outcome
                    out.discard(i)
            held = {r.real_server for r in store.snapshot()[0]}
            assert held == {four[i] for i in out}, (held, out)
            assert len(out) <= 2  # min_healthy 2 of 4
            settle(out)
        for i in sorted(out):
            group[0].actions.release(group[0].ledger, Target(WEB, four[i]), Actor("api", "cleanup"))
        settle(set())

    run()


def test_many_holds_in_one_record_converge_in_one_batch(directors: Start) -> None:
    """300 holds written at once (one record, one watch event): every director applies them all, and releases them."""
    many = [RealServerKey.parse(f"10.1.{i // 250}.{i % 250 + 1}:80") for i in range(301)]
    (d1,) = directors(1, real_servers=many, rate_limit=RateLimit(0, 60.0))
    store = d1.actions.cluster
    assert store is not None
    holds = {
        str(rs): {"dir9/api carol": {"action": "quarantine", "director": "dir9", "at": time.time()}} for rs in many[:-1]
    }
    store.client.put(store.key(WEB), json.dumps(holds))  # as a director with a bulk action would
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while sum(d1.kernel.weight(WEB, rs) == 0 for rs in many) < 300:
        assert time.monotonic() < deadline, sum(d1.kernel.weight(WEB, rs) == 0 for rs in many)
        time.sleep(0.02)
    assert d1.kernel.weight(WEB, many[-1]) == 5
    assert len(d1.ledger.active_holds()) == 300
    store.client.delete(store.key(WEB))
    while sum(d1.kernel.weight(WEB, rs) == 5 for rs in many) < 301:
        assert time.monotonic() < deadline + CONVERGE_TIMEOUT
        time.sleep(0.02)


def test_a_bulk_quarantine_is_one_transaction_and_reaches_every_director(directors: Start) -> None:
    """200 real servers held through one director in one call: one write of the record, every kernel follows."""
    many = [RealServerKey.parse(f"10.1.{i // 250}.{i % 250 + 1}:80") for i in range(201)]
    d1, d2, d3 = directors(3, real_servers=many, rate_limit=RateLimit(0, 60.0))
    store = d1.actions.cluster
    assert store is not None
    targets = [Target(WEB, rs) for rs in many[:-1]]
    outcomes = d1.actions.hold_many(d1.ledger, targets, ALICE, reason="rack 7")
    assert {o.result for o in outcomes} == {"applied"} and len(outcomes) == 200
    assert {o.details["cluster"] for o in outcomes} == {"dir1/api alice"}
    kv = store.client.get(store.key(WEB))
    assert kv is not None and kv.create_revision == kv.mod_revision  # written once: one transaction
    assert len(json.loads(kv.value)) == 200
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    for d in (d1, d2, d3):
        while sum(d.kernel.weight(WEB, rs) == 0 for rs in many) < 200:
            assert time.monotonic() < deadline, (d.name, sum(d.kernel.weight(WEB, rs) == 0 for rs in many))
            time.sleep(0.02)
        assert d.kernel.weight(WEB, many[-1]) == 5

    back = d2.actions.release_many(d2.ledger, targets, BOB)
    assert {o.result for o in back} == {"applied"}
    assert store.client.get(store.key(WEB)) is None  # every hold of the record gone, in one transaction
    for d in (d1, d2, d3):
        while sum(d.kernel.weight(WEB, rs) == 5 for rs in many) < 201:
            assert time.monotonic() < deadline + CONVERGE_TIMEOUT
            time.sleep(0.02)
        assert d.ledger.active_holds() == []


def test_a_bulk_quarantine_keeps_the_quorum_item_by_item(directors: Start) -> None:
    """min_healthy 2 of 3, a hold on rs0 by another director: a bulk of rs1, rs2 takes rs1 only and names rs2."""
    d1, d2 = directors(2, min_healthy=Quorum(2))
    assert d2.hold(0, BOB).result == "applied"
    wait_weights([d1, d2], [0, 5, 5])
    outcomes = d1.actions.hold_many(d1.ledger, [Target(WEB, RS[1]), Target(WEB, RS[2])], ALICE)
    assert [o.result for o in outcomes] == ["refused", "refused"]  # rs0 is out anywhere: neither may go
    assert outcomes[0].reason == "quorum" and "min 2" in outcomes[0].message
    assert d1.release(0, ALICE).result == "applied"
    wait_weights([d1, d2], [5, 5, 5])
    outcomes = d1.actions.hold_many(d1.ledger, [Target(WEB, RS[1]), Target(WEB, RS[2])], ALICE)
    assert [(o.result, o.reason) for o in outcomes] == [("applied", ""), ("refused", "quorum")]
    wait_weights([d1, d2], [5, 0, 5])
    store = d1.actions.cluster
    assert store is not None
    assert [(h.real_server, h.holder) for h in store.snapshot()[0]] == [(RS[1], "dir1/api alice")]


def test_a_watch_behind_this_directors_own_write_does_not_undo_it(directors: Start) -> None:
    """The watch converging to a state older than this director's own hold must not release it (a flap).

    The watch thread may have decoded a change of revision r1 and wait for the
    action lock while this director takes a hold at r2 > r1 through its API;
    converging to r1 then would bring the real server back until r2 arrives.
    """
    (d1,) = directors(1)
    sync = d1.state.runner.cluster
    assert sync is not None
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while not sync.up:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sync.stop()  # the thread ends: what it knows stays as it was before the hold
    out = d1.hold(0)
    assert out.result == "applied" and d1.weights() == [0, 5, 5]
    sync._converge(d1.ledger, time.monotonic(), time.thread_time())  # as the thread would, one event late
    assert d1.weights() == [0, 5, 5]
    assert [h.holder for h in d1.ledger.active_holds()] == ["dir1/api alice"]


def wait_following(directors: list[Director]) -> None:
    """Until every director's cluster watch has read the holds (and so keeps its copy of them)."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    for d in directors:
        sync = d.state.runner.cluster
        assert sync is not None
        while not sync.up:
            assert time.monotonic() < deadline, f"{d.name}'s cluster watch never read the holds"
            time.sleep(0.02)


def etcd_calls(d: Director) -> list[str]:
    """The etcd requests (``kv/range``, ``kv/txn``...) this thread makes through ``d``'s client from now on."""
    store = d.actions.cluster
    assert store is not None
    client, made, me = store.client, [], threading.current_thread()
    real = client.call

    def call(path: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if threading.current_thread() is me:
            made.append(path)
        return real(path, body, **kwargs)

    client.call = call  # type: ignore[method-assign]  # seen, then passed on to the real etcd
    return made


def test_a_hold_starts_from_the_watchs_copy_without_a_read(directors: Start) -> None:
    """The compare-and-swap of a hold starts from what the director's watch holds: one request, the transaction."""
    d1, d2, d3 = directors(3)
    wait_following([d1, d2, d3])
    assert d1.hold(0).result == "applied"
    wait_weights([d1, d2, d3], [0, 5, 5])  # d2's watch has seen d1's hold
    calls = etcd_calls(d2)
    assert d2.hold(1, BOB).result == "applied"
    assert calls == ["kv/txn"]
    wait_weights([d1, d2, d3], [0, 0, 5])
    calls = etcd_calls(d3)
    assert d3.release(1, BOB).result == "applied"  # a restore through another director: the same
    assert calls[0] == "kv/txn"


def test_a_watch_copy_that_is_behind_still_keeps_the_quorum(directors: Start) -> None:
    """A copy older than the record fails the transaction's compare: the hold is decided again on a fresh read."""
    d1, d2, d3 = directors(3, min_healthy=Quorum(2))
    wait_following([d1, d2, d3])
    store, sync = d2.actions.cluster, d2.state.runner.cluster
    assert store is not None and sync is not None
    before = dict(store._copy or {})
    sync.stop()  # d2 sees nothing more: neither its kernel nor its copy shows d1's hold
    store._copy = before
    assert d1.hold(0).result == "applied"
    wait_weights([d1, d3], [0, 5, 5])
    calls = etcd_calls(d2)
    out = d2.hold(1, BOB)
    assert out.result == "refused" and out.reason == "quorum", out
    assert calls == ["kv/txn", "kv/range"]  # the compare failed, the record read again refused it
    assert [d.weights() for d in (d1, d2, d3)] == [[0, 5, 5], [5, 5, 5], [0, 5, 5]]


def test_an_alert_is_held_by_every_director_when_alerts_are_shared(directors: Start, etcd: EtcdServer) -> None:
    d1, d2, d3 = directors(3, share=("operator", "alertmanager"))
    out = d1.alert("firing")
    assert out["result"] == "applied", out
    wait_weights([d1, d2, d3], [0, 5, 5])
    assert [(h.source, h.holder) for h in d3.ledger.active_holds()] == [("cluster", "alertmanager IPVSBackendDown/fp1")]
    assert d1.alert("resolved")["result"] == "applied"
    wait_weights([d1, d2, d3], [5, 5, 5])
    assert all(not d.ledger.active_holds() for d in (d1, d2, d3))
    store = d1.actions.cluster
    assert store is not None and store.snapshot()[0] == []


def test_the_same_alert_on_two_directors_is_one_hold_released_by_either(directors: Start) -> None:
    """Alertmanager sends each alert to every director: one cluster hold, and the first resolve ends it."""
    d1, d2 = directors(2, share=("operator", "alertmanager"))
    assert d1.alert("firing")["result"] == "applied"
    assert d2.alert("firing")["result"] in ("applied", "noop", "recorded")
    wait_weights([d1, d2], [0, 5, 5])
    store = d1.actions.cluster
    assert store is not None
    assert [(h.real_server, h.holder) for h in store.snapshot()[0]] == [(RS[0], "alertmanager IPVSBackendDown/fp1")]
    assert d2.alert("resolved")["result"] == "applied"  # not the director that wrote it first
    wait_weights([d1, d2], [5, 5, 5])
    assert d1.alert("resolved")["result"] == "noop"  # the late copy of the same resolve: nothing left
    assert store.snapshot()[0] == [] and d1.weights() == [5, 5, 5]


def test_a_passive_verdict_is_shared_only_when_passive_is_named(directors: Start) -> None:
    d1, d2 = directors(2, share=("operator", "passive"))
    assert d1.alert("firing", "fp2", 1, lvsguard_source="passive")["result"] == "applied"
    wait_weights([d1, d2], [5, 0, 5])
    assert d1.alert("firing", "fp3", 2)["result"] == "applied"  # an alert rule's alert: alertmanager, not shared
    store = d1.actions.cluster
    assert store is not None
    assert [h.holder for h in store.snapshot()[0]] == ["passive IPVSBackendDown/fp2"]
    assert d2.weights() == [5, 0, 5] and d1.weights() == [5, 0, 0]
    assert d1.alert("resolved", "fp2", 1, lvsguard_source="passive")["result"] == "applied"
    wait_weights([d2], [5, 5, 5])


def test_alerts_stay_on_their_director_by_default(directors: Start) -> None:
    d1, d2, d3 = directors(3)
    assert d1.alert("firing")["result"] == "applied"
    assert d1.weights() == [0, 5, 5]
    store = d1.actions.cluster
    assert store is not None and store.snapshot()[0] == []
    d1.hold(2)  # an operator's hold still goes everywhere: once it has, the alert's would have too
    wait_weights([d2, d3], [5, 5, 0])
    assert d1.weights() == [0, 5, 0]
    assert [h.source for h in d1.ledger.active_holds(Target(WEB, RS[0]))] == ["alertmanager"]


def queued(d: Director, op: str) -> float | None:
    value: float | None = d.state.registry.get_sample_value("lvsguard_cluster_queued", {"op": op})
    return value


def wait_store(directors: list[Director], up: int) -> None:
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while any(d.metric("lvsguard_cluster_store_up") != up for d in directors):
        if time.monotonic() > deadline:
            raise AssertionError(f"lvsguard_cluster_store_up is not {up} on every director")
        time.sleep(0.05)


def test_shared_alerts_during_an_etcd_outage_act_here_at_once_and_reach_the_cluster_when_it_returns(
    directors: Start, etcd: EtcdServer
) -> None:
    """A hold or a resolve of a shared alert while etcd is down: this director acts at once (200: nothing for
    Alertmanager to retry), queues it, and writes it when etcd answers; two directors queuing the same alert
    make one hold, and a resolve queued on one director is not undone there by the record it removes."""
    d1, d2 = directors(2, share=("operator", "alertmanager"), min_healthy=Quorum(0))
    assert d1.alert("firing", "fpC", 2)["result"] == "applied"  # before the outage: the cluster's
    wait_weights([d1, d2], [5, 5, 0])
    etcd.kill()
    try:
        wait_store([d1, d2], 0)
        a = d1.alert("firing", "fpA", 0)  # Alertmanager reached d1 only (so far)
        assert a["result"] == "applied" and "queued for the cluster" in a["message"], a
        assert d1.weights() == [0, 5, 0] and d2.weights() == [5, 5, 0]  # at once on d1, not on d2
        for d in (d1, d2):  # the same alert on both directors
            assert d.alert("firing", "fpB", 1)["result"] == "applied"
        c = d2.alert("resolved", "fpC", 2)  # d2 got the resolve, d1 not yet
        assert c["result"] == "applied" and "queued for the cluster" in c["message"], c
        assert d1.weights() == [0, 0, 0] and d2.weights() == [5, 0, 5]
        assert [q.op for q in d2.ledger.cluster_queue()] == ["take", "release"]
        assert [queued(d2, op) for op in ("take", "release")] == [1, 1]
    finally:
        etcd.start()
    wait_weights([d1, d2], [0, 0, 5])
    for d in (d1, d2):
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while d.ledger.cluster_queue() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.ledger.cluster_queue() == [] and queued(d, "take") == queued(d, "release") == 0
        wait_weights([d], [0, 0, 5])
        assert sorted((h.source, h.holder) for h in d.ledger.active_holds()) == [
            ("cluster", "alertmanager IPVSBackendDown/fpA"),
            ("cluster", "alertmanager IPVSBackendDown/fpB"),
        ]
    store = d1.actions.cluster
    assert store is not None
    assert sorted((str(h.real_server), h.holder) for h in store.snapshot()[0]) == [
        (str(RS[0]), "alertmanager IPVSBackendDown/fpA"),
        (str(RS[1]), "alertmanager IPVSBackendDown/fpB"),
    ]
    assert [w for w in d2.kernel.writes if w[2] == str(RS[2])][-1][3] == 5  # the resolve was not undone on d2
    assert sum(1 for w in d2.kernel.writes if w[2] == str(RS[2]) and w[3] == 0) == 1  # nor retaken meanwhile


def test_holds_queued_on_two_directors_meet_the_clusters_quorum_when_etcd_returns(
    directors: Start, etcd: EtcdServer
) -> None:
    """min_healthy 2 of 3: each director alone may take one real server out while etcd is down; once it is
    back, the cluster keeps one of the two, and the other leaves its director too (a refused alert holds nothing)."""
    d1, d2 = directors(2, share=("operator", "alertmanager"), min_healthy=Quorum(2))
    etcd.kill()
    try:
        wait_store([d1, d2], 0)
        assert d1.alert("firing", "fpA", 0)["result"] == "applied"
        assert d2.alert("firing", "fpB", 1)["result"] == "applied"
        assert d1.weights() == [0, 5, 5] and d2.weights() == [5, 0, 5]
    finally:
        etcd.start()
    store = d1.actions.cluster
    assert store is not None
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while (d1.ledger.cluster_queue() or d2.ledger.cluster_queue()) and time.monotonic() < deadline:
        time.sleep(0.05)
    [kept] = store.snapshot()[0]
    expected = [0 if rs == kept.real_server else 5 for rs in RS]
    wait_weights([d1, d2], expected)
    refused = "fpB" if kept.holder.endswith("fpA") else "fpA"
    loser = d2 if refused == "fpB" else d1
    assert any(e.result == "refused" and e.reason == "quorum" for e in loser.ledger.audit_events(limit=50))
