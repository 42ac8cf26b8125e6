"""Section ``services``: names for virtual services and their real servers.

The names become the ``service`` and ``real_server`` labels and what an
operator types; later sections (``exporter.services``, ``actuator.quorum``,
``probes.checks[]``) refer to services by these names, which ``services``
leaves in the ``Context`` of the load.
"""

from __future__ import annotations

from dataclasses import dataclass

from yaml.nodes import Node

from lvsguard.config.schema import (
    Context,
    Invalid,
    Key,
    Parser,
    Recorded,
    Schema,
    list_of,
    name,
    real_server_key,
    records,
    scalar_text,
    service_key,
    suggest,
)
from lvsguard.model import FWM, PROTOCOLS, RealServerKey, ServiceKey


@dataclass(frozen=True, slots=True)
class RealServerConfig:
    """A named real server of a service (``services[].real_servers[]``)."""

    name: str
    address: RealServerKey


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A named virtual service (``services[]``) and the names of its real servers."""

    name: str
    service: ServiceKey
    real_servers: tuple[RealServerConfig, ...] = ()


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
    },
    unique=("name", "address"),
)

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
        except (Invalid, Recorded):
            ctx.service_names_complete = False
            raise
        ctx.service_names.update((s.name, s.service) for s in services)
        ctx.services = services
        return services

    return parse
