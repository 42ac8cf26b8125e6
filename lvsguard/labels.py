"""The label vocabulary of lvsguard's metrics, shared by the config and the exporter.

Names follow node_exporter's IPVS collector so that series join; ``service``
and ``real_server`` carry the names from the config. The config validates
``exporter.backend_labels`` with the same function the exporter uses, so both
accept the same values and give node_exporter's error message.
"""

from __future__ import annotations

from collections.abc import Iterable

from lvsguard.errors import UnknownBackendLabels

LOCAL_ADDRESS = "local_address"
LOCAL_PORT = "local_port"
REMOTE_ADDRESS = "remote_address"
REMOTE_PORT = "remote_port"
PROTO = "proto"
LOCAL_MARK = "local_mark"
SERVICE = "service"
REAL_SERVER = "real_server"

BACKEND_LABELS: tuple[str, ...] = (
    LOCAL_ADDRESS,
    LOCAL_PORT,
    REMOTE_ADDRESS,
    REMOTE_PORT,
    PROTO,
    LOCAL_MARK,
    SERVICE,
    REAL_SERVER,
)
"""Every label of an ``ipvs_backend_*`` series, in output order; ``backend_labels`` picks from these."""
SERVICE_LABELS: tuple[str, ...] = (LOCAL_ADDRESS, LOCAL_PORT, PROTO, LOCAL_MARK, SERVICE)

SOURCE_LABEL = "lvsguard_source"
"""The alert label that names who judged the real server, when it is not an alert rule (the actuator's ``source``)."""
PASSIVE_SOURCE = "passive"
"""``lvsguard_source`` of the exporter's passive verdicts: the actuator records them as source ``passive``."""


def parse_backend_labels(labels: str | Iterable[str]) -> tuple[str, ...]:
    """Validate ``backend_labels`` (a list, or a comma-separated string as node_exporter's flag).

    Returns the chosen labels in output order. Empty entries are ignored, so
    ``""`` keeps no label at all and sums every real server into one series.
    """
    chosen = {label.strip() for label in (labels.split(",") if isinstance(labels, str) else labels)} - {""}
    unknown = chosen - set(BACKEND_LABELS)
    if unknown:
        raise UnknownBackendLabels(sorted(unknown))
    return tuple(label for label in BACKEND_LABELS if label in chosen)


def mark_label(fwmark: int) -> str:
    """A firewall mark as node_exporter prints ``local_mark``: 8 upper-case hex digits (16 -> ``00000010``)."""
    return f"{fwmark:08X}"


def parse_mark_label(text: str) -> int:
    """The firewall mark of a ``local_mark`` label value (hex, as exported); ValueError when it is none."""
    try:
        mark = int(text, 16)
    except ValueError:
        mark = 0
    if not 0 < mark < 2**32 or text.strip() != text or text.startswith(("0x", "0X", "+", "-")):
        raise ValueError(f"label local_mark={text!r} is not a firewall mark (8 hex digits, 00000001..FFFFFFFF)")
    return mark
