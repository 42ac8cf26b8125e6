"""The prometheus check while its Prometheus is out of reach: it holds each real server's last answer.

A stand-in Prometheus on loopback answers instant queries with a canned body
(or a status), then goes away; the checker talks to it over real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from lvsguard.exporter.probes.prometheus import UNREACHABLE, PrometheusChecker, value_of
from lvsguard.exporter.probes.result import ProbeResult, Target

VECTOR = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"%s"]}]}}'
EMPTY = b'{"status":"success","data":{"resultType":"vector","result":[]}}'


class StandIn:
    """An HTTP server on 127.0.0.1 answering every request with ``status`` and ``body``."""

    def __init__(self) -> None:
        self.status, self.body = 200, VECTOR % b"50"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (self.status, len(self.body), self.body)
        )
        await writer.drain()
        writer.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def scenario(steps: list[tuple[str, int, bytes]]) -> list[ProbeResult]:
    """Run the steps ('up', status, body) or ('down', 0, b'') against one checker; one check of each target per step."""
    stand_in = StandIn()
    server = await asyncio.start_server(stand_in.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    checker = PrometheusChecker(f"http://127.0.0.1:{port}", 'up{instance="{address}:{port}"}')
    results = []
    for state, status, body in steps:
        if state == "down" and server.is_serving():
            server.close()
            await server.wait_closed()
        elif state == "up" and not server.is_serving():
            server = await asyncio.start_server(stand_in.handle, "127.0.0.1", port)
        stand_in.status, stand_in.body = status, body
        results.append(await checker.check(Target("10.0.1.1", 80)))
    server.close()
    return results


def test_a_dead_prometheus_holds_the_last_answer_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "lvsguard.exporter.probes")
    good, held, held_again, back = asyncio.run(
        scenario([("up", 200, VECTOR % b"50"), ("down", 0, b""), ("down", 0, b""), ("up", 200, VECTOR % b"75")])
    )
    assert (good.ok, good.weight_percent, good.error) == (True, 50.0, "")
    for result in (held, held_again):
        assert (result.ok, result.weight_percent, result.error) == (True, None, UNREACHABLE)
        assert (
            "out of reach" in result.message and "holding the last answer" in result.message and "50%" in result.message
        )
    assert (back.ok, back.weight_percent) == (True, 75.0)
    events = [r.getMessage().split()[0] for r in caplog.records if "prometheus_" in r.getMessage()]
    assert events == ["prometheus_unreachable", "prometheus_reachable"]


def test_a_held_failure_stays_a_failure_and_a_5xx_is_out_of_reach() -> None:
    failed, held, unavailable = asyncio.run(
        scenario([("up", 200, EMPTY), ("down", 0, b""), ("up", 503, b"shutting down")])
    )
    assert (failed.ok, failed.error) == (False, "ValueError")
    assert (held.ok, held.error) == (False, UNREACHABLE) and "0 samples" in held.message
    assert (unavailable.ok, unavailable.error) == (False, UNREACHABLE) and "status 503" in unavailable.message


def test_no_answer_yet_passes_without_a_weight() -> None:
    checker = PrometheusChecker(f"http://127.0.0.1:{closed_port()}", "up")
    result = asyncio.run(checker.check(Target("10.0.1.1", 80)))
    assert (result.ok, result.weight_percent, result.error) == (True, None, UNREACHABLE)
    assert "no answer yet" in result.message


def test_a_client_error_is_not_out_of_reach() -> None:
    (bad,) = asyncio.run(scenario([("up", 400, b'{"status":"error","error":"parse error"}')]))
    assert (bad.ok, bad.error) == (False, "UnexpectedStatus")


@pytest.mark.parametrize("raw", [b"+Inf", b"-Inf", b"NaN"])
def test_an_infinite_or_nan_value_is_no_weight(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a weight percentage"):
        value_of(VECTOR % raw)
