"""The exporter against the real kernel: the lab's director, real traffic, HTTP scrapes.

The exporter runs as it does in production (``exporter.server.run`` with the
netlink reader, in the lab director's namespace, names from the lab's
services) and is scraped over HTTP, by the tests and by a real Prometheus.
What it says is compared with ``ipvsadm`` (the independent witness), with what
the clients did, and with ``ip -json addr``. Counters lag the traffic by up to 2 s (the kernel's
estimator folds per-CPU counters), so every comparison after traffic polls.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab import traffic
from lab.polling import poll as lab_poll
from lab.topology import Lab, LabError, LabService
from lvsguard.exporter.collector import BACKEND_METRICS, IPVSCollector
from lvsguard.exporter.exposition import Exposition
from lvsguard.exporter.server import ExporterServer, run
from lvsguard.exporter.source import ExporterReader
from lvsguard.ipvs.addresses import local_addresses
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService

pytestmark = pytest.mark.kernel

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
T = TypeVar("T")

LATE_NETNS = "lvsg-exp-late"  # created only halfway through a test
BIG_NETNS = "lvsg-exp-10k"  # a director with 100 services x 100 real servers
FOREIGN_VIP = "203.0.113.50"  # a service address that is on no interface of the director


class LabNames:
    """The lab's names: service "nat", real server "rs2" (what a config would give)."""

    def __init__(self, lab: Lab):
        self.by_key = {s.key: s for s in lab.services.values()}

    def service_name(self, key: ServiceKey) -> str:
        svc = self.by_key.get(key)
        return svc.name if svc else ""

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str:
        svc = self.by_key.get(service)
        try:
            return svc.name_of(key) if svc else ""
        except LabError:
            return ""


def serve(reader: ExporterReader, **options: object) -> tuple[ExporterServer, threading.Thread]:
    started = threading.Event()
    box: list[ExporterServer] = []

    def ready(server: ExporterServer) -> None:
        box.append(server)
        started.set()

    thread = threading.Thread(
        target=run, args=(lambda: reader, "127.0.0.1:0"), kwargs={"ready": ready, **options}, daemon=True
    )
    thread.start()
    assert started.wait(30), "the exporter did not start"
    return box[0], thread


@pytest.fixture(scope="module")
def exporter(lab: Lab) -> Iterator[ExporterServer]:
    netns = lab.director.netns
    server, thread = serve(ExporterReader(netns, "auto"), names=LabNames(lab), addresses=lambda: local_addresses(netns))
    yield server
    server.shutdown()
    thread.join(10)


def fetch(server: ExporterServer, *, gzip_ok: bool = False) -> str:
    request = urllib.request.Request(server.url + "/metrics", headers={"Accept-Encoding": "gzip"} if gzip_ok else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        body = response.read()
        assert (response.headers.get("Content-Encoding") == "gzip") is gzip_ok
    return (gzip.decompress(body) if gzip_ok else body).decode()


def series(text: str) -> Series:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def quick_series(text: str) -> Series:
    """``series`` for big scrapes: prometheus_client's parser needs ~30 s for 90 000 samples under UML.

    Good for our own output only (no escapes in the values it is used on, no timestamps).
    """
    found: Series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, number = line.rpartition(" ")
        name, _, labels = head.partition("{")
        found[(name, frozenset(LABEL.findall(labels)))] = float(number)
    return found


def pick(found: Series, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in found.items() if n == name and want <= lab}


def value(found: Series, name: str, **labels: str) -> float:
    matches = pick(found, name, **labels)
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} series"
    return next(iter(matches.values()))


def lab_real_servers(lab: Lab) -> int:
    """Real servers in the lab's table: each service's (18 with the default 3 real servers and 6 services)."""
    return sum(len(s.backends) for s in lab.services.values())


def poll(what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 15.0) -> T:
    return lab_poll(what, probe, done, timeout, interval=0.3)


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def backend_counters(found: Series, table: Table, names: LabNames) -> dict[tuple[str, str], tuple[float, ...]]:
    """(service name, real server name) -> the exporter's five traffic counters."""
    out = {}
    for svc in table.services:
        for rs in svc.real_servers:
            labels = {"service": names.service_name(svc.key), "real_server": names.real_server_name(svc.key, rs.key)}
            out[(labels["service"], labels["real_server"])] = tuple(
                value(found, f"ipvs_backend_{field}_total", **labels)
                for field in ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes")
            )
    return out


def test_scrape_shows_the_table_ipvsadm_lists(lab: Lab, exporter: ExporterServer) -> None:
    text = fetch(exporter)
    promtool_check(text)
    found = series(text)
    names = LabNames(lab)
    witness = lab.read_table()
    assert value(found, "ipvs_up") == 1
    assert value(found, "lvsguard_exporter_info", ipvs_source="netlink") == 1
    assert len(pick(found, "ipvs_backend_weight")) == witness.real_server_count == lab_real_servers(lab)
    for svc in witness.services:
        name = names.service_name(svc.key)
        methods = {rs.forward.label for rs in svc.real_servers}
        assert value(found, "ipvs_service_info", service=name, scheduler=svc.scheduler, forward=methods.pop()) == 1
        for rs in svc.real_servers:
            labels = {
                "service": name,
                "real_server": names.real_server_name(svc.key, rs.key),
                "remote_address": rs.key.address,
            }
            assert value(found, "ipvs_backend_weight", **labels) == rs.weight
            assert value(found, "ipvs_backend_connections_active", **labels) == rs.active_connections
    fwmark = lab.fwmark.key
    assert (
        value(
            found, "ipvs_service_info", service="fwmark", proto="FWM", local_mark=f"{fwmark.fwmark:08X}", local_port="0"
        )
        == 1
    )


def test_counters_follow_real_traffic_and_equal_ipvsadm(lab: Lab, exporter: ExporterServer) -> None:
    names = LabNames(lab)
    before = series(fetch(exporter))
    nat = lab.nat
    seen = traffic.http_get(lab, nat.address, nat.port, 12)
    seen6 = traffic.http_get(lab, lab.nat6.address, lab.nat6.port, 4)
    echoed = traffic.udp_exchange(lab, lab.udp.address, lab.udp.port, 6)

    def conns(found: Series, svc: LabService) -> Counter[str]:
        return Counter(
            {
                node: int(value(found, "ipvs_backend_connections_total", service=svc.name, real_server=node))
                for node in svc.weights
            }
        )

    for svc, expected in ((nat, seen), (lab.nat6, seen6), (lab.udp, echoed)):
        start = conns(before, svc)
        poll(
            f"connections of {svc} seen by the exporter",
            lambda svc=svc, start=start: conns(series(fetch(exporter)), svc) - start,
            lambda moved, expected=expected: moved == expected,
        )

    # Once the estimator has folded everything, the exporter and ipvsadm agree on every counter.
    def both() -> tuple[dict[tuple[str, str], tuple[float, ...]], dict[tuple[str, str], tuple[float, ...]]]:
        witness = lab.counters()
        from_ipvsadm = {
            (names.service_name(sk), names.real_server_name(sk, rk)): (
                st.connections,
                st.incoming_packets,
                st.outgoing_packets,
                st.incoming_bytes,
                st.outgoing_bytes,
            )
            for (sk, rk), st in witness.items()
            if rk is not None
        }
        return backend_counters(series(fetch(exporter)), lab.read_table(), names), from_ipvsadm

    exported, witnessed = poll("exporter == ipvsadm --stats --exact", both, lambda pair: pair[0] == pair[1])
    assert sum(c[0] for (svc, _), c in exported.items() if svc == "nat") >= sum(seen.values())
    assert all(c[1] > 0 and c[3] > 0 for (svc, _), c in exported.items() if svc == "nat" and seen[_])
    after = series(fetch(exporter))
    assert value(after, "ipvs_connections_total") - value(before, "ipvs_connections_total") >= 22
    assert (
        value(after, "ipvs_service_connections_total", service="nat")
        - value(before, "ipvs_service_connections_total", service="nat")
        == 12
    )


def test_active_connections_while_clients_hold_them(lab: Lab, exporter: ExporterServer) -> None:
    nat = lab.nat

    def active() -> Counter[str]:
        found = series(fetch(exporter))
        return +Counter(
            {
                node: int(value(found, "ipvs_backend_connections_active", service="nat", real_server=node))
                for node in nat.weights
            }
        )

    with traffic.hold_connections(lab, nat.address, nat.port, 5, seconds=60) as held:
        assert sum(held.values()) == 5
        poll("active connections while held", active, lambda now: now == held)
    poll("active connections after the clients closed", active, lambda now: not now)


@pytest.fixture
def prometheus(exporter: ExporterServer, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (Debian's) scraping the exporter every second; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Prometheus is not installed (apt-get install prometheus)")
    target = exporter.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": "lvsguard", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "prometheus.log", "w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll("Prometheus ready", lambda: _status(f"{url}/-/ready"), lambda status: status == 200, timeout=60)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


def promql(prometheus: str, expr: str) -> dict[str, float]:
    """Instant query: ``{real_server label (or ""): value}``."""
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return {r["metric"].get("real_server", ""): float(r["value"][1]) for r in body["data"]["result"]}


def test_a_real_prometheus_scrapes_the_exporter(lab: Lab, prometheus: str) -> None:
    nat = lab.nat
    poll("the scrape target up", lambda: promql(prometheus, 'up{job="lvsguard"}'), lambda r: r == {"": 1.0}, timeout=60)
    traffic.http_get(lab, nat.address, nat.port, 9)

    def kernel_and_prometheus() -> tuple[dict[str, float], dict[str, float]]:
        counts = lab.connections(nat).by_real_server
        return {node: float(counts[node]) for node in nat.weights}, promql(
            prometheus, 'ipvs_backend_connections_total{service="nat"}'
        )

    poll(
        "Prometheus has the connections ipvsadm counts",
        kernel_and_prometheus,
        lambda pair: pair[0] == pair[1],
        timeout=60,
    )
    assert promql(prometheus, 'ipvs_backend_weight{service="nat"}') == {
        node: float(w) for node, w in nat.weights.items()
    }
    assert promql(prometheus, "ipvs_up") == {"": 1.0}


def test_gzip_scrape_is_the_same_exposition(exporter: ExporterServer) -> None:
    def stable(text: str) -> list[str]:
        volatile = ("lvsguard_scrape_duration_seconds ", "process_")  # measured anew on each scrape
        return [line for line in text.splitlines() if not line.startswith(volatile)]

    poll(
        "a gzip scrape equal to a plain one",
        lambda: (stable(fetch(exporter, gzip_ok=True)), stable(fetch(exporter))),
        lambda p: p[0] == p[1],
    )


def test_vip_ownership(lab: Lab, exporter: ExporterServer) -> None:
    netns = lab.director.netns
    listing = json.loads(
        subprocess.run(["ip", "-n", netns, "-json", "addr"], capture_output=True, text=True, check=True).stdout
    )
    from_ip = {a["local"]: link["ifname"] for link in listing for a in link.get("addr_info", [])}
    assert local_addresses(netns) == from_ip
    lab.ipvsadm("-A", "-t", f"{FOREIGN_VIP}:80", "-s", "rr")
    try:
        found = series(fetch(exporter))
    finally:
        lab.ipvsadm("-D", "-t", f"{FOREIGN_VIP}:80")
    table_vips = {s.key.address for s in lab.read_table().services if not s.key.is_fwmark}
    assert table_vips == set(lab.director.vips) - {
        lab.fwmark.address
    }  # a fwmark VIP lives in nftables, not in the table
    for vip in table_vips:
        assert value(found, "lvs_director_vip_owned", vip=vip, interface=from_ip[vip]) == 1
    assert value(found, "lvs_director_vip_owned", vip=FOREIGN_VIP, interface="") == 0
    assert len(pick(found, "lvs_director_vip_owned")) == len(table_vips) + 1


def test_sync_daemon(lab: Lab, exporter: ExporterServer) -> None:
    interface = local_addresses(lab.director.netns)[lab.director.server_ipv4]
    lab.ipvsadm("--start-daemon", "master", "--mcast-interface", interface, "--syncid", "9")
    try:
        found = series(fetch(exporter))
    finally:
        lab.ipvsadm("--stop-daemon", "master")
    assert value(found, "ipvs_sync_daemon_up", role="master", mcast_interface=interface, sync_id="9") == 1
    assert value(found, "ipvs_sync_daemon_up", role="backup", mcast_interface="", sync_id="") == 0
    after = series(fetch(exporter))
    assert value(after, "ipvs_sync_daemon_up", role="master", mcast_interface="", sync_id="") == 0


def test_procfs_source(lab: Lab, exporter: ExporterServer) -> None:
    netns = lab.director.netns
    reader = ExporterReader(netns, "procfs")
    try:
        text = Exposition(IPVSCollector(reader, names=LabNames(lab))).render()
    finally:
        reader.close()
    promtool_check(text)
    found = series(text)
    assert value(found, "lvsguard_exporter_info", ipvs_source="procfs") == 1
    assert not pick(found, "ipvs_backend_connections_total") and not pick(found, "ipvs_service_connections_total")
    from_netlink = series(fetch(exporter))
    assert pick(found, "ipvs_backend_weight") == pick(from_netlink, "ipvs_backend_weight")
    assert len(pick(found, "ipvs_backend_weight")) == lab_real_servers(lab)


FALLBACK_SCRIPT = """
import sys
from lvsguard.exporter.collector import BACKEND_METRICS, IPVSCollector
from lvsguard.exporter.exposition import Exposition
from lvsguard.exporter.source import ExporterReader
sys.stdout.write(Exposition(IPVSCollector(ExporterReader(sys.argv[1], "auto"))).render())
"""


def test_without_cap_net_admin_the_exporter_falls_back_to_procfs(lab: Lab) -> None:
    result = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
            sys.executable,
            "-c",
            FALLBACK_SCRIPT,
            lab.director.netns,
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    found = series(result.stdout)
    assert value(found, "ipvs_up") == 1
    assert value(found, "lvsguard_exporter_info", ipvs_source="procfs") == 1
    assert len(pick(found, "ipvs_backend_weight")) == lab_real_servers(lab)


def test_missing_namespace_is_ipvs_up_0_and_the_exporter_recovers() -> None:
    subprocess.run(["ip", "netns", "del", LATE_NETNS], capture_output=True, check=False)
    server, thread = serve(ExporterReader(LATE_NETNS, "auto"))
    try:
        assert value(series(fetch(server)), "ipvs_up") == 0
        assert value(series(fetch(server)), "ipvs_up") == 0
        subprocess.run(["ip", "netns", "add", LATE_NETNS], check=True)
        subprocess.run(["ip", "-n", LATE_NETNS, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "netns", "exec", LATE_NETNS, "ipvsadm", "-A", "-t", "192.0.2.77:443", "-s", "sh"], check=True
        )
        found = series(fetch(server))
        assert value(found, "ipvs_up") == 1
        assert value(found, "ipvs_service_info", local_address="192.0.2.77", local_port="443", scheduler="sh") == 1
    finally:
        server.shutdown()
        thread.join(10)
        subprocess.run(["ip", "netns", "del", LATE_NETNS], capture_output=True, check=False)


def test_ten_thousand_real_servers_export_every_series_with_its_value() -> None:
    subprocess.run(["ip", "netns", "del", BIG_NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", BIG_NETNS], check=True)
    subprocess.run(["ip", "-n", BIG_NETNS, "link", "set", "lo", "up"], check=True)
    expected: dict[tuple[str, str, str], int] = {}  # (VIP, real server, port) -> weight
    try:
        kernel = NetlinkIPVS(BIG_NETNS)
        try:
            for s in range(100):
                key = ServiceKey("TCP", f"192.0.2.{s + 1}", 80)
                kernel.add_service(VirtualService(key, "wrr"))
                servers = [
                    RealServer(RealServerKey(f"10.1.{s}.{r + 1}", 8080), (s * 100 + r) % 1000 + 1, Forward.MASQ)
                    for r in range(100)
                ]
                assert kernel.add_real_servers(key, servers) == 100
                expected.update({(key.address, rs.key.address, "8080"): rs.weight for rs in servers})
        finally:
            kernel.close()
        server, thread = serve(ExporterReader(BIG_NETNS, "netlink"))
        try:
            text = fetch(server, gzip_ok=True)
        finally:
            server.shutdown()
            thread.join(10)
    finally:
        subprocess.run(["ip", "netns", "del", BIG_NETNS], capture_output=True, check=False)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    families = Counter(line.partition("{")[0].partition(" ")[0] for line in lines)
    backend = {name: n for name, n in families.items() if name.startswith("ipvs_backend_")}
    assert backend == {metric.name: 10_000 for metric in BACKEND_METRICS}
    assert families["ipvs_service_info"] == 100
    weights = quick_series("\n".join(line for line in lines if line.startswith("ipvs_backend_weight{")))
    assert quick_series(SMALL_SAMPLE) == series(SMALL_SAMPLE)
    got = {
        (labels["local_address"], labels["remote_address"], labels["remote_port"]): v
        for (_, frozen), v in weights.items()
        for labels in [dict(frozen)]
    }
    assert got == expected


SMALL_SAMPLE = """# HELP ipvs_backend_weight w
# TYPE ipvs_backend_weight gauge
ipvs_backend_weight{local_address="192.0.2.1",local_port="80",remote_address="10.1.0.1",remote_port="8080",proto="TCP",local_mark="",service="",real_server=""} 7
# HELP ipvs_up u
# TYPE ipvs_up gauge
ipvs_up 1
"""
