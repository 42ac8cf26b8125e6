"""The lab's etcd: three members of Debian's etcd 3.4, one per namespace, form one cluster and survive one loss."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from lab.etcd import ETCD, EtcdLab
from lab.topology import in_lab_vm

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdLab]:
    if not (in_lab_vm() and os.geteuid() == 0):
        pytest.skip("builds namespaces: runs inside lab/vm.sh, or with FORCE=1 on a disposable host")
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"needs {ETCD} (Debian package etcd-server)")
    cluster = EtcdLab()
    cluster.build()
    try:
        yield cluster
    finally:
        cluster.teardown()


def _read_everywhere(etcd: EtcdLab, key: str, members: tuple[str, ...], timeout: float = 10.0) -> dict[str, str | None]:
    """Each member's own (serializable) copy of ``key``, polled until all agree or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {m: etcd.get(m, key, serializable=True) for m in members}
        if len(set(seen.values())) == 1 or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_three_members_form_one_cluster(etcd: EtcdLab) -> None:
    for member in etcd.members:
        assert etcd.members_list(member.name) == ["etcd1", "etcd2", "etcd3"]


def test_a_put_through_the_json_gateway_is_read_by_every_member(etcd: EtcdLab) -> None:
    etcd.put("etcd1", "/lab/hello", "world")
    assert _read_everywhere(etcd, "/lab/hello", ("etcd1", "etcd2", "etcd3")) == {
        "etcd1": "world",
        "etcd2": "world",
        "etcd3": "world",
    }


def test_losing_one_member_keeps_writes_working_and_it_catches_up(etcd: EtcdLab) -> None:
    etcd.kill("etcd3")
    try:
        etcd.wait_leader(("etcd1", "etcd2"))  # at once when etcd3 was a follower, one election when it led
        etcd.put("etcd1", "/lab/after-loss", "1")
        etcd.put("etcd2", "/lab/after-loss", "2")
        assert etcd.get("etcd1", "/lab/after-loss") == "2"  # a linearizable read: the two survivors are a quorum
    finally:
        etcd.start("etcd3")
        etcd.wait_ready(("etcd3",))
    assert _read_everywhere(etcd, "/lab/after-loss", ("etcd1", "etcd2", "etcd3"))["etcd3"] == "2"


def test_a_partitioned_member_serves_no_linearizable_read(etcd: EtcdLab) -> None:
    etcd.partition("etcd3")
    try:
        etcd.put("etcd1", "/lab/partitioned", "yes")
        assert etcd.get("etcd2", "/lab/partitioned") == "yes"
        assert etcd.get("etcd3", "/lab/partitioned", serializable=True) is None  # its copy is behind
    finally:
        etcd.heal("etcd3")
    assert _read_everywhere(etcd, "/lab/partitioned", ("etcd1", "etcd2", "etcd3"), timeout=20)["etcd3"] == "yes"
