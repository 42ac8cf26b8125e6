"""prometheus_client's rendering of the exporter's metrics: the oracle that the exporter's own text is held to.

The exporter has one production path to ``/metrics``: it writes the text itself
(``exporter.exposition.Exposition``, ``ProbeMetrics.chunks``,
``KeepalivedFifo.chunks``), because prometheus_client's ``generate_latest`` costs
about 10 µs a sample (8 s for 100 000 real servers) and writes counters through
float. The helpers here build the same families from the same state with
prometheus_client's metric families, the library's way, so that the tests can
compare the two sample for sample. They live in the tests, not beside the
production renderer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from lvsguard.exporter.collector import (
    ALL_METRICS,
    BACKEND_LABELS,
    BACKEND_METRICS,
    COUNTER,
    EXPORTER_INFO,
    EXPORTER_INFO_LABELS,
    SERVICE_INFO,
    SERVICE_INFO_LABELS,
    SERVICE_LABELS,
    SERVICE_METRICS,
    SYNC_DAEMON_LABELS,
    SYNC_DAEMON_UP,
    VIP_LABELS,
    VIP_OWNED,
    Family,
    IPVSCollector,
    MetricDef,
    Scrape,
    group,
    service_info_values,
    service_label_values,
    summed,
)
from lvsguard.exporter.keepalived import PRIORITY, STATE, STATES, TRANSITIONS, Extras, KeepalivedFifo
from lvsguard.exporter.passive.conntable import REASONS
from lvsguard.exporter.passive.metrics import (
    ENTRIES,
    FAILURE_LABELS,
    HANDSHAKE_FAILURES,
    HOLDDOWN,
    PASSES,
    VERDICTS,
    PassiveMetrics,
)
from lvsguard.exporter.probes.metrics import (
    BUCKETS,
    CHANGES,
    DURATION,
    HEALTHY,
    LAST_CHANGE,
    PROBE_LABELS,
    SUCCESS,
    ProbeMetrics,
)
from lvsguard.model import Table

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class ClientCollector(Collector):
    """An ``IPVSCollector``'s scrapes as prometheus_client families (``registry.register(ClientCollector(c))``)."""

    def __init__(self, collector: IPVSCollector) -> None:
        self.collector = collector

    def describe(self) -> Iterator[Metric]:
        """Every family, without samples: registering does not read the kernel."""
        for metric in ALL_METRICS:
            yield _family(metric, self.labels_of(metric))

    def collect(self) -> Iterator[Metric]:
        collector = self.collector
        scrape = collector.scrape()
        for fam in scrape.head():
            yield _filled(fam)
        table = scrape.table
        if table is not None and table.services:
            yield from self._service_families(scrape, table)
            if table.real_server_count:
                yield from self._backend_families(scrape, table)
        for fam in scrape.tail():
            yield _filled(fam)
        if collector.probes is not None:
            yield from extra_families(collector.probes)
        yield _filled(scrape.duration())

    def labels_of(self, metric: MetricDef) -> tuple[str, ...]:
        """The label names of ``metric``'s series with the collector's options."""
        if metric in BACKEND_METRICS:
            return self.collector.backend_labels
        if metric in SERVICE_METRICS:
            return SERVICE_LABELS
        return {
            EXPORTER_INFO.name: EXPORTER_INFO_LABELS,
            SERVICE_INFO.name: SERVICE_INFO_LABELS,
            SYNC_DAEMON_UP.name: SYNC_DAEMON_LABELS,
            VIP_OWNED.name: VIP_LABELS,
        }.get(metric.name, ())

    def _service_families(self, scrape: Scrape, table: Table) -> Iterator[Metric]:
        services = list(table.services)
        keys = [service_label_values(s.key, self.collector.names.service_name(s.key)) for s in services]
        info = _family(SERVICE_INFO, SERVICE_INFO_LABELS)
        for row in dict.fromkeys(k + service_info_values(s) for k, s in zip(keys, services)):
            info.add_metric(row, 1)
        yield info
        yield from _summed_families(scrape, SERVICE_METRICS, SERVICE_LABELS, keys, services)

    def _backend_families(self, scrape: Scrape, table: Table) -> Iterator[Metric]:
        keys = [self.collector.backend_values(s.key, rs.key) for s in table.services for rs in s.real_servers]
        servers = [rs for s in table.services for rs in s.real_servers]
        yield from _summed_families(scrape, BACKEND_METRICS, self.collector.backend_labels, keys, servers)


def _summed_families(
    scrape: Scrape,
    metrics: Sequence[MetricDef],
    labels: tuple[str, ...],
    keys: list[tuple[str, ...]],
    objects: Sequence[object],
) -> Iterator[Metric]:
    grouped = group(keys, objects)
    for metric in metrics:
        if not scrape.wants(metric):
            continue
        fam = _family(metric, labels)
        if grouped is None:
            rows = zip(keys, map(metric.value, objects))
        else:
            rows = zip(grouped[0], summed(metric, grouped[1]))
        for label_values, value in rows:
            fam.add_metric(label_values, value)
        yield fam


def _family(metric: MetricDef, labels: Sequence[str]) -> CounterMetricFamily | GaugeMetricFamily:
    cls = CounterMetricFamily if metric.type == COUNTER else GaugeMetricFamily
    return cls(metric.name, metric.help, labels=list(labels))


def _filled(fam: Family) -> CounterMetricFamily | GaugeMetricFamily:
    out = _family(fam.metric, fam.labels)
    for values, value in fam.rows:
        out.add_metric(list(values), value)
    return out


def extra_families(extras: object) -> Iterator[Metric]:
    """The families of what the exporter serves after the IPVS ones: probes, keepalived, passive, or several (``Extras``)."""
    if isinstance(extras, Extras):
        for source in extras.sources:
            yield from extra_families(source)
    elif isinstance(extras, ProbeMetrics):
        yield from probe_families(extras)
    elif isinstance(extras, KeepalivedFifo):
        yield from vrrp_families(extras)
    elif isinstance(extras, PassiveMetrics):
        yield from passive_families(extras)
    else:
        raise TypeError(f"no oracle for {type(extras).__name__}")


def probe_families(metrics: ProbeMetrics) -> Iterator[Metric]:
    """The probe series as prometheus_client families, from the state ``ProbeMetrics.chunks`` renders."""
    with metrics._lock:
        series = list(metrics._series.values())
        rows = [(s.labels, s.success, s.healthy, s.changes, s.changed_at) for s in series]
        hists = [(s.labels, list(s.buckets), s.total, s.count) for s in series if s.shared is None]
        hists += [(g.labels, list(g.buckets), g.total, g.count) for g in metrics._shared.values()]
    if not rows:
        return
    labels = list(PROBE_LABELS)
    success = GaugeMetricFamily(SUCCESS[0], SUCCESS[2], labels=labels)
    duration = HistogramMetricFamily(DURATION[0], DURATION[2], labels=labels)
    healthy = GaugeMetricFamily(HEALTHY[0], HEALTHY[2], labels=labels)
    changes = CounterMetricFamily(CHANGES[0], CHANGES[2], labels=labels)
    last = GaugeMetricFamily(LAST_CHANGE[0], LAST_CHANGE[2], labels=labels)
    for values, buckets, total, count in hists:
        cumulative, running = [], 0
        for c in buckets:
            running += c
            cumulative.append(running)
        duration.add_metric(
            list(values), [(repr(b), c) for b, c in zip(BUCKETS, cumulative)] + [("+Inf", count)], total
        )
    for values, ok, up, changed, changed_at in rows:
        success.add_metric(list(values), ok)
        healthy.add_metric(list(values), up)
        changes.add_metric(list(values), changed)
        last.add_metric(list(values), changed_at)
    yield from (success, duration, healthy, changes, last)


def vrrp_families(fifo: KeepalivedFifo) -> Iterator[Metric]:
    """keepalived's VRRP series as prometheus_client families, from the states ``KeepalivedFifo.chunks`` renders."""
    states = fifo.states()
    if not states:
        return
    state = GaugeMetricFamily(STATE[0], STATE[2], labels=("instance", "state"))
    priority = GaugeMetricFamily(PRIORITY[0], PRIORITY[2], labels=("instance",))
    transitions = CounterMetricFamily(TRANSITIONS[0], TRANSITIONS[2], labels=("instance",))
    for instance, s in sorted(states.items()):
        for name in STATES:
            state.add_metric((instance, name), 1 if s.state == name else 0)
        if s.priority is not None:
            priority.add_metric((instance,), s.priority)
        transitions.add_metric((instance,), s.transitions)
    yield from (state, priority, transitions)


def passive_families(metrics: PassiveMetrics) -> Iterator[Metric]:
    """The passive detector's series as prometheus_client families, from the state ``PassiveMetrics.chunks`` renders."""
    rows, holds, passes, entries = metrics._snapshot()
    failures = CounterMetricFamily(HANDSHAKE_FAILURES.name, HANDSHAKE_FAILURES.help, labels=FAILURE_LABELS)
    verdicts = CounterMetricFamily(VERDICTS.name, VERDICTS.help, labels=BACKEND_LABELS)
    holddown = GaugeMetricFamily(HOLDDOWN.name, HOLDDOWN.help, labels=BACKEND_LABELS)
    for backend, series, counts, n in rows:
        for reason, count in zip(REASONS, counts):
            failures.add_metric(series.labels + (reason,), count)
        verdicts.add_metric(series.labels, n)
        holddown.add_metric(series.labels, holds.get(backend, 0.0))
    yield from (failures, verdicts, holddown)
    yield CounterMetricFamily(PASSES.name, PASSES.help, value=passes)
    yield GaugeMetricFamily(ENTRIES.name, ENTRIES.help, value=entries)


class Families(Collector):
    """Some families as a collector, for a registry."""

    def __init__(self, families: Iterator[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return self.families


def client_text(collector: Collector) -> str:
    """prometheus_client's ``generate_latest`` of ``collector`` alone."""
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def fast_and_slow(metrics: ProbeMetrics) -> tuple[Samples, Samples]:
    """The samples of the probe metrics' text (``chunks``) and of the oracle's families."""
    fast = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families("".join(metrics.chunks()))
        for s in f.samples
    }
    registry = CollectorRegistry()
    registry.register(Families(probe_families(metrics)))
    slow = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples}
    return fast, slow
