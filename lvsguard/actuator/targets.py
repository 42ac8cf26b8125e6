"""Which real server an alert or a request is about.

An alert names its real server with the exporter's labels (``proto``,
``local_address``, ``local_port``, ``local_mark``, ``remote_address``,
``remote_port``, as node_exporter's IPVS collector) or with the config's names
(``service``, ``real_server``). Resolving is pure: it needs only the labels and
the names, so the webhook tests run without a kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lvsguard.actuator.settings import Names
from lvsguard.errors import TargetError
from lvsguard.labels import parse_mark_label
from lvsguard.model import FWM, PROTOCOLS, RealServerKey, ServiceKey, format_endpoint, parse_endpoint


@dataclass(frozen=True, slots=True)
class Target:
    """One real server of one virtual service: what every action is about."""

    service: ServiceKey
    real_server: RealServerKey

    @classmethod
    def parse(cls, service: str, real_server: str) -> Target:
        """From the ledger's text columns (``TCP 192.0.2.10:80``, ``10.0.1.2:80``)."""
        return cls(ServiceKey.parse(service), RealServerKey.parse(real_server))

    def __str__(self) -> str:
        return f"real server {self.real_server} of {self.service}"


def _endpoint(labels: Mapping[str, str], address_label: str, port_label: str) -> tuple[str, int, int]:
    """(address, port, family) of an address label and a port label; TargetError names both."""
    address, port = labels.get(address_label, ""), labels.get(port_label, "")
    try:
        return parse_endpoint(format_endpoint(address, int(port) if port.isdigit() else -1))
    except ValueError:
        raise TargetError(
            f"labels {address_label}={address!r} {port_label}={port!r} are not an address and a port"
        ) from None


def service_from_labels(labels: Mapping[str, str], names: Names) -> ServiceKey:
    """The virtual service named by the labels (exporter labels first, then the config name)."""
    mark = labels.get("local_mark", "")
    if mark:
        try:
            fwmark = parse_mark_label(mark)
        except ValueError as exc:
            raise TargetError(str(exc)) from None
        family = 6 if ":" in labels.get("remote_address", "") else 4
        return ServiceKey(FWM, "", 0, fwmark, family)
    address = labels.get("local_address", "")
    if address:
        proto = labels.get("proto", "").upper()
        if proto not in PROTOCOLS:
            raise TargetError(f"label proto={labels.get('proto', '')!r} must be TCP, UDP or SCTP")
        address, port_number, family = _endpoint(labels, "local_address", "local_port")
        return ServiceKey(proto, address, port_number, 0, family)
    name = labels.get("service", "")
    if name:
        try:
            return names.services[name]
        except KeyError:
            raise TargetError(f"label service={name!r} names no service in the config") from None
    raise TargetError("no service in the labels: need local_address+local_port+proto, local_mark or service")


def target_from_labels(labels: Mapping[str, str], names: Names) -> Target:
    """The real server named by the labels; TargetError says what is missing."""
    service = service_from_labels(labels, names)
    address = labels.get("remote_address", "")
    if address:
        addr, port_number, family = _endpoint(labels, "remote_address", "remote_port")
        return Target(service, RealServerKey(addr, port_number, family))
    name = labels.get("real_server", "")
    if name:
        try:
            return Target(service, names.real_servers[service][name])
        except KeyError:
            raise TargetError(f"label real_server={name!r} names no real server of {service} in the config") from None
    raise TargetError(f"no real server of {service} in the labels: need remote_address+remote_port or real_server")
