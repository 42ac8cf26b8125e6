"""The IPVS collector and its fast exposition, on tables built from plain model data.

Table-driven like node_exporter's ipvs_linux_test.go: each case renders a table
with some collector options and compares the text with a golden file in
tests/fixtures/metrics/ (``LVSGUARD_UPDATE_GOLDEN=1`` rewrites them; review the
diff). Every case's output also goes through ``promtool check metrics``,
prometheus_client's text parser, and a comparison with prometheus_client's own
``generate_latest`` of the same collector (the oracle, ``tests/exposition_oracle.py``).
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lvsguard.errors import IPVSUnavailable, KernelError, NotPermitted
from lvsguard.exporter.collector import ALL_METRICS, BACKEND_LABELS, IPVSCollector, parse_backend_labels
from lvsguard.exporter.exposition import Exposition, encoded, gzipped
from lvsguard.labels import UnknownBackendLabels
from lvsguard.model import (
    Forward,
    RealServer,
    RealServerKey,
    ServiceFlags,
    ServiceKey,
    Stats,
    SyncDaemon,
    Table,
    VirtualService,
)
from tests.exposition_oracle import ClientCollector
from tests.exposition_oracle import client_text as oracle_text

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
UPDATE = os.environ.get("LVSGUARD_UPDATE_GOLDEN") == "1"

BIG = 2**64 - 1  # the largest kernel counter: not a float
ODD = 2**53 + 1  # the first integer a float cannot hold


def rs(
    address: str,
    port: int,
    weight: int,
    forward: Forward = Forward.TUNNEL,
    *,
    active: int = 0,
    inactive: int = 0,
    persistent: int = 0,
    stats: Stats | None = None,
    family: int = 4,
) -> RealServer:
    return RealServer(
        RealServerKey(address, port, family),
        weight,
        forward,
        active_connections=active,
        inactive_connections=inactive,
        persistent_connections=persistent,
        stats=stats or Stats(0, 0, 0, 0, 0),
    )


# The services of node_exporter's fixtures/proc/net/ip_vs, with netlink's counters added,
# plus an IPv6 UDP service.
MYSQL22 = VirtualService(
    ServiceKey("TCP", "192.168.0.22", 3306),
    "wlc",
    stats=Stats(1000, 20000, 0, 3_000_000, 0),
    real_servers=(
        rs("192.168.82.22", 3306, 100, active=248, inactive=2, stats=Stats(400, 8000, 0, 1_200_000, 0)),
        rs("192.168.83.24", 3306, 100, active=248, inactive=2, stats=Stats(300, 6000, 0, 900_000, 0)),
        rs("192.168.83.21", 3306, 100, active=248, inactive=1, stats=Stats(300, 6000, 0, 900_000, 0)),
    ),
)
MYSQL57 = VirtualService(
    ServiceKey("TCP", "192.168.0.57", 3306),
    "wlc",
    flags=ServiceFlags.PERSISTENT,
    timeout=300,
    stats=Stats(ODD, BIG, 0, BIG, 0),
    real_servers=(
        rs("192.168.84.22", 3306, 0, persistent=3),
        rs("192.168.82.21", 3306, 100, active=1499, persistent=7, stats=Stats(ODD, BIG, 0, BIG, 0)),
        rs("192.168.50.21", 3306, 100, active=1498, persistent=5),
    ),
)
MYSQL55 = VirtualService(
    ServiceKey("TCP", "192.168.0.55", 3306),
    "wlc",
    real_servers=(rs("192.168.50.26", 3306, 0), rs("192.168.49.32", 3306, 100)),
)
FWM = VirtualService(
    ServiceKey("FWM", "", 0, 0x10001000),
    "wlc",
    stats=Stats(385, 4000, 0, 500_000, 0),
    real_servers=(
        rs("192.168.50.26", 3306, 20, active=64, inactive=1, stats=Stats(64, 700, 0, 90_000, 0)),
        rs("192.168.49.32", 3306, 100, active=321, inactive=5, stats=Stats(321, 3300, 0, 410_000, 0)),
    ),
)
DNS6 = VirtualService(
    ServiceKey("UDP", "2001:db8::53", 53, family=6),
    "rr",
    stats=Stats(10, 10, 10, 640, 1280),
    real_servers=(
        rs("2001:db8:1::2", 53, 1, Forward.MASQ, inactive=4, stats=Stats(5, 5, 5, 320, 640), family=6),
        rs("2001:db8:1::3", 53, 1, Forward.ROUTE, inactive=4, stats=Stats(5, 5, 5, 320, 640), family=6),
    ),
)
TABLE = Table(
    services=(MYSQL22, MYSQL57, MYSQL55, FWM, DNS6),
    totals=Stats(23765872, 3811989221, 0, 89991519156915, 0),
    sync_daemons=(SyncDaemon("master", "eth1", 42),),
)
LOCAL = {"192.168.0.22": "eth0", "192.168.0.55": "eth0:vip", "10.0.0.1": "eth1"}


class FakeReader:
    """A reader that returns a fixed table, or raises a fixed error; counts its reads."""

    def __init__(self, result: Table | Exception, source: str = "netlink"):
        self.result = result
        self.source = source
        self.reads = 0

    def read(self) -> Table:
        self.reads += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def close(self) -> None:
        pass


@dataclass
class ConfigNames:
    """Names as the config gives them (lvsguard.config.Config has the same two methods)."""

    services: dict[ServiceKey, str] = field(default_factory=dict)
    real_servers: dict[tuple[ServiceKey, RealServerKey], str] = field(default_factory=dict)

    def service_name(self, key: ServiceKey) -> str:
        return self.services.get(key, "")

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str:
        return self.real_servers.get((service, key), "")


NAMES = ConfigNames(
    services={MYSQL22.key: "mysql-primary", FWM.key: 'web "edge"'},
    real_servers={
        (MYSQL22.key, RealServerKey("192.168.82.22", 3306)): "db1",
        (MYSQL22.key, RealServerKey("192.168.83.24", 3306)): "db2",
        (FWM.key, RealServerKey("192.168.49.32", 3306)): "web\\2\nrack b",
    },
)

# The same mark on an IPv4 and an IPv6 fwmark service, same real server: the labels cannot
# tell them apart (node_exporter's neither), so the series are summed instead of duplicated.
FWM4 = VirtualService(
    ServiceKey("FWM", "", 0, 7, 4),
    "rr",
    stats=Stats(1, 1, 1, 1, 1),
    real_servers=(rs("10.0.0.9", 0, 1, active=1, stats=Stats(1, 1, 1, 1, 1)),),
)
FWM6 = replace(FWM4, key=ServiceKey("FWM", "", 0, 7, 6), scheduler="wrr")


@dataclass(frozen=True)
class Case:
    golden: str
    reader: Callable[[], FakeReader]
    options: dict[str, Any] = field(default_factory=dict)


CASES = {
    "all labels": Case("ip_vs_result.prom", lambda: FakeReader(TABLE)),
    "backend_labels empty": Case("ip_vs_result_lbs_none.prom", lambda: FakeReader(TABLE), {"backend_labels": ""}),
    "backend_labels local_port": Case(
        "ip_vs_result_lbs_local_port.prom", lambda: FakeReader(TABLE), {"backend_labels": "local_port"}
    ),
    "backend_labels local_address,local_port": Case(
        "ip_vs_result_lbs_local_address_local_port.prom",
        lambda: FakeReader(TABLE),
        {"backend_labels": ["local_address", "local_port"]},
    ),
    "names from config": Case("ip_vs_result_names.prom", lambda: FakeReader(TABLE), {"names": NAMES}),
    "names without remote labels": Case(
        "ip_vs_result_names_lbs_service.prom",
        lambda: FakeReader(TABLE),
        {"names": NAMES, "backend_labels": "service,real_server"},
    ),
    "services allow-list": Case(
        "ip_vs_result_allow_list.prom",
        lambda: FakeReader(TABLE),
        {"services": {FWM.key, DNS6.key, ServiceKey("TCP", "203.0.113.1", 80)}},
    ),
    "procfs source": Case(
        "ip_vs_result_procfs.prom",
        lambda: FakeReader(replace(TABLE, source="procfs", sync_daemons=()), source="procfs"),
    ),
    "fwmark v4 and v6 with one mark": Case(
        "ip_vs_result_fwmark_families.prom", lambda: FakeReader(Table((FWM4, FWM6)))
    ),
    "empty table": Case("ip_vs_result_empty.prom", lambda: FakeReader(Table((), totals=Stats(0, 0, 0, 0, 0)))),
    "read fails": Case("ip_vs_result_down.prom", lambda: FakeReader(NotPermitted("netlink IPVS needs CAP_NET_ADMIN"))),
}


def make_collector(case: Case, **extra: Any) -> IPVSCollector:
    options = {"addresses": lambda: LOCAL, "version": "1.2.3", "clock": itertools.count(100.0, 0.25).__next__}
    options.update(case.options)
    options.update(extra)
    return IPVSCollector(case.reader(), **options)


def fast_text(case: Case, **extra: Any) -> str:
    return Exposition(make_collector(case, **extra)).render()


def client_text(case: Case) -> str:
    return oracle_text(ClientCollector(make_collector(case)))


def samples(text: str) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    """Every sample; values as floats, as prometheus_client's own path holds them."""
    return {
        (s.name, frozenset(s.labels.items()), float(s.value))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def families(text: str) -> list[tuple[str, str, str]]:
    return [(f.name, f.type, f.documentation) for f in text_string_to_metric_families(text)]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_exposition_matches_golden_file(case: Case) -> None:
    text = fast_text(case)
    path = GOLDEN / case.golden
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_promtool_accepts_exposition(case: Case) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=fast_text(case), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_text_parser_reads_every_sample_line(case: Case) -> None:
    text = fast_text(case)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    parsed = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    assert len(parsed) == len(lines)
    for line, sample in zip(lines, parsed):
        assert line.startswith(sample.name)
        value = line.rsplit(" ", 1)[1]
        assert sample.value == (int(value) if value.isdigit() else float(value))  # the parser keeps big ints exact


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fast_path_gives_the_samples_of_prometheus_client(case: Case) -> None:
    fast, client = fast_text(case), client_text(case)
    assert families(fast) == families(client)
    assert samples(fast) == samples(client)


def test_counters_above_2_pow_53_are_exact() -> None:
    text = fast_text(CASES["all labels"])
    service = 'local_address="192.168.0.57",local_port="3306",proto="TCP",local_mark="",service=""'
    assert f"ipvs_service_connections_total{{{service}}} {ODD}\n" in text
    assert f"ipvs_service_incoming_bytes_total{{{service}}} {BIG}\n" in text
    assert f"ipvs_service_incoming_packets_total{{{service}}} {BIG}\n" in text
    # prometheus_client's own path goes through float: the reason for the fast path
    assert str(BIG) not in client_text(CASES["all labels"])


def test_dropped_labels_sum_exactly() -> None:
    text = fast_text(CASES["backend_labels empty"])
    total = sum(r.stats.incoming_bytes for s in TABLE.services for r in s.real_servers)
    assert f"ipvs_backend_incoming_bytes_total {total}\n" in text
    assert total > 2**64  # summed past the kernel's 64 bits, still exact


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("invalid_label", 'unknown IPVS backend labels: "invalid_label"'),
        ("invalid_label,bad_label", 'unknown IPVS backend labels: "bad_label, invalid_label"'),
        (["local_port", "bad_label", "invalid_label"], 'unknown IPVS backend labels: "bad_label, invalid_label"'),
    ],
    ids=["one unknown", "two unknown, sorted", "list with two unknown"],
)
def test_unknown_backend_labels_are_refused_at_construction(labels: Any, message: str) -> None:
    reader = FakeReader(TABLE)
    with pytest.raises(UnknownBackendLabels) as info:
        IPVSCollector(reader, backend_labels=labels)
    assert str(info.value) == message
    assert reader.reads == 0


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (",".join(BACKEND_LABELS), BACKEND_LABELS),
        ("", ()),
        ("proto, local_port,proto,", ("local_port", "proto")),
        (["real_server", "service"], ("service", "real_server")),
    ],
    ids=["all", "none", "duplicates and spaces", "list in any order"],
)
def test_backend_labels_keep_output_order(labels: Any, expected: tuple[str, ...]) -> None:
    assert parse_backend_labels(labels) == expected


def test_registering_does_not_read_the_table() -> None:
    reader = FakeReader(TABLE)
    collector = ClientCollector(IPVSCollector(reader))
    registry = CollectorRegistry()
    registry.register(collector)
    assert reader.reads == 0
    assert [m.name for m in collector.describe()] == [
        m.name.removesuffix("_total") if m.type == "counter" else m.name for m in ALL_METRICS
    ]
    generate_latest(registry)
    assert reader.reads == 1


def test_read_failure_is_ipvs_up_0_and_logged_once_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    reader = FakeReader(NotPermitted("netlink IPVS needs CAP_NET_ADMIN"))
    exposition = Exposition(IPVSCollector(reader))
    caplog.set_level(logging.INFO, logger="lvsguard.exporter.collector")

    def scrape() -> str:
        return exposition.render()

    assert "ipvs_up 0\n" in scrape()
    assert "ipvs_up 0\n" in scrape()
    reader.result = IPVSUnavailable("the kernel has no IPVS (ip_vs module not loaded)")
    assert "ipvs_up 0\n" in scrape()
    reader.result = TABLE
    assert "ipvs_up 1\n" in scrape()
    assert "ipvs_up 1\n" in scrape()
    reader.result = KernelError("dump interrupted")
    assert "ipvs_up 0\n" in scrape()
    assert [r.getMessage() for r in caplog.records] == [
        'ipvs_read_failed reason="netlink IPVS needs CAP_NET_ADMIN"',
        'ipvs_read_failed reason="the kernel has no IPVS (ip_vs module not loaded)"',
        "ipvs_read_recovered",
        'ipvs_read_failed reason="dump interrupted"',
    ]
    assert reader.reads == 6


def test_unexpected_reader_exception_does_not_escape_a_scrape(caplog: pytest.LogCaptureFixture) -> None:
    text = Exposition(IPVSCollector(FakeReader(RuntimeError("decoder bug")))).render()
    assert "ipvs_up 0\n" in text
    assert any("RuntimeError: decoder bug" in r.getMessage() for r in caplog.records)


def test_address_failure_drops_only_the_vip_family(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict[str, str]:
        raise KernelError("reading local addresses: Permission denied")

    text = fast_text(CASES["all labels"], addresses=broken)
    assert "ipvs_up 1\n" in text
    assert "lvs_director_vip_owned" not in text
    assert "ipvs_backend_weight" in text
    assert [r.getMessage() for r in caplog.records] == [
        'address_read_failed reason="reading local addresses: Permission denied"'
    ]


def test_label_cache_drops_real_servers_and_services_that_left() -> None:
    case = CASES["all labels"]
    exposition = Exposition(make_collector(case))
    reader = exposition.collector.reader
    assert isinstance(reader, FakeReader)
    exposition.render()
    assert exposition.cached_real_servers == TABLE.real_server_count == 12
    reader.result = Table((replace(MYSQL22, real_servers=MYSQL22.real_servers[:1]), DNS6))
    text = exposition.render()
    assert exposition.cached_real_servers == 3
    assert "192.168.83.24" not in text and "192.168.0.57" not in text
    reader.result = TABLE
    assert exposition.render() == fast_text(case)
    assert exposition.cached_real_servers == 12


def test_cached_scrapes_render_like_a_fresh_collector() -> None:
    case = CASES["names from config"]
    clock = itertools.count(100.0, 0.25).__next__
    warm = Exposition(make_collector(case, clock=clock))
    first = warm.render()
    assert warm.render() == first  # second scrape from the cache
    assert fast_text(case) == first


def test_small_batches_render_the_same_text() -> None:
    case = CASES["all labels"]
    assert Exposition(make_collector(case), batch=1).render() == fast_text(case)


def test_label_values_are_escaped_and_parse_back() -> None:
    parsed = samples(fast_text(CASES["names from config"]))
    names = {dict(labels).get("real_server") for _, labels, _ in parsed} | {
        dict(labels).get("service") for _, labels, _ in parsed
    }
    assert {"web\\2\nrack b", 'web "edge"', "db1", "mysql-primary"} <= names


def test_gzip_stream_decompresses_to_the_text() -> None:
    collector = make_collector(CASES["all labels"])
    exposition = Exposition(collector, batch=2)
    compressed = b"".join(gzipped(encoded(exposition.chunks())))
    assert gzip.decompress(compressed).decode() == fast_text(CASES["all labels"])


def test_allow_list_without_a_matching_service_keeps_host_metrics() -> None:
    text = fast_text(Case("", lambda: FakeReader(TABLE), {"services": [ServiceKey("TCP", "203.0.113.1", 80)]}))
    assert "ipvs_up 1\n" in text
    assert "ipvs_connections_total 23765872\n" in text
    assert "ipvs_service" not in text and "ipvs_backend" not in text


def test_every_metric_and_label_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent.parent / "docs" / "metrics.md").read_text()
    collector = ClientCollector(IPVSCollector(FakeReader(TABLE)))
    for metric in ALL_METRICS:
        assert f"| `{metric.name}` | {metric.type}" in doc, metric.name
    for label in {label for metric in ALL_METRICS for label in collector.labels_of(metric)}:
        assert f"`{label}`" in doc, label
