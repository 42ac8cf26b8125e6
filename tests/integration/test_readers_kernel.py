"""The two readers and `lvsguard status` agree with each other on the lab's real table.

netlink is the primary source and procfs the read-only fallback: with real
connections open, both must report the same services, forwarding methods,
weights and active/inactive connection counts, and `lvsguard status` must print
what netlink read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lab.topology import Lab
from lab.traffic import hold_connections, http_get
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.procfs import ProcfsReader
from lvsguard.model import Table

pytestmark = pytest.mark.kernel


def _summary(table: Table) -> dict[str, tuple[str, dict[str, tuple[str, int, int, int]]]]:
    return {
        str(svc.key): (
            svc.scheduler,
            {
                str(rs.key): (rs.forward.label, rs.weight, rs.active_connections, rs.inactive_connections)
                for rs in svc.real_servers
            },
        )
        for svc in table.services
    }


def _read_both(lab: Lab) -> tuple[Table, Table]:
    netlink, procfs = NetlinkIPVS(lab.director.netns), ProcfsReader(lab.director.netns)
    try:
        return netlink.read(), procfs.read()
    finally:
        netlink.close()
        procfs.close()


def test_procfs_agrees_with_netlink_under_real_connections(lab: Lab) -> None:
    http_get(lab, lab.nat.address, lab.nat.port, 6)  # closed connections linger as inactive (TIME_WAIT)
    with hold_connections(lab, lab.nat.address, lab.nat.port, 4) as held:
        assert sum(held.values()) == 4
        deadline = time.monotonic() + 10
        while True:  # the two files are read a moment apart: retry until one consistent pair
            netlink, procfs = _read_both(lab)
            if _summary(netlink) == _summary(procfs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert _summary(procfs) == _summary(netlink)
        nat = netlink.service(lab.nat.key)
        assert nat is not None
        assert sum(rs.active_connections for rs in nat.real_servers) == 4
    assert procfs.source == "procfs" and netlink.source == "netlink"
    assert procfs.totals is not None and netlink.totals is not None
    assert procfs.totals.connections == netlink.totals.connections


def test_status_prints_the_table_with_names(lab: Lab, tmp_path: os.PathLike[str]) -> None:
    config = tmp_path / "lvsguard.yaml"  # type: ignore[operator]
    config.write_text(lab.config_yaml(listen="127.0.0.1:0"))
    before = lab.connections(lab.nat)
    http_get(lab, lab.nat.address, lab.nat.port, 12)
    lab.wait_for_connections(lab.nat, before, 12)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvsguard.cli",
            "status",
            "--config",
            str(config),
            "--netns",
            lab.director.netns,
            "--exact",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    table = NetlinkIPVS(lab.director.netns)
    try:
        nat = table.read().service(lab.nat.key)
    finally:
        table.close()
    assert nat is not None
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["SERVICE", "/", "REAL", "SERVER"]
    service_line = next(line for line in lines if line.startswith(str(lab.nat.key)))
    assert service_line.split()[2] == "nat"  # the name from the config
    assert str(nat.stats.connections) in service_line.split()
    for rs in nat.real_servers:
        row = next(line for line in lines if line.strip().startswith(f"-> {rs.key} "))
        cells = row.split()
        assert cells[2] == lab.nat.name_of(rs.key)  # real server name from the config
        assert cells[3:5] == [rs.forward.label, str(rs.weight)]
        assert cells[7] == str(rs.stats.connections)
