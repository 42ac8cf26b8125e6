"""The passive detector's series on ``/metrics``: failed handshakes, verdicts and hold-downs per real server.

Every series carries all backend labels (``BACKEND_LABELS``, as the probe
series), so it joins with ``ipvs_backend_*``; the failures add ``reason``
(``refused``, ``timeout``). A real server gets its series the first time the
detector sees a connection of it, both reasons at once, so ``rate()`` has a
zero to start from. ``chunks()`` renders them as Prometheus text for the
exporter's ``/metrics``; the tests hold that text to prometheus_client's
families of the same state (``tests/exposition_oracle.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from lvsguard.exporter.collector import BACKEND_LABELS, COUNTER, GAUGE, MetricDef, Names, NoNames, backend_label_values
from lvsguard.exporter.exposition import format_value, header, label_string
from lvsguard.exporter.passive.conntable import REASONS, Backend, PassCounts
from lvsguard.exporter.passive.rule import Verdict

REASON = "reason"
FAILURE_LABELS: tuple[str, ...] = BACKEND_LABELS + (REASON,)

HANDSHAKE_FAILURES = MetricDef(
    "lvs_backend_handshake_failures_total",
    COUNTER,
    "Client handshakes to the real server that failed, seen in the connection table: refused (closed before "
    "established) or timeout (SYN_RECV past the handshake timeout).",
)
VERDICTS = MetricDef(
    "lvs_backend_passive_verdicts_total",
    COUNTER,
    "Passive verdicts on the real server: its handshakes failed far more than its peers' in the same service.",
)
HOLDDOWN = MetricDef(
    "lvs_backend_passive_holddown_seconds",
    GAUGE,
    "Seconds left of the real server's passive hold-down; 0 when none runs. It doubles on repeated verdicts.",
)
PASSES = MetricDef(
    "lvsguard_passive_passes_total", COUNTER, "Complete passes of the passive detector over the connection table."
)
ENTRIES = MetricDef(
    "lvsguard_passive_table_entries",
    GAUGE,
    "Entries of the connection table in the passive detector's last pass (source conntrack: handshakes under way).",
)
ALL_METRICS = (HANDSHAKE_FAILURES, VERDICTS, HOLDDOWN, PASSES, ENTRIES)


@dataclass(slots=True)
class _Series:
    labels: tuple[str, ...]
    text: str  # the rendered {..} backend label string
    failures: list[int]  # by REASONS
    verdicts: int = 0


class PassiveMetrics:
    """The detector's counters; its thread writes, scrapes read. ``clock`` is the rule's (monotonic seconds)."""

    def __init__(self, names: Names | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.names: Names = names if names is not None else NoNames()
        self.clock = clock
        self._series: dict[Backend, _Series] = {}
        self._holddowns: dict[Backend, float] = {}
        self._passes = 0
        self._entries = 0
        self._lock = threading.Lock()

    def _get(self, backend: Backend) -> _Series:
        series = self._series.get(backend)
        if series is None:
            values = backend_label_values(*backend, self.names)
            series = self._series[backend] = _Series(values, label_string(BACKEND_LABELS, values), [0] * len(REASONS))
        return series

    def record(self, counts: PassCounts, verdicts: list[Verdict], held_until: Mapping[Backend, float]) -> None:
        """One pass: its failures, the verdicts it gave and when each hold-down ends (``Judge.held_until``)."""
        with self._lock:
            self._passes += 1
            self._entries = counts.entries
            for backend in counts.attempts:
                self._get(backend)
            for i, reason in enumerate(REASONS):
                for backend, n in counts.failures[reason].items():
                    self._get(backend).failures[i] += n
            for v in verdicts:
                self._get((v.service, v.real_server)).verdicts += 1
            self._holddowns = dict(held_until)

    def _snapshot(self) -> tuple[list[tuple[Backend, _Series, list[int], int]], dict[Backend, float], int, int]:
        now = self.clock()
        with self._lock:
            rows = [(k, s, list(s.failures), s.verdicts) for k, s in self._series.items()]
            left = {k: max(0.0, until - now) for k, until in self._holddowns.items()}
            return rows, left, self._passes, self._entries

    def per_backend(self) -> dict[Backend, tuple[dict[str, int], int, float]]:
        """Per real server seen: its failed handshakes by reason, its verdicts and the seconds left of its hold-down.

        What the SNMP agent serves in ``lvsgRsTable`` (``exporter.snmp.feeds.PassiveFeed``).
        """
        rows, holds, _, _ = self._snapshot()
        return {k: (dict(zip(REASONS, counts)), n, holds.get(k, 0.0)) for k, _, counts, n in rows}

    def chunks(self) -> Iterator[str]:
        """The passive series as Prometheus text (the exporter's ``/metrics``)."""
        rows, holds, passes, entries = self._snapshot()
        out = [header(HANDSHAKE_FAILURES)]
        for _, series, counts, _ in rows:
            head = series.text[:-1] + f',{REASON}="'
            out += [f'{HANDSHAKE_FAILURES.name}{head}{r}"}} {c}\n' for r, c in zip(REASONS, counts)]
        out.append(header(VERDICTS))
        out += [f"{VERDICTS.name}{s.text} {n}\n" for _, s, _, n in rows]
        out.append(header(HOLDDOWN))
        out += [f"{HOLDDOWN.name}{s.text} {format_value(holds.get(k, 0.0))}\n" for k, s, _, _ in rows]
        out.append(header(PASSES) + f"{PASSES.name} {passes}\n")
        out.append(header(ENTRIES) + f"{ENTRIES.name} {entries}\n")
        yield "".join(out)
