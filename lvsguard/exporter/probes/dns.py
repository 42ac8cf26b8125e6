"""``dns``: a query over UDP whose answer has the expected rcode (and an answer matching a regex)."""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

from lvsguard.exporter.probes import dnswire
from lvsguard.exporter.probes.result import ProbeResult, Target, guarded
from lvsguard.exporter.probes.udp import exchange


@dataclass(frozen=True, slots=True)
class DNSChecker:
    kind = "dns"
    name: str
    type: str = "A"
    rcode: str = "NOERROR"
    answer: re.Pattern[str] | None = None  # matched against each answer's data; None: any (or none)

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"dns {self.type} {self.name} @{target}", lambda: self._query(target))

    async def _query(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        ident = random.getrandbits(16)
        query = dnswire.encode_query(ident, self.name, self.type)
        reply = dnswire.decode_message(await exchange(target, query))
        took = time.perf_counter() - started
        what = f"dns {self.type} {self.name} @{target}: {reply.rcode}"
        if reply.id != ident:
            return ProbeResult(False, f"{what}, reply id {reply.id} is not the query's {ident}", took, "DNSMismatch")
        if reply.rcode != self.rcode:
            return ProbeResult(False, f"{what}, expected {self.rcode}", took, "UnexpectedRcode")
        if self.answer is not None and not any(self.answer.search(a.data) for a in reply.answers):
            got = ", ".join(a.data for a in reply.answers) or "no answer"
            return ProbeResult(
                False, f"{what}, no answer matches {self.answer.pattern!r} ({got})", took, "AnswerMismatch"
            )
        return ProbeResult(True, f"{what}, {len(reply.answers)} answers", took)
