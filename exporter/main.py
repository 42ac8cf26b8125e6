"""``lvsguard exporter``: wire the config to the reader, the collector and the HTTP server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.server import run
from exporter.source import ExporterReader
from lvsguard.ipvs.addresses import local_addresses

if TYPE_CHECKING:
    from lvsguard.config import Config


def serve(config: Config, *, listen: str, netns: str | None) -> None:
    """Serve the IPVS metrics of ``netns`` on ``listen`` until SIGTERM/SIGINT.

    Names of services and real servers, ``backend_labels``, the ``services``
    allow-list and ``ipvs_source`` come from ``config``.
    """
    options = config.exporter
    run(
        lambda: ExporterReader(netns, options.ipvs_source),
        listen,
        backend_labels=options.backend_labels,
        services=options.services or None,
        names=config,
        addresses=lambda: local_addresses(netns),
    )
