"""What a request handler reads of the app it runs in: the settings and the action layer.

``app.create_app`` puts them there; a reload swaps the settings (``reload.py``).
"""

from __future__ import annotations

from flask import current_app

from lvsguard.actuator.actions import Actions
from lvsguard.actuator.settings import ActuatorSettings


def current_settings() -> ActuatorSettings:
    settings: ActuatorSettings = current_app.config["LVSGUARD_SETTINGS"]
    return settings


def current_actions() -> Actions:
    actions: Actions = current_app.extensions["lvsguard"].actions
    return actions
