"""The actuator's Flask app (factory, blueprints, the error handler of ``httperrors``) and ``serve`` for the CLI.

``create_app`` builds everything from its arguments, so a test gets a fresh app
on a temporary ledger with the fake kernel; ``serve`` adds the real kernel
(netlink, in a named netns if asked), the background threads and waitress.
Flask's development server is never used.
"""

from __future__ import annotations

import gc
import logging
import os
import pwd
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lvsguard.actuator import api, auth, ledger, limits, ui, webhook
from lvsguard.actuator import reload as reloading
from lvsguard.actuator.actions import Actions, Kernel
from lvsguard.actuator.cluster import ClusterMetrics, ClusterSync
from lvsguard.actuator.clustertable import TableMetrics, TableSync
from lvsguard.actuator.drains import DrainMetrics, DrainWorker
from lvsguard.actuator.fleet import Announcer
from lvsguard.actuator.httperrors import handle_error
from lvsguard.actuator.jobs import JobRunner
from lvsguard.actuator.metrics import ActuatorMetrics, ClusterQueueCollector, DriftCollector, QuarantineCollector
from lvsguard.actuator.probestate import probe_view
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.cluster.drains import DrainStore
from lvsguard.cluster.etcd import EtcdClient
from lvsguard.cluster.fleet import Fleet
from lvsguard.cluster.records import HoldStore
from lvsguard.cluster.table import TableStore
from lvsguard.defaults import ACTUATOR_LISTEN
from lvsguard.errors import LvsguardError
from lvsguard.keepalived import read_role_file
from lvsguard.logs import event
from lvsguard.webconfig import NO_WEB_CONFIG, WebConfig

log = logging.getLogger(__name__)

DEFAULT_LISTEN = ACTUATOR_LISTEN
LOCK_WAIT = 30.0  # seconds the actuator waits at start for an in-process `lvsguard apply` to finish
MAX_BODY = limits.MAX_BODY  # bytes; 1 000 alerts are about 1 MB


@dataclass
class ActuatorState:
    """What the app shares between requests (``app.extensions["lvsguard"]``)."""

    actions: Actions
    runner: JobRunner
    metrics: ActuatorMetrics
    registry: CollectorRegistry
    quarantine: QuarantineCollector | None = None  # its names change on reload
    reload: Callable[[], ActuatorSettings] | None = None  # the config and tokens again (serve's; None in tests)


def create_app(
    settings: ActuatorSettings,
    *,
    kernel: Kernel | None = None,
    ledger_path: str | None = None,
    clock: Callable[[], float] = time.time,
    web: WebConfig = NO_WEB_CONFIG,
) -> Flask:
    """The WSGI app. ``kernel`` defaults to netlink in the current namespace; ``web``: basic auth and headers."""
    if kernel is None:
        from lvsguard.ipvs.netlink import NetlinkIPVS  # only here: a given kernel (a test's) needs no netlink

        kernel = NetlinkIPVS()
    app = Flask(__name__)
    app.config.update(
        LVSGUARD_SETTINGS=settings,
        LVSGUARD_LEDGER=ledger_path or settings.ledger_path,
        LVSGUARD_CLOCK=clock,
        LVSGUARD_WEB=web,
        MAX_CONTENT_LENGTH=MAX_BODY,
    )
    ledger.init_app(app)
    registry = CollectorRegistry(auto_describe=True)
    metrics = ActuatorMetrics(registry)
    ProcessCollector(registry=registry)  # process_*: CPU, memory, open files, start time
    quarantine = QuarantineCollector(app.config["LVSGUARD_LEDGER"], settings.names)
    registry.register(quarantine)
    actions = Actions(kernel, settings, clock=clock, metrics=metrics)
    registry.register(DriftCollector(actions))
    runner = JobRunner(actions, app.config["LVSGUARD_LEDGER"])
    if settings.cluster.shared:
        runner.cluster = _cluster_sync(settings, actions, app.config["LVSGUARD_LEDGER"], registry, clock)
        if settings.table.source == "cluster":
            store = TableStore(runner.cluster.store.client, settings.cluster, clock=clock)
            runner.table = TableSync(
                actions,
                app.config["LVSGUARD_LEDGER"],
                store,
                TableMetrics(registry, actions),
                applied=runner.cluster.announce_soon,
                clock=clock,
            )
        runner.fleet = _announcer(app, kernel, actions, runner.cluster, clock)
        runner.drains = _drains(runner.fleet, actions, app.config["LVSGUARD_LEDGER"], registry, clock)
    app.extensions["lvsguard"] = ActuatorState(actions, runner, metrics, registry, quarantine)
    app.register_blueprint(webhook.bp)
    app.register_blueprint(api.bp)
    ui.init_app(app)
    auth.init_app(app)
    limits.init_app(app)
    app.add_url_rule("/metrics", "metrics", auth.read_only(_metrics))
    app.register_error_handler(Exception, handle_error)
    app.after_request(_after)
    return app


def _cluster_sync(
    settings: ActuatorSettings,
    actions: Actions,
    ledger_path: str,
    registry: CollectorRegistry,
    clock: Callable[[], float],
) -> ClusterSync:
    """The cluster store's client and holds for the action layer, and the watch thread (started by the runner)."""
    cluster = settings.cluster
    client = EtcdClient(
        cluster.endpoints, ca_file=cluster.ca_file, cert_file=cluster.cert_file, key_file=cluster.key_file
    )
    actions.cluster = HoldStore(client, cluster, clock=clock)
    registry.register(ClusterQueueCollector(ledger_path))
    return ClusterSync(actions, ledger_path, actions.cluster, ClusterMetrics(registry), clock=clock)


def _announcer(
    app: Flask, kernel: Kernel, actions: Actions, sync: ClusterSync, clock: Callable[[], float]
) -> Announcer:
    """This director's status for the fleet view, announced beside the cluster watch."""
    from lvsguard.ipvs.addresses import local_addresses  # only here: importing the app needs no netlink

    netns = getattr(kernel, "netns", None)

    def role() -> str:
        path = actions.settings.role_file
        return read_role_file(path) if path else "unknown"

    fleet = Fleet(sync.store.client, actions.settings.cluster, clock=clock)
    app.extensions["lvsguard_fleet"] = fleet
    return Announcer(
        fleet,
        sync,
        actions,
        app.config["LVSGUARD_LEDGER"],
        role=role,
        exporter=lambda: probe_view(app).state,
        addresses=lambda: set(local_addresses(netns)),
        advertise=actions.settings.cluster.advertise_url,
    )


def _drains(
    announcer: Announcer, actions: Actions, ledger_path: str, registry: CollectorRegistry, clock: Callable[[], float]
) -> DrainWorker:
    """The cluster's drain jobs: written by operators' drains, claimed and ended by the worker (started by the runner)."""
    cluster = actions.settings.cluster
    # its own client: its calls every second, each up to 5 s per endpoint while etcd is away,
    # must not queue an operator's request behind the client's lock
    client = EtcdClient(
        cluster.endpoints, ca_file=cluster.ca_file, cert_file=cluster.cert_file, key_file=cluster.key_file
    )
    store = DrainStore(client, cluster, clock=clock)
    assert actions.cluster is not None
    worker = DrainWorker(store, actions.cluster, announcer.fleet, actions, ledger_path, DrainMetrics(registry))
    actions.drains.store, actions.drains.job = store, worker.job
    announcer.draining = worker.report
    return worker


def _metrics() -> Response:
    registry = current_app.extensions["lvsguard"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _after(response: Response) -> Response:
    """Count webhook replies by status and log every request on one line (token name, never the token)."""
    if request.endpoint == "webhook.alertmanager":
        current_app.extensions["lvsguard"].metrics.webhook_reply(response.status_code)
    if request.endpoint != "metrics":
        event(
            log,
            logging.INFO,
            "request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            token=g.get("token_name", "-"),
            alerts=g.get("webhook_alerts", "-"),
        )
    return response


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9911`` / ``[::1]:9911`` / ``:9911`` -> (host, port); ValueError names the text."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


STATE_DIRECTORY_MODE = 0o750


def ledger_directory(path: str) -> str:
    """The ledger's directory; created (mode 0750) when only it is missing and this user may create it.

    ``lvsguard actuator`` run by hand, as the README shows, then starts where
    only the systemd unit (``StateDirectory=``) used to make ``/var/lib/lvsguard``.
    A directory that cannot be made is an error that says the command to run.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(directory):
        return directory
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    fix = f"create it with: install -d -m 0750 -o {user} {directory}"
    parent = os.path.dirname(directory)
    if not os.path.isdir(parent):
        raise LvsguardError(f"ledger {path}: directory {directory} does not exist, nor {parent}: {fix}")
    try:
        os.mkdir(directory, STATE_DIRECTORY_MODE)
    except FileExistsError:
        pass  # another process made it meanwhile (or it is a file: the access check below says so)
    except OSError as exc:
        raise LvsguardError(
            f"ledger {path}: directory {directory} does not exist and this user ({user}) cannot create it"
            f" ({exc.strerror}): {fix}"
        ) from None
    else:
        os.chmod(directory, STATE_DIRECTORY_MODE)  # mkdir's mode passes through the umask
        event(log, logging.INFO, "ledger_directory_created", directory=directory, mode="0750", owner=user)
    return directory


def serve(
    settings: ActuatorSettings,
    *,
    listen: str = DEFAULT_LISTEN,
    netns: str | None = None,
    ledger_path: str | None = None,
    threads: int = 8,
    reload: Callable[[], ActuatorSettings] | None = None,
    web: WebConfig = NO_WEB_CONFIG,
    reload_web: Callable[[], WebConfig] | None = None,
) -> None:
    """Run the actuator until interrupted (the CLI's ``lvsguard actuator``).

    Refuses to start without a token: the webhook and every mutating call need one.
    On SIGHUP, ``reload`` returns the new settings (config and tokens) or raises
    an LvsguardError to keep the running ones (``lvsguard/actuator/reload.py``).
    ``web`` is the ``--web.config.file``: TLS, basic auth and headers;
    ``reload_web`` reads it again on SIGHUP.
    """
    from lvsguard.ipvs.netlink import NetlinkIPVS  # only here: importing the app needs no netlink

    if not settings.tokens:
        raise LvsguardError(
            "no token: set LVSGUARD_TOKEN or --token-file (the webhook and every mutating call need one)"
        )
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise LvsguardError(str(exc)) from None
    path = ledger_path or settings.ledger_path
    directory = ledger_directory(path)
    if not os.access(directory, os.W_OK | os.X_OK):  # SQLite writes its -wal and -shm files next to the ledger
        raise LvsguardError(f"ledger {path}: directory {directory} is not writable by this user (uid {os.geteuid()})")
    logging.logProcesses = False  # the log format has no process id: spare a getpid() per line
    kernel = NetlinkIPVS(netns)
    try:
        lock = ledger.writer_lock(path, wait=LOCK_WAIT)
        if lock is None:
            kernel.close()
            raise LvsguardError(
                f"ledger {path}: another actuator or an in-process 'lvsguard apply' has held {path}.lock "
                f"for {LOCK_WAIT:g} s; one writer at a time"
            )
        app = create_app(settings, kernel=kernel, ledger_path=path, web=web)
        app.config[auth.LISTEN_HOST] = host  # reads need a token beyond loopback unless the config says otherwise
        state: ActuatorState = app.extensions["lvsguard"]
        state.reload = reload
        state.runner.begin()
        gc.freeze()  # what the start built lives as long as the process: full collections need not walk it
    except sqlite3.Error as exc:  # unreadable, corrupt or locked at start: say which file, no traceback
        kernel.close()
        raise LvsguardError(f"ledger {path}: {exc}") from None
    tls = limits.CurrentTLS(web.tls) if web.tls is not None else None
    if reload is not None and threading.current_thread() is threading.main_thread():

        def hup() -> None:
            reloading.reload(app, reload)
            if reload_web is not None:
                reloading.reload_web(app, reload_web, tls)

        signal.signal(
            signal.SIGHUP,
            lambda _sig, _frame: threading.Thread(target=hup, name="actuator-reload", daemon=True).start(),
        )
    event(
        log,
        logging.INFO,
        "actuator_started",
        listen=f"{host}:{port}",
        netns=netns or "-",
        ledger=path,
        tokens=",".join(sorted(settings.tokens)),
        scheme=web.scheme,
        web_config=web.path or "-",
        basic_auth="on" if web.users else "off",
        reads="open" if auth.reads_open(app) else "token",
        dry_run=settings.dry_run,
    )
    limits.warn_exposure(host, settings)
    try:
        limits.create_server(app, host=host, port=port, threads=threads, tls=tls).run()
    except KeyboardInterrupt:  # as waitress.serve: Ctrl-C stops serving
        pass
    finally:
        state.runner.stop()
        kernel.close()
        lock.close()
