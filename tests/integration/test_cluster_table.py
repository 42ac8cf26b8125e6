"""The cluster's desired table in a real etcd (on the host's loopback): ``apply --cluster`` and three actuators.

The actuators are whole apps (``create_app`` with their watches started) on
fake kernels, with ``table.source: cluster``; what is proven is the record,
the CLI, the watch, the reconciler's rules on a table that comes from etcd and
the ledger's cache. The kernel side runs in the lab VM
(test_cluster_table_kernel.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvsguard import cli
from lvsguard.actuator.actions import Actor
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.actuator.targets import Target
from lvsguard.cluster.etcd import EtcdClient
from lvsguard.cluster.table import TableStore
from lvsguard.config.cluster import ClusterConfig
from lvsguard.model import RealServerKey, ServiceKey
from lvsguard.table.load import TableSettings
from tests.etcdserver import EtcdServer, running_etcd
from tests.fakes import FakeKernel, fake_app
from tests.integration.test_cluster_holds import Director as HoldsDirector

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
API = ServiceKey.parse("TCP 192.0.2.11:443")
RS = [RealServerKey.parse(f"10.0.1.{i}:80") for i in range(1, 4)]
ALICE = Actor("api", "alice")
TOKEN = "table-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT = 30.0  # seconds; generous: a loaded host slows every thread


def config(url: str, cluster: str, weights: dict[str, int], *, api: bool = False, **table: Any) -> dict[str, Any]:
    services: list[dict[str, Any]] = [
        {
            "name": "web",
            "service": str(WEB),
            "scheduler": "wrr",
            "forward": "masq",
            "real_servers": [{"name": f"web{i + 1}", "address": str(RS[i]), "weight": w} for i, w in weights.items()],
        }
    ]
    if api:
        services.append(
            {"name": "api", "service": str(API), "real_servers": [{"name": "api1", "address": "10.0.2.1:443"}]}
        )
    return {
        "table": {"manage": True, **table},
        "services": services,
        "cluster": {"store": "etcd", "endpoints": [url], "name": cluster, "director": "ops"},
    }


def write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


class Director(HoldsDirector):
    """A director of test_cluster_holds, with its kernel's table and its metrics."""

    def table(self) -> dict[str, dict[str, int]]:
        return {
            str(svc.key): {str(rs.key): rs.weight for rs in svc.real_servers} for svc in self.kernel.read().services
        }

    def metric(self, name: str) -> float | None:
        value = self.state.registry.get_sample_value(name)
        return value


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


Start = Callable[..., Director]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start director ``name`` (``table.source: cluster``) on its own ledger in ``tmp_path``."""
    started: list[Director] = []

    def run(name: str, url: str, cluster: str, *, kernel: FakeKernel | None = None) -> Director:
        settings = ActuatorSettings(
            hold_down=0.0,
            retry_interval=0.2,
            tokens={"alice": TOKEN},
            table=TableSettings(manage=True, source="cluster"),
            cluster=ClusterConfig(store="etcd", endpoints=(url,), name=cluster, director=name),
        )
        kernel = kernel if kernel is not None else FakeKernel()
        path = str(tmp_path / f"{name}.db")
        app = fake_app(settings, kernel, path)
        director = Director(name, app, kernel, Ledger.open(path))
        for sync in (director.state.runner.cluster, director.state.runner.table):
            assert sync is not None
            sync.idle_timeout, sync.retry = 1.0, 0.2
        director.state.runner.begin()
        started.append(director)
        return director

    yield run
    for director in started:
        stop(director)


def stop(director: Director) -> None:
    director.state.runner.stop(timeout=3)
    director.ledger.close()


def wait_tables(directors: list[Director], expected: dict[str, dict[str, int]]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        seen = {d.name: d.table() for d in directors}
        if all(t == expected for t in seen.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"tables {json.dumps(seen)}, expected {json.dumps(expected)} on every director")
        time.sleep(0.02)


def test_a_bad_config_is_refused_with_its_line_and_nothing_is_written(
    etcd: EtcdServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = config(etcd.url, "bad", {0: 5})
    doc["services"][0]["real_servers"][0]["weight"] = -1
    path = write(tmp_path / "bad.yaml", doc)
    assert cli.main(["apply", "--cluster", "--config", path]) == 1
    err = capsys.readouterr().err
    assert f"{path}:" in err and "services[0].real_servers[0].weight" in err
    client = EtcdClient([etcd.url])
    assert client.range("/lvsguard/bad/")[0] == []


def test_apply_cluster_writes_one_record_and_diff_compares_against_it(
    etcd: EtcdServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "lvsguard.yaml", config(etcd.url, "cli", {0: 5, 1: 3}))
    assert cli.main(["diff", "--cluster", "--config", path]) == 2
    assert "no table yet" in capsys.readouterr().out
    assert cli.main(["apply", "--cluster", "--config", path]) == 0
    assert "Written" in capsys.readouterr().out
    store = TableStore(EtcdClient([etcd.url]), ClusterConfig(store="etcd", endpoints=(etcd.url,), name="cli"))
    first = store.read()
    assert first is not None and first.revision > 0
    assert first.file == path and "@" in first.by and first.at > 0
    assert [str(s.key) for s in first.desired] == [str(WEB)]
    assert {str(rs.key): rs.weight for rs in first.desired.services[0].real_servers} == {str(RS[0]): 5, str(RS[1]): 3}

    assert cli.main(["diff", "--cluster", "--config", path]) == 0
    assert cli.main(["apply", "--cluster", "--config", path]) == 0  # the same table: nothing written
    assert "Nothing written" in capsys.readouterr().out
    again = store.read()
    assert again is not None and again.revision == first.revision

    write(tmp_path / "lvsguard.yaml", config(etcd.url, "cli", {0: 5, 1: 10}, api=True))
    assert cli.main(["diff", "--cluster", "--config", path]) == 2
    out = capsys.readouterr().out
    assert f"revision {first.revision}" in out and "weight 3 → 10" in out and f"+ {API}" in out
    assert cli.main(["apply", "--cluster", "--config", path]) == 0
    second = store.read()
    assert second is not None and second.revision > first.revision and len(second.desired) == 2


def test_three_directors_converge_on_every_push_with_the_holds_winning(
    etcd: EtcdServer, tmp_path: Path, start: Start
) -> None:
    directors = [start(f"dir{i}", etcd.url, "three") for i in (1, 2, 3)]
    assert all(d.table() == {} for d in directors)  # no table in the cluster yet: nothing built, nothing removed
    path = write(tmp_path / "c.yaml", config(etcd.url, "three", {0: 5, 1: 3, 2: 1}))
    assert cli.main(["apply", "--cluster", "--config", path]) == 0
    wait_tables(directors, {str(WEB): {str(RS[0]): 5, str(RS[1]): 3, str(RS[2]): 1}})

    # a quarantine through dir1 (a cluster hold), then a push that changes that real server's weight
    assert directors[0].actions.hold(directors[0].ledger, Target(WEB, RS[1]), ALICE, action="quarantine").result
    wait_tables(directors, {str(WEB): {str(RS[0]): 5, str(RS[1]): 0, str(RS[2]): 1}})
    write(tmp_path / "c.yaml", config(etcd.url, "three", {0: 7, 1: 9}, api=True))  # rs3 removed, an api service
    assert cli.main(["apply", "--cluster", "--config", path]) == 0
    wait_tables(directors, {str(WEB): {str(RS[0]): 7, str(RS[1]): 0}, str(API): {"10.0.2.1:443": 1}})
    record = TableStore(EtcdClient([etcd.url]), directors[0].actions.settings.cluster).read()
    assert record is not None
    deadline = time.monotonic() + TIMEOUT
    while any(d.metric("lvsguard_cluster_table_revision") != record.revision for d in directors):
        assert time.monotonic() < deadline, "the revision metric"
        time.sleep(0.02)

    def fleet() -> dict[str, Any]:
        doc: dict[str, Any] = directors[0].app.test_client().get("/api/v1/cluster", headers=AUTH).get_json()
        return doc

    while {d["director"]: d["table_revision"] for d in fleet()["directors"]} != {
        d.name: record.revision for d in directors
    }:
        assert time.monotonic() < deadline, f"the fleet records: {fleet()}"
        time.sleep(0.05)
    doc = fleet()
    assert doc["table"]["revision"] == record.revision and doc["table"]["services"] == 2
    assert all(d["table_matches"] and d["table_source"] == "cluster" for d in doc["directors"])
    page = directors[0].app.test_client().get("/ui/cluster", headers=AUTH).get_data(as_text=True)
    assert f"revision <b>{record.revision}</b>" in page and page.count(f"revision {record.revision}<") == 3

    # the restore brings it back at the cluster table's new weight, everywhere
    assert directors[1].actions.release(directors[1].ledger, Target(WEB, RS[1]), ALICE).result
    wait_tables(directors, {str(WEB): {str(RS[0]): 7, str(RS[1]): 9}, str(API): {"10.0.2.1:443": 1}})
    audit = [e for e in directors[2].ledger.audit_events() if e.action == "table_apply"]
    assert any(f"table revision {record.revision} by" in e.actor for e in audit)


def test_a_director_started_without_etcd_builds_its_cached_table_and_converges_later(
    tmp_path: Path, start: Start
) -> None:
    (tmp_path / "own-etcd").mkdir()
    with running_etcd(tmp_path / "own-etcd") as etcd:
        first = start("solo", etcd.url, "cache")
        path = write(tmp_path / "c.yaml", config(etcd.url, "cache", {0: 5, 1: 3}))
        assert cli.main(["apply", "--cluster", "--config", path]) == 0
        wait_tables([first], {str(WEB): {str(RS[0]): 5, str(RS[1]): 3}})
        revision = first.metric("lvsguard_cluster_table_revision")
        stop(first)

        etcd.kill()  # etcd away, and the director reboots: an empty kernel
        again = start("solo", etcd.url, "cache", kernel=FakeKernel())
        assert again.table() == {str(WEB): {str(RS[0]): 5, str(RS[1]): 3}}  # built at start, from the ledger
        assert again.metric("lvsguard_cluster_table_revision") == revision

        etcd.start()
        write(tmp_path / "c.yaml", config(etcd.url, "cache", {0: 5, 1: 4}))
        assert cli.main(["apply", "--cluster", "--config", path]) == 0
        wait_tables([again], {str(WEB): {str(RS[0]): 5, str(RS[1]): 4}})
