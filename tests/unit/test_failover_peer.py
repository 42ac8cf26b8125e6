"""The failover's peer check: refused unless the other director's actuator says it is a healthy backup.

The peer is a real HTTP server on loopback that answers ``/api/v1/director``
as the actuator does; the director under test is the actuator app with a fake
kernel.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lvsguard.actuator.app import create_app
from lvsguard.actuator.failover import PeerCheck, peer_problem
from lvsguard.actuator.settings import ActuatorSettings, from_mapping
from lvsguard.errors import ConfigError
from lvsguard.model import SyncDaemon, Table
from tests.fakes import FakeKernel, service

TOKEN = "peer-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Peer:
    """What the fake peer answers: an HTTP status and a JSON body; the connections it accepted."""

    def __init__(self) -> None:
        self.status = 200
        self.body: Any = {"role": "backup", "failover": {"requested": False}}
        self.connections = 0
        self.sockets: list[socket.socket] = []


def serve(state: Peer, port: int = 0, keep_alive: bool = False) -> ThreadingHTTPServer:
    """A peer actuator's ``/api/v1/director`` on loopback (HTTP/1.1 keep-alive when ``keep_alive``)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def setup(self) -> None:
            state.connections += 1
            state.sockets.append(self.request)
            super().setup()

        def do_GET(self) -> None:
            data = json.dumps(state.body).encode() if self.path == "/api/v1/director" else b"{}"
            self.send_response(state.status if self.path == "/api/v1/director" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def peer() -> Iterator[tuple[Peer, str]]:
    state = Peer()
    server = serve(state)
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_backup_peer_is_ready(peer: tuple[Peer, str]) -> None:
    assert peer_problem(peer[1]) is None


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"role": "fault", "failover": {"requested": False}}, "the peer director is fault, not backup"),
        (200, {"role": "master", "failover": {"requested": False}}, "the peer director is master, not backup"),
        (200, {"role": "unknown"}, "the peer director is unknown, not backup"),
        (200, {"role": "backup", "failover": {"requested": True}}, "has a failover requested itself"),
        (200, ["not", "an", "object"], "in an unknown state"),
        (503, {"error": "ledger"}, "answered HTTP 503"),
    ],
)
def test_a_peer_that_cannot_take_over_is_named(peer: tuple[Peer, str], status: int, body: Any, expected: str) -> None:
    peer[0].status, peer[0].body = status, body
    problem = peer_problem(peer[1])
    assert problem is not None and expected in problem and "/api/v1/director" in problem


def test_an_unreachable_peer_is_a_problem() -> None:
    problem = peer_problem("http://127.0.0.1:9", timeout=1.0)
    assert problem is not None and "cannot be reached" in problem


def test_one_kept_connection_carries_every_check_and_each_answer_is_fresh() -> None:
    state = Peer()
    server = serve(state, keep_alive=True)
    check = PeerCheck(f"http://127.0.0.1:{server.server_address[1]}")
    try:
        assert check.problem() is None
        state.body = {"role": "stop", "failover": {"requested": False}}
        problem = check.problem()
        assert problem is not None and "the peer director is stop, not backup" in problem
        state.body = {"role": "backup", "failover": {"requested": False}}
        assert check.problem() is None
        assert state.connections == 1
    finally:
        check.close()
        server.shutdown()
        server.server_close()


def stop(server: ThreadingHTTPServer, state: Peer) -> None:
    """Stop the peer as a killed process stops: the listening socket and every accepted connection closed."""
    server.shutdown()
    server.server_close()
    for sock in state.sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
    state.sockets.clear()


def test_a_restarted_peer_is_asked_on_a_new_connection_and_a_stopped_one_is_a_problem() -> None:
    state = Peer()
    first = serve(state, keep_alive=True)
    port = first.server_address[1]
    check = PeerCheck(f"http://127.0.0.1:{port}", timeout=1.0)
    try:
        assert check.problem() is None
        stop(first, state)
        second = serve(state, port=port, keep_alive=True)
        try:
            assert check.problem() is None  # the kept connection was closed: asked again on a new one
            assert state.connections == 2
        finally:
            stop(second, state)
        problem = check.problem()
        assert problem is not None and "cannot be reached" in problem
    finally:
        check.close()


def test_the_failover_is_refused_and_audited_while_the_peer_is_not_ready(
    tmp_path: Path, peer: tuple[Peer, str]
) -> None:
    track = tmp_path / "failover"
    track.write_text("0\n")
    settings = ActuatorSettings(tokens={"ops": TOKEN}, failover_track_file=str(track), failover_peer_url=peer[1])
    app = create_app(
        settings,
        kernel=FakeKernel([service("TCP 192.0.2.10:80", ("10.0.1.2:80", 1))]),
        ledger_path=str(tmp_path / "ledger.db"),
    )
    client = app.test_client()
    peer[0].body = {"role": "fault", "failover": {"requested": False}}
    refused = client.post("/api/v1/failover", json={"reason": "upgrade"}, headers=AUTH)
    assert refused.status_code == 409
    assert refused.get_json()["result"] == "refused" and "peer director is fault" in refused.get_json()["message"]
    assert track.read_text() == "0\n"
    assert client.get("/api/v1/director").get_json()["failover"]["holders"] == []
    audit = client.get("/api/v1/audit").get_json()["events"]
    assert (audit[0]["action"], audit[0]["result"]) == ("failover", "refused")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'lvsguard_refusals_total{action="failover",reason="peer"} 1.0' in metrics
    peer[0].body = {"role": "backup", "failover": {"requested": False}}
    applied = client.post("/api/v1/failover", json={"reason": "upgrade"}, headers=AUTH)
    assert applied.status_code == 200 and track.read_text() == "1\n"


class TableNotRead(FakeKernel):
    """A kernel whose whole-table read fails the test: the director endpoint must not need it."""

    def read(self) -> Table:
        raise AssertionError("GET /api/v1/director read the whole table")


def test_the_director_endpoint_reads_the_sync_daemons_alone(tmp_path: Path) -> None:
    kernel = TableNotRead([service("TCP 192.0.2.10:80", ("10.0.1.2:80", 1))])
    kernel.start_sync_daemon(SyncDaemon("master", "eth1", 51))
    app = create_app(ActuatorSettings(tokens={"ops": TOKEN}), kernel=kernel, ledger_path=str(tmp_path / "ledger.db"))
    response = app.test_client().get("/api/v1/director")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [(d["role"], d["mcast_interface"], d["sync_id"]) for d in response.get_json()["sync_daemons"]] == [
        ("master", "eth1", 51)
    ]


def test_the_peer_url_is_a_setting() -> None:
    settings = from_mapping({"failover_peer_url": "http://10.0.1.252:9911"})
    assert settings.failover_peer_url == "http://10.0.1.252:9911"
    with pytest.raises(ConfigError):
        from_mapping({"failover_peer_url": 5})
