"""``lvsguard exporter``: wire the config to the reader, the collector, the HTTP server and the SNMP agent."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from lvsguard import webconfig
from lvsguard.errors import LvsguardError
from lvsguard.exporter.probes.metrics import no_report
from lvsguard.exporter.server import Reloadable, run
from lvsguard.exporter.source import ExporterReader
from lvsguard.ipvs.addresses import local_addresses
from lvsguard.logs import event
from lvsguard.webconfig import NO_WEB_CONFIG, WebConfig

if TYPE_CHECKING:
    from lvsguard.config import Config
    from lvsguard.exporter.collector import ExtraFamilies
    from lvsguard.exporter.keepalived import KeepalivedFifo
    from lvsguard.exporter.passive.runner import PassiveDetector
    from lvsguard.exporter.probes.runner import ProbeRunner
    from lvsguard.exporter.snmp.feeds import FeedingProvider
    from lvsguard.exporter.snmp.runner import RunningAgent
    from lvsguard.ipvs import TableReader

log = logging.getLogger(__name__)


def serve(
    config: Config, *, listen: str, netns: str | None, snmp_listen: str | None = None, web: WebConfig = NO_WEB_CONFIG
) -> None:
    """Serve the IPVS metrics of ``netns`` on ``listen`` until SIGTERM/SIGINT.

    Names of services and real servers, ``backend_labels``, the ``services``
    allow-list and ``ipvs_source`` come from ``config``. With an ``snmp``
    section the SNMP agent serves the same table (its own reader, so a slow
    walk never holds up a scrape); ``snmp_listen`` overrides its address.
    ``web`` is the ``--web.config.file``: TLS, basic auth and headers (read again on SIGHUP).
    """
    options = config.exporter
    probes = start_probes(config, netns)
    passive = start_passive(config, netns, probes)
    agent = None
    try:
        fifo = start_fifo(config)
        agent = start_snmp(config, netns, snmp_listen, probes=probes, fifo=fifo, passive=passive)
        run(
            lambda: ExporterReader(netns, options.ipvs_source),
            listen,
            backend_labels=options.backend_labels,
            services=options.services or None,
            names=config,
            addresses=lambda: local_addresses(netns),
            reload=reloader(config, listen=listen, netns=netns) if config.file else None,
            probes=extras(probes, fifo, passive),
            probe_report=probes.engine.metrics.report if probes is not None else no_report,
            web=web,
            reload_web=(lambda: webconfig.load(web.path)) if web.path else None,
        )
    finally:
        if agent is not None:  # first: a stopping engine is no news to send
            agent.stop()
        if probes is not None:
            probes.stop()
        if passive is not None:
            passive.stop()


def reloader(running: Config, *, listen: str, netns: str | None) -> Callable[[], Reloadable]:
    """SIGHUP: read ``running.file`` again; names, backend labels and the allow-list change at once.

    A bad file raises ConfigError (every problem with its file:line:key) and
    the server keeps the running config. Keys that need new sockets or
    threads (listen, ipvs_source, netns, keepalived_fifo, snmp, probes, and
    the ledger path and quorums the SNMP agent took from ``actuator``) are
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
                ("passive", running.passive, new.passive),
                ("director.keepalived_fifo", running.director.keepalived_fifo, new.director.keepalived_fifo),
                *_snmp_actuator_keys(running, new),
            )
            if before != after
        ]
        if needs_restart:
            event(
                log,
                logging.WARNING,
                "reload_needs_restart",
                keys=",".join(needs_restart),
                listen=listen,
                netns=netns or "-",
            )
        return Reloadable(backend_labels=new.exporter.backend_labels, services=new.exporter.services or None, names=new)

    return load


def _snmp_actuator_keys(running: Config, new: Config) -> list[tuple[str, object, object]]:
    """What the SNMP agent took from the ``actuator`` section at start: the ledger it reads and the quorums."""
    if running.snmp is None:
        return []
    from lvsguard.config.actuator import ActuatorSettings

    before, after = running.actuator or ActuatorSettings(), new.actuator or ActuatorSettings()
    return [
        ("actuator.ledger", before.ledger_path, after.ledger_path),
        (
            "actuator.quorum",
            (before.min_healthy, dict(before.service_min_healthy), running.actuator is None),
            (after.min_healthy, dict(after.service_min_healthy), new.actuator is None),
        ),
    ]


def start_snmp(
    config: Config,
    netns: str | None,
    listen: str | None,
    *,
    probes: ProbeRunner | None = None,
    fifo: KeepalivedFifo | None = None,
    passive: PassiveDetector | None = None,
) -> RunningAgent | None:
    """Start the SNMP agent of the config's ``snmp`` section in a thread; None without one.

    Its snapshots are fed (``exporter.snmp.feeds``) by this process's probe
    engine (health, probe results), the actuator's ledger read-only
    (``actuator.ledger``: holds, actors, original weights), keepalived's FIFO
    reader shared with /metrics (the role) and the namespace's addresses (VIPs
    held). Quorums are the actuator's ``min_healthy``/``quorum`` when the
    config has an ``actuator`` section. The passive detector (``passive``)
    fills the real servers' handshake failure, verdict and hold-down columns.
    """
    if config.snmp is None:
        if listen:
            raise LvsguardError("--snmp-listen needs an 'snmp' section in the config (communities or v3 users)")
        return None
    from lvsguard.exporter.snmp.runner import start_in_thread

    settings = dataclasses.replace(config.snmp, listen=listen) if listen else config.snmp
    provider = snmp_provider(config, netns, probes=probes, fifo=fifo, passive=passive)
    agent = start_in_thread(settings, provider)
    event(
        log,
        logging.INFO,
        "snmp_agent_started",
        listen=settings.listen,
        v2c=bool(settings.communities),
        v3_users=",".join(u.name for u in settings.users) or "-",
        traps=",".join(settings.trap_targets) or "-",
        probes="on" if probes is not None else "off",
        ledger=provider.ledger.path if provider.ledger else "-",
        keepalived=config.director.keepalived_fifo or "-",
        passive="on" if passive is not None else "off",
    )
    return agent


def snmp_provider(
    config: Config,
    netns: str | None,
    *,
    probes: ProbeRunner | None,
    fifo: KeepalivedFifo | None,
    passive: PassiveDetector | None = None,
) -> FeedingProvider:
    """The agent's snapshots: the kernel table with the config's names, fed by the probes, the ledger, keepalived and the passive detector."""
    from lvsguard.config.actuator import ActuatorSettings
    from lvsguard.exporter.snmp.feeds import DirectorFeed, FeedingProvider, LedgerFeed, PassiveFeed, ProbeFeed
    from lvsguard.exporter.snmp.snapshot import reader_provider

    actuator = config.actuator
    engine = probes.engine if probes is not None else None
    return FeedingProvider(
        reader_provider(ExporterReader(netns, config.exporter.ipvs_source), names=config),
        probes=ProbeFeed(lambda: engine.jobs) if engine is not None else None,
        ledger=LedgerFeed((actuator or ActuatorSettings()).ledger_path),
        director=DirectorFeed(fifo, lambda: local_addresses(netns), configured=[s.service for s in config.services]),
        quorum=(lambda key, total: actuator.quorum_for(key).required(total)) if actuator is not None else None,
        passive=PassiveFeed(passive.metrics) if passive is not None else None,
    )


def start_fifo(config: Config) -> KeepalivedFifo | None:
    """Follow keepalived's notify FIFO (``director.keepalived_fifo``): one reader for /metrics and the SNMP agent."""
    if not config.director.keepalived_fifo:
        return None
    from lvsguard.exporter.keepalived import KeepalivedFifo

    fifo = KeepalivedFifo(config.director.keepalived_fifo)
    fifo.start()
    return fifo


def extras(
    probes: ProbeRunner | None, fifo: KeepalivedFifo | None, passive: PassiveDetector | None = None
) -> ExtraFamilies | None:
    """The families served after the IPVS ones: the probes', keepalived's VRRP state and the passive detector's."""
    metrics = probes.engine.metrics if probes is not None else None
    if fifo is None and passive is None:
        return metrics
    from lvsguard.exporter.keepalived import Extras

    return Extras(metrics, fifo, passive.metrics if passive is not None else None)


def start_passive(config: Config, netns: str | None, probes: ProbeRunner | None = None) -> PassiveDetector | None:
    """Start the passive detector of the ``passive`` section (off by default); None when disabled.

    Its verdicts go to the actuator the way the probes' transitions go
    (``probes.publish``), on a sender of their own (its thread and kept-alive
    connection), so that a verdict never waits behind a probe's post or its
    retries; an active check releases them. Without a publishing probe engine
    they are only reported.
    """
    if not config.passive.enabled:
        return None
    from lvsguard.exporter.passive.fusion import Fusion, actuator_holds
    from lvsguard.exporter.passive.metrics import PassiveMetrics
    from lvsguard.exporter.passive.runner import PassiveDetector

    fusion = None
    publish = config.probes.publish
    if probes is not None and probes.publisher is not None and publish is not None:
        from lvsguard.exporter.probes.publish import HTTPPublisher
        from lvsguard.exporter.probes.runner import read_token

        token = read_token(publish)
        holds = actuator_holds(publish.url, token) if publish.mode == "actuator" else None
        sender = HTTPPublisher(
            publish.url, mode=publish.mode, token=token, names=config, name="passive-publisher", warm=True
        )
        fusion = Fusion(sender, probes.engine.standing, holds=holds)
    else:
        reason = "no probes run" if probes is None else "probes.publish is not set"
        event(
            log,
            logging.WARNING,
            "passive_report_only",
            reason=f"{reason}: verdicts are logged and counted, not acted on",
        )
    return PassiveDetector(
        config.passive, netns, PassiveMetrics(names=config), fusion=fusion, weights=passive_weights(config, netns)
    ).start()


def passive_weights(config: Config, netns: str | None) -> TableReader | None:
    """A reader of the weights for the ``table`` source, which judges only real servers taking connections.

    The ``conntrack`` source needs none: there a flood's handshakes are answered, not timed out.
    """
    from lvsguard.config.passive import CONNTRACK
    from lvsguard.ipvs import open_reader

    if config.passive.source == CONNTRACK:
        return None
    try:
        return open_reader(netns, config.exporter.ipvs_source)
    except (OSError, LvsguardError) as exc:
        event(log, logging.WARNING, "passive_weights_unread", reason=str(exc)[:300])
        return None


def start_probes(config: Config, netns: str | None) -> ProbeRunner | None:
    """Start the health checks the ``probes`` section names; None when disabled or when it names none.

    Nothing is probed unless asked: no ``checks`` and no ``default_tcp`` means no engine, no
    probe traffic and no ``lvs_probe_*`` series (the table is still exported).
    """
    if not config.probes.enabled or not (config.probes.checks or config.probes.default_tcp):
        reason = "disabled" if not config.probes.enabled else "no_checks_configured"
        event(log, logging.INFO, "probes_off", reason=reason)
        return None
    from lvsguard.exporter.probes.metrics import ProbeMetrics
    from lvsguard.exporter.probes.runner import start

    return start(config, netns, ProbeMetrics(names=config))
