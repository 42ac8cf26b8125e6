"""The actuator against a client that means harm: slow and large requests, token guessing, odd Host headers.

Served by waitress over real sockets on loopback, configured as ``lvsguard
actuator`` configures it (``lab.actuator.serving`` builds its server with
``actuator.limits``). The console's sessions, whose checks are the app's own,
go through Flask's test client with a clock the test moves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import socket
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from lab.actuator import serving
from lvsguard.actuator.app import create_app
from lvsguard.actuator.settings import ActuatorSettings
from tests.fakes import FakeClock, FakeKernel, am_alert, am_payload, service

SECRET = "ops-secret-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
WEIGHT = {"service": "TCP 192.0.2.10:80", "real_server": "10.0.1.1:80", "weight": 3}


def make_app(tmp_path: Path, clock: FakeClock | None = None, **overrides: Any) -> Flask:
    settings = ActuatorSettings(**{"tokens": {"ops": SECRET}, "hold_down": 0.0, **overrides})
    kernel = FakeKernel([service("TCP 192.0.2.10:80", *((f"10.0.1.{i}:80", 5) for i in range(1, 4)))])
    return create_app(
        settings, kernel=kernel, ledger_path=str(tmp_path / "ledger.db"), **({"clock": clock} if clock else {})
    )


@contextmanager
def served(tmp_path: Path, **overrides: Any) -> Iterator[tuple[str, int]]:
    """(base URL, port) of the actuator over waitress."""
    with serving(make_app(tmp_path, **overrides), threads=4) as url:
        yield url, int(url.rsplit(":", 1)[1])


def call(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def raw(port: int, head: bytes, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send ``head`` (and ``body``) on a fresh connection; the answer until the server closes or ``timeout``."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            if body:
                sock.sendall(body)
            while part := sock.recv(65536):
                answer += part
        except (TimeoutError, ConnectionError):
            pass
    return answer


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(
            record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
            for record in self.records
        )


@pytest.fixture
def logged() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


# 1. slow clients


def test_slow_clients_do_not_lock_everybody_else_out(tmp_path: Path) -> None:
    """110 connections that send half a header and wait stopped the whole actuator (waitress's limit was 100)."""
    with served(tmp_path) as (url, port):
        slow = []
        try:
            for _ in range(150):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                slow.append(sock)
            time.sleep(0.3)
            started = time.monotonic()
            status, _, _ = call(url + "/api/v1/jobs")
            assert status == 200 and time.monotonic() - started < 3
        finally:
            for sock in slow:
                sock.close()


def test_one_client_address_cannot_take_every_connection(tmp_path: Path) -> None:
    """600 slow connections from one address: the ones past its share get 503 at once, another address is served."""
    with served(tmp_path) as (url, port):
        slow = []
        try:
            for _ in range(600):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
                sock.sendall(b"GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                slow.append(sock)
            assert slow[-1].recv(4096).startswith(b"HTTP/1.1 503")  # told at once, not left hanging
            other = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.3", 0))
            with other:
                other.sendall(b"GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                assert other.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            for sock in slow:
                sock.close()


# 3. large bodies


def test_a_huge_body_without_a_token_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A 100 MB webhook without a token was spooled in full (20.9 s) before its 401."""
    with served(tmp_path) as (_, port):
        head = (
            b"POST /webhook/alertmanager HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        started = time.monotonic()
        answer = raw(port, head, b"{" + b" " * 65535, timeout=3)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert time.monotonic() - started < 2


def test_an_api_body_beyond_its_route_limit_is_413_before_it_is_parsed(tmp_path: Path) -> None:
    padded = json.dumps({**WEIGHT, "pad": "x" * 200_000}).encode()
    with served(tmp_path) as (url, _):
        status, _, body = call(url + "/api/v1/weight", "POST", padded, {**AUTH, "Content-Type": "application/json"})
        assert status == 413 and "64 KiB" in json.loads(body)["error"]
        status, _, _ = call(
            url + "/api/v1/weight", "POST", json.dumps(WEIGHT).encode(), {**AUTH, "Content-Type": "application/json"}
        )
        assert status == 200


# 4. what a token holder can send


def test_a_webhook_of_empty_lists_is_refused_without_building_them(tmp_path: Path) -> None:
    """14 MB of [] took the actuator from 59 to 464 MB; the structure is counted before it is parsed."""
    body = b'{"version": "4", "alerts": [' + b"[]," * 1_500_000 + b"[]]}"
    with served(tmp_path) as (url, _):
        tracemalloc.start()
        try:
            status, _, reply = call(
                url + "/webhook/alertmanager", "POST", body, {**AUTH, "Content-Type": "application/json"}
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert status == 400 and json.loads(reply)["path"] == "alerts"
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_more_alerts_than_the_cap_are_refused_with_the_fix(tmp_path: Path) -> None:
    payload = am_payload(*(am_alert(f"f{i}", lvsguard_action="quarantine") for i in range(10_001)))
    with served(tmp_path) as (url, _):
        status, _, reply = call(
            url + "/webhook/alertmanager",
            "POST",
            json.dumps(payload).encode(),
            {**AUTH, "Content-Type": "application/json"},
        )
    error = json.loads(reply)
    assert status == 400 and error["path"] == "alerts" and "max_alerts: 10000" in error["error"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/v1/weight", b"[" * 20_000 + b"]" * 20_000),
        ("/api/v1/weight", b'{"service": ' + b"[" * 50_000),
        ("/webhook/alertmanager", b"[" * 50_000 + b"]" * 50_000),
    ],
    ids=["api-deep-array", "api-deep-unclosed", "webhook-deep-array"],
)
def test_deeply_nested_json_is_a_400_not_a_traceback(tmp_path: Path, logged: Lines, path: str, body: bytes) -> None:
    with served(tmp_path) as (url, _):
        status, headers, reply = call(url + path, "POST", body, {**AUTH, "Content-Type": "application/json"})
    assert status == 400 and headers["Content-Type"] == "application/json", reply[:200]
    assert "error" in json.loads(reply)
    assert "Traceback" not in logged.text() and not [r for r in logged.records if r.levelno >= logging.ERROR]


# 5. token guessing


def test_wrong_bearer_tokens_are_limited_per_client_address(tmp_path: Path) -> None:
    """200 wrong tokens in 1.7 s were all answered 401; now the eleventh in a minute is a 429, the right one too."""
    body = json.dumps(WEIGHT).encode()
    with served(tmp_path) as (url, _):
        statuses = [
            call(url + "/api/v1/weight", "POST", body, {"Authorization": f"Bearer guess-{i:016d}"})[0]
            for i in range(11)
        ]
        assert statuses == [401] * 10 + [429]
        status, headers, reply = call(
            url + "/api/v1/weight", "POST", body, {**AUTH, "Content-Type": "application/json"}
        )
        assert status == 429 and 0 < int(headers["Retry-After"]) <= 60
        assert "too many wrong tokens from 127.0.0.1" in json.loads(reply)["error"]
        status, _, _ = call(url + "/api/v1/jobs")  # reads without a token are not guesses
        assert status == 200


# 6. Host header and open reads


def test_an_unknown_host_header_is_refused_and_never_redirected_to(tmp_path: Path) -> None:
    with served(tmp_path) as (_, port):
        answer = raw(port, b"GET /ui HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
        assert b"evil.example/ui" not in answer and b"Location" not in answer
        assert b"trusted_hosts" in answer
        for host in (b"127.0.0.1", b"localhost:9911", b"[::1]:9911", socket.gethostname().encode()):
            answer = raw(port, b"GET /ui HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 308"), (host, answer[:300])
    with served(tmp_path, trusted_hosts=("lvs.example.org",)) as (_, port):
        answer = raw(port, b"GET /api/v1/jobs HTTP/1.1\r\nHost: lvs.example.org\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_metrics_and_the_openapi_document_follow_read_only_open(tmp_path: Path) -> None:
    with served(tmp_path, read_only_open=False) as (url, _):
        assert call(url + "/metrics")[0] == 401
        assert call(url + "/api/v1/openapi.json")[0] == 401
        assert call(url + "/metrics", headers=AUTH)[0] == 200
        assert call(url + "/api/v1/openapi.json", headers=AUTH)[0] == 200


def test_open_reads_on_a_public_address_are_warned_about(logged: Lines) -> None:
    from lvsguard.actuator.limits import warn_exposure

    warn_exposure("0.0.0.0", ActuatorSettings(tokens={"ops": SECRET}, read_only_open=True))
    warn_exposure("0.0.0.0", ActuatorSettings(tokens={"ops": SECRET}))  # the default: reads need a token there
    warn_exposure("127.0.0.1", ActuatorSettings(tokens={"ops": SECRET}, read_only_open=True))
    warn_exposure("192.0.2.1", ActuatorSettings(tokens={"ops": SECRET}, read_only_open=False))
    warnings = [r.getMessage() for r in logged.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("read_access_open listen=0.0.0.0")
    assert "read_only_open: false" in warnings[0]


# 7. log lines


def test_a_crafted_path_cannot_forge_a_log_line(tmp_path: Path, logged: Lines) -> None:
    with served(tmp_path) as (_, port):
        raw(port, b"GET /ui/\x1b[2J%0d/fake\r\x1b]0;x\x07 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw(port, b"GET /api/v1/%1b%5b2J%0d%0a HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    requests = [r.getMessage() for r in logged.records if r.getMessage().startswith("request ")]
    assert len(requests) >= 1
    for line in requests:
        assert not re.search(r"[\x00-\x1f\x7f-\x9f]", line), repr(line)


# 2. console sessions


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def csrf_of(client: FlaskClient, path: str = "/ui/login") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert found is not None
    return found.group(1)


def login(client: FlaskClient) -> None:
    assert client.post("/ui/login", data={"csrf": csrf_of(client), "token": SECRET}).status_code == 302


def weight(client: FlaskClient, value: int) -> int:
    """Set rs1's weight from the console; the status of the confirmed action."""
    data = {"csrf": csrf_of(client), "action": "weight", "service": "TCP 192.0.2.10:80"}
    data.update(real_server="10.0.1.1:80", weight=str(value), confirmed="yes")
    return client.post("/ui/action", data=data).status_code


def test_a_session_ends_twelve_hours_after_login_however_often_it_is_used(tmp_path: Path, clock: FakeClock) -> None:
    """Each flash re-signed the cookie, so actions were accepted 22, 33 and 44 h after the login."""
    client = make_app(tmp_path, clock).test_client()
    login(client)
    for _ in range(3):
        clock.advance(11 * 3600 / 3)
        assert weight(client, 4) == 302  # done, and the cookie re-signed with a flash
    clock.advance(3600 + 1)  # 12 h and 1 s after the login
    assert weight(client, 2) == 401
    assert 'id="user"' not in client.get("/ui/").get_data(as_text=True)


def test_a_cookie_kept_from_before_logout_no_longer_acts(tmp_path: Path, clock: FakeClock) -> None:
    app = make_app(tmp_path, clock)
    client = app.test_client()
    login(client)
    kept = client.get_cookie("lvsguard_ui", path="/ui")
    assert kept is not None
    assert client.post("/ui/logout", data={"csrf": csrf_of(client, "/ui/")}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("lvsguard_ui", kept.value, path="/ui")
    assert weight(thief, 2) == 401


def test_rotating_a_token_secret_ends_its_console_sessions(tmp_path: Path, clock: FakeClock) -> None:
    """After the token file changed and SIGHUP, the old bearer token got 401 but the console session still acted."""
    app = make_app(tmp_path, clock)
    client = app.test_client()
    login(client)
    assert weight(client, 4) == 302
    settings = app.config["LVSGUARD_SETTINGS"]
    app.config["LVSGUARD_SETTINGS"] = dataclasses.replace(settings, tokens={"ops": "ops-rotated-0123456789abcdef"})
    assert weight(client, 2) == 401


def test_an_action_without_a_session_is_403(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    data = {"action": "weight", "service": "TCP 192.0.2.10:80", "real_server": "10.0.1.1:80", "weight": "2"}
    assert client.post("/ui/action", data=data).status_code == 403
