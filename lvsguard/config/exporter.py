"""Section ``exporter``: the Prometheus exporter (docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from yaml.nodes import Node, SequenceNode

from lvsguard.config.schema import Context, Invalid, Key, Schema, choice, is_text, kind_of, list_of, listen, text
from lvsguard.config.services import service_refs
from lvsguard.defaults import EXPORTER_LISTEN
from lvsguard.errors import UnknownBackendLabels
from lvsguard.ipvs import SOURCES
from lvsguard.labels import BACKEND_LABELS, parse_backend_labels
from lvsguard.model import ServiceKey

DEFAULT_LISTEN = EXPORTER_LISTEN


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    """Section ``exporter``: the Prometheus exporter."""

    listen: str = DEFAULT_LISTEN  # HOST:PORT, [IPv6]:PORT or :PORT
    ipvs_source: str = "auto"  # auto (netlink, procfs when not permitted), netlink or procfs
    backend_labels: tuple[str, ...] = BACKEND_LABELS  # labels kept on ipvs_backend_* series, in output order
    services: tuple[ServiceKey, ...] = ()  # allow-list of services to export; () exports every service


def backend_labels(node: Node, path: str, ctx: Context) -> tuple[str, ...]:
    """A list of label names, or one comma-separated string as node_exporter's ``--collector.ipvs.backend-labels``.

    Validated by the exporter's own ``parse_backend_labels``, so the config
    accepts what the exporter does, with node_exporter's error message.
    """
    if isinstance(node, SequenceNode):
        labels: Sequence[str] = list_of(text)(node, path, ctx)
    elif is_text(node):
        labels = node.value.split(",")
    else:
        raise Invalid(f"must be a list of label names or one comma-separated string, got {kind_of(node)}")
    try:
        return parse_backend_labels(labels)
    except UnknownBackendLabels as exc:
        raise Invalid(str(exc)) from None


EXPORTER = Schema(
    ExporterConfig,
    {
        "listen": Key(
            listen,
            doc="Address of the HTTP server (`/metrics`): `HOST:PORT`, `[IPv6]:PORT` or `:PORT`; port 0 picks a free port; `--listen` wins.",
        ),
        "ipvs_source": Key(
            choice(SOURCES),
            doc="How the table is read: netlink (needs CAP_NET_ADMIN, everything), procfs (world-readable, fewer fields) or auto (netlink, procfs when not permitted).",
        ),
        "backend_labels": Key(
            backend_labels,
            doc="Labels kept on the `ipvs_backend_*` series, as node_exporter's `--collector.ipvs.backend-labels`; real servers with equal kept labels are summed.",
        ),
        "services": Key(
            service_refs,
            doc="Allow-list: only these services are exported, by name (from `services`) or as `TCP 192.0.2.10:80`; empty exports every service.",
        ),
    },
)
