"""Settings of the SNMP agent (the ``snmp`` section of the config).

They are defined, validated and documented in the core
(``lvsguard.config.snmp``), so that the config builds them without importing
the exporter; the agent's modules import them from here.
"""

from __future__ import annotations

from lvsguard.config.snmp import (
    AUTH_PROTOCOLS,
    MAX_RESPONSE_SIZE,
    MIN_KEY_LENGTH,
    PRIV_PROTOCOLS,
    AgentSettings,
    V3User,
    build_settings,
)

__all__ = [
    "AUTH_PROTOCOLS",
    "MAX_RESPONSE_SIZE",
    "MIN_KEY_LENGTH",
    "PRIV_PROTOCOLS",
    "AgentSettings",
    "V3User",
    "build_settings",
]
