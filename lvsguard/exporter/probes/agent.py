"""``agent``: HAProxy's agent-check text protocol.

The director connects to the agent's port; the agent writes one line and
closes. The line holds words separated by spaces, commas or tabs: a state
(``up``/``ready``, ``down``/``fail``/``stopped``, ``drain``, ``maint``), a
weight percentage (``75%``), and an optional ``#`` comment. ``parse_reply``
is pure; ``lvsguard agent`` (lvsguard/agent.py) is the answering side.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass

from lvsguard.exporter.probes.result import ProbeResult, Target, guarded

MAX_REPLY = 1024
DOWN_WORDS = ("down", "fail", "stopped")
UP_WORDS = ("up", "ready")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


@dataclass(frozen=True, slots=True)
class AgentReply:
    state: str  # "up", "down", "drain", "maint", or "" when only a weight was given
    percent: float | None  # weight percentage; drain means 0
    comment: str


def parse_reply(line: str) -> AgentReply:
    """The state and weight of an agent's reply line; ValueError on a word it does not know."""
    text, _, comment = line.strip().partition("#")
    state = ""
    percent: float | None = None
    for word in filter(None, re.split(r"[\s,]+", text.strip().lower())):
        if match := _PERCENT.fullmatch(word):
            percent = float(match.group(1))
            if math.isinf(percent):  # 400 nines: no weight can be computed from it
                raise ValueError(f"agent reply {line.strip()[:60]!r}: weight {word[:20]}... is out of range")
        elif word in UP_WORDS:
            state = "up" if state in ("", "up") else state
        elif word in DOWN_WORDS:
            state = "down"
        elif word in ("drain", "maint"):
            state = word if state != "down" else state
        else:
            raise ValueError(f"agent reply {line.strip()[:60]!r}: unknown word {word!r}")
    if state == "drain":
        percent = 0.0
    return AgentReply(state, percent, comment.strip())


@dataclass(frozen=True, slots=True)
class AgentChecker:
    kind = "agent"
    send: bytes = b""  # HAProxy's agent-send: a line written before reading, if any

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"agent {target}", lambda: self._ask(target))

    async def _ask(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(target.address, target.port)
        try:
            if self.send:
                writer.write(self.send)
                await writer.drain()
            data = await reader.read(MAX_REPLY)
        finally:
            writer.close()
        took = time.perf_counter() - started
        if not data.strip():
            return ProbeResult(False, f"agent {target}: empty reply", took, "EmptyReply")
        reply = parse_reply(data.decode("utf-8", errors="replace").splitlines()[0])
        what = f"agent {target}: {data.decode(errors='replace').strip()[:80]}"
        if reply.state in ("down", "maint"):
            return ProbeResult(
                False, what, took, "AgentDown" if reply.state == "down" else "AgentMaint", weight_percent=reply.percent
            )
        return ProbeResult(True, what, took, weight_percent=reply.percent)
