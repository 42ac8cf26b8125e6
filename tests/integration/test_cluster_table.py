"""The cluster's desired table in a real etcd (on the host's loopback): ``apply --cluster`` and three actuators.

The actuators are whole apps (``create_app`` with their watches started) on
fake kernels, with ``table.source: cluster``; what is proven is the record,
the CLI, the watch, the reconciler's rules on a table that comes from etcd and
the ledger's cache. The kernel side runs in the lab VM
(test_cluster_table_kernel.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import threading
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
from lvsguard.cluster.table import MAX_CHUNK, MAX_REQUEST, Pushed, TableStore, digest, split
from lvsguard.config.cluster import ClusterConfig
from lvsguard.errors import ClusterStoreError, TableRefused
from lvsguard.model import Forward, RealServerKey, ServiceKey, VirtualService
from lvsguard.table.desired import DesiredTable, make_real_server, make_service
from lvsguard.table.load import TableSettings, service_mapping
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


# --- a table of any size: chunks and a manifest ---------------------------------------------------------------------


def big_table(services: int, reals: int, *, huge: int = 0, bump: int = -1) -> DesiredTable:
    """``services`` × ``reals`` real servers (NAT, wrr), plus one service of ``huge`` real servers.

    ``bump``: the index of the service whose first real server's weight is one more.
    """

    def service(i: int, count: int) -> VirtualService:
        base = int(ipaddress.IPv4Address("172.16.0.0")) + i * 65536
        return make_service(
            ServiceKey("TCP", str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.0.0.1")) + i)), 80),
            "wrr",
            real_servers=[
                make_real_server(
                    RealServerKey(str(ipaddress.IPv4Address(base + j + 1)), 80),
                    Forward.MASQ,
                    1 + (i + j) % 10 + (1 if i == bump and j == 0 else 0),
                )
                for j in range(count)
            ],
        )

    return DesiredTable(
        tuple(service(i, reals) for i in range(services)) + ((service(services, huge),) if huge else ())
    )


def no_names(key: ServiceKey) -> str:
    return ""


@pytest.fixture(scope="module")
def big(etcd: EtcdServer) -> Iterator[tuple[TableStore, DesiredTable, Pushed]]:
    """100 000 real servers pushed: 700 services of 100 and one of 30 000 (more than one chunk on its own)."""
    client = EtcdClient([etcd.url], timeout=60)
    store = TableStore(client, ClusterConfig(store="etcd", endpoints=(etcd.url,), name="big"))
    desired = big_table(700, 100, huge=30_000)
    pushed = store.write(desired, no_names, base=None, by="test")
    yield store, desired, pushed
    client.close()


def test_100_000_real_servers_are_pushed_in_chunks_and_read_back_identical(
    big: tuple[TableStore, DesiredTable, Pushed],
) -> None:
    store, desired, pushed = big
    assert desired.real_server_count == 100_000
    manifest = store.head()
    assert manifest is not None and manifest.revision == pushed.record.revision
    assert (manifest.services, manifest.real_servers) == (701, 100_000)
    assert pushed.written == len(manifest.chunks) == len(set(manifest.chunks)) > 100
    assert pushed.written_bytes > 4 * MAX_REQUEST  # far above what one record could hold
    assert set(store.chunk_names()) == set(manifest.chunks)
    sizes = [len(store.client.get(store.chunk_prefix + h).value) for h in manifest.chunks]  # type: ignore[union-attr]  # every chunk is there (asserted above)
    assert max(sizes) <= MAX_CHUNK + 1024
    record = store.read()
    assert record is not None and record.revision == manifest.revision
    assert record.desired.services == desired.services  # every field of every real server, in order


def test_one_weight_changed_writes_one_chunk_and_deletes_the_one_it_replaces(
    big: tuple[TableStore, DesiredTable, Pushed],
) -> None:
    store, _desired, pushed = big
    before = store.read()
    assert before is not None
    changed = big_table(700, 100, huge=30_000, bump=350)
    again = store.write(changed, no_names, base=before, by="test")
    assert (again.written, again.deleted) == (1, 1)
    assert again.written_bytes <= MAX_CHUNK + 1024
    chunks = store.chunk_names()
    assert set(chunks) == set(again.record.manifest.chunks)
    newer = [h for h, revision in chunks.items() if revision > before.revision]
    assert len(newer) == 1, "one chunk written in etcd"
    assert len(set(before.manifest.chunks) ^ set(again.record.manifest.chunks)) == 2
    record = store.read(held=before)  # as a director that applied ``before`` reads it
    assert record is not None and record.desired.services == changed.services
    reused = [a is b for a, b in zip(record.desired.services, before.desired.services, strict=True)]
    new = set(record.manifest.chunks) - set(before.manifest.chunks)
    in_new = [any(h in new for h, _entry in pieces) for pieces in record.pieces]
    assert [not r for r in reused] == in_new and in_new[350], "only the services of the new chunk are parsed again"
    assert sum(in_new) < 10


def small(weight: int, services: int = 30) -> DesiredTable:
    """A table of several chunks: ``services`` × 100 real servers, the first one's first weight ``weight``."""
    table = big_table(services, 100)
    first = table.services[0]
    rs = dataclasses.replace(first.real_servers[0], weight=weight)
    return DesiredTable((dataclasses.replace(first, real_servers=(rs, *first.real_servers[1:])), *table.services[1:]))


def test_concurrent_pushes_one_wins_the_others_lose_their_cas_cleanly(etcd: EtcdServer) -> None:
    config = ClusterConfig(store="etcd", endpoints=(etcd.url,), name="race")
    first = TableStore(EtcdClient([etcd.url]), config).write(small(1), no_names, base=None)
    assert len(first.record.manifest.chunks) > 2
    tables = {w: small(w) for w in range(2, 6)}
    barrier = threading.Barrier(len(tables))
    outcomes: dict[int, str] = {}

    def push(weight: int) -> None:
        store = TableStore(EtcdClient([etcd.url]), config)
        base = store.read()
        barrier.wait()
        try:
            store.write(tables[weight], no_names, base=base)
            outcomes[weight] = "written"
        except ClusterStoreError as exc:
            outcomes[weight] = str(exc)

    threads = [threading.Thread(target=push, args=(w,)) for w in tables]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [w for w, outcome in outcomes.items() if outcome == "written"]
    assert len(won) == 1, outcomes
    for w, outcome in outcomes.items():
        if w not in won:
            assert "changed since it was read" in outcome and "no table was written" in outcome, outcome
    store = TableStore(EtcdClient([etcd.url]), config)
    record = store.read()
    assert record is not None and record.desired.services == tables[won[0]].services
    # the losers' chunks: deleted by the winner's push when written before its manifest, else by the next push
    assert set(store.chunk_names()) >= set(record.manifest.chunks)
    after = store.write(small(9), no_names, base=record)
    assert set(store.chunk_names()) == set(after.record.manifest.chunks)


def test_a_push_under_way_keeps_its_chunks_when_another_push_collects(etcd: EtcdServer) -> None:
    config = ClusterConfig(store="etcd", endpoints=(etcd.url,), name="underway")
    store = TableStore(EtcdClient([etcd.url]), config)
    base = store.write(small(1), no_names, base=None).record
    mine = {digest(t): t for t in split(small(7), no_names)}
    store.put_chunks({h: t for h, t in mine.items() if h not in base.manifest.chunks})  # a push between its steps
    assert store.collect(base.manifest) == 0  # another writer's collection after the same manifest
    assert set(mine) <= set(store.chunk_names())
    written = store.write(small(7), no_names, base=base)
    record = store.read()
    assert record is not None and record.desired.services == small(7).services
    assert written.written == 1


def config_table(url: str, cluster: str, desired: DesiredTable) -> dict[str, Any]:
    return {
        "table": {"manage": True},
        "services": [service_mapping(svc) for svc in desired],
        "cluster": {"store": "etcd", "endpoints": [url], "name": cluster, "director": "ops"},
    }


def test_a_watcher_never_applies_a_partial_or_altered_table(
    etcd: EtcdServer, tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    director = start("watcher", etcd.url, "partial")
    config = ClusterConfig(store="etcd", endpoints=(etcd.url,), name="partial")
    store = TableStore(EtcdClient([etcd.url]), config)
    first = store.write(small(1, services=20), no_names, base=None).record
    expected = {str(s.key): {str(rs.key): rs.weight for rs in s.real_servers} for s in first.desired}
    wait_tables([director], expected)

    def refused(count: int) -> list[str]:
        """Until the watcher refused ``count`` manifests (each awaited: two puts in one watch event are one)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            seen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cluster_table_refused")]
            if len(seen) >= count:
                return seen
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)

    # a manifest naming a chunk that is not there: refused, the table applied stays
    manifest = json.loads(first.manifest.text)
    manifest["chunks"][-1] = "0" * 64
    store.client.put(store.key, json.dumps(manifest))
    refused(1)
    # a manifest naming a chunk whose text is not what its hash says
    altered = json.loads(first.manifest.text)
    name = altered["chunks"][0]
    text = first.chunks[name].replace('"weight":1', '"weight":2', 1)
    altered["chunks"][0] = name[:-1] + ("1" if name[-1] == "0" else "0")
    store.client.put(store.chunk_prefix + altered["chunks"][0], text)
    store.client.put(store.key, json.dumps(altered))
    refused(2)
    assert "is not in etcd" in refused(2)[0] and "does not match its hash" in refused(2)[1]
    assert director.table() == expected
    assert director.actions.cluster_table is not None and director.actions.cluster_table.revision == first.revision

    # apply --cluster over the broken manifest writes the whole table again, and it is applied
    path = write(tmp_path / "fix.yaml", config_table(etcd.url, "partial", small(5, services=20)))
    assert cli.main(["apply", "--cluster", "--config", path]) == 0
    wait_tables(
        [director], {str(s.key): {str(rs.key): rs.weight for rs in s.real_servers} for s in small(5, services=20)}
    )


def test_a_cached_table_this_version_cannot_read_is_logged_and_etcd_s_is_fetched(
    etcd: EtcdServer, tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "c.yaml", config(etcd.url, "oldcache", {0: 5}))
    assert cli.main(["apply", "--cluster", "--config", path]) == 0
    ledger = Ledger.open(str(tmp_path / "old.db"))
    with ledger.transaction():
        ledger.cache_cluster_table(3, json.dumps({"services": [], "by": "an older lvsguard"}))  # one record, no chunks
    ledger.close()
    director = start("old", etcd.url, "oldcache")
    wait_tables([director], {str(WEB): {str(RS[0]): 5}})
    assert "cluster_table_cache_refused" in caplog.text


def test_a_manifest_read_before_a_compaction_is_read_again_not_refused(etcd: EtcdServer) -> None:
    store = TableStore(EtcdClient([etcd.url]), ClusterConfig(store="etcd", endpoints=(etcd.url,), name="compact"))
    first = store.write(small(1), no_names, base=None).record
    kvs, read_at = store.client.range(store.key, exact=True)
    second = store.write(small(3), no_names, base=first).record  # deletes the chunk ``first`` alone named
    assert second.manifest.chunks != first.manifest.chunks
    before = store.fetch(kvs[0], read_at)  # a director still reading ``first``: its chunks at its revision
    assert before.desired.services == small(1).services
    store.client.call("kv/compaction", {"revision": str(second.revision), "physical": True})
    with pytest.raises(ClusterStoreError, match="compacted") as refused:
        store.fetch(kvs[0], read_at)
    assert not isinstance(refused.value, TableRefused)  # etcd's answer, not a bad table: the watch reads again
    again = store.read()
    assert again is not None and again.desired.services == small(3).services
