"""The fleet view through a real etcd (on the host's loopback): every director, and where each action took effect.

Three actuators (whole apps with their cluster watch and announcer, each on
its own fake kernel) share one etcd, as in test_cluster_holds.py; here the
API's ``GET /api/v1/cluster``, the per-director result of an operator's
action, the console's cluster page and ``lvsguard status --cluster`` are
read from them. The kernel side runs in the lab VM (test_cluster_kernel.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from lvsguard.actuator import client as cli_client
from lvsguard.actuator.fleet import confirm
from lvsguard.actuator.settings import Quorum
from lvsguard.actuator.targets import Target
from lvsguard.cluster.etcd import EtcdClient
from lvsguard.cluster.fleet import INTERVAL, REFRESH, TTL, DirectorStatus, Fleet
from lvsguard.config.cluster import ClusterConfig
from tests.integration.test_cluster_holds import RS, WEB, Director, Start, directors, etcd, wait_weights  # noqa: F401

TOKEN = "fleet-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"service": str(WEB), "real_server": str(RS[0])}


def api(d: Director) -> FlaskClient:
    return d.app.test_client()


def start(directors: Start, n: int = 3) -> list[Director]:
    started = directors(n, tokens={"alice": TOKEN})
    for d in started:
        assert d.state.runner.fleet is not None
        d.state.runner.fleet.interval = 0.2  # announce often: the view fills within a test's patience
    wait_view(started[0], lambda doc: len(doc["directors"]) == n and all(x["converged"] for x in doc["directors"]))
    return started


def view(d: Director) -> dict[str, Any]:
    reply = api(d).get("/api/v1/cluster", headers=AUTH)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    doc: dict[str, Any] = reply.get_json()
    return doc


def wait_view(d: Director, ok: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = view(d)
        if ok(doc):
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"the fleet view never got there: {doc}")
        time.sleep(0.05)


def test_every_director_announces_itself_with_its_state(directors: Start) -> None:
    d1, d2, d3 = start(directors)
    doc = view(d2)
    assert (doc["store"], doc["director"], doc["store_up"], doc["problems"]) == ("etcd", "dir2", True, [])
    assert [x["director"] for x in doc["directors"]] == ["dir1", "dir2", "dir3"]
    for x in doc["directors"]:
        assert (x["store_up"], x["pending"], x["drift"], x["applied"], x["stale"]) == (True, 0, 0, [], False)
        assert x["role"] == "unknown" and x["exporter"] == "off"  # no role_file, no exporter_url in this test
    assert doc["holds"] == []


def test_an_operators_quarantine_answers_where_it_took_effect(directors: Start) -> None:
    d1, d2, d3 = start(directors)
    reply = api(d1).post("/api/v1/quarantine", json={**BODY, "reason": "disk"}, headers=AUTH)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    body = reply.get_json()
    assert body["result"] == "applied"
    assert body["directors"] == {"dir1": "applied", "dir2": "applied", "dir3": "applied"}
    assert [d.weights() for d in (d1, d2, d3)] == [[0, 5, 5]] * 3  # the reply came after every kernel changed
    doc = view(d3)
    assert [(h["real_server"], h["holder"], h["action"], h["reason"], h["applied"]) for h in doc["holds"]] == [
        (str(RS[0]), "dir1/api alice", "quarantine", "disk", {"dir1": True, "dir2": True, "dir3": True})
    ]
    assert all(x["applied"] == [[str(WEB), str(RS[0]), "dir1/api alice"]] for x in doc["directors"])

    back = api(d2).post("/api/v1/restore", json=BODY, headers=AUTH)
    assert back.status_code == 200, back.get_data(as_text=True)
    assert back.get_json()["directors"] == {"dir1": "applied", "dir2": "applied", "dir3": "applied"}
    assert [d.weights() for d in (d1, d2, d3)] == [[5, 5, 5]] * 3
    assert view(d1)["holds"] == []


def test_a_director_that_refuses_shows_pending_and_the_reply_says_so(directors: Start) -> None:
    """dir3's own quorum (min 3 of 3) refuses the hold: it waits there, and the reply names it."""
    d1, d2, d3 = start(directors)
    d3.state.actions.replace_settings(dataclasses.replace(d3.state.actions.settings, min_healthy=Quorum(3)))
    reply = api(d1).post("/api/v1/quarantine", json=BODY, headers=AUTH)
    body = reply.get_json()
    assert body["result"] == "applied", body
    assert body["directors"] == {"dir1": "applied", "dir2": "applied", "dir3": "pending"}
    doc = wait_view(d1, lambda doc: any(x["pending"] for x in doc["directors"]))
    pending = {x["director"]: (x["pending"], x["converged"]) for x in doc["directors"]}
    assert pending == {"dir1": (0, True), "dir2": (0, True), "dir3": (1, False)}
    assert doc["holds"][0]["applied"] == {"dir1": True, "dir2": True, "dir3": False}


def test_a_stopped_director_leaves_the_view_and_a_silent_one_is_stale(directors: Start, etcd: Any) -> None:
    d1, d2, d3 = start(directors)
    d3.state.runner.stop(timeout=3)  # a clean stop withdraws its record at once
    doc = wait_view(d1, lambda doc: len(doc["directors"]) == 2)
    assert [x["director"] for x in doc["directors"]] == ["dir1", "dir2"]

    assert d1.actions.cluster is not None
    fleet = Fleet(d1.actions.cluster.client, d1.actions.settings.cluster)
    fleet.announce(DirectorStatus("dir9", at=time.time() - 600))  # alive for etcd, silent for 10 minutes
    doc = view(d1)
    assert {x["director"]: x["stale"] for x in doc["directors"]} == {"dir1": False, "dir2": False, "dir9": True}
    assert confirm(fleet, Target(WEB, RS[1]), None, timeout=0.5)["dir9"] == "stale"  # not waited for


def test_the_console_and_the_cli_show_the_fleet(directors: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    d1, d2, d3 = start(directors)
    assert d2.hold(0, reason="maintenance").result == "applied"
    wait_view(d1, lambda doc: doc["holds"] and all(doc["holds"][0]["applied"].values()))

    page = api(d1).get("/ui/cluster", headers=AUTH).get_data(as_text=True)
    for director in ("dir1", "dir2", "dir3"):
        assert f'id="director-{director}" class="converged"' in page
    assert "dir2/api alice" in page and "maintenance" in page

    class Client:  # the CLI's HTTP client, answered by dir1's app
        def get(self, path: str) -> Any:
            return view(d1) if path == "/api/v1/cluster" else pytest.fail(path)

    monkeypatch.setattr(cli_client, "client_from_args", lambda args: Client())
    out = io.StringIO()
    assert cli_client.cluster_from_api(argparse.Namespace(json=False), out) == 0
    text = out.getvalue()
    assert text.startswith("cluster test-the-console") and text.splitlines()[0].endswith(": etcd up from dir1")
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["dir1", "dir2", "dir3"]
    assert all("converged (1 cluster holds)" in line for line in lines[2:5])
    assert any(
        line.split()[:4] == ["TCP", str(WEB).split()[1], str(RS[0]), "quarantine"] and "dir1, dir2, dir3" in line
        for line in lines
    ), text


def test_a_local_store_has_no_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_actuator_api import make_app

    reply = make_app(tmp_path).test_client().get("/api/v1/cluster")
    assert reply.status_code == 200
    doc = reply.get_json()
    assert (doc["store"], doc["directors"], doc["holds"], doc["store_up"]) == ("local", [], [], None)

    class Client:
        def get(self, path: str) -> Any:
            return doc

    monkeypatch.setattr(cli_client, "client_from_args", lambda args: Client())
    out = io.StringIO()
    assert cli_client.cluster_from_api(argparse.Namespace(json=False), out) == 0
    assert "no cluster store (cluster.store: local)" in out.getvalue()


def test_a_director_is_written_only_when_it_changes_and_its_lease_comes_back(etcd: Any) -> None:
    """A put is a Raft write etcd fsyncs: an unchanged status only renews the lease; a lost lease is granted anew."""
    client = EtcdClient([etcd.url])
    fleet = Fleet(client, ClusterConfig(store="etcd", endpoints=(etcd.url,), name="announce-test"))
    key = fleet.key("lvs1")
    status = DirectorStatus("lvs1", role="master", at=1000.0)
    try:
        assert fleet.announce(status) is True
        first = client.get(key)
        assert first is not None and first.lease != 0
        assert fleet.announce(dataclasses.replace(status, at=1001.0)) is False  # the same but for the time
        assert client.get(key).mod_revision == first.mod_revision  # type: ignore[union-attr]
        assert fleet.announce(dataclasses.replace(status, role="backup", at=1002.0)) is True
        assert fleet.announce(dataclasses.replace(status, role="backup", at=1002.0 + REFRESH)) is True  # refreshed

        client.call("lease/revoke", {"ID": str(first.lease)})  # as if etcd had been away longer than the TTL
        assert client.get(key) is None
        assert fleet.announce(dataclasses.replace(status, role="backup", at=1002.0 + REFRESH + TTL)) is True
        again = client.get(key)
        assert again is not None and again.lease not in (0, first.lease)
        assert DirectorStatus.from_json(json.loads(again.value)).role == "backup"
    finally:
        client.delete(key)
        client.close()


def test_an_announcement_renews_the_lease_once_an_interval_not_at_every_change(etcd: Any) -> None:
    """Each convergence announces at once: the lease is renewed only when due, one etcd request less for each."""
    client = EtcdClient([etcd.url])
    fleet = Fleet(client, ClusterConfig(store="etcd", endpoints=(etcd.url,), name="renew-test"))
    key = fleet.key("lvs1")
    made: list[str] = []
    real = client.call
    client.call = lambda path, body, **kw: made.append(path) or real(path, body, **kw)  # type: ignore[method-assign]
    status = DirectorStatus("lvs1", role="master", at=1000.0)
    try:
        assert fleet.announce(status) is True
        made.clear()
        assert fleet.announce(dataclasses.replace(status, pending=1, at=1000.5)) is True
        assert made == ["kv/put"]  # a change within the interval: the put alone
        made.clear()
        assert fleet.announce(dataclasses.replace(status, pending=1, at=1000.5 + INTERVAL)) is False
        assert made == ["lease/keepalive"]  # due: renewed, nothing put

        lease = client.get(key).lease  # type: ignore[union-attr]
        client.call("lease/revoke", {"ID": str(lease)})
        made.clear()
        assert fleet.announce(dataclasses.replace(status, pending=2, at=1001.0 + INTERVAL)) is True
        assert made == ["kv/put", "lease/grant", "kv/put"]  # the put found the lease gone: a new one
        again = client.get(key)
        assert again is not None and again.lease not in (0, lease)
        assert DirectorStatus.from_json(json.loads(again.value)).pending == 2
    finally:
        client.delete(key)
        client.close()


def test_the_vips_come_from_what_the_action_layer_read_not_a_table_dump(directors: Start) -> None:
    """A dump of the whole table every 30 s held the interpreter and delayed the watch's kernel writes (p99)."""
    (d1,) = directors(1, tokens={"alice": TOKEN})
    announcer = d1.state.runner.fleet
    assert announcer is not None
    announcer.addresses = lambda: {"192.0.2.10", "10.0.9.1"}
    assert d1.hold(0).result == "applied"  # its session read the service

    def no_dump() -> Any:
        raise AssertionError("the announcer read the whole kernel table")

    d1.kernel.read = no_dump  # type: ignore[method-assign]
    assert announcer.status(d1.ledger).vips == ("192.0.2.10",)
