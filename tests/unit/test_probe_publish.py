"""The publisher's HTTP client (``Poster``): one kept-alive connection per receiver, its recovery when the receiver closes it;
and the engine handing a transition to the publisher before anything else."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lvsguard.exporter.probes.engine import CheckSpec, ProbeEngine
from lvsguard.exporter.probes.publish import Poster, Transition, WeightChange
from lvsguard.exporter.probes.result import ProbeResult
from lvsguard.exporter.probes.tcp import TCPChecker
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService


class _Receiver(BaseHTTPRequestHandler):
    """Answers every POST with 200 and the body back; records the client port of each request (one per connection)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as waitress serves the actuator
    ports: list[int] = []
    bodies: list[Any] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).ports.append(self.client_address[1])
        type(self).bodies.append(body)
        reply = json.dumps({"echo": body}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


class _ClosingReceiver(_Receiver):
    protocol_version = "HTTP/1.0"  # closes after every response


def _serve(handler: type[_Receiver]) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    handler.ports, handler.bodies = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def receiver() -> Iterator[tuple[ThreadingHTTPServer, str]]:
    yield from _serve(_Receiver)


@pytest.fixture
def closing_receiver() -> Iterator[tuple[ThreadingHTTPServer, str]]:
    yield from _serve(_ClosingReceiver)


def _post(poster: Poster, url: str, n: int) -> tuple[int, str]:
    return poster.post(url, json.dumps({"n": n}).encode(), {"Content-Type": "application/json"})


def test_posts_reuse_one_connection(receiver: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = receiver
    poster = Poster()
    replies = [_post(poster, f"{url}/webhook/alertmanager", n) for n in range(3)]
    poster.close()
    assert [status for status, _ in replies] == [200, 200, 200]
    assert json.loads(replies[2][1]) == {"echo": {"n": 2}}
    assert _Receiver.bodies == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert len(set(_Receiver.ports)) == 1 and poster.opened == 1


def test_a_connection_the_receiver_closed_is_opened_again(receiver: tuple[ThreadingHTTPServer, str]) -> None:
    _, url = receiver
    poster = Poster()
    assert _post(poster, url, 1)[0] == 200
    [conn] = poster._conns.values()
    assert conn.sock is not None
    conn.sock.shutdown(
        socket.SHUT_RDWR
    )  # as if the receiver's keep-alive timeout ended it: the socket now reads end of file
    assert _post(poster, url, 2)[0] == 200
    poster.close()
    assert _Receiver.bodies == [{"n": 1}, {"n": 2}]
    assert poster.opened == 2 and len(set(_Receiver.ports)) == 2


def test_a_receiver_that_closes_after_each_answer_gets_every_post(
    closing_receiver: tuple[ThreadingHTTPServer, str],
) -> None:
    _, url = closing_receiver
    poster = Poster()
    statuses = [_post(poster, url, n)[0] for n in range(3)]
    poster.close()
    assert statuses == [200, 200, 200] and _ClosingReceiver.bodies == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert poster.opened == 3


def test_no_receiver_is_an_oserror_naming_the_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
    poster = Poster(timeout=1.0)
    with pytest.raises(OSError, match="ConnectionRefusedError"):
        _post(poster, f"http://127.0.0.1:{port}/webhook/alertmanager", 1)
    assert poster.opened == 2  # the first attempt, then one fresh retry


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        _post(Poster(), "ftp://127.0.0.1/x", 1)


class _OrderRecorder:
    """A publisher that notes, for each transition, whether the engine had logged it already."""

    def __init__(self, caplog: pytest.LogCaptureFixture):
        self.caplog = caplog
        self.logged_before: list[bool] = []

    def transition(self, change: Transition) -> None:
        self.logged_before.append(any("probe_transition" in r.getMessage() for r in self.caplog.records))

    def weight(self, change: WeightChange) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_engine_hands_a_transition_to_the_publisher_before_it_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lvsguard.exporter.probes")
    publisher = _OrderRecorder(caplog)
    spec = CheckSpec("tcp", TCPChecker(), rise=1, fall=1)
    engine = ProbeEngine(lambda s, r: (spec,), publisher=publisher, hot_path=False)
    service = ServiceKey.parse("TCP 192.0.2.10:80")
    table = Table(
        (
            VirtualService(
                service,
                scheduler="wrr",
                real_servers=(RealServer(RealServerKey.parse("10.0.1.1:8080"), 3, Forward.MASQ),),
            ),
        ),
        source="netlink",
    )

    async def body() -> None:
        engine.sync(table)
        job = next(iter(engine.jobs.values()))
        engine.record(job, ProbeResult(False, "refused"))
        await engine.stop()

    asyncio.run(body())
    assert publisher.logged_before == [False]
    assert any("probe_transition" in r.getMessage() for r in caplog.records)  # and it is logged, after
