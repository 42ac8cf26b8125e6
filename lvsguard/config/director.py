"""Section ``director``: which IPVS table this director is."""

from __future__ import annotations

from dataclasses import dataclass

from lvsguard.config.schema import Key, Schema, absolute_path, netns


@dataclass(frozen=True, slots=True)
class DirectorConfig:
    """Section ``director``: where this director's IPVS table is."""

    netns: str | None = None  # network namespace name (as `ip netns`) or path; None: our own
    keepalived_fifo: str | None = None  # keepalived's notify FIFO, for the exporter's VRRP state (docs/ha.md)


DIRECTOR = Schema(
    DirectorConfig,
    {
        "netns": Key(
            netns,
            doc="The network namespace whose IPVS table is read and written: a name of `ip netns` or an absolute path (`/proc/1234/ns/net`); `--netns` wins.",
        ),
        "keepalived_fifo": Key(
            absolute_path,
            doc="keepalived's notify FIFO, read by the exporter alone for the VRRP state series (docs/ha.md).",
        ),
    },
)
