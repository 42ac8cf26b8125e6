"""The model prints and parses identities the way an operator writes them."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from lvsguard.model import (
    Forward,
    RealServer,
    RealServerKey,
    ServiceKey,
    Stats,
    VirtualService,
    fast_constructor,
)


@pytest.mark.parametrize(
    "text, key, printed",
    [
        ("TCP 192.0.2.10:80", ServiceKey("TCP", "192.0.2.10", 80, 0, 4), "TCP 192.0.2.10:80"),
        ("udp 192.0.2.10:53", ServiceKey("UDP", "192.0.2.10", 53, 0, 4), "UDP 192.0.2.10:53"),
        ("SCTP [2001:DB8:0::10]:9", ServiceKey("SCTP", "2001:db8::10", 9, 0, 6), "SCTP [2001:db8::10]:9"),
        ("FWM 7", ServiceKey("FWM", "", 0, 7, 4), "FWM 7"),
        ("fwm 7 ipv6", ServiceKey("FWM", "", 0, 7, 6), "FWM 7 IPv6"),
    ],
    ids=["tcp-v4", "udp-lowercase", "sctp-v6-normalised", "fwmark", "fwmark-v6"],
)
def test_service_key_parses_and_prints(text: str, key: ServiceKey, printed: str) -> None:
    assert ServiceKey.parse(text) == key
    assert str(key) == printed
    assert ServiceKey.parse(str(key)) == key


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("TCP", "expected"),
        ("ICMP 192.0.2.1:0", "protocol must be"),
        ("TCP 192.0.2.300:80", "not an IP address"),
        ("TCP 192.0.2.1:70000", "port must be"),
        ("TCP [2001:db8::1:80", "expected [IPv6]:PORT"),
        ("FWM x", "FWM MARK"),
        ("TCP 192.0.2.1", "ADDRESS:PORT"),
    ],
    ids=["no-address", "bad-protocol", "bad-address", "bad-port", "unclosed-bracket", "bad-mark", "no-port"],
)
def test_service_key_rejects_bad_text(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        ServiceKey.parse(text)


@pytest.mark.parametrize(
    "text", ["10.0.1.2:80", "0.0.0.0:0", "255.255.255.255:65535", "[::ffff:10.0.1.2]:80", " 10.0.1.2:80 "]
)
def test_real_server_key_parses_as_ipaddress_does(text: str) -> None:
    host, _, port = text.strip().removeprefix("[").rpartition(":")
    address = ipaddress.ip_address(host.removesuffix("]"))
    assert RealServerKey.parse(text) == RealServerKey(address.compressed, int(port), address.version)


@pytest.mark.parametrize(
    "host", ["010.0.1.2", "10.0.1", "10.0.1.2.3", "256.0.1.2", "10.0.1.-2", "१0.0.1.2", "10.0.1.2 "]
)
def test_real_server_key_refuses_what_ipaddress_refuses(host: str) -> None:
    with pytest.raises(ValueError, match=f"{host!r} is not an IP address"):
        RealServerKey.parse(f"{host}:80")


def test_real_server_key_v6_prints_brackets() -> None:
    key = RealServerKey.parse("[2001:db8::2]:8080")
    assert key == RealServerKey("2001:db8::2", 8080, 6)
    assert str(key) == "[2001:db8::2]:8080"


@pytest.mark.parametrize(
    "name, method",
    [
        ("masq", Forward.MASQ),
        ("nat", Forward.MASQ),
        ("DR", Forward.ROUTE),
        ("gate", Forward.ROUTE),
        ("ipip", Forward.TUNNEL),
        ("local", Forward.LOCAL),
    ],
)
def test_forward_names_and_aliases(name: str, method: Forward) -> None:
    assert Forward.from_name(name) is method


def test_forward_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown forwarding method 'bridge'"):
        Forward.from_name("bridge")


def test_fast_constructor_equals_init_and_stays_frozen() -> None:
    make = fast_constructor(Stats)
    values = (1, 2, 3, 2**64 - 1, 5, 6, 7, 8, 9, 10)
    built = make(*values)
    assert type(built) is Stats
    assert built == Stats(*values)
    assert hash(built) == hash(Stats(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.connections = 0  # type: ignore[misc]


def test_fast_constructor_builds_nested_real_server() -> None:
    make = fast_constructor(RealServer)
    key = RealServerKey("10.0.1.2", 80)
    stats = Stats(1, 2, 3, 4, 5)
    rs = make(key, 3, Forward.MASQ, 100, 10, 4, 5, 6, stats, 0, 0, 0)
    assert rs == RealServer(key, 3, Forward.MASQ, 100, 10, 4, 5, 6, stats)
    assert str(rs) == "10.0.1.2:80"


def test_virtual_service_lookup_and_persistence_flag() -> None:
    rs = RealServer(RealServerKey("10.0.1.2", 80), 1, Forward.ROUTE)
    svc = VirtualService(ServiceKey.parse("TCP 192.0.2.10:80"), "wlc", flags=0x1, timeout=300, real_servers=(rs,))
    assert svc.persistent
    assert svc.real_server(RealServerKey("10.0.1.2", 80)) is rs
    assert svc.real_server(RealServerKey("10.0.1.3", 80)) is None
    assert str(svc) == "TCP 192.0.2.10:80 (wlc)"
