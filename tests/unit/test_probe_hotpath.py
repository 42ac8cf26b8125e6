"""The engine's hot path (bare sockets in its epoll set), its scheduler, the default-check budget and the HTTP parser.

Real sockets on 127.0.0.1; no timing is asserted, only outcomes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from lvsguard.exporter.probes.engine import DEFAULT_RATE, CheckSpec, ProbeEngine, default_plan, stretched_interval
from lvsguard.exporter.probes.http import HTTPChecker
from lvsguard.exporter.probes.httpclient import MAX_BODY, HTTPProtocolError, parse_response
from lvsguard.exporter.probes.poller import Poller
from lvsguard.exporter.probes.result import ProbeResult, Target
from lvsguard.exporter.probes.tcp import TCPChecker
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService
from tests.exposition_oracle import fast_and_slow

SVC = ServiceKey.parse("TCP 192.0.2.10:80")


def table(*ports: int, address: str = "127.0.0.1", services: int = 1) -> Table:
    servers = tuple(RealServer(RealServerKey(address, p, 4), 1, Forward.MASQ) for p in ports)
    return Table(
        tuple(
            VirtualService(ServiceKey("TCP", "192.0.2.10", 80 + i), "wrr", real_servers=servers)
            for i in range(services)
        ),
        source="netlink",
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hot(checker: Any, target: Target) -> Awaitable[ProbeResult]:
    """One probe through ``checker.begin`` on a poller of its own."""

    async def body() -> ProbeResult:
        loop = asyncio.get_running_loop()
        poller = Poller(loop)
        done: asyncio.Future[ProbeResult] = loop.create_future()
        inflight = checker.begin(poller, target, lambda token, result: done.set_result(result), None)
        try:
            return await asyncio.wait_for(done, 5)
        finally:
            if not done.done():
                inflight.cancel()
            poller.close()

    return body()


async def serving(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    use: Callable[[int], Awaitable[Any]],
) -> Any:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        return await use(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def answer(raw: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        for piece in (raw[: len(raw) // 2], raw[len(raw) // 2 :]):  # two writes: the parser must wait for the rest
            w.write(piece)
            await w.drain()
            await asyncio.sleep(0.01)
        w.close()

    return handler


# --- tcp ----------------------------------------------------------------------------------


def test_tcp_hot_path_up_and_refused_as_the_coroutine_reports() -> None:
    async def body() -> tuple[ProbeResult, ProbeResult, ProbeResult]:
        up = await serving(lambda r, w: _close(w), lambda p: hot(TCPChecker(), Target("127.0.0.1", p)))
        port = closed_port()
        return (
            up,
            await hot(TCPChecker(), Target("127.0.0.1", port)),
            await TCPChecker().check(Target("127.0.0.1", port)),
        )

    up, refused, refused_coro = asyncio.run(body())
    assert up.ok and up.message.startswith("connected to 127.0.0.1:")
    assert (refused.ok, refused.error) == (False, "ConnectionRefusedError") == (refused_coro.ok, refused_coro.error)


async def _close(w: asyncio.StreamWriter) -> None:
    w.close()


def test_tcp_hot_path_bad_address_is_a_failed_result() -> None:
    result = asyncio.run(hot(TCPChecker(), Target("999.1.1.1", 80)))
    assert not result.ok and "connect to 999.1.1.1:80" in result.message


# --- http ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "checker", "ok", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", HTTPChecker(body=re.compile(rb"hel+o")), True, ""),
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy", HTTPChecker(), False, "UnexpectedStatus"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntea\r\n3\r\npot\r\n0\r\n\r\n",
            HTTPChecker(body=re.compile(rb"^teapot$")),
            True,
            "",
        ),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil eof", HTTPChecker(body=re.compile(rb"nothing")), False, "BodyMismatch"),
        (b"SSH-2.0-OpenSSH_9\r\n", HTTPChecker(), False, "HTTPProtocolError"),
        (b"HTTP/1.0 200 OK\r\n\r\nhello", HTTPChecker(digest=hashlib.md5(b"hello").hexdigest()), True, ""),
        (
            b"HTTP/1.0 200 OK\r\n\r\nhello!",
            HTTPChecker(digest=hashlib.md5(b"hello").hexdigest()),
            False,
            "DigestMismatch",
        ),
        (  # no Content-Length: the body ends at EOF, past the limit
            b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * (MAX_BODY + 10),
            HTTPChecker(digest=hashlib.md5(b"x" * MAX_BODY).hexdigest()),
            False,
            "BodyTooLong",
        ),
    ],
)
def test_http_hot_path_judges_as_the_coroutine(raw: bytes, checker: HTTPChecker, ok: bool, error: str) -> None:
    async def body() -> tuple[ProbeResult, ProbeResult]:
        return (
            await serving(answer(raw), lambda p: hot(checker, Target("127.0.0.1", p))),
            await serving(answer(raw), lambda p: checker.check(Target("127.0.0.1", p))),
        )

    fast, coro = asyncio.run(body())
    assert (fast.ok, fast.error) == (ok, error) == (coro.ok, coro.error), (fast, coro)


def test_http_hot_path_refused() -> None:
    result = asyncio.run(hot(HTTPChecker(), Target("127.0.0.1", closed_port())))
    assert (result.ok, result.error) == (False, "ConnectionRefusedError") and result.message.startswith(
        "GET http://127.0.0.1:"
    )


def test_https_has_no_hot_path() -> None:
    import ssl

    assert HTTPChecker().begin is not None
    assert HTTPChecker(tls=ssl.create_default_context()).begin is None


def test_parse_response_waits_for_a_complete_answer() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
    assert parse_response(head[:10], "GET", 100, eof=False) is None
    assert parse_response(head + b"ab", "GET", 100, eof=False) is None
    done = parse_response(head + b"abcd", "GET", 100, eof=False)
    assert done is not None and (done.status, done.reason, done.body) == (200, "OK", b"abcd")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
    assert parse_response(chunked, "GET", 100, eof=False) is None
    last = parse_response(chunked + b"0\r\n\r\n", "GET", 100, eof=False)
    assert last is not None and last.body == b"abcd"
    capped = parse_response(chunked, "GET", 3, eof=False)  # the body limit reached: complete enough
    assert capped is not None and capped.body == b"abc" and capped.truncated
    assert last is not None and not last.truncated and not done.truncated
    long = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", "GET", 3, eof=False)
    assert long is not None and (long.body, long.truncated) == (b"abc", True)
    until_eof = b"HTTP/1.0 200 OK\r\n\r\nabc"
    assert parse_response(until_eof, "GET", 3, eof=False).truncated  # type: ignore[union-attr]  # more may come
    assert not parse_response(until_eof, "GET", 3, eof=True).truncated  # type: ignore[union-attr]  # exactly the limit
    head_only = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", "GET", 100, eof=False)
    assert head_only is not None and head_only.body == b""
    with pytest.raises(HTTPProtocolError, match="not an HTTP answer: 'SSH-2.0'"):
        parse_response(b"SSH-2.0", "GET", 100, eof=False)
    with pytest.raises(HTTPProtocolError, match="ends inside its headers"):
        parse_response(b"HTTP/1.1 200 OK\r\nServer: x", "GET", 100, eof=True)
    with pytest.raises(HTTPProtocolError, match="bad chunk size"):
        parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "GET", 100, eof=False)


# --- the engine: scheduler, timeouts, both paths ----------------------------------------------------


def full_backlog() -> tuple[socket.socket, list[socket.socket], int]:
    """A listener whose accept queue is full: further SYNs are dropped, so a connect gets no answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    return listener, fillers, port


@pytest.mark.parametrize("hot_path", [True, False])
def test_engine_up_refused_and_timeout(hot_path: bool) -> None:
    """Three real servers: one listening, one closed, one that never answers; both paths classify them alike."""
    listener, fillers, silent = full_backlog()

    async def body() -> dict[int, list[ProbeResult]]:
        server = await asyncio.start_server(lambda r, w: _close(w), "127.0.0.1", 0)
        up, refused = server.sockets[0].getsockname()[1], closed_port()
        spec = CheckSpec("tcp", TCPChecker(), interval=0.05, timeout=0.2, rise=1, fall=1)
        engine = ProbeEngine(lambda s, r: (spec,), hot_path=hot_path)
        seen: dict[int, list[ProbeResult]] = {up: [], refused: [], silent: []}
        record = engine.record

        def spy(job: Any, result: ProbeResult) -> None:
            seen[job.target.port].append(result)
            record(job, result)

        engine.record = spy  # type: ignore[method-assign]
        engine.sync(table(up, refused, silent))
        for _ in range(300):
            await asyncio.sleep(0.02)
            if all(len(v) >= 2 for v in seen.values()):
                break
        await engine.stop()
        server.close()
        return seen | {"ports": [up, refused, silent]}  # type: ignore[dict-item]

    try:
        seen = asyncio.run(body())
    finally:
        for s in fillers + [listener]:
            s.close()
    up, refused, silent = seen.pop("ports")  # type: ignore[misc]
    assert all(r.ok for r in seen[up]) and len(seen[up]) >= 2
    assert {r.error for r in seen[refused]} == {"ConnectionRefusedError"}
    assert {r.error for r in seen[silent]} == {"TimeoutError"} and "no answer within 0.2 s" in seen[silent][0].message


def test_engine_keeps_a_cadence_and_cancels_a_departed_check_in_flight() -> None:
    listener, fillers, silent = full_backlog()

    async def body() -> tuple[int, int, int, int]:
        server = await asyncio.start_server(lambda r, w: _close(w), "127.0.0.1", 0)
        up = server.sockets[0].getsockname()[1]
        spec = CheckSpec("tcp", TCPChecker(), interval=0.05, timeout=5.0, rise=1, fall=1)
        engine = ProbeEngine(lambda s, r: (spec,), keep_lateness=True)
        engine.sync(table(up, silent))
        await asyncio.sleep(0.6)
        probes = engine.stats.probes
        slow = engine.jobs[(SVC, RealServerKey("127.0.0.1", silent, 4), "tcp")]
        in_flight = slow.inflight is not None and slow.last is None  # 5 s timeout: still waiting
        engine.sync(table(up))  # the silent one leaves while its connect is in flight
        after = engine.stats.probes
        await asyncio.sleep(0.3)
        late_results = engine.stats.probes - after
        await engine.stop()
        server.close()
        return probes, int(in_flight), late_results, len(engine.jobs)

    try:
        probes, in_flight, late, jobs = asyncio.run(body())
    finally:
        for s in fillers + [listener]:
            s.close()
    assert probes >= 4  # about 0.6 / 0.05 for the listening one; the machine may be slow, not stopped
    assert in_flight == 1 and jobs == 1
    assert late >= 1  # the remaining check goes on ...


def test_departed_check_never_records() -> None:
    """... and the departed one's result never arrives: no job, no metric series for it."""
    listener, fillers, silent = full_backlog()

    async def body() -> str:
        spec = CheckSpec("tcp", TCPChecker(), interval=0.05, timeout=0.3, rise=1, fall=1)
        engine = ProbeEngine(lambda s, r: (spec,))
        engine.sync(table(silent))
        await asyncio.sleep(0.1)
        engine.sync(table())
        await asyncio.sleep(0.5)  # past the timeout it would have reported
        await engine.stop()
        return "".join(engine.metrics.chunks())

    try:
        text = asyncio.run(body())
    finally:
        for s in fillers + [listener]:
            s.close()
    assert text == ""


# --- the default checks' budget ---------------------------------------------------------------


def test_stretched_interval() -> None:
    assert stretched_interval(500, 1.0, 1000) == 1.0
    assert stretched_interval(5000, 1.0, 1000) == 5.0
    assert stretched_interval(100_000, 1.0, 1000) == 100.0
    assert stretched_interval(0, 1.0, 1000) == 1.0


def test_default_checks_stretch_under_the_budget_and_configured_ones_do_not(caplog: pytest.LogCaptureFixture) -> None:
    configured = CheckSpec("http", HTTPChecker(), interval=2.0)

    def plan(service: ServiceKey, real_server: RealServerKey) -> tuple[CheckSpec, ...]:
        return (configured,) if real_server.port == 1 else default_plan(service, real_server)

    async def body() -> dict[str, Any]:
        engine = ProbeEngine(
            plan, default_rate=100, jitter=lambda: 1.0
        )  # first slots a whole interval away: nothing runs
        out: dict[str, Any] = {}
        engine.sync(table(*range(1, 301), address="192.0.2.77"))  # 299 default checks + 1 configured
        out["big"] = {j.spec.name: j.interval for j in engine.jobs.values()}
        out["big_interval"] = engine.default_interval
        engine.sync(table(*range(1, 305), address="192.0.2.77"))  # a few more: same budget, not logged again
        engine.sync(table(*range(1, 51), address="192.0.2.77"))  # small again: as configured
        out["small"] = {j.spec.name: j.interval for j in engine.jobs.values()}
        out["small_interval"] = engine.default_interval
        await engine.stop()
        return out

    with caplog.at_level(logging.INFO, logger="lvsguard.exporter.probes"):
        out = asyncio.run(body())
    assert out["big"] == {"tcp": 2.99, "http": 2.0} and out["big_interval"] == 2.99
    assert out["small"] == {"tcp": 1.0, "http": 2.0} and out["small_interval"] is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("probe_default_interval_stretched" in m for m in messages) == 1
    assert sum("probe_default_interval_restored" in m for m in messages) == 1
    assert any("checks=299" in m and "interval=2.99" in m for m in messages)


def test_default_budget_counts_every_service() -> None:
    """A real server in two services has two default checks: the budget counts probes, not addresses."""

    async def body() -> float | None:
        engine = ProbeEngine(default_rate=10, jitter=lambda: 1.0)
        engine.sync(table(*range(1, 11), address="192.0.2.77", services=3))
        await engine.stop()
        return engine.default_interval

    assert asyncio.run(body()) == 3.0


def test_the_default_rate_is_the_config_default() -> None:
    from lvsguard.config import ProbesConfig

    assert ProbesConfig().default_rate == DEFAULT_RATE


def test_stretched_default_checks_share_a_histogram_per_service() -> None:
    """Over the budget, the default checks' durations go to one histogram per service; back under it, per real server."""
    from prometheus_client.parser import text_string_to_metric_families

    def buckets(text: str) -> set[tuple[str, str]]:
        return {
            (s.labels["local_port"], s.labels["remote_port"])
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "lvs_probe_duration_seconds_count"
        }

    def healthy(text: str) -> int:
        return sum(
            1 for f in text_string_to_metric_families(text) for s in f.samples if s.name == "lvs_backend_healthy"
        )

    async def body() -> dict[str, str]:
        engine = ProbeEngine(default_rate=10, jitter=lambda: 1.0)
        engine.sync(table(1, 2, 3, address="192.0.2.77", services=2))  # 6 checks at 1 s: under 10/s
        small = "".join(engine.metrics.chunks())
        engine.sync(table(*range(1, 11), address="192.0.2.77", services=2))  # 20 checks: over
        big = "".join(engine.metrics.chunks())
        engine.sync(table(1, 2, address="192.0.2.77", services=2))  # under again
        again = "".join(engine.metrics.chunks())
        await engine.stop()
        return {"small": small, "big": big, "again": again}

    out = asyncio.run(body())
    assert buckets(out["small"]) == {(p, str(r)) for p in ("80", "81") for r in (1, 2, 3)}
    assert buckets(out["big"]) == {("80", ""), ("81", "")} and healthy(out["big"]) == 20
    assert buckets(out["again"]) == {(p, str(r)) for p in ("80", "81") for r in (1, 2)} and healthy(out["again"]) == 4


def test_shared_histogram_counts_every_member_and_matches_the_registry_path() -> None:
    from lvsguard.exporter.probes.metrics import ProbeMetrics
    from lvsguard.exporter.probes.state import Health

    metrics = ProbeMetrics()
    keys = [(SVC, RealServerKey("10.0.0.1", p), "tcp") for p in (1, 2, 3)]
    for key in keys:
        metrics.add(key, shared=True)
    for key, took in zip(keys, (0.0002, 0.003, 0.2)):
        metrics.observe(key, ProbeResult(True, "ok", took), Health(1, 1))
    metrics.remove(keys[0])

    fast, slow = fast_and_slow(metrics)
    assert fast == slow
    counts = {dict(k[1])["remote_address"]: v for k, v in fast.items() if k[0] == "lvs_probe_duration_seconds_count"}
    assert counts == {"": 3.0}  # one histogram, every observation kept after a member left
    assert sum(1 for k in fast if k[0] == "lvs_probe_success") == 2


def test_default_rate_follows_the_measured_cpu_per_probe() -> None:
    """A probe measured at 1 ms of the engine thread's CPU: 10 % of a core buys 100 default probes a second."""
    cpu = {"now": 0.0}

    async def body() -> tuple[float | None, float | None, float | None]:
        engine = ProbeEngine(default_rate=1000, default_cpu_share=0.1, cpu_clock=lambda: cpu["now"], jitter=lambda: 1.0)
        engine.sync(table(*range(1, 301), address="192.0.2.77"))  # no probe measured yet: default_rate, 300 checks fit
        first = engine.default_interval
        engine.stats.probes += 200  # as if 200 probes ran ...
        cpu["now"] += 0.2  # ... on 0.2 s of the thread's CPU
        engine.sync(table(*range(1, 301), address="192.0.2.77"))
        second = engine.default_interval
        await engine.stop()
        return first, second, engine.cpu_per_probe

    first, second, per_probe = asyncio.run(body())
    assert first is None  # 300 checks at 1 s are under 1000/s
    assert per_probe == pytest.approx(0.001) and second == pytest.approx(3.0)


def test_the_budget_is_revised_between_table_reads() -> None:
    """Probes turning out dear stretch the running default checks without waiting for the next table read."""
    cpu = {"now": 0.0}

    async def body() -> tuple[set[float], float | None, str]:
        engine = ProbeEngine(default_rate=1000, default_cpu_share=0.1, cpu_clock=lambda: cpu["now"], jitter=lambda: 1.0)
        engine.sync(table(*range(1, 301), address="192.0.2.77"))
        engine.stats.probes += 300
        cpu["now"] += 0.6  # 2 ms a probe: 50 probes a second affordable, 300 checks every 6 s
        engine._rebudget(asyncio.get_running_loop().time())
        intervals = {j.interval for j in engine.jobs.values()}
        text = "".join(engine.metrics.chunks())
        await engine.stop()
        return intervals, engine.default_interval, text

    intervals, interval, text = asyncio.run(body())
    assert [round(i, 6) for i in intervals] == [6.0] and interval == pytest.approx(6.0)
    assert text.count("lvs_probe_duration_seconds_count{") == 1  # the per-service histogram took over


def test_a_checker_that_raises_is_a_failed_check_and_the_scheduler_goes_on() -> None:
    class Broken:
        kind = "broken"

        def begin(self, poller: Poller, target: Target, done: Any, token: Any) -> Any:
            raise RuntimeError("checker bug")

        async def check(self, target: Target) -> ProbeResult:
            raise RuntimeError("checker bug")

    async def body() -> tuple[int, set[str]]:
        spec = CheckSpec("broken", Broken(), interval=0.02, timeout=0.5, rise=1, fall=1)  # type: ignore[arg-type]
        engine = ProbeEngine(lambda s, r: (spec,))
        errors: set[str] = set()
        record = engine.record

        def spy(job: Any, result: ProbeResult) -> None:
            errors.add(result.error)
            record(job, result)

        engine.record = spy  # type: ignore[method-assign]
        engine.sync(table(1, address="192.0.2.77"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if engine.stats.probes >= 3:
                break
        await engine.stop()
        return engine.stats.probes, errors

    probes, errors = asyncio.run(body())
    assert probes >= 3 and errors == {"RuntimeError"}


def test_hot_paths_over_ipv6() -> None:
    try:
        probe6 = socket.socket(socket.AF_INET6)
        probe6.bind(("::1", 0))
        probe6.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def body() -> tuple[ProbeResult, ProbeResult]:
        server = await asyncio.start_server(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), "::1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await hot(TCPChecker(), Target("::1", port)), await hot(
                HTTPChecker(body=re.compile(rb"ok")), Target("::1", port)
            )
        finally:
            server.close()

    tcp, http = asyncio.run(body())
    assert tcp.ok and tcp.message.startswith("connected to [::1]:")
    assert http.ok, http.message


@pytest.mark.parametrize(("interval", "slack"), [(0.05, 0.002), (0.1, 0.002), (0.5, 0.01), (1.0, 0.02), (30.0, 0.02)])
def test_the_timer_slack_follows_the_shortest_interval_within_its_bounds(interval: float, slack: float) -> None:
    """Checks due within one slack start in one wake-up: 2 % of the shortest interval, at least 2 ms, at most 20 ms."""
    fast = CheckSpec("fast", TCPChecker(), interval=interval, timeout=0.5)
    slow = CheckSpec("slow", TCPChecker(), interval=60.0, timeout=0.5)

    async def body() -> tuple[float, float]:
        engine = ProbeEngine(lambda s, r: (fast, slow), jitter=lambda: 1.0)
        engine.sync(table(closed_port()))
        with_both = engine._slack
        engine.sync(table())  # the real server left: no checks, the default slack
        alone = engine._slack
        await engine.stop()
        return with_both, alone

    with_both, alone = asyncio.run(body())
    assert with_both == pytest.approx(slack) and alone == pytest.approx(0.02)


def test_a_probe_that_ended_leaves_no_deadline_to_wake_for() -> None:
    """A finished probe's deadline is dropped at the next tick instead of waking the loop at its time."""

    async def body() -> tuple[int, int]:
        server = await asyncio.start_server(lambda r, w: _close(w), "127.0.0.1", 0)
        spec = CheckSpec("tcp", TCPChecker(), interval=0.05, timeout=30.0, rise=1, fall=1)
        engine = ProbeEngine(lambda s, r: (spec,))
        engine.sync(table(server.sockets[0].getsockname()[1]))
        await asyncio.sleep(0.5)
        probes, deadlines = engine.stats.probes, len(engine._deadlines)
        await engine.stop()
        server.close()
        return probes, deadlines

    probes, deadlines = asyncio.run(body())
    assert probes >= 3 and deadlines <= 1  # without the pruning: one 30 s deadline per probe made
