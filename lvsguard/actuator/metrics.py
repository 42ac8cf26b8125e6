"""The actuator's own ``/metrics``: what it did, what it refused, what it holds out.

Counters live in a registry per app (tests build several apps). The quarantine
gauge is collected at scrape time from the ledger, so it is right after a
restart and never drifts from what the ledger says.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lvsguard.actuator.actions import Actions
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import Names
from lvsguard.actuator.states import BackendState, Result, Source
from lvsguard.actuator.targets import Target
from lvsguard.labels import mark_label
from lvsguard.model import FWM, RealServerKey, ServiceKey

BACKEND_LABELS = (
    "local_address",
    "local_port",
    "proto",
    "local_mark",
    "remote_address",
    "remote_port",
    "service",
    "real_server",
)
"""node_exporter's IPVS label names plus the config names, as the exporter's ``ipvs_backend_*``."""


class QuarantineCollector(Collector):
    """``lvsguard_quarantined`` (1 per real server held out) and ``lvsguard_holds`` from the ledger."""

    def __init__(self, ledger_path: str, names: Names):
        self.ledger_path = ledger_path
        self.names = names

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "lvsguard_quarantined", "Real servers the actuator holds out (weight 0).", labels=BACKEND_LABELS
        )
        yield GaugeMetricFamily(
            "lvsguard_holds", "Active holds per real server (alerts and manual).", labels=(*BACKEND_LABELS, "kind")
        )

    def collect(self) -> Iterator[Metric]:
        quarantined = GaugeMetricFamily(
            "lvsguard_quarantined", "Real servers the actuator holds out (weight 0).", labels=BACKEND_LABELS
        )
        holds = GaugeMetricFamily(
            "lvsguard_holds", "Active holds per real server (alerts and manual).", labels=(*BACKEND_LABELS, "kind")
        )
        ledger = Ledger.open(self.ledger_path, create=False)
        try:
            for backend in ledger.backends():
                if backend.state == BackendState.OUT:
                    quarantined.add_metric(self._labels(backend.target), 1)
            counts: dict[tuple[str, ...], int] = {}
            for hold in ledger.active_holds():
                key = (*self._labels(hold.target), hold.kind)
                counts[key] = counts.get(key, 0) + 1
            for key, count in counts.items():
                holds.add_metric(key, count)
        finally:
            ledger.close()
        yield quarantined
        yield holds

    def _labels(self, target: Target) -> tuple[str, ...]:
        return backend_labels(self.names, target.service, target.real_server)


QUEUED_HELP = (
    "Shared alerts' holds and resolves this director applied while etcd could not be reached, not yet written to "
    "etcd (cluster.share)."
)


class ClusterQueueCollector(Collector):
    """``lvsguard_cluster_queued``: what waits in the ledger's queue for etcd (``cluster.store: etcd`` only)."""

    def __init__(self, ledger_path: str):
        self.ledger_path = ledger_path

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("lvsguard_cluster_queued", QUEUED_HELP, labels=("op",))

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("lvsguard_cluster_queued", QUEUED_HELP, labels=("op",))
        ledger = Ledger.open(self.ledger_path, create=False)
        try:
            queued = ledger.cluster_queue()
        finally:
            ledger.close()
        for op in ("take", "release"):
            family.add_metric([op], sum(1 for q in queued if q.op == op))
        yield family


def backend_labels(names: Names, svc: ServiceKey, rs: RealServerKey | None) -> tuple[str, ...]:
    """The values of ``BACKEND_LABELS``; a service alone (``rs`` None) has empty real server labels."""
    fwm = svc.protocol == FWM
    return (
        "" if fwm else svc.address,
        "0" if fwm else str(svc.port),
        svc.protocol,
        mark_label(svc.fwmark) if fwm else "",
        rs.address if rs is not None else "",
        str(rs.port) if rs is not None else "",
        names.service_name(svc),
        names.real_server_name(svc, rs) if rs is not None else "",
    )


DRIFT_HELP = "Managed table entries changed by hand (1 per entry and field while it differs from the config)."


class DriftCollector(Collector):
    """``lvsguard_table_drift``: what the last drift check found (``table.drift_interval``), gone once fixed."""

    def __init__(self, actions: Actions):
        self.actions = actions

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("lvsguard_table_drift", DRIFT_HELP, labels=(*BACKEND_LABELS, "field"))

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("lvsguard_table_drift", DRIFT_HELP, labels=(*BACKEND_LABELS, "field"))
        names = self.actions.settings.names
        for drift in list(self.actions.table.drift.values()):  # replaced whole by the check: a safe snapshot
            family.add_metric((*backend_labels(names, drift.service, drift.real_server), drift.field), 1)
        yield family


ZERO_ACTIONS = ("quarantine", "restore", "drain")
ZERO_RESULTS = (Result.APPLIED, Result.REFUSED, Result.ERROR)
ZERO_SOURCES = (Source.ALERTMANAGER, Source.PASSIVE, Source.API)
ZERO_REFUSALS = (
    ("quarantine", "quorum"),
    ("quarantine", "rate_limit"),
    ("quarantine", "hold_down"),
    ("drain", "quorum"),
)
"""The series that exist at 0 from the start: ``increase()`` and alert rules then see the
first quarantine, refusal or error, not only the second (a counter's first sample
creates its series, it is no increase)."""


class ActuatorMetrics:
    """Counters the action layer and the webhook update (implements ``actions.Recorder``)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], Counter] = {}
        self.actions = Counter(
            "lvsguard_actions_total",
            "Actions decided by the actuator, by outcome.",
            ("action", "result", "source"),
            registry=registry,
        )
        self.refusals = Counter(
            "lvsguard_refusals_total",
            "Actions the safety rules refused, by reason.",
            ("action", "reason"),
            registry=registry,
        )
        self.failovers = Counter(
            "lvsguard_failover_requested_total",
            "Times this actuator asked keepalived to hand the VIPs over.",
            registry=registry,
        )
        self.webhook = Counter(
            "lvsguard_webhook_requests_total",
            "Alertmanager webhook requests, by HTTP status.",
            ("status",),
            registry=registry,
        )
        for action in ZERO_ACTIONS:
            for result in ZERO_RESULTS:
                for source in ZERO_SOURCES:
                    self.actions.labels(action, result, source)
        self.actions.labels("table_drift", Result.DRIFT, Source.ACTUATOR)  # the first hand change is an increase
        for action, reason in ZERO_REFUSALS:
            self.refusals.labels(action, reason)
        for status in ("200", "400"):
            self.webhook.labels(status)

    def action(self, action: str, result: str, source: str) -> None:
        self._child(self.actions, action, result, source).inc()

    def refusal(self, action: str, reason: str) -> None:
        self._child(self.refusals, action, reason).inc()

    def webhook_reply(self, status: int) -> None:
        self._child(self.webhook, str(status)).inc()

    def _child(self, metric: Counter, *labels: str) -> Counter:
        """The labelled child, looked up once: ``labels()`` takes the metric's lock on every call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def failover(self) -> None:
        self.failovers.inc()
