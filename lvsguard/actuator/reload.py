"""SIGHUP: the running actuator takes a new config and new tokens, or keeps the old ones.

The settings are one frozen object, read afresh by every request, session and
job step, so a reload is one swap under the action lock: no request sees half
of each. What lives outside the settings is kept as it is: the ledger
(holds, jobs, audit), the kernel socket, the running jobs, the rate-limit
window and the hold-down clocks. A new config or token file that does not
load is logged with every problem (file:line:key) and nothing changes. With
``table.manage``, a reload that took then makes the kernel's table the new
config's (``actuator.actions.table``); ``POST /api/v1/table/apply`` does the
same reload on request.

The ``--web.config.file`` is read again too (:func:`reload_web`): users,
headers and the certificate change for the next request and connection;
turning TLS on or off needs a restart (the scheme clients use changes).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from flask import Flask

from lvsguard.actuator.actions import Actor, Source
from lvsguard.actuator.actions.table import TableOutcome
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.limits import CurrentTLS
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.config.loader import collector_paused
from lvsguard.errors import LvsguardError
from lvsguard.logs import event
from lvsguard.webconfig import WebConfig

log = logging.getLogger(__name__)


def apply(app: Flask, new: ActuatorSettings) -> list[str]:
    """Make ``new`` the app's settings; returns the keys that changed but need a restart (they keep their running values)."""
    state = app.extensions["lvsguard"]
    old: ActuatorSettings = app.config["LVSGUARD_SETTINGS"]
    needs_restart = []
    if new.ledger_path != old.ledger_path:  # the open ledger stays: holds and jobs are in it
        needs_restart.append("actuator.ledger")
        new = dataclasses.replace(new, ledger_path=old.ledger_path)

    def swap() -> None:
        app.config["LVSGUARD_SETTINGS"] = new
        if state.quarantine is not None:
            state.quarantine.names = new.names

    state.actions.replace_settings(new, also=swap)  # same Policy: its rate-limit window carries over
    return needs_restart


def reload(app: Flask, load: Callable[[], ActuatorSettings]) -> bool:
    """``apply(app, load())``; a ``load`` that raises LvsguardError is logged and the running settings stay.

    No cyclic garbage collection until the table is applied: with a big table
    one walks millions of live objects (1 s for 100 000 real servers), and the
    kernel's change should not wait for it.
    """
    with collector_paused():
        return _reload(app, load)


def _reload(app: Flask, load: Callable[[], ActuatorSettings]) -> bool:
    try:
        new = load_settings(load)
    except LvsguardError as exc:
        for line in str(exc).splitlines():
            event(log, logging.ERROR, "reload_failed", reason=line, kept="the running config and tokens")
        return False
    needs_restart = apply(app, new)
    if needs_restart:
        event(log, logging.WARNING, "reload_needs_restart", keys=",".join(needs_restart))
    event(
        log, logging.INFO, "reload_done", tokens=",".join(sorted(new.tokens)), rules=len(new.rules), dry_run=new.dry_run
    )
    if new.table.manage:
        try:
            apply_table(app, Actor(Source.ACTUATOR, "reload"))
        except LvsguardError as exc:  # the kernel out of reach: the retry loop and the next reload try again
            event(log, logging.ERROR, "table_apply_failed", error=exc)
    return True


def load_settings(load: Callable[[], ActuatorSettings]) -> ActuatorSettings:
    """``load()``, refused (LvsguardError) without a token; a ConfigError has every problem with its file:line."""
    new = load()
    if not new.tokens:
        raise LvsguardError(
            "no token: set LVSGUARD_TOKEN or --token-file (the webhook and every mutating call need one)"
        )
    return new


def apply_table(app: Flask, actor: Actor) -> TableOutcome:
    """Make the kernel's table the running config's (``table.manage``), through the action layer's door."""
    state = app.extensions["lvsguard"]
    ledger = Ledger.open(app.config["LVSGUARD_LEDGER"], clock=state.actions.clock, create=False)
    try:
        outcome: TableOutcome = state.actions.apply_table(ledger, actor)
    finally:
        ledger.close()
    return outcome


def reload_web(app: Flask, load: Callable[[], WebConfig], tls: CurrentTLS | None) -> bool:
    """Take a new web config (``load()``): basic-auth users and headers at once, ``tls`` for new connections.

    A file that does not load, or that turns TLS on or off, is logged and the running one stays.
    """
    old: WebConfig = app.config["LVSGUARD_WEB"]
    try:
        new = load()
        if (new.tls is None) != (old.tls is None):
            raise LvsguardError(f"{new.path}: turning TLS {'off' if new.tls is None else 'on'} needs a restart")
    except LvsguardError as exc:
        event(log, logging.ERROR, "reload_failed", reason=str(exc), kept="the running web config")
        return False
    app.config["LVSGUARD_WEB"] = new  # one assignment: a request sees the old or the new file, never a mix
    if tls is not None and new.tls is not None:
        tls.context = new.tls
    event(log, logging.INFO, "web_config_reloaded", web_config=new.path, basic_auth="on" if new.users else "off")
    return True
