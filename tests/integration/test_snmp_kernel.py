"""The SNMP agent against the real kernel: net-snmp's clients read what netlink reads, under real traffic.

Runs in the lab VM (``lab`` fixture of conftest). The agent serves the
director's table through ``NetlinkIPVS`` with the lab's names; the walks are
done by net-snmp's ``snmpbulkwalk`` with numeric output, and every real
server's cells are compared with a netlink read of the same moment (the
counters move only while traffic flows, so a poll finds them equal once it
stops).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from lab import traffic
from lab.polling import poll as lab_poll
from lab.topology import Lab
from lvsguard.exporter.snmp import layout
from lvsguard.exporter.snmp.mibfiles import BaseMibsUnavailable, mib_search_path
from lvsguard.exporter.snmp.runner import RunningAgent, start_in_thread
from lvsguard.exporter.snmp.settings import build_settings
from lvsguard.exporter.snmp.snapshot import Health, RealServerState, ServiceState, Snapshot
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.netns import entered
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(shutil.which("snmpbulkwalk") is None, reason="net-snmp clients not installed (Debian snmp)"),
]

T = TypeVar("T")
BASE = layout.DEFAULT_BASE
RS_PREFIX = BASE + layout.RS_ENTRY
RS_COLUMN = {c.name: c.subid for c in layout.RS_COLUMNS}
COMPARED = (
    "lvsgRsStatsConns",
    "lvsgRsStatsInPkts",
    "lvsgRsStatsOutPkts",
    "lvsgRsStatsInBytes",
    "lvsgRsStatsOutBytes",
    "lvsgRsStatsActiveConns",
    "lvsgRsStatsInactiveConns",
    "lvsgRsWeight",
    "lvsgRsForwarding",
)
SCRATCH = ServiceKey("TCP", "198.51.100.99", 81)  # a service only the index-stability test creates


def expected_cells(rs: RealServer) -> tuple[int, ...]:
    return (
        rs.stats.connections,
        rs.stats.incoming_packets,
        rs.stats.outgoing_packets,
        rs.stats.incoming_bytes,
        rs.stats.outgoing_bytes,
        rs.active_connections,
        rs.inactive_connections,
        rs.weight,
        rs.forward.value + 1,
    )


@pytest.fixture(scope="module")
def netlink(lab: Lab) -> Iterator[NetlinkIPVS]:
    reader = NetlinkIPVS(lab.director.netns)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def agent(lab: Lab, netlink: NetlinkIPVS) -> Iterator[RunningAgent]:
    names = {s.key: ServiceState(name=s.name) for s in lab.services.values()}
    settings = build_settings(listen="127.0.0.1:0", communities=("lab",), max_age=0.5)
    running = start_in_thread(settings, lambda: Snapshot(netlink.read(), services=names))
    yield running
    running.stop()


def walk(agent: RunningAgent, oid: tuple[int, ...]) -> dict[tuple[int, ...], str]:
    """Numeric bulk walk: OID -> value text (enums and counters as plain numbers)."""
    cmd = ["snmpbulkwalk", "-v2c", "-c", "lab", "-m", "", "-On", "-Oq", "-Oe", "-Cr50", "-t", "5", "-r", "1"]
    out = subprocess.run(
        [*cmd, f"127.0.0.1:{agent.address[1]}", ".".join(map(str, oid))], capture_output=True, text=True, check=True
    ).stdout
    cells = {}
    for line in out.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("."):
            cells[tuple(int(x) for x in name[1:].split("."))] = value
    return cells


def snmp_cells(cells: dict[tuple[int, ...], str], service: ServiceKey, rs: RealServer) -> tuple[int, ...] | None:
    index = layout.real_server_index(service, rs)
    try:
        return tuple(int(cells[RS_PREFIX + (RS_COLUMN[name],) + index]) for name in COMPARED)
    except KeyError:
        return None


def poll(what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 20.0) -> T:
    return lab_poll(what, probe, done, timeout, interval=0.5)


def mismatches(agent: RunningAgent, netlink: NetlinkIPVS) -> list[str]:
    """Every real-server cell where the walk and a netlink read of the same moment differ."""
    cells = walk(agent, RS_PREFIX)
    table: Table = netlink.read()
    wrong = []
    for svc in table.services:
        for rs in svc.real_servers:
            got, want = snmp_cells(cells, svc.key, rs), expected_cells(rs)
            if got != want:
                wrong.append(f"{svc.key} {rs.key}: snmp {got} netlink {want}")
    rows = {oid[len(RS_PREFIX) + 1 :] for oid in cells if oid[len(RS_PREFIX)] == RS_COLUMN["lvsgRsWeight"]}
    if len(rows) != table.real_server_count:
        wrong.append(f"{len(rows)} rows walked, {table.real_server_count} real servers in the kernel")
    return wrong


def test_walk_equals_netlink_under_traffic(lab: Lab, agent: RunningAgent, netlink: NetlinkIPVS) -> None:
    before = {(s.key, rs.key): rs.stats.connections for s in netlink.read().services for rs in s.real_servers}
    seen = {
        lab.nat: traffic.http_get(lab, lab.nat.address, lab.nat.port, 12),
        lab.dr: traffic.http_get(lab, lab.dr.address, lab.dr.port, 6),
        lab.fwmark: traffic.http_get(lab, lab.fwmark.address, 80, 6),
        lab.nat6: traffic.http_get(lab, lab.nat6.address, lab.nat6.port, 4),
        lab.udp: traffic.udp_exchange(lab, lab.udp.address, lab.udp.port, 6),
    }

    def moved() -> dict[str, Counter[str]]:
        cells = walk(agent, RS_PREFIX)
        column = RS_PREFIX + (RS_COLUMN["lvsgRsStatsConns"],)
        out = {}
        for service in seen:
            counts: Counter[str] = Counter()
            for key, node in service.backends:
                index = layout.real_server_index(service.key, RealServer(key, 0, Forward.MASQ))
                counts[node] = int(cells[column + index]) - before[(service.key, key)]
            out[service.name] = +counts
        return out

    # the kernel folds its per-CPU counters every 2 s: poll until the walk shows all the traffic
    expected = {service.name: counts for service, counts in seen.items()}
    assert poll("connections walked since the traffic", moved, lambda now: now == expected) == expected
    assert (
        poll("real-server cells walked vs netlink", lambda: mismatches(agent, netlink), lambda wrong: not wrong) == []
    )


def test_services_and_director_read_by_name(lab: Lab, agent: RunningAgent) -> None:
    try:
        path = mib_search_path()
    except BaseMibsUnavailable as exc:
        pytest.skip(str(exc))
    cmd = ["snmptable", "-v2c", "-c", "lab", "-M", path, "-m", "LVSGUARD-MIB", "-Cf", "|", "-Ci", "-CH"]
    out = subprocess.run(
        [*cmd, f"127.0.0.1:{agent.address[1]}", "lvsgVsTable"], capture_output=True, text=True, check=True
    ).stdout
    rows = {line.split("|")[1]: line.split("|") for line in out.strip().splitlines()}
    assert set(rows) == {s.name for s in lab.services.values()}
    assert rows["fwmark"][0] == f'fwmark.ipv4."0.0.0.0".0.{lab.fwmark.key.fwmark}'
    assert rows["nat6"][0].startswith('tcp.ipv6."20:01:0d:b8:')
    assert rows["dr"][2] == "rr"


def test_a_row_keeps_its_index_when_others_are_removed(agent: RunningAgent, netlink: NetlinkIPVS) -> None:
    servers = [RealServer(RealServerKey(f"10.99.0.{i}", 80), i, Forward.ROUTE) for i in (1, 2, 3)]
    netlink.add_service(VirtualService(SCRATCH, "wrr"))
    try:
        for rs in servers:
            netlink.add_real_server(SCRATCH, rs)
        weight = RS_PREFIX + (RS_COLUMN["lvsgRsWeight"],)
        kept = weight + layout.real_server_index(SCRATCH, servers[2])
        scratch_rows = lambda: {
            oid: v
            for oid, v in walk(agent, weight).items()
            if oid[: len(weight) + 9] == weight + layout.service_index(SCRATCH)
        }
        first = poll("scratch service walked", scratch_rows, lambda rows: len(rows) == 3)
        assert first[kept] == "3"
        netlink.delete_real_server(SCRATCH, servers[0].key)
        netlink.delete_real_server(SCRATCH, servers[1].key)
        after = poll("two real servers gone", scratch_rows, lambda rows: len(rows) == 1)
        assert after == {kept: "3"}
    finally:
        netlink.delete_service(SCRATCH)


def test_prometheus_snmp_exporter_reads_the_kernel_counters(
    lab: Lab, agent: RunningAgent, netlink: NetlinkIPVS, tmp_path
) -> None:
    """Debian's prometheus-snmp-exporter, with the module the project ships, scrapes what netlink reads."""
    if shutil.which("prometheus-snmp-exporter") is None:
        pytest.skip("prometheus-snmp-exporter not installed")
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from lvsguard.exporter.snmp.mibfiles import MIB_DIR

    module = (MIB_DIR.parent / "snmp_exporter" / "snmp.yml").read_text().replace("community: public", "community: lab")
    (tmp_path / "snmp.yml").write_text(module)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "prometheus-snmp-exporter",
            f"--config.file={tmp_path / 'snmp.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        traffic.http_get(lab, lab.nat.address, lab.nat.port, 9)
        url = f"http://127.0.0.1:{port}/snmp?module=lvsguard&target=127.0.0.1:{agent.address[1]}"

        def scraped_and_kernel() -> tuple[dict[str, float], dict[str, float]]:
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    text = response.read().decode()
            except OSError:
                return {}, {"": -1.0}
            got = {
                s.labels["lvsgRsName"]: s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name.startswith("lvsgRsStatsInBytes") and s.labels.get("lvsgVsName") == "nat"
            }
            nat = next(svc for svc in netlink.read().services if svc.key == lab.nat.key)
            want = {str(rs.key): float(rs.stats.incoming_bytes) for rs in nat.real_servers}
            return got, want

        got, want = poll("snmp_exporter scrape vs netlink", scraped_and_kernel, lambda pair: pair[0] == pair[1])
        assert got == want and sum(want.values()) > 0
    finally:
        proc.terminate()
        proc.wait(10)


def _tcp_alive(address: str, port: int, netns: str) -> bool:
    """A minimal TCP probe from the director (the probe engine's job in production)."""
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with entered(netns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(0.5)
        sock.connect((address, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


@pytest.fixture
def trapd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("snmptrapd") is None:
        pytest.skip("snmptrapd not installed (Debian snmptrapd)")
    try:
        path = mib_search_path()
    except BaseMibsUnavailable as exc:
        pytest.skip(str(exc))
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "trapd.conf"
    conf.write_text("authCommunity log traps\n")
    out = tmp_path / "traps.log"
    proc = subprocess.Popen(
        [
            "snmptrapd",
            "-f",
            "-Lf",
            str(out),
            "-C",
            "-c",
            str(conf),
            "-M",
            path,
            "-m",
            "SNMPv2-MIB:LVSGUARD-MIB",
            f"udp:127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_listening(port, out, proc)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def test_snmptrapd_hears_real_servers_fail_and_recover(lab: Lab, netlink: NetlinkIPVS, trapd) -> None:
    """The real servers' processes stop and start again; the agent's traps say so, with the objects named."""
    port, log_file = trapd
    nat = lab.nat

    def provider() -> Snapshot:
        health = {
            (nat.key, key): RealServerState(
                Health.ALIVE if _tcp_alive(key.address, key.port, lab.director.netns) else Health.DEAD
            )
            for key, _ in nat.backends
        }
        return Snapshot(netlink.read(), services={nat.key: ServiceState(name="nat", quorum=2)}, real_servers=health)

    settings = build_settings(
        listen="127.0.0.1:0",
        communities=("lab",),
        max_age=0.3,
        trap_targets=(f"127.0.0.1:{port}",),
        trap_community="traps",
    )
    running = start_in_thread(settings, provider)
    stopped = False
    try:
        assert sum(traffic.http_get(lab, nat.address, nat.port, 3).values()) == 3
        lab.stop_servers()
        stopped = True
        text = poll(
            "traps for the failure",
            lambda: log_file.read_text() if log_file.exists() else "",
            lambda t: t.count("INTEGER: dead(2)") == len(nat.backends) and "lvsgVsQuorumLost" in t,
        )
        for key, _ in nat.backends:
            assert f'ipv4."{key.address}".{key.port} = INTEGER: dead(2)' in text
        assert 'lvsgVsName.tcp.ipv4."192.0.2.10".80.0 = STRING: nat' in text
        lab.start_servers()
        stopped = False
        text = poll(
            "traps for the recovery",
            lambda: log_file.read_text(),
            lambda t: t.count("INTEGER: alive(1)") == len(nat.backends) and "lvsgVsQuorumRegained" in t,
        )
        assert "Unknown" not in text
        assert sum(traffic.http_get(lab, nat.address, nat.port, 3).values()) == 3
    finally:
        if stopped:
            lab.start_servers()
        running.stop()


def _wait_until_listening(port: int, log_file: Path, proc: subprocess.Popen) -> None:
    """Send a v2c trap until snmptrapd logs it: then it has bound its port (the agent must not get it first)."""
    import socket

    from lvsguard.exporter.snmp.notify import Notification, encode_notification

    ready = Notification("lvsgDirectorRoleChange", ((layout.DEFAULT_BASE + (1, 7, 1, 0), "text", "snmptrapd-ready"),))
    data = encode_notification(ready, layout.DEFAULT_BASE, b"traps", 1, 0, inform=False)
    deadline = time.monotonic() + 30
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while "snmptrapd-ready" not in (log_file.read_text() if log_file.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"snmptrapd did not start on port {port}: {log_file.read_text() if log_file.exists() else ''}"
                )
            sock.sendto(data, ("127.0.0.1", port))
            time.sleep(0.2)
