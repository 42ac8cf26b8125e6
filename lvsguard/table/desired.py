"""The desired table: every service and real server the config says the kernel must hold.

A desired service is a ``lvsguard.model.VirtualService`` and a desired real
server a ``RealServer``, with zero counters: the model already carries every
setting ``ipvsadm`` can write (scheduler and its flags, persistence timeout,
netmask and engine, one-packet scheduling, forwarding with the tunnel's type,
port and checksum, weight, thresholds). ``make_service`` and
``make_real_server`` build them in the canonical form the kernel reads back
(``HASHED`` cleared, a netmask of 0 written as the full mask, tunnel options
only on tunnelled real servers), so that ``settings_of`` compares a desired
object with a kernel one field for field.

The names here (``mh-fallback``, ``gue``, ``remcsum``) are ipvsadm's, which
keepalived and ldirectord also use.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from lvsguard.model import (
    ZERO_STATS,
    Forward,
    RealServer,
    RealServerKey,
    ServiceFlags,
    ServiceKey,
    VirtualService,
    fast_constructor,
)

__all__ = [
    "DEFAULT_WEIGHT",
    "check_engine",
    "check_scheduler",
    "check_thresholds",
    "DesiredTable",
    "TUNNEL_CHECKSUMS",
    "TUNNEL_TYPES",
    "describe_real_server",
    "describe_service",
    "flag_names",
    "full_netmask",
    "make_real_server",
    "make_service",
    "netmask_text",
    "parse_netmask",
    "parse_scheduler_flag",
    "real_server_changes",
    "real_server_differences",
    "real_server_settings",
    "same_real_server",
    "service_changes",
    "service_differences",
    "service_settings",
    "strip_real_servers",
]

DEFAULT_WEIGHT = 1  # ipvsadm's and keepalived's default

_real_server = fast_constructor(RealServer)
"""A config of 100 000 real servers builds each once: without a frozen dataclass's ``__init__`` (its values are
checked by then)."""

SCHED_FLAGS = ServiceFlags.SCHED1 | ServiceFlags.SCHED2 | ServiceFlags.SCHED3
GENERIC_FLAGS = {"flag-1": ServiceFlags.SCHED1, "flag-2": ServiceFlags.SCHED2, "flag-3": ServiceFlags.SCHED3}
NAMED_FLAGS = {
    "sh": {"sh-fallback": ServiceFlags.SCHED1, "sh-port": ServiceFlags.SCHED2},
    "mh": {"mh-fallback": ServiceFlags.SCHED1, "mh-port": ServiceFlags.SCHED2},
}

TUNNEL_TYPES = {"ipip": 0, "gue": 1, "gre": 2}  # IP_VS_CONN_F_TUNNEL_TYPE_*
TUNNEL_TYPE_NAMES = {v: k for k, v in TUNNEL_TYPES.items()}
TUNNEL_CHECKSUMS = {"nocsum": 0, "csum": 1, "remcsum": 2}  # IP_VS_TUNNEL_ENCAP_FLAG_*
TUNNEL_CHECKSUM_NAMES = {v: k for k, v in TUNNEL_CHECKSUMS.items()}


_MODULE_NAME = re.compile(r"[a-z][a-z0-9_]{0,14}")  # IP_VS_SCHEDNAME_MAXLEN / IP_VS_PENAME_MAXLEN are 16 with the NUL


def check_scheduler(name: str) -> str:
    """``name`` when it can be a scheduler's (``rr``, ``mh``...); ValueError otherwise."""
    if not _MODULE_NAME.fullmatch(name):
        raise ValueError(f"not a scheduler name: {name!r} (rr, wrr, wlc, sh, mh, ...)")
    return name


def check_engine(name: str) -> str:
    """``name`` when it can be a persistence engine's (``sip``); ValueError otherwise."""
    if not _MODULE_NAME.fullmatch(name):
        raise ValueError(f"not a persistence engine name: {name!r} (sip)")
    return name


def check_thresholds(upper: int, lower: int) -> None:
    """The kernel refuses a lower threshold above the upper one (ERANGE); 0 is no upper limit but still counts."""
    if lower > upper:
        raise ValueError(f"the lower threshold ({lower}) is above the upper one ({upper})")


def full_netmask(family: int) -> int:
    """The netmask of one client per persistence template: 255.255.255.255, or /128."""
    return 0xFFFFFFFF if family == 4 else 128


def parse_netmask(family: int, value: str | int) -> int:
    """A persistence netmask as the kernel keeps it: an IPv4 mask as an int, an IPv6 prefix length.

    Accepts a prefix length (``24``, ``"/24"``) for both families and a dotted
    mask (``255.255.255.0``) for IPv4. Raises ValueError.
    """
    text = str(value).strip().lstrip("/")
    if text.isdigit():
        length = int(text)
        top = 32 if family == 4 else 128
        if not 1 <= length <= top:
            raise ValueError(f"a netmask prefix length must be 1..{top}, got {length}")
        return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if family == 4 else length
    if family == 6:
        raise ValueError(f"an IPv6 persistence netmask is a prefix length 1..128, got {value!r}")
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"not a netmask: {value!r} (a prefix length or a dotted IPv4 mask)") from None


def netmask_text(family: int, netmask: int) -> str:
    """``255.255.255.0`` for IPv4, ``64`` (a prefix length) for IPv6."""
    return str(ipaddress.IPv4Address(netmask)) if family == 4 else str(netmask)


def parse_scheduler_flag(scheduler: str, name: str) -> int:
    """The SCHED bit of a flag name: ``mh-fallback`` for mh, ``sh-port`` for sh, ``flag-1..3`` for any."""
    lowered = name.strip().lower()
    if lowered in GENERIC_FLAGS:
        return int(GENERIC_FLAGS[lowered])
    named = NAMED_FLAGS.get(scheduler, {})
    if lowered in named:
        return int(named[lowered])
    known = sorted(named) + sorted(GENERIC_FLAGS)
    raise ValueError(f"unknown flag {name!r} for scheduler {scheduler!r} (one of {', '.join(known)})")


def flag_names(scheduler: str, flags: int) -> list[str]:
    """The scheduler flags of ``flags`` by name, as ipvsadm prints them (``mh-fallback``, ``flag-3``)."""
    named = {int(bit): name for name, bit in NAMED_FLAGS.get(scheduler, {}).items()}
    out = []
    for name, bit in GENERIC_FLAGS.items():
        if flags & bit:
            out.append(named.get(int(bit), name))
    return out


def make_service(
    key: ServiceKey,
    scheduler: str = "wlc",
    *,
    scheduler_flags: int = 0,
    persistence: int = 0,
    netmask: int = 0,
    pe_name: str = "",
    one_packet: bool = False,
    real_servers: Iterable[RealServer] = (),
) -> VirtualService:
    """A desired service in canonical form (``persistence`` in seconds; 0: not persistent)."""
    flags = scheduler_flags & SCHED_FLAGS
    if persistence:
        flags |= ServiceFlags.PERSISTENT
    if one_packet:
        flags |= ServiceFlags.ONEPACKET
    return VirtualService(
        key=key,
        scheduler=scheduler,
        flags=int(flags),
        timeout=persistence,
        netmask=netmask or full_netmask(key.family),
        pe_name=pe_name,
        real_servers=tuple(real_servers),
    )


def make_real_server(
    key: RealServerKey,
    forward: Forward = Forward.ROUTE,
    weight: int = DEFAULT_WEIGHT,
    *,
    upper_threshold: int = 0,
    lower_threshold: int = 0,
    tunnel_type: int = 0,
    tunnel_port: int = 0,
    tunnel_flags: int = 0,
) -> RealServer:
    """A desired real server in canonical form (tunnel options kept only when tunnelled)."""
    if forward is not Forward.TUNNEL:
        tunnel_type = tunnel_port = tunnel_flags = 0
    return _real_server(
        key,
        weight,
        forward,
        upper_threshold,
        lower_threshold,
        0,
        0,
        0,
        ZERO_STATS,
        tunnel_type,
        tunnel_port,
        tunnel_flags,
    )


# --- comparison -----------------------------------------------------------------------------


ServiceSettings = tuple[str, int, int, int, str]
RealServerSettings = tuple[int, Forward, int, int, int, int, int]


def service_settings(svc: VirtualService) -> ServiceSettings:
    """What an edit of the service can change: (scheduler, flags, timeout, netmask, engine).

    ``HASHED`` is the kernel's bookkeeping and a netmask of 0 means the full
    one (the writer sends it so), so neither counts as a difference.
    """
    flags = svc.flags & ~ServiceFlags.HASHED
    return (svc.scheduler, int(flags), svc.timeout, svc.netmask or full_netmask(svc.key.family), svc.pe_name)


def real_server_settings(rs: RealServer, weight: int | None = None) -> RealServerSettings:
    """What an edit of the real server can change; ``weight`` overrides the object's (a hold)."""
    tunnelled = rs.forward is Forward.TUNNEL
    return (
        rs.weight if weight is None else weight,
        rs.forward,
        rs.upper_threshold,
        rs.lower_threshold,
        rs.tunnel_type if tunnelled else 0,
        rs.tunnel_port if tunnelled else 0,
        rs.tunnel_flags if tunnelled else 0,
    )


def same_real_server(a: RealServer, b: RealServer) -> bool:
    """``real_server_settings(a) == real_server_settings(b)``, without building the tuples (100 000 per plan)."""
    if a.weight != b.weight or a.forward is not b.forward:
        return False
    if a.upper_threshold != b.upper_threshold or a.lower_threshold != b.lower_threshold:
        return False
    return a.forward is not Forward.TUNNEL or (
        a.tunnel_type == b.tunnel_type and a.tunnel_port == b.tunnel_port and a.tunnel_flags == b.tunnel_flags
    )


def _persistence(svc: VirtualService) -> str:
    if not svc.flags & ServiceFlags.PERSISTENT:
        return "no"
    text = f"{svc.timeout} s"
    netmask = svc.netmask or full_netmask(svc.key.family)
    if netmask != full_netmask(svc.key.family):
        text += f" netmask {netmask_text(svc.key.family, netmask)}"
    return text


def _service_fields(svc: VirtualService) -> dict[str, str]:
    flags = flag_names(svc.scheduler, svc.flags)
    return {
        "scheduler": svc.scheduler,
        "flags": ",".join(flags) or "none",
        "persistent": _persistence(svc),
        "one-packet": "yes" if svc.flags & ServiceFlags.ONEPACKET else "no",
        "engine": svc.pe_name or "none",
    }


def describe_service(svc: VirtualService) -> str:
    """``scheduler mh, flags mh-fallback, persistent 300 s``: the settings that differ from the defaults."""
    shown = _service_fields(svc)
    parts = [f"scheduler {shown['scheduler']}"]
    if shown["flags"] != "none":
        parts.append(f"flags {shown['flags']}")
    if shown["persistent"] != "no":
        parts.append(f"persistent {shown['persistent']}")
    if shown["one-packet"] == "yes":
        parts.append("one-packet")
    if shown["engine"] != "none":
        parts.append(f"engine {shown['engine']}")
    return ", ".join(parts)


def service_differences(old: VirtualService, new: VirtualService) -> list[tuple[str, str, str]]:
    """``(scheduler, rr, wlc)``: the name, old and new text of each setting that differs."""
    before, after = _service_fields(old), _service_fields(new)
    return [(name, before[name], after[name]) for name in before if before[name] != after[name]]


def service_changes(old: VirtualService, new: VirtualService) -> list[str]:
    """``scheduler rr → wlc``, one item per setting that differs."""
    return [f"{name} {a} → {b}" for name, a, b in service_differences(old, new)]


def _tunnel(rs: RealServer) -> str:
    kind = TUNNEL_TYPE_NAMES.get(rs.tunnel_type, str(rs.tunnel_type))
    text = kind
    if rs.tunnel_port:
        text += f" port {rs.tunnel_port}"
    if rs.tunnel_flags:
        text += " " + TUNNEL_CHECKSUM_NAMES.get(rs.tunnel_flags, f"flags {rs.tunnel_flags}")
    return text


def _real_server_fields(rs: RealServer, weight: int | None = None) -> dict[str, str]:
    fields = {
        "forward": rs.forward.label,
        "weight": str(rs.weight if weight is None else weight),
        "upper threshold": str(rs.upper_threshold),
        "lower threshold": str(rs.lower_threshold),
    }
    fields["tunnel"] = _tunnel(rs) if rs.forward is Forward.TUNNEL else "none"
    return fields


def describe_real_server(rs: RealServer, weight: int | None = None) -> str:
    """``masq, weight 5, upper threshold 100``: the settings, the zero ones left out."""
    shown = _real_server_fields(rs, weight)
    parts = [
        shown["forward"] if shown["tunnel"] == "none" else f"tunnel {shown['tunnel']}",
        f"weight {shown['weight']}",
    ]
    for name in ("upper threshold", "lower threshold"):
        if shown[name] != "0":
            parts.append(f"{name} {shown[name]}")
    return ", ".join(parts)


def real_server_changes(
    old: RealServer, new: RealServer, *, old_weight: int | None = None, new_weight: int | None = None
) -> list[str]:
    """``weight 5 → 10``, one item per setting that differs."""
    return [f"{name} {a} → {b}" for name, a, b in real_server_differences(old, new, old_weight, new_weight)]


def real_server_differences(
    old: RealServer, new: RealServer, old_weight: int | None = None, new_weight: int | None = None
) -> list[tuple[str, str, str]]:
    """``(weight, 5, 10)``: the name, old and new text of each setting that differs."""
    before, after = _real_server_fields(old, old_weight), _real_server_fields(new, new_weight)
    return [(name, before[name], after[name]) for name in before if before[name] != after[name]]


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DesiredTable:
    """The services (with their real servers) the kernel must hold, in config order."""

    services: tuple[VirtualService, ...] = ()
    _index: Mapping[ServiceKey, VirtualService] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", MappingProxyType({svc.key: svc for svc in self.services}))

    def service(self, key: ServiceKey) -> VirtualService | None:
        return self._index.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[VirtualService]:
        return iter(self.services)

    def __len__(self) -> int:
        return len(self.services)

    @property
    def real_server_count(self) -> int:
        return sum(len(s.real_servers) for s in self.services)

    def keys(self) -> frozenset[ServiceKey | tuple[ServiceKey, RealServerKey]]:
        """Every service key and (service, real server) pair: what lvsguard owns once this is applied."""
        out: set[ServiceKey | tuple[ServiceKey, RealServerKey]] = set()
        for svc in self.services:
            out.add(svc.key)
            out.update((svc.key, rs.key) for rs in svc.real_servers)
        return frozenset(out)


def strip_real_servers(svc: VirtualService) -> VirtualService:
    """The service alone, as ``add_service`` and ``edit_service`` take it."""
    return replace(svc, real_servers=()) if svc.real_servers else svc
