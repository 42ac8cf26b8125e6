"""``prometheus``: a PromQL query whose value is the real server's weight percentage.

The agents are then the node_exporter or windows_exporter that the real
servers already run, e.g. ``100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{mode!="idle",instance="{address}:9100"}[1m])))``.
``{address}`` and ``{port}`` in the query become the target's. The query must
return exactly one sample; no sample, several, or NaN is a failed check.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from exporter.probes import httpclient
from exporter.probes.http import tls_context
from exporter.probes.result import ProbeResult, Target, guarded


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
    if math.isnan(value):
        raise ValueError("query returned NaN")
    return value


@dataclass(frozen=True, slots=True)
class PrometheusChecker:
    kind = "prometheus"
    url: str  # http(s)://prometheus:9090
    query: str

    async def check(self, target: Target) -> ProbeResult:
        return await guarded(f"prometheus {self.url}", lambda: self._query(target))

    async def _query(self, target: Target) -> ProbeResult:
        started = time.perf_counter()
        query = self.query.replace("{address}", target.address).replace("{port}", str(target.port))
        parts = urlsplit(self.url)
        tls = tls_context(True) if parts.scheme == "https" else None
        port = parts.port or (443 if tls else 80)
        path = f"{parts.path.rstrip('/')}/api/v1/query?query={quote(query)}"
        answer = await httpclient.request(parts.hostname or "", port, path=path, tls=tls)
        took = time.perf_counter() - started
        if answer.status != 200:
            return ProbeResult(False, f"prometheus {self.url}: status {answer.status}", took, "UnexpectedStatus")
        value = value_of(answer.body)
        percent = max(0.0, value)
        return ProbeResult(True, f"prometheus {self.url}: {value:g}%", took, weight_percent=percent)
