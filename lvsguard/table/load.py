"""The ``table`` section and the table keys of ``services``, from a parsed YAML mapping.

``load_table(mapping)`` takes what ``yaml.safe_load`` returns for a config
file and gives the table settings, the desired table and every problem as a
``(path, message)`` pair (``services[0].real_servers[2].weight``, ``must be
0..65535, got -1``), all of them, in file order. The config loader maps a path
to its line; nothing here opens a file. docs/table.md describes the keys.

``service_mapping`` is the inverse: the canonical YAML mapping of a desired
service, which the importers print. ``load_table`` of what it writes gives
the same service back (a unit test holds them together).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceFlags, ServiceKey, VirtualService
from lvsguard.table.desired import (
    DEFAULT_WEIGHT,
    TUNNEL_CHECKSUM_NAMES,
    TUNNEL_CHECKSUMS,
    TUNNEL_TYPE_NAMES,
    TUNNEL_TYPES,
    DesiredTable,
    check_engine,
    check_scheduler,
    flag_names,
    full_netmask,
    make_real_server,
    make_service,
    netmask_text,
    parse_netmask,
    parse_scheduler_flag,
)
from lvsguard.table.plan import PRUNE_POLICIES

DRIFT_POLICIES = ("report", "correct")
TABLE_SOURCES = ("config", "cluster")

__all__ = [
    "DEFAULT_SCHEDULER",
    "DRIFT_POLICIES",
    "TABLE_SOURCES",
    "Problem",
    "TableSettings",
    "load_table",
    "load_table_text",
    "real_server_name",
    "service_mapping",
    "service_name",
]

DEFAULT_SCHEDULER = "wlc"
DEFAULT_FORWARD = Forward.ROUTE  # the kernel's and ipvsadm's default
FORWARDS = ("masq", "route", "tunnel")
MAX_WEIGHT = 65535  # ipvsadm's limit
MAX_U32 = 0xFFFFFFFF

SERVICE_KEYS = (
    "name",
    "service",
    "scheduler",
    "scheduler_flags",
    "persistence",
    "one_packet",
    "forward",
    "real_servers",
)
REAL_SERVER_KEYS = ("name", "address", "weight", "forward", "upper_threshold", "lower_threshold", "tunnel")
TABLE_KEYS = ("manage", "prune", "drift", "drift_interval", "source")
PERSISTENCE_KEYS = ("timeout", "netmask", "engine")
TUNNEL_KEYS = ("type", "port", "checksum")


Problem = tuple[str, str]


@dataclass(frozen=True, slots=True)
class TableSettings:
    """Section ``table``: whether lvsguard owns the kernel's table, and what it removes."""

    manage: bool = False  # False: ``services`` only names what the kernel has
    prune: str = "owned"  # owned: remove only what lvsguard created; exact: everything not in the config
    drift: str = "report"  # a hand change to a managed entry: report (left as it is) or correct (applied back)
    drift_interval: float = 30.0  # seconds between two comparisons of the managed entries; 0: never
    source: str = "config"  # config: this file's services are the table; cluster: the cluster's record (etcd)


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))


def _mapping(value: Any, path: str, keys: tuple[str, ...], problems: _Problems) -> Mapping[str, Any] | None:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(path, f"must be a mapping, got {_kind(value)}")
        return None
    for key in value:
        if key not in keys:
            problems.add(f"{path}.{key}" if path else str(key), f"unknown key (one of {', '.join(keys)})")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _integer(value: Any, path: str, low: int, high: int, problems: _Problems) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(path, f"must be an integer {low}..{high}, got {_kind(value)}")
        return None
    if not low <= value <= high:
        problems.add(path, f"must be {low}..{high}, got {value}")
        return None
    return value


def _boolean(value: Any, path: str, problems: _Problems) -> bool:
    if not isinstance(value, bool):
        problems.add(path, f"must be true or false, got {_kind(value)}")
        return False
    return value


def _string(value: Any, path: str, problems: _Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(path, f"must be a string, got {_kind(value)}")
        return None
    return value


def load_table(config: Mapping[str, Any] | None) -> tuple[TableSettings, DesiredTable, list[Problem]]:
    """The ``table`` section, the desired table of ``services``, and every problem found.

    An item of ``services`` that is already a desired service (one a reload did not change,
    ``lvsguard.config.reuse``) is taken as it is.
    """
    problems = _Problems()
    settings = _settings((config or {}).get("table"), problems)
    services: list[VirtualService] = []
    raw = (config or {}).get("services")
    if raw is not None and not isinstance(raw, list):
        problems.add("services", f"must be a list, got {_kind(raw)}")
        raw = None
    seen: dict[ServiceKey, str] = {}
    for i, item in enumerate(raw or ()):
        svc = item if isinstance(item, VirtualService) else _service(item, f"services[{i}]", problems)
        if svc is None:
            continue
        if svc.key in seen:
            problems.add(f"services[{i}].service", f"{svc.key} is already {seen[svc.key]}")
            continue
        seen[svc.key] = f"services[{i}]"
        services.append(svc)
    return settings, DesiredTable(tuple(services)), problems.items


def load_table_text(text: str, filename: str = "<string>") -> tuple[TableSettings, DesiredTable, Mapping[str, Any]]:
    """``load_table`` of a YAML config file's text; every problem a ConfigError at its file:line:column.

    Also returns the whole parsed mapping (for ``director.netns``).
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        raise ConfigError(
            [ConfigProblem(filename, *where, "", f"YAML syntax error: {exc.problem or exc.context}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(filename, 0, 0, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError([ConfigProblem(filename, 1, 1, "", "a config is a mapping of sections")])
    settings, desired, problems = load_table(data)
    if problems:
        raise ConfigError(
            [
                ConfigProblem(filename, *_position(root, path, message.startswith("unknown key")), path, message)
                for path, message in problems
            ]
        )
    return settings, desired, data or {}


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _position(root: Node | None, path: str, at_key: bool = False) -> tuple[int, int]:
    """(line, column) of the deepest node ``path`` reaches; ``at_key``: of its last key rather than its value."""
    node = root
    best = (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (0, 0)
    segments = _SEGMENT.findall(path)
    for i, (name, index) in enumerate(segments):
        nxt: Node | None = None
        if name and isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == name:
                    nxt = key if at_key and i == len(segments) - 1 else value
                    break
        elif index and isinstance(node, SequenceNode) and int(index) < len(node.value):
            nxt = node.value[int(index)]
        if nxt is None:
            return best
        node = nxt
        best = (node.start_mark.line + 1, node.start_mark.column + 1)
    return best


def _settings(value: Any, problems: _Problems) -> TableSettings:
    from lvsguard.config.schema import seconds  # here: lvsguard.config imports this module

    section = _mapping(value, "table", TABLE_KEYS, problems)
    if not section:
        return TableSettings()
    manage = _boolean(section["manage"], "table.manage", problems) if "manage" in section else False
    prune = section.get("prune", "owned")
    if prune not in PRUNE_POLICIES:
        problems.add("table.prune", f"must be one of {', '.join(PRUNE_POLICIES)}, got {_kind(prune)}")
        prune = "owned"
    drift = section.get("drift", "report")
    if drift not in DRIFT_POLICIES:
        problems.add("table.drift", f"must be one of {', '.join(DRIFT_POLICIES)}, got {_kind(drift)}")
        drift = "report"
    interval = section.get("drift_interval", 30.0)
    try:
        interval = seconds(interval)
    except ValueError as exc:
        problems.add("table.drift_interval", str(exc))
        interval = 30.0
    if interval < 0:
        problems.add("table.drift_interval", f"must be at least 0 seconds, got {interval:g}")
        interval = 30.0
    source = section.get("source", "config")
    if source not in TABLE_SOURCES:
        problems.add("table.source", f"must be one of {', '.join(TABLE_SOURCES)}, got {_kind(source)}")
        source = "config"
    return TableSettings(manage=manage, prune=prune, drift=drift, drift_interval=interval, source=source)


def _service(item: Any, path: str, problems: _Problems) -> VirtualService | None:
    entry = _mapping(item, path, SERVICE_KEYS, problems)
    if entry is None:
        return None
    text = entry.get("service")
    if text is None:
        problems.add(f"{path}.service", "required key is missing")
        return None
    if not isinstance(text, str):
        problems.add(f"{path}.service", f"must be a service like 'TCP 192.0.2.10:80' or 'FWM 1', got {_kind(text)}")
        return None
    try:
        key = ServiceKey.parse(text)
    except ValueError as exc:
        problems.add(f"{path}.service", str(exc))
        return None
    scheduler = DEFAULT_SCHEDULER
    if "scheduler" in entry:
        value = _string(entry["scheduler"], f"{path}.scheduler", problems)
        try:
            scheduler = check_scheduler(value) if value is not None else scheduler
        except ValueError as exc:
            problems.add(f"{path}.scheduler", str(exc))
    flags = _scheduler_flags(entry.get("scheduler_flags"), scheduler, f"{path}.scheduler_flags", problems)
    timeout, netmask, engine = _persistence(entry.get("persistence"), key.family, f"{path}.persistence", problems)
    one_packet = _boolean(entry["one_packet"], f"{path}.one_packet", problems) if "one_packet" in entry else False
    if one_packet and key.protocol not in ("UDP", "FWM"):
        problems.add(f"{path}.one_packet", f"one-packet scheduling is for UDP and fwmark services, not {key.protocol}")
    forward = _forward(entry.get("forward"), f"{path}.forward", problems) or DEFAULT_FORWARD
    servers = _real_servers(entry.get("real_servers"), key, forward, f"{path}.real_servers", problems)
    return make_service(
        key,
        scheduler,
        scheduler_flags=flags,
        persistence=timeout,
        netmask=netmask,
        pe_name=engine,
        one_packet=one_packet,
        real_servers=servers,
    )


def _scheduler_flags(value: Any, scheduler: str, path: str, problems: _Problems) -> int:
    if value is None:
        return 0
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list):
        problems.add(path, f"must be a list of flag names, got {_kind(value)}")
        return 0
    flags = 0
    for i, name in enumerate(names):
        if not isinstance(name, str):
            problems.add(f"{path}[{i}]", f"must be a flag name, got {_kind(name)}")
            continue
        try:
            flags |= parse_scheduler_flag(scheduler, name)
        except ValueError as exc:
            problems.add(f"{path}[{i}]", str(exc))
    return flags


def _persistence(value: Any, family: int, path: str, problems: _Problems) -> tuple[int, int, str]:
    """(timeout, netmask, engine); ``persistence: 300`` is short for ``{timeout: 300}``."""
    if value is None:
        return 0, 0, ""
    if not isinstance(value, Mapping):
        timeout = _integer(value, path, 1, MAX_U32, problems)
        return timeout or 0, 0, ""
    entry = _mapping(value, path, PERSISTENCE_KEYS, problems) or {}
    if "timeout" not in entry:
        problems.add(f"{path}.timeout", "required key is missing")
        return 0, 0, ""
    timeout = _integer(entry["timeout"], f"{path}.timeout", 1, MAX_U32, problems) or 0
    netmask = 0
    if "netmask" in entry:
        raw = entry["netmask"]
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            problems.add(f"{path}.netmask", f"must be a prefix length or a dotted IPv4 mask, got {_kind(raw)}")
        else:
            try:
                netmask = parse_netmask(family, raw)
            except ValueError as exc:
                problems.add(f"{path}.netmask", str(exc))
    engine = ""
    if "engine" in entry:
        text = _string(entry["engine"], f"{path}.engine", problems)
        try:
            engine = check_engine(text) if text is not None else ""
        except ValueError as exc:
            problems.add(f"{path}.engine", str(exc))
    return timeout, netmask, engine


def _forward(value: Any, path: str, problems: _Problems) -> Forward | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            forward = Forward.from_name(value)
        except ValueError:
            forward = None
        if forward is not None and forward.label in FORWARDS:
            return forward
    problems.add(path, f"must be one of {', '.join(FORWARDS)} (or nat, dr, gate, ipip), got {_kind(value)}")
    return None


def _real_servers(
    value: Any, service: ServiceKey, default_forward: Forward, path: str, problems: _Problems
) -> list[RealServer]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(path, f"must be a list, got {_kind(value)}")
        return []
    out: list[RealServer] = []
    seen: dict[RealServerKey, str] = {}
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        rs = _real_server(item, service, default_forward, where, problems)
        if rs is None:
            continue
        if rs.key in seen:
            problems.add(f"{where}.address", f"{rs.key} is already {seen[rs.key]}")
            continue
        seen[rs.key] = where
        out.append(rs)
    return out


def _real_server(
    item: Any, service: ServiceKey, default_forward: Forward, path: str, problems: _Problems
) -> RealServer | None:
    entry = _mapping(item, path, REAL_SERVER_KEYS, problems)
    if entry is None:
        return None
    address = entry.get("address")
    if not isinstance(address, str):
        problems.add(f"{path}.address", "required key is missing" if address is None else "must be ADDRESS:PORT")
        return None
    try:
        key = RealServerKey.parse(address)
    except ValueError as exc:
        problems.add(f"{path}.address", str(exc))
        return None
    forward = _forward(entry.get("forward"), f"{path}.forward", problems) or default_forward
    if key.family != service.family and forward is not Forward.TUNNEL:
        problems.add(
            f"{path}.address",
            f"an IPv{key.family} real server of an IPv{service.family} service needs forward: tunnel",
        )
    weight = DEFAULT_WEIGHT
    if "weight" in entry:
        weight = _integer(entry["weight"], f"{path}.weight", 0, MAX_WEIGHT, problems) or 0
    upper = 0
    if "upper_threshold" in entry:
        upper = _integer(entry["upper_threshold"], f"{path}.upper_threshold", 0, MAX_U32, problems) or 0
    lower = 0
    if "lower_threshold" in entry:
        lower = _integer(entry["lower_threshold"], f"{path}.lower_threshold", 0, MAX_U32, problems) or 0
        if lower > upper:
            problems.add(f"{path}.lower_threshold", f"must not be above upper_threshold ({upper}), got {lower}")
    tunnel = (0, 0, 0)
    if "tunnel" in entry:
        if forward is not Forward.TUNNEL:
            problems.add(f"{path}.tunnel", f"applies to forward: tunnel only, not {forward.label}")
        else:
            tunnel = _tunnel(entry["tunnel"], f"{path}.tunnel", problems)
    return make_real_server(
        key,
        forward,
        weight,
        upper_threshold=upper,
        lower_threshold=lower,
        tunnel_type=tunnel[0],
        tunnel_port=tunnel[1],
        tunnel_flags=tunnel[2],
    )


def _tunnel(value: Any, path: str, problems: _Problems) -> tuple[int, int, int]:
    entry = _mapping(value, path, TUNNEL_KEYS, problems) or {}
    kind = entry.get("type", "ipip")
    if kind not in TUNNEL_TYPES:
        problems.add(f"{path}.type", f"must be one of {', '.join(TUNNEL_TYPES)}, got {_kind(kind)}")
        return 0, 0, 0
    port = 0
    if "port" in entry:
        port = _integer(entry["port"], f"{path}.port", 1, 65535, problems) or 0
    if kind == "gue" and not port:
        problems.add(f"{path}.port", "a gue tunnel needs the port of the real server's GUE receiver")
    elif kind != "gue" and "port" in entry:
        problems.add(f"{path}.port", f"applies to a gue tunnel only, not {kind}")
    checksum = entry.get("checksum", "nocsum")
    if checksum not in TUNNEL_CHECKSUMS:
        problems.add(f"{path}.checksum", f"must be one of {', '.join(TUNNEL_CHECKSUMS)}, got {_kind(checksum)}")
        checksum = "nocsum"
    elif kind == "ipip" and checksum != "nocsum":
        problems.add(f"{path}.checksum", "applies to gue and gre tunnels only")
    elif kind == "gre" and checksum == "remcsum":
        problems.add(f"{path}.checksum", "remcsum (remote checksum offload) is for gue tunnels only")
    return TUNNEL_TYPES[kind], port, TUNNEL_CHECKSUMS[checksum]


# --- the other way: a desired service as the YAML the importers write --------------------------


def service_name(key: ServiceKey) -> str:
    """A config name for a service that has none: ``tcp-192.0.2.10-80``, ``fwm-1``, ``udp-2001-db8--10-53``."""
    if key.is_fwmark:
        return f"fwm-{key.fwmark}" + ("-ipv6" if key.family == 6 else "")
    return f"{key.protocol.lower()}-{key.address.replace(':', '-')}-{key.port}"


def real_server_name(key: RealServerKey) -> str:
    """A config name for a real server that has none: ``10.0.1.2-80``, ``2001-db8--2-80``."""
    return f"{key.address.replace(':', '-')}-{key.port}"


def service_mapping(
    svc: VirtualService, name: str = "", names: Mapping[RealServerKey, str] | None = None
) -> dict[str, Any]:
    """The canonical YAML mapping of a desired service: every setting that is not its default."""
    names = names or {}
    out: dict[str, Any] = {"name": name or service_name(svc.key), "service": str(svc.key), "scheduler": svc.scheduler}
    flags = flag_names(svc.scheduler, svc.flags)
    if flags:
        out["scheduler_flags"] = flags
    if svc.flags & ServiceFlags.PERSISTENT:
        persistence: dict[str, Any] = {"timeout": svc.timeout}
        if svc.netmask and svc.netmask != full_netmask(svc.key.family):
            persistence["netmask"] = _netmask_value(svc.key.family, svc.netmask)
        if svc.pe_name:
            persistence["engine"] = svc.pe_name
        out["persistence"] = persistence
    if svc.flags & ServiceFlags.ONEPACKET:
        out["one_packet"] = True
    forwards = {rs.forward for rs in svc.real_servers}
    common = forwards.pop() if len(forwards) == 1 else None
    if common is not None and common is not DEFAULT_FORWARD:
        out["forward"] = common.label
    out["real_servers"] = [_real_server_mapping(rs, names.get(rs.key, ""), common) for rs in svc.real_servers]
    return out


def _netmask_value(family: int, netmask: int) -> int | str:
    """A prefix length where the mask is one (IPv6 always), else IPv4's dotted mask."""
    if family == 6:
        return netmask
    length = bin(netmask).count("1")
    solid = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0
    return length if netmask == solid else netmask_text(4, netmask)


def _real_server_mapping(rs: RealServer, name: str, common: Forward | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name or real_server_name(rs.key), "address": str(rs.key)}
    if common is None and rs.forward is not DEFAULT_FORWARD:
        out["forward"] = rs.forward.label
    out["weight"] = rs.weight
    if rs.upper_threshold:
        out["upper_threshold"] = rs.upper_threshold
    if rs.lower_threshold:
        out["lower_threshold"] = rs.lower_threshold
    if rs.forward is Forward.TUNNEL and (rs.tunnel_type or rs.tunnel_port or rs.tunnel_flags):
        tunnel: dict[str, Any] = {"type": TUNNEL_TYPE_NAMES.get(rs.tunnel_type, "ipip")}
        if rs.tunnel_port:
            tunnel["port"] = rs.tunnel_port
        if rs.tunnel_flags:
            tunnel["checksum"] = TUNNEL_CHECKSUM_NAMES.get(rs.tunnel_flags, "nocsum")
        out["tunnel"] = tunnel
    return out
