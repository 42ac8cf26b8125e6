"""Health as people read it, from ``GET /api/v1/services``: the console's columns and ``lvsguard status``.

A real server no check watches (a UDP or fwmark service without ``probes.checks``,
``default_tcp`` off) is "not checked", never unhealthy; a service's health counts
its checked real servers only, and says "no checks" when none is. Without the
exporter's probe state (no ``actuator.exporter_url``, or the exporter did not
answer) the health of the checks is unknown, and a service shows its real servers
in service (weight above 0) of all, as the safety rules count them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WORDS = {"unchecked": "not checked"}


def real_server_health(state: str) -> str:
    """A real server's probe state (healthy, unhealthy, unchecked, unknown) in words."""
    return WORDS.get(state, state)


def service_health(service: Mapping[str, Any], probes_state: str) -> str:
    """``2/3``, ``2/2 (+1 not checked)``, ``no checks``; ``3/4`` in service when the probe state is unknown."""
    real_servers = service["real_servers"]
    if probes_state != "ok":
        return f"{service['healthy']}/{len(real_servers)}"
    states = [rs["probe"]["state"] for rs in real_servers]
    checked = sum(1 for s in states if s in ("healthy", "unhealthy"))
    if not checked:
        return "no checks"
    text = f"{states.count('healthy')}/{checked}"
    unchecked = len(states) - checked
    return text + (f" (+{unchecked} not checked)" if unchecked else "")
