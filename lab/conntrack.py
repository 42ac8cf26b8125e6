"""Conntrack on the director, for the passive detector's event source (``passive.source: conntrack``).

``net.ipv4.vs.conntrack=1`` makes IPVS keep conntrack entries, but on 6.1 a
namespace tracks nothing until some rule needs conntrack, per family: one
``-m conntrack`` rule for IPv4 and one for IPv6 (they drop INVALID forwarded
packets, which IPVS never forwards anyway).
"""

from __future__ import annotations

import subprocess

RULE = ["FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"]


def _run(netns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *args], check=True, capture_output=True)


def track(netns: str) -> None:
    """Turn conntrack on for IPVS's connections in ``netns`` (IPv4 and IPv6)."""
    _run(netns, "sysctl", "-qw", "net.ipv4.vs.conntrack=1")
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        _run(netns, tool, "-A", *RULE)


def untrack(netns: str) -> None:
    """Undo ``track``."""
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        _run(netns, tool, "-D", *RULE)
    _run(netns, "sysctl", "-qw", "net.ipv4.vs.conntrack=0")
