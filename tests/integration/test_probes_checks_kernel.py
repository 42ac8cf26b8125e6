"""Each check type against a real peer in the lab, from the director's namespace.

HTTP against the lab's real servers (their body is their name), HTTPS against
a TLS server with a self-signed certificate started in rs1's namespace, UDP
against the lab's echo on port 53, ICMP to an up and an unused address, DNS
against dnsmasq in rs2's namespace, scripts with exit codes 0/1/7; and the
exporter's fast exposition with the default tcp checks of the lab's table.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab.topology import Lab
from lvsguard.config import Config, ProbesConfig
from lvsguard.exporter.collector import IPVSCollector
from lvsguard.exporter.exposition import Exposition
from lvsguard.exporter.main import start_probes
from lvsguard.exporter.probes.dns import DNSChecker
from lvsguard.exporter.probes.engine import CheckSpec, probe
from lvsguard.exporter.probes.http import HTTPChecker, tls_context
from lvsguard.exporter.probes.icmp import ICMPChecker
from lvsguard.exporter.probes.result import Checker, ProbeResult, Target
from lvsguard.exporter.probes.script import ScriptChecker
from lvsguard.exporter.probes.udp import UDPChecker
from lvsguard.exporter.source import ExporterReader
from lvsguard.ipvs.netns import entered
from tests.integration.test_reload import Exporter

pytestmark = pytest.mark.kernel

T = TypeVar("T")
TLS_PORT = 8443
DNS_PORT = 5353
UNUSED = "10.0.1.99"  # on the server LAN, no host has it


def in_netns(netns: str, factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a fresh loop in a thread inside ``netns``."""
    out: list[Any] = []

    def run() -> None:
        with entered(netns):
            try:
                out.append(asyncio.run(factory()))  # type: ignore[arg-type]
            except BaseException as exc:
                out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def check(lab: Lab, checker: Checker, address: str, port: int, timeout: float = 2.0) -> ProbeResult:
    return in_netns(
        lab.director.netns, lambda: probe(CheckSpec(checker.kind, checker, timeout=timeout), Target(address, port))
    )


def rs(lab: Lab, name: str) -> str:
    return lab.node(name).ipv4


def test_http_body_regex_and_wrong_status(lab: Lab) -> None:
    assert check(lab, HTTPChecker(path="/", body=re.compile(rb"^rs1$")), rs(lab, "rs1"), 8080).ok
    wrong_body = check(lab, HTTPChecker(body=re.compile(rb"^rs2$")), rs(lab, "rs1"), 8080)
    assert (wrong_body.ok, wrong_body.error) == (False, "BodyMismatch")
    wrong_status = check(lab, HTTPChecker(statuses=frozenset({204})), rs(lab, "rs1"), 8080)
    assert (wrong_status.ok, wrong_status.error) == (False, "UnexpectedStatus") and "200" in wrong_status.message


@pytest.fixture(scope="module")
def tls_server(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """A TLS server with a self-signed certificate for rs1.lab.test on rs1:8443; yields the certificate and the SNI names seen."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=rs1.lab.test",
            "-addext",
            "subjectAltName=DNS:rs1.lab.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    names: list[str] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, _ctx: names.append(name or "")  # type: ignore[assignment,misc,func-returns-value]
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def run() -> None:
        with entered(lab.node("rs1").netns):
            server = loop.run_until_complete(asyncio.start_server(answer, rs(lab, "rs1"), TLS_PORT, ssl=ctx))
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    yield cert, names
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_https_self_signed_verify_on_and_off(lab: Lab, tls_server: tuple[Path, list[str]]) -> None:
    cert, names = tls_server
    refused = check(lab, HTTPChecker(tls=tls_context(True)), rs(lab, "rs1"), TLS_PORT)
    assert (refused.ok, refused.error) == (False, "SSLCertVerificationError")
    accepted = check(lab, HTTPChecker(tls=tls_context(False), body=re.compile(rb"secure")), rs(lab, "rs1"), TLS_PORT)
    assert accepted.ok, accepted.message
    trusted = check(lab, HTTPChecker(tls=tls_context(True, str(cert)), sni="rs1.lab.test"), rs(lab, "rs1"), TLS_PORT)
    assert trusted.ok, trusted.message  # verified against its own certificate, by the name sent as SNI
    assert names[-1] == "rs1.lab.test"


def test_udp_echo_and_closed_port(lab: Lab) -> None:
    echo = check(lab, UDPChecker(b"ping", re.compile(rb"ping")), rs(lab, "rs2"), 53)
    assert echo.ok, echo.message
    closed = check(lab, UDPChecker(), rs(lab, "rs2"), 54)
    assert (closed.ok, closed.error) == (False, "ConnectionRefusedError")


def test_icmp_up_and_down(lab: Lab) -> None:
    up = check(lab, ICMPChecker(), rs(lab, "rs3"), 0)
    assert up.ok, up.message
    down = check(lab, ICMPChecker(), UNUSED, 0, timeout=0.5)
    assert not down.ok and down.error in ("TimeoutError", "OSError"), down


@pytest.mark.skipif(
    shutil.which("dnsmasq") is None, reason="dnsmasq is not installed (Debian dnsmasq-base; make setup installs it)"
)
def test_dns_against_dnsmasq(lab: Lab, tmp_path: Path) -> None:
    address = rs(lab, "rs2")
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.node("rs2").netns,
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            f"--listen-address={address}",
            "--bind-interfaces",
            f"--port={DNS_PORT}",
            "--address=/www.lab.test/10.0.1.2",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
            "--user=root",
            "--log-facility=-",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        result = None
        for _ in range(100):  # until dnsmasq answers
            result = check(
                lab, DNSChecker("www.lab.test", answer=re.compile(r"^10\.0\.1\.2$")), address, DNS_PORT, timeout=0.5
            )
            if result.ok:
                break
            time.sleep(0.1)
        assert result is not None and result.ok, result
        missing = check(lab, DNSChecker("nothing.invalid"), address, DNS_PORT)
        assert (missing.ok, missing.error) == (False, "UnexpectedRcode")
        wrong = check(lab, DNSChecker("www.lab.test", answer=re.compile(r"^10\.0\.1\.3$")), address, DNS_PORT)
        assert (wrong.ok, wrong.error) == (False, "AnswerMismatch")
    finally:
        server.terminate()
        server.wait(5)


def test_script_exit_codes_against_the_real_server(lab: Lab) -> None:
    connect = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close(); sys.exit(int(sys.argv[3]))"

    def script(code: int) -> ScriptChecker:
        return ScriptChecker((sys.executable, "-c", connect, "{address}", "{port}", str(code)))

    up, down, weighted = (check(lab, script(code), rs(lab, "rs1"), 8080, timeout=5.0) for code in (0, 1, 7))
    assert (up.ok, down.ok, weighted.ok, weighted.weight) == (True, False, True, 5)
    refused = check(lab, script(0), rs(lab, "rs1"), 9)  # nothing listens: the script raises, exit 1
    assert not refused.ok


def tcp_active_opens(netns: str) -> int:
    """The kernel's count of TCP connects made from ``netns`` (``TcpActiveOpens`` of its /proc/net/snmp)."""
    text = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], capture_output=True, text=True, check=True
    ).stdout
    header, values = (line.split() for line in text.splitlines() if line.startswith("Tcp:"))
    return int(values[header.index("ActiveOpens")])


def test_without_config_the_exporter_probes_nothing(lab: Lab, tmp_path: Path) -> None:
    """No ``probes`` section: the table is exported, no probe leaves the director, no lvs_probe_* series."""
    config = tmp_path / "lvsguard.yaml"
    config.write_text(lab.config_yaml())  # services and names, no probes section
    before = tcp_active_opens(lab.director.netns)
    exporter = Exporter(config, "--netns", lab.director.netns)
    try:
        time.sleep(3.0)  # three intervals of the old default check
        text = exporter.metrics()
        assert "ipvs_backend_weight{" in text
        assert "lvs_probe_" not in text and "lvs_backend_healthy" not in text
        assert tcp_active_opens(lab.director.netns) == before  # not one connect from the director's namespace
        assert exporter.stop() == 0
    finally:
        exporter.stop()
    assert any("probes_off reason=no_checks_configured" in line for line in exporter.log), exporter.log


def test_exporter_serves_default_tcp_checks_of_the_lab(lab: Lab) -> None:
    runner = start_probes(Config(probes=ProbesConfig(default_tcp=True)), lab.director.netns)
    assert runner is not None
    collector = IPVSCollector(ExporterReader(lab.director.netns), probes=runner.engine.metrics)
    try:
        deadline = time.monotonic() + 20
        while True:
            text = Exposition(collector).render()
            healthy = re.findall(
                r'^lvs_backend_healthy\{[^}]*remote_address="(10\.0\.1\.\d+)",remote_port="(\d+)",proto="TCP"[^}]*\} (\d)$',
                text,
                re.M,
            )
            probed = all(j.last is not None for j in runner.engine.jobs.values())
            if len(healthy) >= 9 and probed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        runner.stop()
        collector.reader.close()
    # nat and dr (3 real servers each, TCP); nat6 is IPv6; fwmark (port 0) and udp get no default check
    assert {p for _, p, _ in healthy} == {"80", "8080"} and all(v == "1" for _, _, v in healthy), healthy
    assert "lvs_probe_duration_seconds_bucket{" in text and 'check="tcp"' in text
