"""``lvsguard doctor`` on the host: the checks that read files, the helpers, the report and its exit status.

The kernel's checks (ip_vs, netlink, capabilities of running servers, the sync
daemon) and every planted fault are in tests/integration/test_doctor_kernel.py.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lvsguard import config, webconfig
from lvsguard.doctor import Doctor, Result, exit_status, has_net_admin, lvsguard_command, render, split_listen
from lvsguard.webconfig import NO_WEB_CONFIG, WebConfig
from tests import tlsfiles


def doctor_for(tmp_path: Path, text: str, **kwargs: object) -> Doctor:
    path = tmp_path / "lvsguard.yaml"
    path.write_text(text)
    doctor = Doctor(config_path=str(path), **kwargs)  # type: ignore[arg-type]
    assert doctor.check_config().status in ("ok", "fail")
    return doctor


def test_a_bad_config_fails_with_its_line_and_the_rest_runs_on_the_defaults(tmp_path: Path) -> None:
    doctor = doctor_for(tmp_path, "director:\n  netnss: x\n")
    result = doctor.check_config()
    assert result.status == "fail" and "lvsguard.yaml:2" in result.detail and "netnss" in result.detail
    assert result.fix == f"lvsguard config check {tmp_path / 'lvsguard.yaml'} lists every problem with its line"
    assert doctor.config == config.Config()


def test_the_fifo_and_the_role_file(tmp_path: Path) -> None:
    fifo, role = tmp_path / "notify.fifo", tmp_path / "state"
    doctor = doctor_for(tmp_path, f"director:\n  keepalived_fifo: {fifo}\nactuator:\n  role_file: {role}\n")
    assert doctor.check_keepalived_fifo().status == "fail"
    os.mkfifo(fifo)
    assert doctor.check_keepalived_fifo().status == "ok"
    assert doctor.check_vrrp_state().status == "fail"
    role.write_text('INSTANCE "VI_1" BACKUP 100\n')
    assert doctor.check_vrrp_state() == Result("vrrp state", "ok", f"backup ({role})")


def test_nothing_configured_is_skipped(tmp_path: Path) -> None:
    doctor = doctor_for(tmp_path, "")
    for check in (doctor.check_keepalived_fifo, doctor.check_vrrp_state, doctor.check_sync_daemon, doctor.check_peer):
        assert check().status == "skip"


@pytest.mark.parametrize(
    "mode, status", [(0o600, "ok"), (0o640, "ok"), (0o644, "fail"), (0o604, "fail")], ids=["600", "640", "644", "604"]
)
def test_token_file_modes(tmp_path: Path, mode: int, status: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("am:0123456789abcdef0123\n")
    tokens.chmod(mode)
    doctor = doctor_for(tmp_path, "", token_file=str(tokens))
    if os.geteuid() != 0 and mode == 0o640:
        status = "fail"  # group permissions pass only when root owns the file
    assert doctor.check_tokens().status == status


def test_the_ledger_directory_and_mode(tmp_path: Path) -> None:
    ledger = tmp_path / "lib" / "actuator.db"
    doctor = doctor_for(tmp_path, "", ledger=str(ledger))
    result = doctor.check_ledger()
    assert result.status == "fail" and result.fix.startswith(
        f"install -d -o lvsguard -g lvsguard -m 0750 {ledger.parent}"
    )
    ledger.parent.mkdir(mode=0o750)
    ledger.write_text("")
    ledger.chmod(0o640)
    assert doctor.check_ledger().status == "ok"
    ledger.chmod(0o644)
    assert doctor.check_ledger().detail == f"{ledger} is open to others (mode 0644): holds, jobs and the audit"


def test_a_listen_address_on_loopback_fails(tmp_path: Path) -> None:
    doctor = doctor_for(tmp_path, 'exporter:\n  listen: "[::1]:9910"\n', proc=tmp_path)
    result = doctor.check_exporter_listen()
    assert result.status == "fail" and "[::1]:9910 is loopback only" in result.detail


@pytest.mark.parametrize(
    "listen, expected",
    [
        ("127.0.0.1:9910", ("127.0.0.1", 9910)),
        ("0.0.0.0:9910", ("", 9910)),
        (":9911", ("", 9911)),
        ("[::1]:9910", ("::1", 9910)),
        ("[::]:9910", ("", 9910)),
        ("localhost:9910", ("127.0.0.1", 9910)),
    ],
)
def test_split_listen(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize(
    "argv, command",
    [
        (["/opt/lvsguard/bin/python", "/opt/lvsguard/bin/lvsguard", "exporter", "--config", "x"], "exporter"),
        (["python3", "-m", "lvsguard.cli", "--log-level", "info", "actuator"], "actuator"),
        (["/opt/lvsguard/bin/lvsguard", "doctor"], ""),
        (["vim", "exporter"], ""),
    ],
    ids=["unit-exporter", "module-actuator", "doctor-itself", "not-lvsguard"],
)
def test_lvsguard_command(argv: list[str], command: str) -> None:
    assert lvsguard_command(argv) == command


def test_capabilities_from_proc_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")  # bit 12
    assert has_net_admin(status)
    status.write_text("Name:\tx\nCapEff:\t0000000000200000\n")  # CAP_SYS_ADMIN only
    assert not has_net_admin(status)


def test_the_report_and_the_exit_status() -> None:
    results = [
        Result("ip_vs", "ok", "the ip_vs module is loaded"),
        Result("tokens", "fail", "/etc/lvsguard/tokens: open to others", "chmod 640 /etc/lvsguard/tokens"),
        Result("peer", "skip", "actuator.failover_peer_url is not set"),
    ]
    assert render(results) == (
        "OK    ip_vs   the ip_vs module is loaded\n"
        "FAIL  tokens  /etc/lvsguard/tokens: open to others\n"
        "              fix: chmod 640 /etc/lvsguard/tokens\n"
        "SKIP  peer    actuator.failover_peer_url is not set\n"
        "1 failed, 1 ok, 1 skipped\n"
    )
    assert exit_status(results) == 1
    assert exit_status([r for r in results if r.status != "fail"]) == 0


# -- the listen checks over HTTP and HTTPS (--web.config.file) -----------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tlsfiles.TLSFiles:
    return tlsfiles.make(tmp_path_factory.mktemp("tls"))


def web_config(tls: tlsfiles.TLSFiles, client_auth: str = "NoClientCert") -> WebConfig:
    ca = f"\n  client_ca_file: {tls.ca}" if client_auth != "NoClientCert" else ""
    path = tls.ca.parent / f"web-{client_auth}.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {tls.cert}\n  key_file: {tls.key}\n  client_auth_type: {client_auth}{ca}\n"
    )
    return webconfig.load(path)


@contextmanager
def http_server(web: WebConfig) -> Iterator[tuple[str, int]]:
    """A server on 127.0.0.1 that answers 200, over TLS as ``web`` says; yields its address."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if web.tls is not None:
        server.socket = web.tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def reach(server_web: WebConfig, doctor_web: WebConfig) -> Result:
    with http_server(server_web) as address:
        return Doctor().reach("exporter listen", "0.0.0.0:9910", address, doctor_web, "lvsguard-exporter")


def test_a_plain_server_is_checked_over_http(tls: tlsfiles.TLSFiles) -> None:
    result = reach(NO_WEB_CONFIG, NO_WEB_CONFIG)
    assert result.status == "ok" and result.detail.startswith("0.0.0.0:9910: answers http on 127.0.0.1:")
    assert result.detail.endswith("(200 OK)")


def test_a_tls_server_is_checked_over_https(tls: tlsfiles.TLSFiles) -> None:
    result = reach(web_config(tls), web_config(tls))
    assert result.status == "ok" and " answers https on 127.0.0.1:" in result.detail and "(200 OK)" in result.detail


def test_a_server_that_requires_client_certificates_answers_https(tls: tlsfiles.TLSFiles) -> None:
    web = web_config(tls, "RequireAndVerifyClientCert")
    result = reach(web, web)
    assert result.status == "ok" and result.detail.endswith("and requires a client certificate")


def test_tls_expected_where_the_server_speaks_plain_http_fails(tls: tlsfiles.TLSFiles) -> None:
    result = reach(NO_WEB_CONFIG, web_config(tls))
    assert result.status == "fail" and "the server speaks plain HTTP" in result.detail
    assert "--web.config.file" in result.fix


def test_plain_http_expected_where_the_server_speaks_tls_fails(tls: tlsfiles.TLSFiles) -> None:
    result = reach(web_config(tls), NO_WEB_CONFIG)
    assert result.status == "fail" and "does not answer plain HTTP: it may speak TLS" in result.detail
    assert result.fix == "give the doctor the server's web config: lvsguard doctor --web.config.file FILE"


def test_nothing_listening_fails_with_the_unit_to_start() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = Doctor().reach("exporter listen", "0.0.0.0:9910", ("127.0.0.1", port), NO_WEB_CONFIG, "lvsguard-exporter")
    assert result.status == "fail" and result.detail.startswith(f"nothing answers on 127.0.0.1:{port}")


def test_the_web_config_of_the_running_server_wins_over_the_doctors(tmp_path: Path, tls: tlsfiles.TLSFiles) -> None:
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    argv = ["/opt/lvsguard/bin/lvsguard", "exporter", "--listen", "0.0.0.0:1", "--web.config.file", "/srv/web.yml"]
    (proc / "4242" / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    doctor = doctor_for(tmp_path, "", proc=proc, web_config=str(tmp_path / "doctors.yml"))
    assert doctor._running_arg("exporter", "--web.config.file") == "/srv/web.yml"
    assert doctor._running_arg("actuator", "--web.config.file") == ""
    bad = doctor_for(tmp_path, "exporter:\n  listen: 192.0.2.1:9910\n", proc=tmp_path, web_config=str(tmp_path / "no"))
    result = bad.check_exporter_listen()
    assert result.status == "fail" and "no" in result.detail and result.fix.startswith("fix the web config")
