"""The exporter's HTTP server, on a loopback port, over real HTTP (urllib, http.client, a raw socket)."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lvsguard.errors import NotPermitted
from lvsguard.exporter.collector import IPVSCollector
from lvsguard.exporter.exposition import Exposition
from lvsguard.exporter.probes.metrics import ProbeMetrics
from lvsguard.exporter.probes.result import ProbeResult
from lvsguard.exporter.probes.state import Health
from lvsguard.exporter.server import ExporterServer, ListenError, accepts_gzip, parse_listen, run
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Stats, Table, VirtualService

BIG = 2**64 - 1
TABLE = Table(
    (
        VirtualService(
            ServiceKey("TCP", "192.0.2.10", 80),
            "wrr",
            stats=Stats(3, 30, 20, 3000, BIG),
            real_servers=tuple(
                RealServer(
                    RealServerKey(f"10.0.1.{i}", 8080),
                    i,
                    Forward.MASQ,
                    active_connections=i,
                    stats=Stats(1, 10, 7, 1000, 9000),
                )
                for i in range(2, 5)
            ),
        ),
    ),
    totals=Stats(3, 30, 20, 3000, BIG),
)


class SwitchableReader:
    """Returns TABLE, or raises ``error`` while it is set."""

    source = "netlink"

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.closed = False

    def read(self) -> Table:
        if self.error is not None:
            raise self.error
        return TABLE

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ExporterServer, SwitchableReader]]:
    reader = SwitchableReader()
    started = threading.Event()
    box: list[ExporterServer] = []

    def ready(server: ExporterServer) -> None:
        box.append(server)
        started.set()

    thread = threading.Thread(target=run, args=(lambda: reader, "127.0.0.1:0"), kwargs={"ready": ready}, daemon=True)
    thread.start()
    assert started.wait(10), "the exporter did not start"
    yield box[0], reader
    box[0].shutdown()
    thread.join(10)
    assert reader.closed, "run() must close the reader when it stops"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_metrics_plain(served: tuple[ExporterServer, SwitchableReader]) -> None:
    server, _ = served
    status, headers, body = get(server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Content-Encoding" not in headers
    text = body.decode()
    assert "ipvs_up 1\n" in text
    assert f"ipvs_outgoing_bytes_total {BIG}\n" in text
    weights = {
        s.labels["remote_address"]: s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "ipvs_backend_weight"
        for s in fam.samples
    }
    assert weights == {"10.0.1.2": 2, "10.0.1.3": 3, "10.0.1.4": 4}


def test_metrics_gzip_when_asked(served: tuple[ExporterServer, SwitchableReader]) -> None:
    server, _ = served
    status, headers, body = get(server.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Vary"] == "Accept-Encoding"
    text = gzip.decompress(body).decode()
    assert "ipvs_up 1\n" in text and text.endswith("\n")
    _, _, plain = get(server.url + "/metrics")
    volatile = ("lvsguard_scrape_duration_seconds ", "process_")  # measured anew on each scrape
    strip = lambda t: [line for line in t.splitlines() if not line.startswith(volatile)]
    assert strip(text) == strip(plain.decode())


def test_unreadable_table_still_answers(served: tuple[ExporterServer, SwitchableReader]) -> None:
    server, reader = served
    reader.error = NotPermitted("netlink IPVS needs CAP_NET_ADMIN")
    try:
        status, _, body = get(server.url + "/metrics")
    finally:
        reader.error = None
    assert status == 200
    assert "ipvs_up 0\n" in body.decode()
    assert "ipvs_backend" not in body.decode()
    assert "ipvs_up 1\n" in get(server.url + "/metrics")[2].decode()


def test_keep_alive_serves_several_scrapes_on_one_connection(served: tuple[ExporterServer, SwitchableReader]) -> None:
    server, _ = served
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            assert response.getheader("Transfer-Encoding") == "chunked"
            assert b"ipvs_up 1\n" in gzip.decompress(response.read())
        sock = conn.sock
        conn.request("GET", "/-/healthy")
        assert conn.getresponse().read() == b"OK\n"
        assert conn.sock is sock  # the same connection all along
    finally:
        conn.close()


def test_http_1_0_gets_the_body_until_close(served: tuple[ExporterServer, SwitchableReader]) -> None:
    server, _ = served
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert body.startswith(b"# HELP ipvs_up ") and body.endswith(b"\n")


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        ("/", 200, b'<a href="/metrics">'),
        ("/", 200, b'<a href="/probes.json">'),
        ("/-/healthy", 200, b"OK\n"),
        ("/nope", 404, b"/nope: not found"),
    ],
    ids=["index links metrics", "index links the probe report", "healthy", "unknown path"],
)
def test_other_paths(served: tuple[ExporterServer, SwitchableReader], path: str, status: int, needle: bytes) -> None:
    server, _ = served
    got_status, _, body = get(server.url + path)
    assert got_status == status
    assert needle in body


def test_probe_report_without_probes_has_no_check(served: tuple[ExporterServer, SwitchableReader]) -> None:
    server, _ = served
    status, headers, body = get(server.url + "/probes.json")
    assert (status, headers["Content-Type"], json.loads(body)) == (200, "application/json", {"checks": []})


def test_probe_report_carries_every_check_and_its_durations() -> None:
    metrics = ProbeMetrics()
    web = ServiceKey("TCP", "192.0.2.10", 80)
    own, shared = (web, RealServerKey("10.0.1.2", 8080), "tcp"), (web, RealServerKey("10.0.1.3", 8080), "tcp")
    metrics.add(own)
    metrics.add(shared, shared=True)
    health = Health(1, 1)
    health.update(False, 1_700_000_000.5)
    for key in (own, shared):
        metrics.observe(key, ProbeResult(False, "refused", 0.25), health)
    server = ExporterServer("127.0.0.1:0", Exposition(IPVSCollector(SwitchableReader())), metrics.report)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, _, body = get(server.url + "/probes.json")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200
    check = {
        "service": "TCP 192.0.2.10:80",
        "check": "tcp",
        "healthy": False,
        "success": False,
        "last_change": 1_700_000_000.5,
    }
    assert json.loads(body)["checks"] == [
        {**check, "real_server": "10.0.1.2:8080", "duration_seconds_sum": 0.25, "duration_seconds_count": 1},
        {**check, "real_server": "10.0.1.3:8080", "duration_seconds_sum": None, "duration_seconds_count": None},
    ]


def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        reader = SwitchableReader()
        with pytest.raises(ListenError, match=rf"cannot listen on 127.0.0.1:{port}: .*in use"):
            run(lambda: reader, f"127.0.0.1:{port}")
        assert reader.closed


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9910", ("127.0.0.1", 9910)), ("[::1]:9910", ("::1", 9910)), (":9910", ("", 9910))],
    ids=["ipv4", "ipv6 in brackets", "every address"],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9910", "localhost", "::1:9910", "127.0.0.1:99999", "127.0.0.1:http"])
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(ListenError, match=f"cannot listen on {listen}: "):
        parse_listen(listen)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0, identity", False),
        ("identity", False),
        ("", False),
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


@pytest.fixture
def fresh() -> Iterator[ExporterServer]:
    """An exporter of its own (the module's is shared by the other tests)."""
    started = threading.Event()
    box: list[ExporterServer] = []

    def ready(server: ExporterServer) -> None:
        box.append(server)
        started.set()

    thread = threading.Thread(target=run, args=(SwitchableReader, "127.0.0.1:0"), kwargs={"ready": ready}, daemon=True)
    thread.start()
    assert started.wait(10), "the exporter did not start"
    yield box[0]
    box[0].shutdown()
    thread.join(10)


def test_half_open_connections_take_no_thread_beyond_the_cap_and_others_still_scrape(fresh: ExporterServer) -> None:
    """400 connections that never send a request held 404 threads for 120 s; now a few threads, and the scrape answers."""
    port = int(fresh.url.rsplit(":", 1)[1])
    before = threading.active_count()
    idle = []
    try:
        for _ in range(400):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)  # let the server accept them all
        assert threading.active_count() - before <= 16  # one client's share of the connections
        scraper = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
        started = time.monotonic()
        with scraper:
            scraper.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert scraper.recv(4096).startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < 2
        refused = idle[-1]
        refused.settimeout(5)
        assert refused.recv(4096).startswith(b"HTTP/1.1 503")  # told at once, not left hanging
    finally:
        for sock in idle:
            sock.close()


def test_clients_that_leave_early_write_no_traceback(fresh: ExporterServer, capfd: pytest.CaptureFixture[str]) -> None:
    port = int(fresh.url.rsplit(":", 1)[1])
    for path in ("/", "/metrics", "/-/healthy") * 10:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
    time.sleep(0.5)
    assert get(fresh.url + "/-/healthy")[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err
