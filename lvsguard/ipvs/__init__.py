"""Kernel access: the netlink reader/writer and the read-only procfs fallback.

Only this package imports pyroute2 or knows the kernel's wire formats.
``open_reader`` is the one place that chooses between them, so the exporter,
``lvsguard status`` and the actuator agree on what "auto" means.
"""

from __future__ import annotations

import logging
from typing import Protocol

from lvsguard.errors import NotPermitted
from lvsguard.model import Table

SOURCES = ("auto", "netlink", "procfs")

log = logging.getLogger(__name__)


class TableReader(Protocol):
    """What the exporter and the CLI need from a reader of the IPVS table."""

    source: str

    def read(self) -> Table: ...

    def close(self) -> None: ...


def open_reader(netns: str | None = None, source: str = "auto") -> TableReader:
    """Open a reader of the IPVS table of ``netns``.

    ``auto`` uses netlink and falls back to procfs when netlink is not permitted
    (it needs CAP_NET_ADMIN); procfs then serves weights and connection counts only.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown IPVS source {source!r} (one of {', '.join(SOURCES)})")
    if source in ("auto", "netlink"):
        from lvsguard.ipvs.netlink import NetlinkIPVS

        try:
            return NetlinkIPVS(netns)
        except NotPermitted as exc:
            if source == "netlink":
                raise
            log.warning("netlink not permitted, reading /proc/net/ip_vs instead reason=%r", str(exc))
    from lvsguard.ipvs.procfs import ProcfsReader

    return ProcfsReader(netns)
