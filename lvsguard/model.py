"""The kernel's IPVS table as frozen values.

Nothing here knows netlink attribute numbers or the procfs text format: the
readers in ``lvsguard.ipvs`` convert at their edge. ``str()`` of every type
prints what an operator types (``TCP 192.0.2.10:80``, ``10.0.1.2:80``,
``FWM 1``), and every log line and error message uses it.

Counters are exact Python ints (the kernel's are 64-bit). Rates are the
kernel's own estimates (per second, bytes or packets), refreshed by its
2-second estimator.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PROTOCOLS = ("TCP", "UDP", "SCTP")
"""Transport protocols of an address:port service; ``FWM`` marks a fwmark service."""

FWM = "FWM"

D = TypeVar("D", bound="DataclassInstance")


class Forward(enum.Enum):
    """Packet-forwarding method of a real server (IP_VS_CONN_F_FWD_MASK values)."""

    MASQ = 0  # NAT: ipvsadm -m, "Masq"
    LOCAL = 1  # the director itself, "Local"
    TUNNEL = 2  # IP-in-IP / GUE / GRE: ipvsadm -i, "Tunnel"
    ROUTE = 3  # direct routing: ipvsadm -g, "Route" (the kernel's default)
    BYPASS = 4  # "Bypass"

    @property
    def label(self) -> str:
        """Lower-case name used in metrics and config: masq, local, tunnel, route, bypass."""
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> Forward:
        """Accept the config/metric names and ipvsadm's aliases (nat, dr, gate, ipip)."""
        aliases = {"nat": "masq", "dr": "route", "gate": "route", "droute": "route", "ipip": "tunnel"}
        key = aliases.get(name.lower(), name.lower())
        try:
            return cls[key.upper()]
        except KeyError:
            raise ValueError(f"unknown forwarding method {name!r} (masq, route, tunnel, local, bypass)") from None

    def __str__(self) -> str:
        return self.name.capitalize()


def format_endpoint(address: str, port: int) -> str:
    """``10.0.1.2:80`` or ``[2001:db8::2]:80``."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def parse_endpoint(text: str) -> tuple[str, int, int]:
    """Parse ``10.0.1.2:80`` / ``[2001:db8::2]:80`` into (address, port, family)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected ADDRESS:PORT")
    if "." not in host or not _canonical_ipv4(host):
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
        address, family = addr.compressed, addr.version
    else:
        address, family = host, 4
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be 0..65535")
    return address, int(port), family


def _canonical_ipv4(host: str) -> bool:
    """``host`` is an IPv4 address as ``ipaddress`` writes it (four decimal octets, no leading zero).

    libc's parser, 10x faster than ``ipaddress``: a config of 100 000 real servers parses each address twice.
    """
    try:
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError, UnicodeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """Identity of a virtual service: protocol + address:port, or a firewall mark."""

    protocol: str  # "TCP", "UDP", "SCTP" or "FWM"
    address: str  # compressed IP text; "" for a fwmark service
    port: int  # 0 for a fwmark service
    fwmark: int = 0  # non-zero only for FWM
    family: int = 4  # 4 or 6 (a fwmark service has a family too)

    @classmethod
    def parse(cls, text: str) -> ServiceKey:
        """Parse ``TCP 192.0.2.10:80``, ``udp [2001:db8::1]:53``, ``FWM 1`` or ``FWM 1 IPv6``."""
        parts = text.split()
        if len(parts) < 2:
            raise ValueError(f"{text!r}: expected 'TCP|UDP|SCTP ADDRESS:PORT' or 'FWM MARK'")
        proto = parts[0].upper()
        if proto == FWM:
            if (
                len(parts) > 3
                or not parts[1].isdigit()
                or (len(parts) == 3 and parts[2].lower() not in ("ipv4", "ipv6"))
            ):
                raise ValueError(f"{text!r}: expected 'FWM MARK' or 'FWM MARK IPv6'")
            family = 6 if len(parts) == 3 and parts[2].lower() == "ipv6" else 4
            return cls(FWM, "", 0, int(parts[1]), family)
        if proto not in PROTOCOLS or len(parts) != 2:
            raise ValueError(f"{text!r}: protocol must be TCP, UDP, SCTP or FWM")
        address, port, family = parse_endpoint(parts[1])
        return cls(proto, address, port, 0, family)

    @property
    def is_fwmark(self) -> bool:
        return self.protocol == FWM

    def __str__(self) -> str:
        if self.protocol == FWM:
            return f"FWM {self.fwmark}" + (" IPv6" if self.family == 6 else "")
        return f"{self.protocol} {format_endpoint(self.address, self.port)}"


@dataclass(frozen=True, slots=True)
class RealServerKey:
    """Identity of a real server inside its virtual service."""

    address: str  # compressed IP text
    port: int
    family: int = 4  # 4 or 6; may differ from the service's (IPv6 VIP, IPv4 real server via tunnel)

    @classmethod
    def parse(cls, text: str) -> RealServerKey:
        address, port, family = parse_endpoint(text)
        return cls(address, port, family)

    def __str__(self) -> str:
        return format_endpoint(self.address, self.port)


@dataclass(frozen=True, slots=True)
class Stats:
    """Traffic counters and the kernel's rate estimates of a service, real server or host."""

    connections: int  # connections scheduled, since the object was created
    incoming_packets: int  # packets client -> real server
    outgoing_packets: int  # packets real server -> client (seen only with NAT)
    incoming_bytes: int
    outgoing_bytes: int
    cps: int = 0  # connections per second, kernel estimate
    incoming_pps: int = 0  # packets per second in, kernel estimate
    outgoing_pps: int = 0
    incoming_bps: int = 0  # bytes per second in, kernel estimate
    outgoing_bps: int = 0


ZERO_STATS = Stats(0, 0, 0, 0, 0)
MAX_WEIGHT = 65535  # ipvsadm's range for a weight; the API and the CLI check it too
MAX_THRESHOLD = 2**32 - 1  # connection thresholds are 32-bit in the kernel


@dataclass(frozen=True, slots=True)
class RealServer:
    """A real server (the kernel's "destination") as the kernel reports it."""

    key: RealServerKey
    weight: int
    forward: Forward
    upper_threshold: int = 0  # max connections, 0 = unlimited
    lower_threshold: int = 0
    active_connections: int = 0  # ESTABLISHED (TCP) connections
    inactive_connections: int = 0  # other states (FIN_WAIT, UDP, ...)
    persistent_connections: int = 0  # persistence templates
    stats: Stats = ZERO_STATS
    tunnel_type: int = 0  # IP_VS_CONN_F_TUNNEL_TYPE_{IPIP=0,GUE=1,GRE=2} (kernel >= 5.2)
    tunnel_port: int = 0  # GUE destination port
    tunnel_flags: int = 0  # IP_VS_TUNNEL_ENCAP_FLAG_*

    def __str__(self) -> str:
        return str(self.key)


class ServiceFlags(enum.IntFlag):
    """IP_VS_SVC_F_* bits of a service."""

    PERSISTENT = 0x0001
    HASHED = 0x0002  # set by the kernel on every listed service
    ONEPACKET = 0x0004
    SCHED1 = 0x0008  # sh-fallback / mh-fallback
    SCHED2 = 0x0010  # sh-port / mh-port
    SCHED3 = 0x0020


@dataclass(frozen=True, slots=True)
class VirtualService:
    """A virtual service with its real servers."""

    key: ServiceKey
    scheduler: str  # rr, wrr, wlc, sh, mh, ...
    flags: int = 0  # ServiceFlags bits
    timeout: int = 0  # persistence timeout in seconds (meaningful when persistent)
    netmask: int = 0  # persistence granularity: IPv4 mask as int, IPv6 prefix length
    pe_name: str = ""  # persistence engine, e.g. "sip"
    stats: Stats = ZERO_STATS
    real_servers: tuple[RealServer, ...] = ()

    @property
    def persistent(self) -> bool:
        return bool(self.flags & ServiceFlags.PERSISTENT)

    def real_server(self, key: RealServerKey) -> RealServer | None:
        for rs in self.real_servers:
            if rs.key == key:
                return rs
        return None

    def __str__(self) -> str:
        return f"{self.key} ({self.scheduler})"


@dataclass(frozen=True, slots=True)
class SyncDaemon:
    """One running IPVS connection-sync daemon (a director runs at most a master and a backup)."""

    role: str  # "master" or "backup"
    mcast_interface: str
    sync_id: int
    max_sync_len: int = 0  # bytes, 0 = kernel default
    mcast_group: str = ""  # "" = the default 224.0.0.81
    mcast_port: int = 0  # 0 = the default 8848
    mcast_ttl: int = 0

    def __str__(self) -> str:
        return f"sync {self.role} on {self.mcast_interface} id {self.sync_id}"


@dataclass(frozen=True, slots=True)
class Table:
    """One consistent read of a director's IPVS state."""

    services: tuple[VirtualService, ...]
    totals: Stats | None = None  # host totals (/proc/net/ip_vs_stats); None when unreadable
    sync_daemons: tuple[SyncDaemon, ...] = ()
    source: str = "netlink"  # "netlink" or "procfs"
    connection_entries: int | None = None  # size of the connection table, when known

    def service(self, key: ServiceKey) -> VirtualService | None:
        for svc in self.services:
            if svc.key == key:
                return svc
        return None

    @property
    def real_server_count(self) -> int:
        return sum(len(s.real_servers) for s in self.services)


def fast_constructor(cls: type[D]) -> Callable[..., D]:
    """Return ``make(*values)`` that builds a frozen slots dataclass without its ``__init__``.

    A frozen dataclass's ``__init__`` goes through ``object.__setattr__`` once per
    field (about 2 µs for ``Stats``); the decoder builds two objects per real server
    for 100 000 real servers. ``make`` fills a non-frozen twin class with the same
    slots (plain attribute stores) and then switches the object's class, which
    CPython allows between classes of identical layout: the result is a real,
    frozen ``cls`` instance. Values are positional in field order and are not
    validated: only decoders that produce well-typed values use this.
    """
    names = [f.name for f in fields(cls)]
    args = ", ".join(names)
    body = "\n".join(f"        self.{n} = {n}" for n in names)
    src = (
        f"class _Twin:\n    __slots__ = {tuple(names)!r}\n    def __init__(self, {args}):\n{body}\n"
        f"def make({args}, *, _twin=_Twin, _cls=cls):\n    o = _twin({args})\n    o.__class__ = _cls\n    return o\n"
    )
    namespace: dict[str, Any] = {"cls": cls}
    exec(src, namespace)
    make: Callable[..., D] = namespace["make"]
    make.__doc__ = f"Build a {cls.__name__} from positional field values (no validation)."
    return make
