"""SNMP object identifiers as tuples: parsed once for the config, encoded by the agent (lvsguard/exporter/snmp/ber.py)."""

from __future__ import annotations

Oid = tuple[int, ...]
MAX_SUBID = 0xFFFFFFFF


def format_oid(oid: Oid) -> str:
    """Dotted notation, as net-snmp prints with -On (without the leading dot)."""
    return ".".join(str(s) for s in oid)


def parse_oid(text: str) -> Oid:
    """``1.3.6.1.4.1`` (a leading dot is accepted) -> tuple; ValueError names the text."""
    parts = text.strip().lstrip(".").split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a dotted OID")
    oid = tuple(int(p) for p in parts)
    if oid[0] > 2 or (oid[0] < 2 and oid[1] >= 40) or any(s > MAX_SUBID for s in oid):
        raise ValueError(f"{text!r} is not a valid OID")
    return oid
