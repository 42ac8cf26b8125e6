"""Default addresses, ports, paths and the SNMP base OID, defined once.

The CLI's help and fallbacks, the config's defaults, the client commands and
the generated configuration reference all read these; the systemd units in
packaging/systemd name the same values in their comments (tests/unit/test_units.py
checks that they agree).
"""

from __future__ import annotations

EXPORTER_PORT = 9910
ACTUATOR_PORT = 9911
SNMP_PORT = 1161  # unprivileged; snmpd's `proxy` directive puts the agent under the host's port 161
AGENT_PORT = 5555  # `lvsguard agent` on a real server (the director's `agent` checks)

EXPORTER_LISTEN = f"127.0.0.1:{EXPORTER_PORT}"
ACTUATOR_LISTEN = f"127.0.0.1:{ACTUATOR_PORT}"
SNMP_LISTEN = f"127.0.0.1:{SNMP_PORT}"
AGENT_LISTEN = f":{AGENT_PORT}"

ACTUATOR_URL = f"http://{ACTUATOR_LISTEN}"
"""Where the client commands and the probes' fast path find the local actuator."""

LEDGER_PATH = "/var/lib/lvsguard/actuator.db"
CONFIG_PATH = "/etc/lvsguard/lvsguard.yaml"

SNMP_BASE_OID: tuple[int, ...] = (1, 3, 6, 1, 4, 1, 8072, 9999, 9999)
"""lvsguardMIB: net-snmp's playpen arc, until the project has an enterprise number."""
