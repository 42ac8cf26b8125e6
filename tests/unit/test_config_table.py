"""The ``table`` section and the table keys of ``services`` go through the config loader, with file:line problems."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lvsguard import config
from lvsguard.config import ConfigError, TableSettings
from lvsguard.config.loader import _Loader as ConfigLoader
from lvsguard.config.table import _data as table_data
from lvsguard.model import Forward, RealServerKey, ServiceKey

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "import"

MANAGED = """\
table:
  manage: true
  prune: exact
services:
  - name: web
    service: TCP 192.0.2.10:80
    scheduler: mh
    scheduler_flags: [mh-port]
    persistence: {timeout: 300, netmask: 24}
    forward: masq
    real_servers:
      - {name: web1, address: "10.0.1.2:80", weight: 5, upper_threshold: 100, lower_threshold: 10}
      - name: web2
        address: "10.0.1.3:80"
        forward: tunnel
        tunnel: {type: gue, port: 6080}
actuator:
  quorum: {web: 1}
"""


def test_a_managed_config_gives_the_settings_and_the_desired_table() -> None:
    cfg = config.loads(MANAGED, "lvsguard.yaml")
    assert cfg.table == TableSettings(manage=True, prune="exact")
    svc = cfg.desired.service(ServiceKey.parse("TCP 192.0.2.10:80"))
    assert svc is not None and svc.scheduler == "mh" and svc.timeout == 300
    web1, web2 = svc.real_servers
    assert (web1.key, web1.weight, web1.forward, web1.upper_threshold) == (
        RealServerKey.parse("10.0.1.2:80"),
        5,
        Forward.MASQ,
        100,
    )
    assert (web2.forward, web2.tunnel_port) == (Forward.TUNNEL, 6080)
    assert cfg.service_name(svc.key) == "web"  # names keep working on a managed service


def test_a_config_that_only_names_services_does_not_manage() -> None:
    cfg = config.loads("services:\n  - name: web\n    service: TCP 192.0.2.10:80\n", "lvsguard.yaml")
    assert cfg.table == TableSettings(manage=False, prune="owned")
    assert config.Config().table.manage is False


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.loads(text, "lvsguard.yaml")
    return [str(p) for p in info.value.problems]


def test_each_table_problem_names_file_line_column_and_key() -> None:
    text = """\
table: {manage: maybe, prune: exakt}
services:
  - name: web
    service: TCP 192.0.2.10:80
    scheduler_flags: [mh-port]
    real_servers:
      - {name: web1, address: "10.0.1.2:80", weight: -1}
      - {name: web2, address: "10.0.1.3:80", tunnel: {type: gue}}
      - {name: web3, address: "10.0.1.4:80", lower_threshold: 5, upper_threshold: 2}
"""
    assert problems(text) == [
        "lvsguard.yaml:1:17: table.manage: must be true or false, got a string 'maybe'",
        "lvsguard.yaml:1:31: table.prune: must be one of owned, exact, got 'exakt'; did you mean 'exact'?",
        "lvsguard.yaml:5:23: services[0].scheduler_flags[0]: unknown flag 'mh-port' for scheduler 'wlc' "
        "(one of flag-1, flag-2, flag-3)",
        "lvsguard.yaml:7:54: services[0].real_servers[0].weight: must be 0..65535, got -1",
        "lvsguard.yaml:8:54: services[0].real_servers[1].tunnel: applies to forward: tunnel only, not route",
        "lvsguard.yaml:9:63: services[0].real_servers[2].lower_threshold: must not be above upper_threshold (2), got 5",
    ]


def test_a_problem_of_the_driver_is_not_reported_twice() -> None:
    text = """\
services:
  - name: web
    service: TCP 192.0.2.10:80
    schedular: rr
  - name: web2
    service: TCP 192.0.2.10:80
"""
    assert problems(text) == [
        "lvsguard.yaml:4:5: services[0].schedular: unknown key; did you mean 'scheduler'?",
        "lvsguard.yaml:6:14: services[1].service: duplicate service 'TCP 192.0.2.10:80' (first in services[0])",
    ]


def test_a_table_problem_does_not_hide_the_names_from_later_sections() -> None:
    text = """\
services:
  - name: web
    service: TCP 192.0.2.10:80
    scheduler: "no such"
actuator:
  quorum: {web: 1}
"""
    assert problems(text) == [
        "lvsguard.yaml:4:16: services[0].scheduler: not a scheduler name: 'no such' (rr, wrr, wlc, sh, mh, ...)"
    ]


@pytest.mark.parametrize(
    "golden",
    ["ipvsadm-all-options.expected.yaml", "keepalived/nat.expected.yaml", "ldirectord/ldirectord.expected.yaml"],
)
def test_what_the_importers_print_is_a_config_the_loader_takes(golden: str) -> None:
    cfg = config.load(FIXTURES / golden)
    assert cfg.table.manage is True
    assert len(cfg.desired) == len(cfg.services) > 0


@pytest.mark.parametrize(
    "text",
    [
        "a: &x {b: 1, c: [0x10, 1_000, yes, no, ~, '5', !!str 3]}\nd: *x\n",
        "a: {b: 1}\nd: {<<: {b: 2}, e: 1.5}\n",  # a merge key, a float: PyYAML's constructor
        "{1: a, true: b, null: c, 2020-01-01: d}\n",
        "&a [*a]\n",
        "[5, '5', 5, \"5\", yes, 'yes', yes, ~, '~', ~]\n",  # a tag remembered per value and quoting
    ],
)
def test_table_values_are_what_safe_load_gives(text: str) -> None:
    node = ConfigLoader(text).get_single_node()
    got, want = table_data(node), yaml.safe_load(text)
    if text.startswith("&a"):  # the recursive list
        assert got[0] is got and want[0] is want
    else:
        assert got == want


TAGGED = """\
table:
  manage: true
services:
  - name: web
    service: TCP 192.0.2.10:80
    scheduler: wrr
    real_servers:
      - name: web1
        address: "10.0.1.2:80"
        weight: 3
"""


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        ("weight: 3", "weight: !!int abc", "10:17: services[0].real_servers[0].weight", "'abc' is not an integer"),
        ("weight: 3", "weight: !foo 3", "10:17: services[0].real_servers[0].weight", "tag '!foo'"),
        ("weight: 3", "weight: !!float abc", "10:17: services[0].real_servers[0].weight", "cannot build"),
        ("scheduler: wrr", "scheduler: wrr\n    one_packet: !!bool maybe", "7:17: services[0].one_packet", "'maybe'"),
        ("scheduler: wrr", "scheduler: !foo wrr", "6:16: services[0].scheduler", "tag '!foo'"),
        ("real_servers:\n", "real_servers: !foo\n", "7:19: services", "tag '!foo'"),
        ("  - name: web\n", "  - !foo\n    name: web\n", "4:5: services", "tag '!foo'"),
        ("services:\n", "services: !foo\n", "3:11: services", "tag '!foo'"),
    ],
)
def test_a_value_yaml_cannot_build_is_a_problem_at_its_line(old: str, new: str, where: str, message: str) -> None:
    text = TAGGED.replace(old, new, 1)
    assert text != TAGGED
    with pytest.raises(ConfigError) as caught:
        config.loads(text, "lvsguard.yaml")  # before: ValueError or ConstructorError, a traceback
    shown = str(caught.value)
    assert f"lvsguard.yaml:{where}: " in shown and message in shown, shown


@pytest.mark.parametrize("tagged", ["!!bool maybe", "!!bool 1", '!!bool ""'])
def test_an_explicit_bool_tag_on_a_word_that_is_no_boolean_is_a_problem(tagged: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.loads(f"table:\n  manage: {tagged}\n", "lvsguard.yaml")  # before: read as false, silently
    assert "lvsguard.yaml:2:11: table.manage: must be true or false, got " in str(caught.value)


def test_an_explicit_bool_tag_on_a_boolean_is_that_boolean() -> None:
    assert config.loads("table:\n  manage: !!bool yes\n", "lvsguard.yaml").table.manage is True


@pytest.mark.parametrize("tag", ["!!int", "!!float", "!!bool", "!!timestamp", "!!binary", "!!set", "!!omap", "!foo"])
@pytest.mark.parametrize("merge", [False, True], ids=["plain", "merge-key"])
def test_no_tagged_table_value_ends_in_a_traceback(tag: str, merge: bool) -> None:
    """PyYAML's constructors raise ValueError, KeyError, IndexError or AttributeError on a forced tag."""
    for value in ["abc", "1", "[1, 2]", "{a: 1}", "''", "2001-13-45", "0x", ".inf"]:
        text = TAGGED.replace("weight: 3", f"weight: 3\n        lower_threshold: {tag} {value}")
        if merge:  # a merge key sends the entry through PyYAML's own constructor
            text = "defaults: &d {upper_threshold: 9}\n" + text.replace("weight: 3", "weight: 3\n        <<: *d")
        try:
            config.loads(text, "lvsguard.yaml")
        except ConfigError as exc:
            assert "lvsguard.yaml:" in str(exc)
