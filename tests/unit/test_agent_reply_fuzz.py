"""Hostile agent replies: whatever an ``agent`` check's peer writes, the check gives a result, never an exception.

Property-based (hypothesis). The replies go over a real TCP socket to the
real ``AgentChecker``: random bytes, random text in the protocol's alphabet
(state words, percentages, separators, comments, line breaks, non-UTF-8
bytes), and random edits of good replies. The check must return a
``ProbeResult`` whose error is one the engine knows how to show ("",
``AgentDown``, ``AgentMaint``, ``EmptyReply`` or ``ValueError`` for a reply
it cannot read), whose weight is ``None`` or a finite percentage >= 0, and
which is up exactly when the reply is neither down nor maint.

The suite runs a few hundred cases; ``bench/fuzz.py`` runs 10 000 and
prints ``CASES``.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections import Counter
from collections.abc import Iterator

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="property-based tests need the hypothesis package")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvsguard.exporter.probes.agent import MAX_REPLY, AgentChecker, parse_reply
from lvsguard.exporter.probes.result import ProbeResult, Target

EXAMPLES = int(os.environ.get("LVSGUARD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CASES: Counter[str] = Counter()
"""Cases run per surface in this process (bench/fuzz.py prints them)."""
KNOWN_ERRORS = {"", "AgentDown", "AgentMaint", "EmptyReply", "ValueError"}
GOOD = [
    b"up 75%\n",
    b"ready,50%\n",
    b"drain\n",
    b"maint #backup\n",
    b"down #disk full\n",
    b"75%\n",
    b"stopped\r\n",
    b"up\tready 100%",
]
WORDS = st.sampled_from(
    [
        "up",
        "UP",
        "ready",
        "down",
        "fail",
        "stopped",
        "drain",
        "maint",
        "75%",
        "0%",
        "100.5%",
        "1e3%",
        "9" * 400 + "%",
        "%",
        "-5%",
        ".5%",
        "#",
        "# why",
        ",",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\x00",
        "\u2028",
        "\u00e9",
        "\ufffd",
        "bogus",
        "up%",
        "50%%",
        "\x85",
    ]
)
TEXTS = st.lists(WORDS, max_size=12).map(lambda words: "".join(words).encode("utf-8", "surrogatepass"))


def _edit(seed: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(seed)
    for at, byte in edits:
        data[at % len(data)] = byte
    return bytes(data[:cut])


EDITED = st.builds(
    _edit,
    st.sampled_from(GOOD),
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 40),
)
REPLIES = st.one_of(st.binary(max_size=MAX_REPLY + 16), TEXTS, EDITED)


class _Agent:
    """One TCP server on loopback that writes ``reply`` to each connection and closes it."""

    def __init__(self) -> None:
        self.reply = b""
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._answer, "127.0.0.1", 0))
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.reply)
        await writer.drain()
        writer.close()

    def ask(self, reply: bytes) -> ProbeResult:
        self.reply = reply
        return self.loop.run_until_complete(
            asyncio.wait_for(AgentChecker().check(Target("127.0.0.1", self.port)), 30)
        )  # generous: a loaded CI machine stalls for seconds

    def close(self) -> None:
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()


@pytest.fixture(scope="module")
def agent() -> Iterator[_Agent]:
    server = _Agent()
    yield server
    server.close()


def test_the_fixture_agent_answers_a_good_reply(agent: _Agent) -> None:
    result = agent.ask(b"up 75%\n")
    assert (result.ok, result.weight_percent, result.error) == (True, 75.0, "")
    assert agent.ask(b"maint\n").error == "AgentMaint"


@FUZZ
@given(reply=REPLIES)
def test_any_reply_gives_a_result(agent: _Agent, reply: bytes) -> None:
    CASES["agent"] += 1
    result = agent.ask(reply)
    assert isinstance(result, ProbeResult)
    assert result.error in KNOWN_ERRORS, (reply, result)
    assert "Traceback" not in result.message
    if result.weight_percent is not None:
        assert math.isfinite(result.weight_percent) and result.weight_percent >= 0, (reply, result)
    if result.error == "":
        assert result.ok
    text = reply[:MAX_REPLY].decode("utf-8", errors="replace")
    if result.error == "ValueError":
        with pytest.raises(ValueError):
            parse_reply(text.splitlines()[0])
    elif result.error in ("AgentDown", "AgentMaint"):
        assert not result.ok and parse_reply(text.splitlines()[0]).state in ("down", "maint")


@FUZZ
@given(line=st.text(max_size=80) | TEXTS.map(lambda b: b.decode("utf-8", errors="replace")))
def test_parse_reply_raises_only_value_error(line: str) -> None:
    CASES["agent"] += 1
    try:
        reply = parse_reply(line)
    except ValueError as exc:
        assert "agent reply" in str(exc)
        return
    assert reply.state in ("", "up", "down", "drain", "maint")
    assert reply.percent is None or (math.isfinite(reply.percent) and reply.percent >= 0)
    assert reply.state != "drain" or reply.percent == 0.0
