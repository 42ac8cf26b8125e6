"""The table keys of ``services`` load into the desired table, every problem named by its path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from lvsguard.errors import ConfigError
from lvsguard.model import Forward, RealServerKey, ServiceFlags, ServiceKey
from lvsguard.table.load import TableSettings, load_table, load_table_text, service_mapping

FULL = """
table: {manage: true, prune: exact}
services:
  - name: web
    service: TCP 192.0.2.10:80
    scheduler: mh
    scheduler_flags: [mh-fallback, mh-port]
    persistence: {timeout: 300, netmask: 24, engine: sip}
    forward: masq
    real_servers:
      - {name: web1, address: "10.0.1.2:80", weight: 5, upper_threshold: 100, lower_threshold: 10}
      - {name: web2, address: "10.0.1.3:80", forward: tunnel, tunnel: {type: gue, port: 6080, checksum: remcsum}}
  - name: dns
    service: "UDP [2001:db8::10]:53"
    one_packet: true
    persistence: 60
    real_servers:
      - {name: dns1, address: "[2001:db8:1::2]:53"}
      - {name: v4, address: "10.0.1.4:53", forward: tunnel}
"""


def test_every_table_key_loads() -> None:
    settings, desired, problems = load_table(yaml.safe_load(FULL))
    assert problems == []
    assert settings == TableSettings(manage=True, prune="exact")
    web = desired.service(ServiceKey.parse("TCP 192.0.2.10:80"))
    assert web is not None
    assert (web.scheduler, web.timeout, web.netmask, web.pe_name) == ("mh", 300, 0xFFFFFF00, "sip")
    assert web.flags == ServiceFlags.PERSISTENT | ServiceFlags.SCHED1 | ServiceFlags.SCHED2
    web1, web2 = web.real_servers
    assert (web1.forward, web1.weight, web1.upper_threshold, web1.lower_threshold) == (Forward.MASQ, 5, 100, 10)
    assert (web2.forward, web2.weight, web2.tunnel_type, web2.tunnel_port, web2.tunnel_flags) == (
        Forward.TUNNEL,
        1,
        1,
        6080,
        2,
    )
    dns = desired.service(ServiceKey.parse("UDP [2001:db8::10]:53"))
    assert dns is not None
    assert dns.flags == ServiceFlags.PERSISTENT | ServiceFlags.ONEPACKET and dns.netmask == 128
    assert [rs.forward for rs in dns.real_servers] == [Forward.ROUTE, Forward.TUNNEL]
    assert dns.real_servers[1].key == RealServerKey("10.0.1.4", 53, 4)


def test_a_names_only_config_is_not_managed() -> None:
    settings, desired, problems = load_table(
        {"services": [{"name": "web", "service": "TCP 192.0.2.10:80", "real_servers": []}]}
    )
    assert problems == [] and settings.manage is False and len(desired) == 1


def test_service_mapping_loads_back_to_the_same_service() -> None:
    _, desired, _ = load_table(yaml.safe_load(FULL))
    again = [service_mapping(svc) for svc in desired]
    _, reloaded, problems = load_table({"services": yaml.safe_load(yaml.safe_dump(again))})
    assert problems == [] and reloaded.services == desired.services


def _problems(services: list[dict[str, Any]], table: Any = None) -> list[tuple[str, str]]:
    config: dict[str, Any] = {"services": services}
    if table is not None:
        config["table"] = table
    return load_table(config)[2]


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"scheduler": "Round Robin"}, ("services[0].scheduler", "not a scheduler name")),
        ({"scheduler_flags": ["sh-port"]}, ("services[0].scheduler_flags[0]", "unknown flag 'sh-port'")),
        ({"persistence": 0}, ("services[0].persistence", "must be 1..4294967295, got 0")),
        ({"persistence": {"netmask": 24}}, ("services[0].persistence.timeout", "required key is missing")),
        ({"persistence": {"timeout": 5, "netmask": "1.2.3"}}, ("services[0].persistence.netmask", "not a netmask")),
        ({"one_packet": True}, ("services[0].one_packet", "for UDP and fwmark services, not TCP")),
        ({"forward": "local"}, ("services[0].forward", "must be one of masq, route, tunnel")),
        ({"schedular": "rr"}, ("services[0].schedular", "unknown key")),
    ],
    ids=["scheduler", "flag-of-another-scheduler", "zero-timeout", "no-timeout", "netmask", "ops-tcp", "fwd", "typo"],
)
def test_bad_service_keys_are_named(entry: dict[str, Any], expected: tuple[str, str]) -> None:
    problems = _problems([{"name": "web", "service": "TCP 192.0.2.10:80", **entry}])
    assert len(problems) == 1
    assert problems[0][0] == expected[0] and expected[1] in problems[0][1]


@pytest.mark.parametrize(
    "server, expected",
    [
        ({"weight": -1}, ("services[0].real_servers[0].weight", "must be 0..65535, got -1")),
        ({"weight": True}, ("services[0].real_servers[0].weight", "got a boolean")),
        (
            {"upper_threshold": 5, "lower_threshold": 9},
            ("services[0].real_servers[0].lower_threshold", "must not be above upper_threshold (5)"),
        ),
        ({"tunnel": {"type": "gue"}}, ("services[0].real_servers[0].tunnel", "applies to forward: tunnel only")),
        (
            {"forward": "tunnel", "tunnel": {"type": "gue"}},
            ("services[0].real_servers[0].tunnel.port", "needs the port"),
        ),
        ({"address": "[2001:db8::2]:80"}, ("services[0].real_servers[0].address", "needs forward: tunnel")),
        (
            {"forward": "tunnel", "tunnel": {"type": "gre", "checksum": "remcsum"}},
            ("services[0].real_servers[0].tunnel.checksum", "for gue tunnels only"),
        ),
    ],
    ids=[
        "negative-weight",
        "boolean-weight",
        "thresholds",
        "tunnel-not-tunnel",
        "gue-no-port",
        "mixed-family",
        "remcsum-gre",
    ],
)
def test_bad_real_server_keys_are_named(server: dict[str, Any], expected: tuple[str, str]) -> None:
    entry = {"name": "rs", "address": "10.0.1.2:80", **server}
    problems = _problems([{"name": "web", "service": "TCP 192.0.2.10:80", "real_servers": [entry]}])
    assert len(problems) == 1
    assert problems[0][0] == expected[0] and expected[1] in problems[0][1]


def test_duplicates_and_table_section_problems_all_reported() -> None:
    svc = {"name": "web", "service": "TCP 192.0.2.10:80"}
    servers = [{"name": "a", "address": "10.0.1.2:80"}, {"name": "b", "address": "10.0.1.2:80"}]
    problems = _problems([{**svc, "real_servers": servers}, svc], table={"manage": "yes", "prune": "all"})
    assert [p[0] for p in problems] == [
        "table.manage",
        "table.prune",
        "services[0].real_servers[1].address",
        "services[1].service",
    ]


def test_a_config_file_s_problems_name_line_and_column() -> None:
    text = """table:
  manage: yes please
services:
  - name: web
    service: TCP 192.0.2.10:80
    schedular: rr
    real_servers:
      - name: a
        address: 10.0.1.2:80
        weight: -1
"""
    with pytest.raises(ConfigError) as caught:
        load_table_text(text, "lvsguard.yaml")
    assert str(caught.value).splitlines() == [
        "lvsguard.yaml:2:11: table.manage: must be true or false, got the string 'yes please'",
        "lvsguard.yaml:6:5: services[0].schedular: unknown key (one of name, service, scheduler, scheduler_flags,"
        " persistence, one_packet, forward, real_servers)",
        "lvsguard.yaml:10:17: services[0].real_servers[0].weight: must be 0..65535, got -1",
    ]
    with pytest.raises(ConfigError, match="lvsguard.yaml:2:1: YAML syntax error"):
        load_table_text("table: [\n", "lvsguard.yaml")
