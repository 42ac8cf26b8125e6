"""The etcd client against a real etcd on the host's loopback: keys, transactions, leases, watch, failover, TLS."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsguard.cluster.etcd import Compare, EtcdClient, Event, delete_op, put_op
from lvsguard.errors import ClusterStoreError
from tests import tlsfiles
from tests.etcdserver import EtcdServer, free_port, running_etcd


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def client(etcd: EtcdServer) -> Iterator[EtcdClient]:
    c = EtcdClient([etcd.url], timeout=2.0)
    c.delete("/t/", prefix=True)
    yield c
    c.close()


def test_put_get_range_and_delete(client: EtcdClient) -> None:
    first = client.put("/t/a", "1")
    client.put("/t/b", "2")
    client.put("/u/c", "3")
    kv = client.get("/t/a")
    assert kv is not None and kv.value == "1" and kv.mod_revision == first
    kvs, revision = client.range("/t/")
    assert [(k.key, k.value) for k in kvs] == [("/t/a", "1"), ("/t/b", "2")]
    assert revision > first
    assert client.delete("/t/", prefix=True) == 2
    assert client.get("/t/a") is None
    assert client.get("/u/c") is not None


def test_a_transaction_applies_only_while_its_compare_holds(client: EtcdClient) -> None:
    revision = client.put("/t/quorum", "v1")
    ok, _ = client.txn([Compare("/t/quorum", "mod", "=", revision)], [put_op("/t/quorum", "v2")])
    assert ok
    stale, _ = client.txn(
        [Compare("/t/quorum", "mod", "=", revision)], [put_op("/t/quorum", "v3")], [delete_op("/t/other")]
    )
    assert not stale
    kv = client.get("/t/quorum")
    assert kv is not None and kv.value == "v2"
    created, _ = client.txn([Compare("/t/new", "create", "=", 0)], [put_op("/t/new", "x")])
    again, _ = client.txn([Compare("/t/new", "create", "=", 0)], [put_op("/t/new", "y")])
    assert (created, again) == (True, False)


def test_a_key_on_a_lease_carries_it(client: EtcdClient) -> None:
    lease = client.lease_grant(30)
    assert lease > 0
    client.put("/t/leased", "owner", lease=lease)
    kv = client.get("/t/leased")
    assert kv is not None and kv.lease == lease


def test_watch_sees_puts_and_deletes_from_a_revision_on(client: EtcdClient, etcd: EtcdServer) -> None:
    start = client.put("/t/w/one", "1")
    seen: list[Event] = []
    watcher = EtcdClient([etcd.url])

    def follow() -> None:
        for batch in watcher.watch("/t/w/", start):
            seen.extend(batch)
            if any(e.kind == "delete" for e in seen):
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    client.put("/t/w/two", "2")
    client.put("/t/x", "not watched")
    client.delete("/t/w/one")
    thread.join(30)
    assert [(e.kind, e.kv.key, e.kv.value) for e in seen] == [
        ("put", "/t/w/one", "1"),
        ("put", "/t/w/two", "2"),
        ("delete", "/t/w/one", ""),
    ]


def test_a_silent_watch_raises_after_its_idle_timeout(client: EtcdClient) -> None:
    revision = client.put("/t/idle", "1")
    started = time.monotonic()
    with pytest.raises(ClusterStoreError, match="timed out"):
        for _batch in client.watch("/t/idle-nothing/", revision + 1, idle_timeout=0.5):
            pass
    assert time.monotonic() - started < 10  # 0.5 s and the time a loaded host takes to notice


def test_a_dead_endpoint_fails_over_to_the_next(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    c = EtcdClient([dead, etcd.url], timeout=1.0)
    c.put("/t/failover", "yes")
    assert c.endpoint == etcd.url  # the one that answered is tried first from now on
    kv = c.get("/t/failover")
    assert kv is not None and kv.value == "yes"


def test_no_endpoint_answering_names_every_endpoint() -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    c = EtcdClient(dead, timeout=0.5)
    with pytest.raises(ClusterStoreError) as raised:
        c.get("/t/x")
    message = str(raised.value)
    assert all(url in message for url in dead)
    assert "Connection refused" in message


def test_a_request_etcd_refuses_is_a_clear_error(client: EtcdClient) -> None:
    with pytest.raises(ClusterStoreError, match=r"HTTP 400"):
        client.call("kv/range", {"key": "not base64!"})


def test_a_bad_endpoint_url_is_refused() -> None:
    with pytest.raises(ClusterStoreError, match="not an http:// or https:// URL"):
        EtcdClient(["127.0.0.1:2379"])


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    files = tlsfiles.make(tmp_path, server_also_client=True)  # etcd's gateway dials etcd with it
    (tmp_path / "etcd").mkdir()
    with running_etcd(tmp_path / "etcd", tls=files) as server:
        c = EtcdClient(
            [server.url], ca_file=str(files.ca), cert_file=str(files.client_cert), key_file=str(files.client_key)
        )
        c.put("/t/tls", "ok")
        kv = c.get("/t/tls")
        assert kv is not None and kv.value == "ok"
        without = EtcdClient([server.url], ca_file=str(files.ca), timeout=2.0)
        with pytest.raises(ClusterStoreError, match=server.url):
            without.get("/t/tls")


def test_a_request_a_member_got_without_answering_may_still_apply() -> None:
    """Refused connections: the request never left, nothing can come of it. A silent member: it may commit later."""
    import socket

    refused = EtcdClient([f"http://127.0.0.1:{free_port()}"], timeout=0.5)
    with pytest.raises(ClusterStoreError) as never_sent:
        refused.put("/t/x", "1")
    assert never_sent.value.maybe_applied is False
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = EtcdClient([f"http://127.0.0.1:{silent.getsockname()[1]}"], timeout=0.5)
        with pytest.raises(ClusterStoreError, match="timed out") as unanswered:
            client.put("/t/x", "1")
    assert unanswered.value.maybe_applied is True


def test_doctor_checks_every_etcd_endpoint(etcd: EtcdServer, tmp_path: Path) -> None:
    from lvsguard.doctor import Doctor

    def doctor(section: str) -> Doctor:
        path = tmp_path / "lvsguard.yaml"
        path.write_text(section)
        d = Doctor(config_path=str(path))
        assert d.check_config().status == "ok"
        return d

    assert doctor("cluster: {store: local}\n").check_cluster_store().status == "skip"
    live = doctor(f"cluster: {{store: etcd, endpoints: ['{etcd.url}']}}\n").check_cluster_store()
    assert (live.status, live.detail) == ("ok", "1 etcd endpoints answer, one leader")
    dead = f"http://127.0.0.1:{free_port()}"
    result = doctor(f"cluster: {{store: etcd, endpoints: ['{etcd.url}', '{dead}']}}\n").check_cluster_store()
    assert result.status == "fail" and result.detail.startswith("1 of 2 etcd endpoints: ") and dead in result.detail
