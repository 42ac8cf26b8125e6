"""The passive detector's series: failures by reason, verdicts, hold-downs; both exposition paths alike."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lvsguard.config import loads
from lvsguard.exporter.passive.conntable import REFUSED, TIMEOUT, PassCounts
from lvsguard.exporter.passive.metrics import PassiveMetrics
from lvsguard.exporter.passive.rule import Verdict
from lvsguard.model import RealServerKey, ServiceKey
from tests.exposition_oracle import Families, passive_families

SVC = ServiceKey.parse("TCP 192.0.2.10:80")
RS1, RS2 = RealServerKey.parse("10.0.1.2:8080"), RealServerKey.parse("10.0.1.3:8080")
NAMES = loads(
    'services:\n  - name: web\n    service: "TCP 192.0.2.10:80"\n'
    '    real_servers: [{name: web1, address: "10.0.1.2:8080"}, {name: web2, address: "10.0.1.3:8080"}]\n'
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def both(metrics: PassiveMetrics) -> tuple[Samples, Samples]:
    """The samples of the exporter's text and of the oracle's families (``tests/exposition_oracle.py``)."""
    registry = CollectorRegistry()
    registry.register(Families(passive_families(metrics)))
    fast = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families("".join(metrics.chunks()))
        for s in f.samples
    }
    slow = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples}
    return fast, slow


def labels(rs: str, address: str, **extra: str) -> tuple[tuple[str, str], ...]:
    base = {
        "local_address": "192.0.2.10",
        "local_port": "80",
        "local_mark": "",
        "proto": "TCP",
        "service": "web",
        "remote_address": address,
        "remote_port": "8080",
        "real_server": rs,
        **extra,
    }
    return tuple(sorted(base.items()))


def test_failures_verdicts_and_holddowns_on_both_paths() -> None:
    now = [100.0]
    metrics = PassiveMetrics(names=NAMES, clock=lambda: now[0])
    counts = PassCounts(entries=42)
    counts.attempts[(SVC, RS1)] += 3
    counts.attempts[(SVC, RS2)] += 5
    counts.failures[REFUSED][(SVC, RS1)] += 2
    counts.failures[TIMEOUT][(SVC, RS1)] += 1
    verdict = Verdict(SVC, RS1, REFUSED, 3, 3, 1.0, 0.0, 5.0, 100.0)
    metrics.record(counts, [verdict], {(SVC, RS1): 105.0})
    now[0] = 101.5
    fast, slow = both(metrics)
    assert fast == slow
    assert fast == {
        ("lvs_backend_handshake_failures_total", labels("web1", "10.0.1.2", reason="refused")): 2,
        ("lvs_backend_handshake_failures_total", labels("web1", "10.0.1.2", reason="timeout")): 1,
        ("lvs_backend_handshake_failures_total", labels("web2", "10.0.1.3", reason="refused")): 0,
        ("lvs_backend_handshake_failures_total", labels("web2", "10.0.1.3", reason="timeout")): 0,
        ("lvs_backend_passive_verdicts_total", labels("web1", "10.0.1.2")): 1,
        ("lvs_backend_passive_verdicts_total", labels("web2", "10.0.1.3")): 0,
        ("lvs_backend_passive_holddown_seconds", labels("web1", "10.0.1.2")): 3.5,
        ("lvs_backend_passive_holddown_seconds", labels("web2", "10.0.1.3")): 0,
        ("lvsguard_passive_passes_total", ()): 1,
        ("lvsguard_passive_table_entries", ()): 42,
    }
    now[0] = 200.0
    assert both(metrics)[0][("lvs_backend_passive_holddown_seconds", labels("web1", "10.0.1.2"))] == 0
