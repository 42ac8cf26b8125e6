"""Each check type against a real peer on 127.0.0.1 (asyncio servers started by the test)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import pytest

from lvsguard.exporter.probes import dnswire, httpclient
from lvsguard.exporter.probes.agent import AgentChecker, parse_reply
from lvsguard.exporter.probes.dns import DNSChecker
from lvsguard.exporter.probes.engine import CheckSpec, probe
from lvsguard.exporter.probes.http import HTTPChecker
from lvsguard.exporter.probes.icmp import ICMPChecker, checksum, echo_request
from lvsguard.exporter.probes.icmp import parse_reply as parse_icmp
from lvsguard.exporter.probes.prometheus import PrometheusChecker, value_of
from lvsguard.exporter.probes.result import ProbeResult, Target
from lvsguard.exporter.probes.script import ScriptChecker, verdict
from lvsguard.exporter.probes.tcp import TCPChecker
from lvsguard.exporter.probes.udp import UDPChecker


def run(coro: Awaitable[ProbeResult]) -> ProbeResult:
    return asyncio.run(coro)  # type: ignore[arg-type]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def with_tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    body: Callable[[int], Awaitable[ProbeResult]],
) -> ProbeResult:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        return await body(server.sockets[0].getsockname()[1])


def http_handler(status: int, text: bytes, *, chunked: bool = False, seen: list[bytes] | None = None):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        if chunked:
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (text[:3], text[3:]) if p) + b"0\r\n\r\n"
            writer.write(b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n" % status + body)
        else:
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(text)) + text)
        await writer.drain()
        writer.close()

    return handle


# --- tcp ---------------------------------------------------------------------


def test_tcp_up_and_refused() -> None:
    async def noop(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    up = run(with_tcp_server(noop, lambda port: TCPChecker().check(Target("127.0.0.1", port))))
    assert up.ok and up.duration > 0
    down = run(TCPChecker().check(Target("127.0.0.1", free_port())))
    assert (down.ok, down.error) == (False, "ConnectionRefusedError")
    assert "127.0.0.1" in down.message


# --- http --------------------------------------------------------------------


def test_http_status_body_and_host_header() -> None:
    seen: list[bytes] = []
    checker = HTTPChecker(path="/health", host="www.example.test", body=re.compile(rb"all good"))
    ok = run(
        with_tcp_server(http_handler(200, b"rs1: all good", seen=seen), lambda p: checker.check(Target("127.0.0.1", p)))
    )
    assert ok.ok, ok.message
    assert seen[0].startswith(b"GET /health HTTP/1.1\r\n") and b"Host: www.example.test\r\n" in seen[0]
    wrong_body = run(
        with_tcp_server(http_handler(200, b"rs1: degraded"), lambda p: checker.check(Target("127.0.0.1", p)))
    )
    assert (wrong_body.ok, wrong_body.error) == (False, "BodyMismatch")
    wrong_status = run(with_tcp_server(http_handler(503, b"all good"), lambda p: checker.check(Target("127.0.0.1", p))))
    assert (wrong_status.ok, wrong_status.error) == (False, "UnexpectedStatus") and "503" in wrong_status.message


def test_http_chunked_body_and_expected_statuses() -> None:
    checker = HTTPChecker(method="GET", statuses=frozenset({418}), body=re.compile(rb"^teapot$"))
    ok = run(
        with_tcp_server(http_handler(418, b"teapot", chunked=True), lambda p: checker.check(Target("127.0.0.1", p)))
    )
    assert ok.ok, ok.message


def test_http_digest_right_passes_wrong_fails_with_both_md5s() -> None:
    page = b"<html>rs1</html>\n"
    right = hashlib.md5(page).hexdigest()
    wrong = "0" * 32

    def against(checker: HTTPChecker, chunked: bool = False) -> ProbeResult:
        handler = http_handler(200, page, chunked=chunked)
        return run(with_tcp_server(handler, lambda p: checker.check(Target("127.0.0.1", p))))

    assert against(HTTPChecker(digest=right)).ok
    assert against(HTTPChecker(digest=right), chunked=True).ok  # the MD5 of the body, not of its chunks
    failed = against(HTTPChecker(path="/index.html", digest=wrong))
    assert (failed.ok, failed.error) == (False, "DigestMismatch")
    assert failed.message == f"GET /index.html: 200 X, body MD5 {right}, expected {wrong}"
    regex_and_digest = against(HTTPChecker(body=re.compile(rb"rs2"), digest=right))
    assert regex_and_digest.error == "BodyMismatch"  # both must hold


def test_http_digest_of_a_body_over_the_limit_fails_as_too_long() -> None:
    page = b"x" * (httpclient.MAX_BODY + 1)
    checker = HTTPChecker(digest=hashlib.md5(page).hexdigest())
    too_long = run(with_tcp_server(http_handler(200, page), lambda p: checker.check(Target("127.0.0.1", p))))
    assert (too_long.ok, too_long.error) == (False, "BodyTooLong")
    assert "body longer than 65536 bytes: no digest is taken of it" in too_long.message
    at_limit = b"x" * httpclient.MAX_BODY
    exact = HTTPChecker(digest=hashlib.md5(at_limit).hexdigest())
    assert run(with_tcp_server(http_handler(200, at_limit), lambda p: exact.check(Target("127.0.0.1", p)))).ok


def test_http_refused_and_not_http() -> None:
    refused = run(HTTPChecker().check(Target("127.0.0.1", free_port())))
    assert not refused.ok and refused.error == "ConnectionRefusedError"

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"SSH-2.0-OpenSSH\r\n")
        await w.drain()
        w.close()

    bad = run(with_tcp_server(garbage, lambda p: HTTPChecker().check(Target("127.0.0.1", p))))
    assert (bad.ok, bad.error) == (False, "HTTPProtocolError")


# --- udp ---------------------------------------------------------------------


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]


async def with_udp_server(
    protocol: Callable[[], asyncio.DatagramProtocol], body: Callable[[int], Awaitable[ProbeResult]]
) -> ProbeResult:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(protocol, local_addr=("127.0.0.1", 0))
    try:
        return await body(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


def test_udp_echo_expected_and_mismatch() -> None:
    good = UDPChecker(payload=b"ping", expect=re.compile(rb"echo:ping"))
    assert run(with_udp_server(Echo, lambda p: good.check(Target("127.0.0.1", p)))).ok
    bad = UDPChecker(payload=b"ping", expect=re.compile(rb"pong"))
    result = run(with_udp_server(Echo, lambda p: bad.check(Target("127.0.0.1", p))))
    assert (result.ok, result.error) == (False, "ReplyMismatch")


def test_udp_closed_port_is_refused() -> None:
    result = run(UDPChecker().check(Target("127.0.0.1", free_port(socket.SOCK_DGRAM))))
    assert (result.ok, result.error) == (False, "ConnectionRefusedError")


# --- dns ---------------------------------------------------------------------


class Responder(asyncio.DatagramProtocol):
    """Answers A www.example.test with 192.0.2.7 and NXDOMAIN for anything else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        question = dnswire.decode_message(data).question
        if question == ("www.example.test.", "A"):
            reply = dnswire.encode_response(data, "NOERROR", [("www.example.test", "A", 60, bytes([192, 0, 2, 7]))])
        else:
            reply = dnswire.encode_response(data, "NXDOMAIN", [])
        self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


def test_dns_answer_rcode_and_mismatch() -> None:
    def ask(checker: DNSChecker) -> ProbeResult:
        return run(with_udp_server(Responder, lambda p: checker.check(Target("127.0.0.1", p))))

    assert ask(DNSChecker("www.example.test", answer=re.compile(r"^192\.0\.2\.7$"))).ok
    assert ask(DNSChecker("missing.example.test", rcode="NXDOMAIN")).ok
    wrong = ask(DNSChecker("missing.example.test"))
    assert (wrong.ok, wrong.error) == (False, "UnexpectedRcode") and "NXDOMAIN" in wrong.message
    other = ask(DNSChecker("www.example.test", answer=re.compile(r"198\.51")))
    assert (other.ok, other.error) == (False, "AnswerMismatch") and "192.0.2.7" in other.message


def test_dns_codec_compression_and_garbage() -> None:
    query = dnswire.encode_query(0x1234, "a.example.test", "A")
    reply = bytearray(dnswire.encode_response(query, "NOERROR", []))
    reply[7] = 1  # one answer: a CNAME whose owner and data point back at the question name
    reply += b"\xc0\x0c" + bytes([0, 5, 0, 1, 0, 0, 0, 60, 0, 2]) + b"\xc0\x0e"
    msg = dnswire.decode_message(bytes(reply))
    assert (msg.id, msg.rcode) == (0x1234, "NOERROR")
    assert msg.answers == (dnswire.Answer("a.example.test.", "CNAME", 60, "example.test."),)
    with pytest.raises(dnswire.DNSFormatError):
        dnswire.decode_message(b"\x00\x01")
    loop = bytes(12) + b"\xc0\x0c"
    with pytest.raises(dnswire.DNSFormatError):
        dnswire.decode_message(loop[:4] + b"\x00\x01" + loop[6:])


# --- icmp --------------------------------------------------------------------


def test_icmp_codec() -> None:
    packet = echo_request(socket.AF_INET, 7, 9, b"abc")
    assert checksum(packet) == 0  # a packet with its checksum sums to zero
    assert parse_icmp(socket.AF_INET, packet, raw=False) == (8, 7, 9)
    ip_header = bytes([0x45]) + bytes(19)
    assert parse_icmp(socket.AF_INET, ip_header + packet, raw=True) == (8, 7, 9)


def _icmp_allowed() -> bool:
    from lvsguard.exporter.probes.icmp import open_socket

    try:
        open_socket(socket.AF_INET)[0].close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(
    not _icmp_allowed(), reason="neither datagram ICMP (ping_group_range) nor a raw socket is allowed here"
)
def test_icmp_echo_to_loopback_and_timeout_to_nowhere() -> None:
    assert run(ICMPChecker().check(Target("127.0.0.1", 0))).ok
    silent = run(
        probe(CheckSpec("icmp", ICMPChecker(), timeout=0.2), Target("192.0.2.123", 0))
    )  # TEST-NET-1: nobody answers
    assert not silent.ok and silent.message


# --- script ------------------------------------------------------------------


def script(code: str) -> ScriptChecker:
    return ScriptChecker((sys.executable, "-c", code, "{address}", "{port}"))


def test_script_exit_codes() -> None:
    target = Target("127.0.0.1", 8080)
    assert (
        verdict(0) == (True, None)
        and verdict(1) == (False, None)
        and verdict(7) == (True, 5)
        and verdict(-9) == (False, None)
    )
    up = run(script("import sys; sys.exit(0 if sys.argv[1:] == ['127.0.0.1', '8080'] else 1)").check(target))
    assert up.ok, up.message
    assert not run(script("import sys; sys.exit(1)").check(target)).ok
    weighted = run(script("import sys; sys.exit(7)").check(target))
    assert (weighted.ok, weighted.weight) == (True, 5)
    missing = run(ScriptChecker(("/nonexistent/check",)).check(target))
    assert (missing.ok, missing.error) == (False, "FileNotFoundError")


def test_script_timeout_kills_the_process_group_and_leaves_no_zombie(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pidfile = tmp_path / "pid"
    code = f"import os, time, subprocess; p = subprocess.Popen(['sleep', '30']); open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(30)"
    result = run(probe(CheckSpec("script", script(code), timeout=1.0), Target("127.0.0.1", 1)))
    assert (result.ok, result.error) == (False, "TimeoutError")
    grandchild = int(pidfile.read_text())
    for _ in range(100):  # SIGKILL is delivered at once, but give the scheduler a moment
        if not running(grandchild):
            break
        time.sleep(0.02)
    assert not running(grandchild), f"pid {grandchild} of the timed-out script's group still runs"


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie of init's is not ours to reap)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(") ", 1)[1][:1] not in ("Z", "X")
    except FileNotFoundError:
        return False


# --- agent -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "state", "percent"),
    [
        ("up 75%", "up", 75.0),
        ("75%", "", 75.0),
        ("drain", "drain", 0.0),
        ("maint", "maint", None),
        ("down #disk full", "down", None),
        ("ready,50%", "up", 50.0),
        ("stopped", "down", None),
    ],
)
def test_agent_reply_words(line: str, state: str, percent: float | None) -> None:
    reply = parse_reply(line)
    assert (reply.state, reply.percent) == (state, percent)


def test_agent_reply_unknown_word() -> None:
    with pytest.raises(ValueError, match="unknown word 'bogus'"):
        parse_reply("up bogus")


def agent_says(text: bytes):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text)
        await writer.drain()
        writer.close()

    return handle


def test_agent_check_against_an_agent() -> None:
    def ask(text: bytes) -> ProbeResult:
        return run(with_tcp_server(agent_says(text), lambda p: AgentChecker().check(Target("127.0.0.1", p))))

    half = ask(b"up 50%\n")
    assert (half.ok, half.weight_percent) == (True, 50.0)
    assert (ask(b"maint\n").ok, ask(b"down\n").ok) == (False, False)
    assert (ask(b"drain\n").ok, ask(b"drain\n").weight_percent) == (True, 0.0)
    assert ask(b"").error == "EmptyReply"
    assert ask(b"what?\n").error == "ValueError"


# --- prometheus ----------------------------------------------------------------


def test_prometheus_value_parsing() -> None:
    assert (
        value_of(b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"42.5"]}]}}')
        == 42.5
    )
    assert value_of(b'{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}') == 7.0
    with pytest.raises(ValueError, match="2 samples"):
        value_of(b'{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}')
    with pytest.raises(ValueError, match="NaN"):
        value_of(b'{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}')
    with pytest.raises(ValueError, match="query failed"):
        value_of(b'{"status":"error","error":"parse error"}')


def test_prometheus_check_against_an_http_api() -> None:
    seen: list[bytes] = []
    body = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"60"]}]}}'

    async def body_(port: int) -> ProbeResult:
        checker = PrometheusChecker(f"http://127.0.0.1:{port}", 'node_load{instance="{address}:9100"}')
        return await checker.check(Target("10.0.1.2", 80))

    result = run(with_tcp_server(http_handler(200, body, seen=seen), body_))
    assert (result.ok, result.weight_percent) == (True, 60.0)
    assert b"GET /api/v1/query?query=node_load%7Binstance%3D%2210.0.1.2%3A9100%22%7D HTTP/1.1" in seen[0]
