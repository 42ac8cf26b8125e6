"""keepalived's VRRP state from its notify FIFO: a real FIFO, lines as keepalived 2.2 writes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lvsguard.config import ConfigError, loads
from lvsguard.exporter.keepalived import Extras, FifoError, KeepalivedFifo, parse_line
from tests.exposition_oracle import Families, client_text, vrrp_families

# What keepalived 2.2.7 wrote to notify_fifo in the lab (lab/keepalived.py), in order.
LINES = [
    'INSTANCE "VI_1" BACKUP 150',
    'INSTANCE "VI_1" MASTER 150',
    'INSTANCE "VI_1" FAULT 150',
    'INSTANCE "VI_1" BACKUP 150',
    'INSTANCE "VI_1" MASTER 150',
]


def wait_for_transitions(fifo: KeepalivedFifo, n: int) -> None:
    deadline = time.monotonic() + 5
    while sum(s.transitions for s in fifo.states().values()) < n:
        assert time.monotonic() < deadline, f"the follower read {fifo.states()} of {n} lines"
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('INSTANCE "VI_1" MASTER 150', ("VI_1", "master", 150)),
        ('INSTANCE "VI_1" STOP 100', ("VI_1", "stop", 100)),
        ('INSTANCE "web" FAULT', ("web", "fault", None)),
        ('GROUP "G1" MASTER', None),
        ('INSTANCE "VI_1" DELETED 100', None),
        ("garbage", None),
    ],
)
def test_lines(line: str, expected: object) -> None:
    assert parse_line(line) == expected


def test_the_follower_reads_transitions_in_order_from_a_real_fifo(tmp_path: Path) -> None:
    path = tmp_path / "notify.fifo"
    os.mkfifo(path)
    fifo = KeepalivedFifo(str(path))
    fifo.start()
    with open(path, "w") as writer:  # keepalived opens it for writing
        for line in LINES[:3]:
            writer.write(line + "\n")
            writer.flush()
    wait_for_transitions(fifo, 3)
    assert fifo.states()["VI_1"].state == "fault"
    with open(path, "w") as writer:  # a restarted keepalived: the follower never saw end-of-file
        writer.write("\n".join(LINES[3:]) + "\n")
    wait_for_transitions(fifo, 5)
    text = client_text(Families(vrrp_families(fifo)))  # the oracle: prometheus_client's rendering of the same states
    assert 'lvs_director_vrrp_state{instance="VI_1",state="master"} 1.0' in text
    assert 'lvs_director_vrrp_state{instance="VI_1",state="fault"} 0.0' in text
    assert 'lvs_director_vrrp_priority{instance="VI_1"} 150.0' in text
    assert 'lvs_director_vrrp_transitions_total{instance="VI_1"} 5.0' in text
    # The exporter's text says the same, sample for sample.
    fast = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in "".join(Extras(None, fifo).chunks()).splitlines()
        if not line.startswith("#")
    }
    slow = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#") and "_created" not in line
    }
    assert fast == slow


def test_nothing_is_exported_before_the_first_transition(tmp_path: Path) -> None:
    fifo = KeepalivedFifo(str(tmp_path / "unused"))
    assert list(vrrp_families(fifo)) == [] and list(fifo.chunks()) == []


def test_a_missing_fifo_is_named(tmp_path: Path) -> None:
    with pytest.raises(FifoError, match=r"director.keepalived_fifo .*/missing: No such file"):
        KeepalivedFifo(str(tmp_path / "missing")).start()


def test_the_config_key(tmp_path: Path) -> None:
    assert loads("director:\n  keepalived_fifo: /run/keepalived/lvsguard.fifo\n").director.keepalived_fifo == (
        "/run/keepalived/lvsguard.fifo"
    )
    with pytest.raises(ConfigError, match="keepalived_fifo"):
        loads("director:\n  keepalived_fifo: relative.fifo\n")
