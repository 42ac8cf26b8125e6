"""``lvsguard exporter``: wire the config to the reader, the collector, the HTTP server and the SNMP agent."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Callable

from exporter.server import Reloadable, run
from exporter.source import ExporterReader
from lvsguard.errors import LvsguardError
from lvsguard.ipvs.addresses import local_addresses
from lvsguard.logs import event

if TYPE_CHECKING:
    from exporter.collector import ExtraFamilies
    from exporter.probes.runner import ProbeRunner
    from exporter.snmp.runner import RunningAgent
    from lvsguard.config import Config

log = logging.getLogger("lvsguard.exporter")


def serve(config: Config, *, listen: str, netns: str | None, snmp_listen: str | None = None) -> None:
    """Serve the IPVS metrics of ``netns`` on ``listen`` until SIGTERM/SIGINT.

    Names of services and real servers, ``backend_labels``, the ``services``
    allow-list and ``ipvs_source`` come from ``config``. With an ``snmp``
    section the SNMP agent serves the same table (its own reader, so a slow
    walk never holds up a scrape); ``snmp_listen`` overrides its address.
    """
    options = config.exporter
    agent = start_snmp(config, netns, snmp_listen)
    probes = start_probes(config, netns)
    try:
        run(
            lambda: ExporterReader(netns, options.ipvs_source),
            listen,
            backend_labels=options.backend_labels,
            services=options.services or None,
            names=config,
            addresses=lambda: local_addresses(netns),
            reload=reloader(config, listen=listen, netns=netns) if config.file else None,
            probes=extras(probes, config),
        )
    finally:
        if probes is not None:
            probes.stop()
        if agent is not None:
            agent.stop()


def reloader(running: Config, *, listen: str, netns: str | None) -> Callable[[], Reloadable]:
    """SIGHUP: read ``running.file`` again; names, backend labels and the allow-list change at once.

    A bad file raises ConfigError (every problem with its file:line:key) and
    the server keeps the running config. Keys that need new sockets or
    threads (listen, ipvs_source, netns, keepalived_fifo, snmp, probes) are
    logged as needing a restart and keep their running values; the probes keep
    running through a reload.
    """

    def load() -> Reloadable:
        from lvsguard import config as config_module

        new = config_module.load(running.file)
        needs_restart = [
            key
            for key, before, after in (
                ("exporter.listen", running.exporter.listen, new.exporter.listen),
                ("exporter.ipvs_source", running.exporter.ipvs_source, new.exporter.ipvs_source),
                ("director.netns", running.director.netns, new.director.netns),
                ("snmp", running.snmp, new.snmp),
                ("probes", running.probes, new.probes),
                ("director.keepalived_fifo", running.director.keepalived_fifo, new.director.keepalived_fifo),
            )
            if before != after
        ]
        if needs_restart:
            event(log, logging.WARNING, "reload_needs_restart", keys=",".join(needs_restart), listen=listen, netns=netns or "-")
        return Reloadable(backend_labels=new.exporter.backend_labels, services=new.exporter.services or None, names=new)

    return load


def start_snmp(config: Config, netns: str | None, listen: str | None) -> RunningAgent | None:
    """Start the SNMP agent of the config's ``snmp`` section in a thread; None without one."""
    if config.snmp is None:
        if listen:
            raise LvsguardError("--snmp-listen needs an 'snmp' section in the config (communities or v3 users)")
        return None
    from exporter.snmp.runner import start_in_thread
    from exporter.snmp.snapshot import reader_provider

    settings = dataclasses.replace(config.snmp, listen=listen) if listen else config.snmp
    agent = start_in_thread(settings, reader_provider(ExporterReader(netns, config.exporter.ipvs_source), names=config))
    event(log, logging.INFO, "snmp_agent_started", listen=settings.listen, v2c=bool(settings.communities),
          v3_users=",".join(u.name for u in settings.users) or "-", traps=",".join(settings.trap_targets) or "-")  # fmt: skip
    return agent


def extras(probes: ProbeRunner | None, config: Config) -> ExtraFamilies | None:
    """The families served after the IPVS ones: the probes' and keepalived's VRRP state (``director.keepalived_fifo``)."""
    fifo = None
    if config.director.keepalived_fifo:
        from exporter.keepalived import KeepalivedFifo

        fifo = KeepalivedFifo(config.director.keepalived_fifo)
        fifo.start()
    metrics = probes.engine.metrics if probes is not None else None
    if fifo is None:
        return metrics
    from exporter.keepalived import Extras

    return Extras(metrics, fifo)


def start_probes(config: Config, netns: str | None) -> ProbeRunner | None:
    """Start the health checks of the ``probes`` section (on by default: tcp on every TCP real server); None when disabled."""
    if not config.probes.enabled:
        return None
    from exporter.probes.metrics import ProbeMetrics
    from exporter.probes.runner import start

    return start(config, netns, ProbeMetrics(names=config))
