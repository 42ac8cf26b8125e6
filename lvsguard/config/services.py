"""Section ``services``: names for virtual services and their real servers, and with ``table.manage`` the table.

The names become the ``service`` and ``real_server`` labels and what an
operator types; later sections (``exporter.services``, ``actuator.quorum``,
``probes.checks[]``) refer to services by these names, which ``services``
leaves in the ``Context`` of the load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from yaml.nodes import Node

from lvsguard.config.reuse import TAG as REUSED
from lvsguard.config.schema import (
    Built,
    Context,
    Invalid,
    Key,
    Parser,
    Recorded,
    Schema,
    boolean,
    list_of,
    name,
    real_server_key,
    records,
    scalar_text,
    service_key,
    suggest,
)
from lvsguard.config.table import (
    check_table,
    forward_method,
    persistence_spec,
    scheduler_flag_list,
    scheduler_name,
    threshold,
    tunnel_spec,
    weight_value,
)
from lvsguard.model import FWM, PROTOCOLS, RealServerKey, ServiceKey


class NameIndex:
    """Names by key (service; service and real server), made at the first lookup and then kept.

    A reload makes a new config, and the actuator new settings, each with its
    lookups: for 100 000 real servers, building them took 0.3 s each, on the
    reload's way to the kernel, for lookups the API, the console and a scrape
    make later, if at all. ``services`` gives (name, service key) pairs,
    ``real_servers`` (service key, name, real server key) triples; the first
    name of a key wins.
    """

    __slots__ = ("_built", "_real_servers", "_services")

    def __init__(
        self,
        services: Callable[[], Iterable[tuple[str, ServiceKey]]],
        real_servers: Callable[[], Iterable[tuple[ServiceKey, str, RealServerKey]]],
    ) -> None:
        self._services, self._real_servers = services, real_servers
        self._built: list[tuple[dict[ServiceKey, str], dict[tuple[ServiceKey, RealServerKey], str]]] = []

    def _index(self) -> tuple[dict[ServiceKey, str], dict[tuple[ServiceKey, RealServerKey], str]]:
        if not self._built:  # two threads may both build it: the same dicts, one kept
            services: dict[ServiceKey, str] = {}
            for name, key in self._services():
                services.setdefault(key, name)
            real_servers: dict[tuple[ServiceKey, RealServerKey], str] = {}
            for service, name, rs in self._real_servers():
                real_servers.setdefault((service, rs), name)
            self._built.append((services, real_servers))
        return self._built[0]

    def service_name(self, key: ServiceKey) -> str:
        return self._index()[0].get(key, "")

    def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str:
        return self._index()[1].get((service, key), "")


@dataclass(frozen=True, slots=True)
class RealServerConfig:
    """A named real server of a service (``services[].real_servers[]``).

    The table keys keep the values as given: ``lvsguard.table.load`` checks
    them and builds the desired table (``Config.desired``) from them.
    """

    name: str
    address: RealServerKey
    weight: Any = 1
    forward: Any = None  # None: the service's
    upper_threshold: Any = 0
    lower_threshold: Any = 0
    tunnel: Any = None


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A named virtual service (``services[]``) and the names of its real servers; table keys as in RealServerConfig."""

    name: str
    service: ServiceKey
    real_servers: tuple[RealServerConfig, ...] = ()
    scheduler: Any = "wlc"
    scheduler_flags: Any = ()
    persistence: Any = None
    one_packet: Any = False
    forward: Any = "route"


REAL_SERVER = Schema(
    RealServerConfig,
    {
        "name": Key(
            name, required=True, doc="The real server's name (the `real_server` label); unique within its service."
        ),
        "address": Key(
            real_server_key,
            required=True,
            doc='The real server as the kernel knows it (`10.0.1.2:80`, `"[2001:db8:1::2]:80"`); unique within its service.',
        ),
        "weight": Key(weight_value, doc="With `table.manage`: its weight (`ipvsadm -w`)."),
        "forward": Key(
            forward_method,
            doc="With `table.manage`: its forwarding method (`-m`, `-g`, `-i`); an IPv4 real server of an IPv6 "
            "service (or the reverse) must be tunnelled.",
        ),
        "upper_threshold": Key(
            threshold, doc="With `table.manage`: no new connection above this many (`-x`); 0: no limit."
        ),
        "lower_threshold": Key(
            threshold, doc="With `table.manage`: connections again once below this many (`-y`); at most the upper."
        ),
        "tunnel": Key(
            tunnel_spec,
            doc="With `forward: tunnel`: `{type: ipip|gue|gre, port: P, checksum: nocsum|csum|remcsum}` "
            "(`--tun-type`, `--tun-port`, `--tun-*csum`); `port` is required for `gue` (docs/table.md).",
        ),
    },
    unique=("name", "address"),
)


def reused_entry(item: Node, ctx: Context) -> Built | None:
    """A placeholder of ``lvsguard.config.reuse``: the entry as the load that last took its text built it."""
    if not ctx.reused or item.tag != REUSED:
        return None
    entry = ctx.reused[int(item.value)]
    service = entry.config
    return service, {"name": (item, item), "service": (item, item)}, {"name": service.name, "service": service.service}


SERVICE = Schema(
    ServiceConfig,
    {
        "name": Key(name, required=True, doc="The service's name (the `service` label); unique among services."),
        "service": Key(
            service_key,
            required=True,
            doc='The virtual service: `TCP 192.0.2.10:80`, `"UDP [2001:db8::10]:53"`, `FWM 1`; unique among services.',
        ),
        "real_servers": Key(records(REAL_SERVER), doc="Names of this service's real servers."),
        "scheduler": Key(scheduler_name, doc="With `table.manage`: the scheduler (`ipvsadm -s`)."),
        "scheduler_flags": Key(
            scheduler_flag_list,
            doc="With `table.manage`: scheduler flags (`-b`): `sh-fallback`, `sh-port`, `mh-fallback`, `mh-port`, "
            "`flag-1`..`flag-3`.",
        ),
        "persistence": Key(
            persistence_spec,
            doc="With `table.manage`: seconds of persistence (`-p`), or `{timeout: S, netmask: M, engine: E}` "
            "(`-M`, `--pe`) (docs/table.md).",
        ),
        "one_packet": Key(
            boolean, doc="With `table.manage`: one-packet scheduling (`-o`), UDP and fwmark services only."
        ),
        "forward": Key(
            forward_method,
            doc="With `table.manage`: the forwarding method of its real servers that set none: `masq`, `route`, "
            "`tunnel` (or `nat`, `dr`, `gate`, `ipip`).",
        ),
    },
    unique=("name", "service"),
)


def service_refs(node: Node, path: str, ctx: Context) -> tuple[ServiceKey, ...]:
    """Services given by name (from ``services``) or by key (``TCP 192.0.2.10:80``); repeats are dropped."""
    return tuple(dict.fromkeys(list_of(service_ref)(node, path, ctx)))


def service_ref(node: Node, path: str, ctx: Context) -> ServiceKey:
    value = scalar_text(node)
    words = value.split()
    if len(words) > 1 and words[0].upper() in (*PROTOCOLS, FWM):
        return service_key(node, path, ctx)
    if value in ctx.service_names:
        return ctx.service_names[value]
    if not ctx.service_names_complete:
        raise Recorded()  # the name may be that of a service entry with a problem of its own
    known = (
        f" (named services: {', '.join(sorted(ctx.service_names))})"
        if ctx.service_names
        else " (no service is named in 'services')"
    )
    raise Invalid(
        f"{value!r} is neither a service name nor a service like 'TCP 192.0.2.10:80'{suggest(value, ctx.service_names) or known}"
    )


def named_services(parser: Parser) -> Parser:
    """Parse ``services`` and remember its names for the sections that refer to them."""

    def parse(node: Node, path: str, ctx: Context) -> tuple[ServiceConfig, ...]:
        try:
            services: tuple[ServiceConfig, ...] = parser(node, path, ctx)
        except Invalid:  # not a list: the driver records it
            ctx.service_names_complete = False
            raise
        except Recorded:
            ctx.service_names_complete = False
            check_table(node, path, ctx)  # the table keys' problems too, in the same report
            raise
        ctx.service_names.update((s.name, s.service) for s in services)
        ctx.services = services
        count = len(ctx.problems)
        ctx.desired = check_table(node, path, ctx)
        if len(ctx.problems) > count:
            raise Recorded()  # the names are sound: later sections may still refer to them
        return services

    return parse
