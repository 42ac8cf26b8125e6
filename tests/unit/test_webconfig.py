"""``--web.config.file``: the exporter-toolkit format, TLS and basic auth on the exporter and the actuator.

Real sockets on loopback, real TLS (a CA made in the test), real bcrypt.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.actuator import serving
from lvsguard import cli, webconfig
from lvsguard.actuator import limits
from lvsguard.actuator import reload as reloading
from lvsguard.actuator.app import create_app
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.errors import WebConfigError
from lvsguard.exporter.server import ExporterServer, run
from lvsguard.model import Stats, Table
from tests import tlsfiles
from tests.fakes import FakeKernel, am_alert, am_payload, service

PASSWORD = "scrape-password"
SECRET = "ops-secret-0123456789abcdef"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast in tests, same code path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tlsfiles.TLSFiles:
    return tlsfiles.make(tmp_path_factory.mktemp("tls"))


def write(directory: Path, text: str) -> Path:
    path = directory / "web.yml"
    path.write_text(text)
    return path


def full_config(tls: tlsfiles.TLSFiles, *, client_auth: str = "NoClientCert") -> str:
    ca = f"\n  client_ca_file: {tls.ca}" if client_auth != "NoClientCert" else ""
    return (
        f"tls_server_config:\n  cert_file: {tls.cert.name}\n  key_file: {tls.key.name}\n"
        f"  client_auth_type: {client_auth}{ca}\n  min_version: TLS12\n"
        f"basic_auth_users:\n  prometheus: {HASH}\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
    )


def client_context(tls: tlsfiles.TLSFiles, *, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca))
    if with_cert:
        context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    return context


def get(url: str, context: ssl.SSLContext | None, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive: waitress writes ``Www-Authenticate``) and body."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def answer_to_plain_http(host: str, port: int) -> bytes:
    """What a TLS port says to a plain HTTP request: a TLS alert, a reset or nothing; never an HTTP answer."""
    with socket.create_connection((host, port), timeout=5) as plain:
        plain.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            return plain.recv(100)
        except ConnectionResetError:
            return b""


# -- the file -------------------------------------------------------------------------------------------


def test_no_file_is_plain_http_without_authentication() -> None:
    web = webconfig.load(None)
    assert web.tls is None and web.scheme == "http" and web.authorized(None)


def test_a_full_file_loads_with_paths_relative_to_it(tls: tlsfiles.TLSFiles) -> None:
    web = webconfig.load(write(tls.ca.parent, full_config(tls, client_auth="RequireAndVerifyClientCert")))
    assert web.scheme == "https" and web.tls is not None
    assert web.tls.verify_mode == ssl.CERT_REQUIRED
    assert web.tls.minimum_version == ssl.TLSVersion.TLSv1_2
    assert set(web.users) == {"prometheus"}
    assert web.headers == {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}


def test_basic_credentials_are_checked_against_the_bcrypt_hash(tls: tlsfiles.TLSFiles) -> None:
    web = webconfig.parse({"basic_auth_users": {"prometheus": HASH}}, "web.yml")
    assert web.authorized(basic("prometheus", PASSWORD))
    assert web.authorized(basic("prometheus", PASSWORD))  # the second time from the cache
    assert not web.authorized(basic("prometheus", "wrong"))
    assert not web.authorized(basic("nobody", PASSWORD))
    assert not web.authorized(None)
    assert not web.authorized("Bearer " + SECRET)
    assert not web.authorized("Basic !!notbase64")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config:\n  cert_file: x.crt\n", "tls_server_config.key_file: missing"),
        (
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
            "tls_server_config.cert_file/key_file: cannot load",
        ),
        ("basic_auth_users:\n  prometheus: secret\n", "basic_auth_users.prometheus: expected a bcrypt hash"),
        ("basic_auth_user:\n  prometheus: x\n", "basic_auth_user: unknown key"),
        ("http_server_config:\n  headers:\n    Set-Cookie: a=b\n", "http_server_config.headers.Set-Cookie: not one of"),
        ("tls_server_config: [1, 2\n", "web.yml:2: not YAML"),
        ("- a list\n", "the file: expected a mapping"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(WebConfigError) as err:
        webconfig.load(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  client_auth_type: RequireAnyClientCert\n", "client_auth_type: RequireAnyClientCert"),
        ("  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file: needed"),
        ("  min_version: TLS14\n", "min_version: 'TLS14' is not one of"),
        ("  min_version: TLS13\n  max_version: TLS12\n", "max_version: TLS12 is below min_version"),
        ("  cipher_suites: [TLS_FAKE_SUITE]\n", "cipher_suites: unknown or not configurable: TLS_FAKE_SUITE"),
        ("  curve_preferences: [X25519]\n", "curve_preferences: not supported"),
        ("  client_allowed_sans: [a]\n", "client_allowed_sans: not supported"),
    ],
)
def test_what_python_cannot_honour_is_refused_by_name(tls: tlsfiles.TLSFiles, extra: str, message: str) -> None:
    text = f"tls_server_config:\n  cert_file: {tls.cert}\n  key_file: {tls.key}\n{extra}"
    with pytest.raises(WebConfigError, match="tls_server_config") as err:
        webconfig.parse(__import__("yaml").safe_load(text), "web.yml")
    assert message in str(err.value)


def test_cipher_suites_take_gos_names(tls: tlsfiles.TLSFiles) -> None:
    web = webconfig.parse(
        {
            "tls_server_config": {
                "cert_file": str(tls.cert),
                "key_file": str(tls.key),
                "max_version": "TLS12",
                "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
            }
        },
        "web.yml",
    )
    assert web.tls is not None
    assert [c["name"] for c in web.tls.get_ciphers() if c["protocol"] == "TLSv1.2"] == ["ECDHE-ECDSA-AES128-GCM-SHA256"]


def test_the_cli_says_what_is_wrong_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "basic_auth_users:\n  prometheus: plain-text\n")
    for command in ("exporter", "actuator"):
        status = cli.main([command, "--web.config.file", str(path)])
        err = capsys.readouterr().err
        assert status != 0
        assert f"{path}: basic_auth_users.prometheus: expected a bcrypt hash" in err
        assert "Traceback" not in err


# -- the exporter ---------------------------------------------------------------------------------------


class Reader:
    source = "netlink"

    def read(self) -> Table:
        return Table((), totals=Stats(1, 2, 3, 4, 5))

    def close(self) -> None:
        pass


@pytest.fixture
def exporter(tls: tlsfiles.TLSFiles, request: pytest.FixtureRequest) -> Iterator[ExporterServer]:
    client_auth = getattr(request, "param", "NoClientCert")
    web = webconfig.load(write(tls.ca.parent, full_config(tls, client_auth=client_auth)))
    started = threading.Event()
    box: list[ExporterServer] = []

    def ready(server: ExporterServer) -> None:
        box.append(server)
        started.set()

    thread = threading.Thread(
        target=run, args=(Reader, "127.0.0.1:0"), kwargs={"ready": ready, "web": web}, daemon=True
    )
    thread.start()
    assert started.wait(10)
    yield box[0]
    box[0].shutdown()
    thread.join(10)


def test_the_exporter_serves_https_with_basic_auth_and_headers(
    exporter: ExporterServer, tls: tlsfiles.TLSFiles
) -> None:
    assert exporter.url.startswith("https://127.0.0.1:")
    context = client_context(tls)
    status, headers, body = get(exporter.url + "/metrics", context, {"Authorization": basic("prometheus", PASSWORD)})
    assert status == 200 and b"ipvs_up 1\n" in body
    assert headers["X-Frame-Options"] == "deny" and headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = get(exporter.url + "/metrics", context, {"Authorization": basic("prometheus", "wrong")})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    assert get(exporter.url + "/-/healthy", context)[0] == 401  # every path, as exporter-toolkit


def test_the_exporter_refuses_plain_http_and_keeps_serving(exporter: ExporterServer, tls: tlsfiles.TLSFiles) -> None:
    host, port = exporter.server_address[:2]
    assert not answer_to_plain_http(host, port).startswith(b"HTTP/")
    status, _, _ = get(exporter.url + "/metrics", client_context(tls), {"Authorization": basic("prometheus", PASSWORD)})
    assert status == 200


def test_a_stalled_handshake_does_not_hold_up_others(exporter: ExporterServer, tls: tlsfiles.TLSFiles) -> None:
    host, port = exporter.server_address[:2]
    with socket.create_connection((host, port), timeout=5):  # connects and says nothing
        started = time.monotonic()
        status, _, _ = get(
            exporter.url + "/metrics", client_context(tls), {"Authorization": basic("prometheus", PASSWORD)}
        )
        assert status == 200 and time.monotonic() - started < 5


@pytest.mark.parametrize("exporter", ["RequireAndVerifyClientCert"], indirect=True)
def test_the_exporter_requires_a_client_certificate_when_told(exporter: ExporterServer, tls: tlsfiles.TLSFiles) -> None:
    auth = {"Authorization": basic("prometheus", PASSWORD)}
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get(exporter.url + "/metrics", client_context(tls), auth)
    assert get(exporter.url + "/metrics", client_context(tls, with_cert=True), auth)[0] == 200


def test_the_exporter_serves_process_metrics(exporter: ExporterServer, tls: tlsfiles.TLSFiles) -> None:
    _, _, body = get(exporter.url + "/metrics", client_context(tls), {"Authorization": basic("prometheus", PASSWORD)})
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["process_start_time_seconds"].samples[0].value > 1.6e9
    assert "process_cpu_seconds" in families and "process_open_fds" in families


# -- the actuator ---------------------------------------------------------------------------------------


@pytest.fixture
def actuator(tls: tlsfiles.TLSFiles, tmp_path: Path) -> Iterator[str]:
    web = webconfig.load(write(tls.ca.parent, full_config(tls)))
    settings = ActuatorSettings(tokens={"ops": SECRET}, hold_down=0.0, read_only_open=False)
    kernel = FakeKernel([service("TCP 192.0.2.10:80", ("10.0.1.1:80", 5), ("10.0.1.2:80", 5))])
    app = create_app(settings, kernel=kernel, ledger_path=str(tmp_path / "ledger.db"), web=web)
    with serving(app, tls=web.tls) as url:
        yield url


def test_the_actuator_serves_https_with_basic_auth(actuator: str, tls: tlsfiles.TLSFiles) -> None:
    assert actuator.startswith("https://")
    context = client_context(tls)
    status, headers, body = get(actuator + "/metrics", context, {"Authorization": basic("prometheus", PASSWORD)})
    assert status == 200 and b"lvsguard_actions_total" in body
    assert headers["X-Frame-Options"] == "deny"
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "process_start_time_seconds"} <= families
    status, headers, _ = get(actuator + "/metrics", context, {"Authorization": basic("prometheus", "wrong")})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    assert get(actuator + "/metrics", context)[0] == 401
    assert get(actuator + "/ui/", context)[0] == 401  # the whole port


def test_on_the_actuator_a_bearer_token_still_authorises_changes_and_basic_only_reads(
    actuator: str, tls: tlsfiles.TLSFiles
) -> None:
    host, port = actuator.removeprefix("https://").split(":")
    body = b'{"service": "TCP 192.0.2.10:80", "real_server": "10.0.1.1:80", "weight": 3}'

    def post(authorization: str) -> int:
        conn = http.client.HTTPSConnection(host, int(port), context=client_context(tls), timeout=10)
        try:
            conn.request(
                "POST",
                "/api/v1/weight",
                body,
                {"Authorization": authorization, "Content-Type": "application/json"},
            )
            return conn.getresponse().status
        finally:
            conn.close()

    assert post(basic("prometheus", PASSWORD)) == 401  # a scraper's password changes nothing
    assert post("Bearer not-the-token-at-all-0000") == 401
    assert post(f"Bearer {SECRET}") == 200
    status, _, _ = get(actuator + "/metrics", client_context(tls), {"Authorization": f"Bearer {SECRET}"})
    assert status == 200


def test_the_actuator_closes_a_plain_http_client_and_keeps_serving(actuator: str, tls: tlsfiles.TLSFiles) -> None:
    port = int(actuator.rsplit(":", 1)[1])
    stalled = socket.create_connection(("127.0.0.1", port), timeout=5)  # holds a handshake open
    try:
        assert not answer_to_plain_http("127.0.0.1", port).startswith(b"HTTP/")
        status, _, _ = get(actuator + "/metrics", client_context(tls), {"Authorization": basic("prometheus", PASSWORD)})
        assert status == 200
    finally:
        stalled.close()


def test_large_requests_and_answers_cross_tls_whole(actuator: str, tls: tlsfiles.TLSFiles) -> None:
    """Bodies of several TLS records (16 KiB each) both ways: nothing is lost, nothing waits in OpenSSL's buffer."""
    auth = {"Authorization": basic("prometheus", PASSWORD)}
    status, _, body = get(actuator + "/api/v1/openapi.json", client_context(tls), auth)
    assert status == 200 and len(body) > 20_000
    json.loads(body)
    alerts = [am_alert(f"fp{i}", real_server="10.0.1.9:80", note="x" * 200) for i in range(400)]
    payload = json.dumps(am_payload(*alerts)).encode()
    assert len(payload) > 100_000
    host, port = actuator.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=client_context(tls), timeout=10)
    try:
        headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
        conn.request("POST", "/webhook/alertmanager", payload, headers)
        reply = conn.getresponse()
        answer = json.loads(reply.read())
    finally:
        conn.close()
    assert reply.status == 200, answer


def test_sighup_gives_the_actuator_new_users_a_new_certificate_and_keeps_a_bad_file_out(
    tls: tlsfiles.TLSFiles, tmp_path: Path
) -> None:
    path = write(tmp_path, full_config(tls).replace(tls.cert.name, str(tls.cert)).replace(tls.key.name, str(tls.key)))
    web = webconfig.load(path)
    assert web.tls is not None
    app = create_app(
        ActuatorSettings(tokens={"ops": SECRET}), kernel=FakeKernel([]), ledger_path=str(tmp_path / "l.db"), web=web
    )
    current = limits.CurrentTLS(web.tls)
    client = app.test_client()
    assert client.get("/metrics", headers={"Authorization": basic("prometheus", PASSWORD)}).status_code == 200

    other = bcrypt.hashpw(b"another-password", bcrypt.gensalt(4)).decode()
    path.write_text(path.read_text().replace(f"prometheus: {HASH}", f"scraper: {other}"))
    assert reloading.reload_web(app, lambda: webconfig.load(path), current)
    assert client.get("/metrics", headers={"Authorization": basic("prometheus", PASSWORD)}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": basic("scraper", "another-password")}).status_code == 200
    assert current.context is app.config["LVSGUARD_WEB"].tls is not web.tls  # new connections: the new context

    kept = app.config["LVSGUARD_WEB"]
    path.write_text("basic_auth_users: {scraper: not-a-hash}\n")
    assert not reloading.reload_web(app, lambda: webconfig.load(path), current)
    path.write_text(f"basic_auth_users:\n  scraper: {other}\n")  # valid, but without TLS
    assert not reloading.reload_web(app, lambda: webconfig.load(path), current)
    assert app.config["LVSGUARD_WEB"] is kept and current.context is kept.tls


def test_the_exporter_takes_new_users_and_a_new_certificate_and_keeps_a_bad_file_out(
    exporter: ExporterServer, tls: tlsfiles.TLSFiles, tmp_path: Path
) -> None:
    context = client_context(tls)
    other = bcrypt.hashpw(b"another-password", bcrypt.gensalt(4)).decode()
    path = write(tmp_path, full_config(tls).replace(tls.cert.name, str(tls.cert)).replace(tls.key.name, str(tls.key)))
    path.write_text(path.read_text().replace(f"prometheus: {HASH}", f"scraper: {other}"))
    before = exporter.web
    assert exporter.reload_web(lambda: webconfig.load(path))
    assert exporter.web.tls is not before.tls
    assert get(exporter.url + "/metrics", context, {"Authorization": basic("prometheus", PASSWORD)})[0] == 401
    assert get(exporter.url + "/metrics", context, {"Authorization": basic("scraper", "another-password")})[0] == 200

    kept = exporter.web
    path.write_text("basic_auth_users: {scraper: not-a-hash}\n")
    assert not exporter.reload_web(lambda: webconfig.load(path))
    path.write_text(f"basic_auth_users:\n  scraper: {other}\n")  # valid, but turns TLS off
    assert not exporter.reload_web(lambda: webconfig.load(path))
    assert exporter.web is kept


def test_an_unknown_user_costs_a_bcrypt_comparison_as_a_wrong_password_does() -> None:
    """No shortcut that tells a scanner which user names exist (cost 12: about 0.2 s a comparison)."""
    slow = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()
    web = webconfig.parse({"basic_auth_users": {"prometheus": slow}}, "web.yml")
    started = time.perf_counter()
    assert not web.authorized(basic("nobody", "guess"))
    unknown = time.perf_counter() - started
    started = time.perf_counter()
    assert not web.authorized(basic("prometheus", "guess"))
    wrong = time.perf_counter() - started
    assert unknown > wrong / 3, (unknown, wrong)


def test_the_actuator_closes_a_handshake_that_never_comes_after_the_channel_timeout(
    tls: tlsfiles.TLSFiles, tmp_path: Path
) -> None:
    """A client that connects and says nothing holds its connection as long as a silent plain one, no longer."""
    web = webconfig.load(write(tls.ca.parent, full_config(tls)))
    app = create_app(
        ActuatorSettings(tokens={"ops": SECRET}), kernel=FakeKernel([]), ledger_path=str(tmp_path / "l.db"), web=web
    )
    server = limits.create_server(
        app,
        host="127.0.0.1",
        port=0,
        threads=2,
        tls=web.tls,
        channel_timeout=1,
        cleanup_interval=1,
        asyncore_loop_timeout=0.05,
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.effective_port), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(100) == b""  # closed by the server
            assert time.monotonic() - started < 5
    finally:
        server.close()
        thread.join(5)


def test_the_actuator_requires_a_client_certificate_when_told(tls: tlsfiles.TLSFiles, tmp_path: Path) -> None:
    web = webconfig.load(write(tls.ca.parent, full_config(tls, client_auth="RequireAndVerifyClientCert")))
    app = create_app(
        ActuatorSettings(tokens={"ops": SECRET}), kernel=FakeKernel([]), ledger_path=str(tmp_path / "l.db"), web=web
    )
    auth = {"Authorization": basic("prometheus", PASSWORD)}
    with serving(app, tls=web.tls) as url:
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            get(url + "/metrics", client_context(tls), auth)
        assert get(url + "/metrics", client_context(tls, with_cert=True), auth)[0] == 200
