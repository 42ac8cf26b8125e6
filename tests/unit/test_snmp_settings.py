"""SNMP agent settings: every problem reported at once, sorted, each naming its key."""

from __future__ import annotations

import pytest

from lvsguard.errors import ConfigError
from lvsguard.exporter.snmp.layout import DEFAULT_BASE
from lvsguard.exporter.snmp.settings import V3User, build_settings


def test_defaults() -> None:
    settings = build_settings(communities=("public",))
    assert settings.listen == "127.0.0.1:1161"
    assert settings.host_port == ("127.0.0.1", 1161, 4)
    assert settings.base_oid == DEFAULT_BASE


def test_ipv6_listen_and_custom_base() -> None:
    settings = build_settings(listen="[::1]:161", communities=("c",), base_oid=".1.3.6.1.4.1.99999.1")
    assert settings.host_port == ("::1", 161, 6)
    assert settings.base_oid == (1, 3, 6, 1, 4, 1, 99999, 1)


def test_every_problem_at_once() -> None:
    users = (
        V3User("ops", "short", "also-fine-key", "MD5", "DES"),
        V3User("ops", "long-enough-key", "long-enough-key"),
    )
    with pytest.raises(ConfigError) as info:
        build_settings(listen="localhost:1161", users=users, base_oid="1.3.x", max_age=0, engine_id="zz")
    assert [str(p) for p in info.value.problems] == [
        "base_oid: '1.3.x' is not a dotted OID",
        "engine_id: 'zz' is not hexadecimal",
        "listen: 'localhost:1161': 'localhost' is not an IP address",
        "max_age: must be > 0 seconds, got 0",
        "users[0].auth_key: must have at least 8 characters",
        "users[0].auth_protocol: must be one of SHA, SHA-224, SHA-256, SHA-384, SHA-512, got 'MD5'",
        "users[0].priv_protocol: must be one of AES, AES-192, AES-256, got 'DES'; did you mean 'AES'?",
        "users[1].name: duplicate name 'ops' (first in users[0])",
    ]


def test_nothing_to_serve_is_an_error() -> None:
    with pytest.raises(ConfigError, match="neither a v2c community nor a v3 user"):
        build_settings()


def test_keys_never_show_in_repr() -> None:
    user = V3User("ops", "secret-auth-key", "secret-priv-key")
    assert "secret" not in repr(user)
    assert "secret" not in repr(build_settings(users=(user,), communities=("secret-community",)))


def test_reader_provider_serves_the_table_or_nothing_on_a_kernel_error(caplog) -> None:
    from lvsguard.errors import IPVSUnavailable
    from lvsguard.exporter.snmp.snapshot import reader_provider
    from lvsguard.model import Table

    class Reader:
        source = "netlink"

        def __init__(self) -> None:
            self.fail = False

        def read(self) -> Table:
            if self.fail:
                raise IPVSUnavailable("no IPVS in namespace lvs-dir1")
            return Table(())

    reader = Reader()
    provide = reader_provider(reader)
    assert provide().table == Table(())
    reader.fail = True
    assert provide().table is None
    assert "no IPVS in namespace lvs-dir1" in caplog.text


def test_reader_provider_takes_the_config_names() -> None:
    from lvsguard.exporter.snmp.snapshot import Health, reader_provider
    from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService

    web, rs1, rs2 = ServiceKey("TCP", "192.0.2.10", 80), RealServerKey("10.0.0.1", 80), RealServerKey("10.0.0.2", 80)
    table = Table(
        (
            VirtualService(
                web, "rr", real_servers=(RealServer(rs1, 1, Forward.ROUTE), RealServer(rs2, 1, Forward.ROUTE))
            ),
        )
    )

    class Reader:
        source = "netlink"

        def read(self) -> Table:
            return table

    class Names:
        def service_name(self, key: ServiceKey) -> str:
            return "web" if key == web else ""

        def real_server_name(self, service: ServiceKey, key: RealServerKey) -> str:
            return "web-1" if key == rs1 else ""

    snap = reader_provider(Reader(), Names())()
    assert snap.services[web].name == "web"
    assert snap.real_servers[(web, rs1)].name == "web-1"
    assert (web, rs2) not in snap.real_servers
    assert snap.real_servers[(web, rs1)].health is Health.UNKNOWN
