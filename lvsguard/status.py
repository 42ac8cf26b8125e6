"""``lvsguard status``: the IPVS table as an operator reads it.

Like ``ipvsadm -Ln --stats``, but with the names from the config, active and
inactive connections beside the traffic, human units by default (``--exact``
for exact integers), and aligned columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lvsguard.ipvs import open_reader
from lvsguard.model import Table

if TYPE_CHECKING:
    from lvsguard.config import Config

HEADER = (
    "SERVICE / REAL SERVER",
    "NAME",
    "SCHED/FWD",
    "WEIGHT",
    "ACTIVE",
    "INACT",
    "CONNS",
    "IN PKTS",
    "OUT PKTS",
    "IN BYTES",
    "OUT BYTES",
)
NUMERIC_FROM = 3  # columns from here on are right-aligned


def read_table(netns: str | None = None, source: str = "auto") -> Table:
    reader = open_reader(netns, source)
    try:
        return reader.read()
    finally:
        reader.close()


def human(n: int, *, unit: str = "") -> str:
    """1234 -> 1.2K, 5_000_000 -> 5.0M (SI, as traffic is usually counted)."""
    if n < 1000:
        return f"{n}{unit}"
    scaled = float(n)
    for prefix in "KMGTPE":
        scaled /= 1000
        if scaled < 1000:
            return f"{scaled:.1f}{prefix}{unit}"
    return f"{scaled:.1f}Z{unit}"


def render(table: Table, config: Config | None = None, *, exact: bool = False) -> str:
    """Render ``table``; names come from ``config`` when given."""
    fmt_count = str if exact else human
    fmt_bytes = str if exact else (lambda n: human(n, unit="B"))
    rows: list[Sequence[str]] = [HEADER]
    for svc in table.services:
        s = svc.stats
        sched = svc.scheduler + (f" persistent {svc.timeout}s" if svc.persistent else "")
        rows.append(
            (
                str(svc.key),
                config.service_name(svc.key) if config else "",
                sched,
                "",
                str(sum(r.active_connections for r in svc.real_servers)),
                str(sum(r.inactive_connections for r in svc.real_servers)),
                fmt_count(s.connections),
                fmt_count(s.incoming_packets),
                fmt_count(s.outgoing_packets),
                fmt_bytes(s.incoming_bytes),
                fmt_bytes(s.outgoing_bytes),
            )
        )
        for rs in svc.real_servers:
            r = rs.stats
            rows.append(
                (
                    f"  -> {rs.key}",
                    config.real_server_name(svc.key, rs.key) if config else "",
                    rs.forward.label,
                    str(rs.weight),
                    str(rs.active_connections),
                    str(rs.inactive_connections),
                    fmt_count(r.connections),
                    fmt_count(r.incoming_packets),
                    fmt_count(r.outgoing_packets),
                    fmt_bytes(r.incoming_bytes),
                    fmt_bytes(r.outgoing_bytes),
                )
            )
    out = _align(rows)
    if table.source != "netlink":
        out += f"(read from {table.source}: no traffic counters; netlink needs CAP_NET_ADMIN)\n"
    for d in table.sync_daemons:
        out += f"{d}\n"
    if not table.services:
        out += "(no virtual services)\n"
    return out


def _align(rows: list[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i >= NUMERIC_FROM else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
