"""``prometheus``: a PromQL query whose value is the real server's weight percentage.

The agents are then the node_exporter or windows_exporter that the real
servers already run, e.g. ``100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{mode!="idle",instance="{address}:9100"}[1m])))``.
``{address}`` and ``{port}`` in the query become the target's. The query must
return exactly one sample; no sample, several, NaN or an infinity is a failed check.

Prometheus out of reach (connection refused or reset, no route, a 5xx while
it starts or stops) says nothing about the real server: the check then holds
its last answer from Prometheus for that real server (its verdict, and no new
weight, so the weight last published stays), says so in the result's message
with the error ``PrometheusUnreachable``, and logs ``prometheus_unreachable``
once and ``prometheus_reachable`` when Prometheus answers again. With no answer
yet (Prometheus down since the start) the check passes without a weight: a
monitoring outage must not take real servers out.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from lvsguard.exporter.probes import httpclient
from lvsguard.exporter.probes.http import tls_context
from lvsguard.exporter.probes.result import ProbeResult, Target, guarded
from lvsguard.logs import event

log = logging.getLogger(__name__)
UNREACHABLE = "PrometheusUnreachable"


def value_of(body: bytes) -> float:
    """The one sample's value of an instant-query answer (ValueError says what is wrong)."""
    try:
        answer = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"answer is not JSON: {exc}") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise ValueError(f"query failed: {answer.get('error', answer) if isinstance(answer, dict) else answer!r}")
    data = answer.get("data", {})
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        raw = result[1]
    elif kind == "vector" and isinstance(result, list):
        if len(result) != 1:
            raise ValueError(f"query returned {len(result)} samples, expected 1")
        raw = result[0]["value"][1]
    else:
        raise ValueError(f"unexpected result type {kind!r}")
    value = float(raw)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"query returned {raw}: not a weight percentage")
    return value


@dataclass(frozen=True, slots=True)
class PrometheusChecker:
    kind = "prometheus"
    url: str  # http(s)://prometheus:9090
    query: str
    answers: dict[Target, ProbeResult] = field(default_factory=dict, compare=False, repr=False)
    """The last result Prometheus gave per target: held while it is out of reach."""
    out_of_reach: set[str] = field(default_factory=set, compare=False, repr=False)
    """Holds ``url`` while Prometheus is out of reach (so that the change is logged once)."""

    async def check(self, target: Target) -> ProbeResult:
        result = await guarded(f"prometheus {self.url}", lambda: self._query(target))
        if result.error == UNREACHABLE:
            return result
        self.answers[target] = result
        if self.url in self.out_of_reach:
            self.out_of_reach.discard(self.url)
            event(log, logging.INFO, "prometheus_reachable", url=self.url)
        return result

    def _held(self, target: Target, reason: str, took: float) -> ProbeResult:
        """The result while Prometheus is out of reach: the last answer's verdict, no weight, and why."""
        if self.url not in self.out_of_reach:
            self.out_of_reach.add(self.url)
            event(
                log,
                logging.WARNING,
                "prometheus_unreachable",
                url=self.url,
                reason=reason,
                holding="the last answer and weight of each real server",
            )
        last = self.answers.get(target)
        if last is None:
            return ProbeResult(
                True,
                f"prometheus {self.url} out of reach ({reason}); no answer yet, the weight is left as it is",
                took,
                UNREACHABLE,
            )
        return ProbeResult(
            last.ok,
            f"prometheus {self.url} out of reach ({reason}); holding the last answer: {last.message}",
            took,
            UNREACHABLE,
        )

    async def _query(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        query = self.query.replace("{address}", target.address).replace("{port}", str(target.port))
        parts = urlsplit(self.url)
        tls = tls_context(True) if parts.scheme == "https" else None
        port = parts.port or (443 if tls else 80)
        path = f"{parts.path.rstrip('/')}/api/v1/query?query={quote(query)}"
        try:
            answer = await httpclient.request(parts.hostname or "", port, path=path, tls=tls)
        except (OSError, EOFError) as exc:  # refused, reset, no route: nothing is known about the real server
            return self._held(target, str(exc) or type(exc).__name__, time.perf_counter() - started)
        took = time.perf_counter() - started
        if answer.status >= 500:  # Prometheus starting, stopping or failing
            return self._held(target, f"status {answer.status}", took)
        if answer.status != 200:
            return ProbeResult(False, f"prometheus {self.url}: status {answer.status}", took, "UnexpectedStatus")
        value = value_of(answer.body)
        percent = max(0.0, value)
        return ProbeResult(True, f"prometheus {self.url}: {value:g}%", took, weight_percent=percent)
