"""Section ``passive``: passive detection of failed handshakes in the exporter (docs/probes.md)."""

from __future__ import annotations

from dataclasses import dataclass

from yaml.nodes import Node, ScalarNode

from lvsguard.config.schema import (
    FLOAT,
    INT,
    Context,
    Invalid,
    Key,
    Schema,
    boolean,
    choice,
    duration,
    integer,
    kind_of,
)

TABLE, CONNTRACK = "table", "conntrack"
SOURCES = (TABLE, CONNTRACK)


@dataclass(frozen=True, slots=True)
class PassiveConfig:
    """Section ``passive``: read the connection table for failed handshakes and judge real servers by them."""

    enabled: bool = False
    source: str = TABLE  # "table": /proc/net/ip_vs_conn; "conntrack": ctnetlink events (NAT services only)
    interval: float = 1.0  # seconds between two reads of the connection table (two passes of the events)
    max_entries: int = 10_000  # a bigger connection table pauses the detector (a read's cost grows as its square)
    handshake_timeout: float = 3.0  # seconds in SYN_RECV that count as a failed handshake
    min_failures: int = 2
    min_passes: int = 2
    min_share: float = 0.5
    margin: float = 0.4
    chance: float = 1e-6
    window: float = 10.0
    max_out: float = 0.5
    holddown_min: float = 5.0
    holddown_max: float = 3600.0


def fraction(node: Node, path: str, ctx: Context) -> float:
    """A number from 0 to 1 (a share or a probability)."""
    if not (isinstance(node, ScalarNode) and node.tag in (INT, FLOAT)):
        raise Invalid(f"must be a number from 0 to 1, got {kind_of(node)}")
    value = float(node.value)
    if not 0.0 <= value <= 1.0:
        raise Invalid(f"must be from 0 to 1, got {value:g}")
    return value


def handshake_timeout(node: Node, path: str, ctx: Context) -> float:
    """A duration below the kernel's 60 s of SYN_RECV, after which the entry is gone and nothing is seen."""
    value = float(duration(node, path, ctx))
    if value >= 60.0:
        raise Invalid(f"must be below 60 s (a connection leaves SYN_RECV after 60 s), got {value:g}")
    return value


PASSIVE = Schema(
    PassiveConfig,
    {
        "enabled": Key(boolean, doc="Watch the connection table for failed handshakes (off by default)."),
        "source": Key(
            choice(SOURCES),
            doc="Where failed handshakes are read: `table` (`/proc/net/ip_vs_conn`: NAT and DR, up to `max_entries` connections) or `conntrack` (ctnetlink events filtered in the kernel: NAT only, any size; needs `net.ipv4.vs.conntrack=1`).",
        ),
        "interval": Key(
            duration,
            doc="Time between two reads of `/proc/net/ip_vs_conn`; with `conntrack`, between two judgements without a failure (a failure is judged at once).",
        ),
        "max_entries": Key(
            integer(100, 1_000_000),
            doc="Connections in the table above which detection pauses: a read of `/proc/net/ip_vs_conn` costs the square of its size (docs/probes.md).",
        ),
        "handshake_timeout": Key(
            handshake_timeout, doc="Time in SYN_RECV after which a handshake counts as failed (`timeout`); below 60 s."
        ),
        "min_failures": Key(integer(1, 1000), doc="Failed handshakes a verdict needs at least."),
        "min_passes": Key(
            integer(1, 100),
            doc="Reads of the table in which they failed, at least: a burst in one read is what floods look like.",
        ),
        "min_share": Key(fraction, doc="Share of the real server's recent handshakes that failed, at least."),
        "margin": Key(fraction, doc="How far the real server's failure share must exceed its peers' median share."),
        "chance": Key(
            fraction,
            doc="A verdict only when the failures are less likely than this to be the clients' doing, at the peers' failure share.",
        ),
        "window": Key(duration, doc="History kept per real server: the peers' shares and the longest span judged."),
        "max_out": Key(fraction, doc="Most of a service's real servers under a passive verdict at once."),
        "holddown_min": Key(duration, doc="Hold-down after a verdict; doubled when the real server fails again soon."),
        "holddown_max": Key(duration, doc="The doubling of the hold-down stops here."),
    },
)
