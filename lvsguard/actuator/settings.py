"""The actuator's settings: frozen values with safe defaults.

They are defined, validated and documented in the core
(``lvsguard.config.actuator``), so that the config builds them without
importing the app; the actuator's modules import them from here.
"""

from __future__ import annotations

from lvsguard.config.actuator import (
    ACTIONS,
    KEYS,
    MIN_SESSION_SECRET,
    ActuatorSettings,
    Names,
    Quorum,
    RateLimit,
    Rule,
    from_mapping,
    parse_duration,
)

__all__ = [
    "ACTIONS",
    "KEYS",
    "MIN_SESSION_SECRET",
    "ActuatorSettings",
    "Names",
    "Quorum",
    "RateLimit",
    "Rule",
    "from_mapping",
    "parse_duration",
]
