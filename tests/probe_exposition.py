"""Both ways the probe metrics reach a scrape, as comparable samples (for the tests that hold them equal)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.probes.metrics import ProbeMetrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fast_and_slow(metrics: ProbeMetrics) -> tuple[Samples, Samples]:
    """The samples of the fast text path (``chunks``) and of prometheus-client's registry path (``families``)."""

    class Wrap:
        def collect(self) -> Any:
            return metrics.families()

    registry = CollectorRegistry()
    registry.register(Wrap())  # type: ignore[arg-type]
    fast = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families("".join(metrics.chunks()))
        for s in f.samples
    }
    slow = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples}
    return fast, slow
