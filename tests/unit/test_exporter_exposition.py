"""Pieces of the fast exposition: value and label formatting, and a scraper that leaves mid-scrape."""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time

import pytest

from lvsguard.exporter.collector import IPVSCollector
from lvsguard.exporter.exposition import Exposition, escape_label_value, format_value
from lvsguard.exporter.server import ExporterServer
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Stats, Table, VirtualService


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (2**64 - 1, "18446744073709551615"),
        (2**70 + 1, "1180591620717411303425"),
        (True, "1"),
        (0.25, "0.25"),
        (1e-05, "1e-05"),
    ],
)
def test_format_value(value: int | float, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [("web-1", "web-1"), ('a "b"', 'a \\"b\\"'), ("a\\b", "a\\\\b"), ("two\nlines", "two\\nlines")],
)
def test_escape_label_value(raw: str, escaped: str) -> None:
    assert escape_label_value(raw) == escaped


class BigReader:
    """20 000 real servers: about 30 MB of text, far more than a socket buffer holds."""

    source = "netlink"

    def __init__(self) -> None:
        self.table = Table(
            tuple(
                VirtualService(
                    ServiceKey("TCP", f"192.0.2.{s}", 80),
                    "rr",
                    real_servers=tuple(
                        RealServer(
                            RealServerKey(f"10.{s}.{r // 250}.{r % 250}", 80),
                            1,
                            Forward.MASQ,
                            stats=Stats(r, r, r, r, r),
                        )
                        for r in range(1000)
                    ),
                )
                for s in range(20)
            )
        )

    def read(self) -> Table:
        return self.table

    def close(self) -> None:
        pass


def test_a_scraper_that_leaves_mid_scrape_is_logged_and_the_server_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="lvsguard.exporter.server")
    server = ExporterServer("127.0.0.1:0", Exposition(IPVSCollector(BigReader())))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close = RST
        deadline = time.monotonic() + 10
        while not any(r.getMessage().startswith("scrape_aborted ") for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.02)
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)  # and it still serves
        conn.request("GET", "/-/healthy")
        assert conn.getresponse().read() == b"OK\n"
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
