"""What a request handler reads of the app it runs in: the settings, the action layer, the cluster's fleet.

``app.create_app`` puts them there; a reload swaps the settings (``reload.py``).
"""

from __future__ import annotations

from flask import current_app

from lvsguard.actuator.actions import Actions
from lvsguard.actuator.cluster import ClusterSync
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.cluster.fleet import Fleet


def current_settings() -> ActuatorSettings:
    settings: ActuatorSettings = current_app.config["LVSGUARD_SETTINGS"]
    return settings


def current_actions() -> Actions:
    actions: Actions = current_app.extensions["lvsguard"].actions
    return actions


def current_fleet() -> tuple[Fleet, ClusterSync] | None:
    """The fleet's records and this director's cluster watch (``cluster.store: etcd``), else None."""
    fleet: Fleet | None = current_app.extensions.get("lvsguard_fleet")
    sync: ClusterSync | None = current_app.extensions["lvsguard"].runner.cluster
    return (fleet, sync) if fleet is not None and sync is not None else None
