"""Settings, rules and target resolution: the pure parts of the safety and routing decisions."""

from __future__ import annotations

import re

import pytest

from lvsguard.actuator.settings import (
    ActuatorSettings,
    Names,
    Quorum,
    RateLimit,
    Rule,
    from_mapping,
    parse_duration,
)
from lvsguard.actuator.targets import Target, TargetError, target_from_labels
from lvsguard.errors import ConfigError
from lvsguard.model import RealServerKey, ServiceKey

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
NAMES = Names(services={"web": WEB}, real_servers={WEB: {"rs1": RealServerKey.parse("10.0.1.1:80")}})


@pytest.mark.parametrize(
    "value, total, required, text",
    [
        (2, 10, 2, "2"),
        (0.5, 5, 3, "50%"),
        ("50%", 4, 2, "50%"),
        ("100%", 3, 3, "100%"),
        (0, 3, 0, "0"),
        (1.0, 7, 7, "100%"),
    ],
    ids=["count", "fraction-rounds-up", "percent", "all", "none", "float-one-is-a-fraction"],
)
def test_quorum(value: object, total: int, required: int, text: str) -> None:
    q = Quorum.parse(value)  # type: ignore[arg-type]
    assert (q.required(total), str(q)) == (required, text)


@pytest.mark.parametrize(
    "value",
    [-1, 1.5, "half", "150%", True],
    ids=["negative", "fraction-above-one", "word", "percent-above-100", "bool"],
)
def test_quorum_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="min_healthy"):
        Quorum.parse(value)  # type: ignore[arg-type]


def test_first_matching_rule_wins_then_the_label() -> None:
    settings = ActuatorSettings(
        rules=(
            Rule("drain", match=(("alertname", "Maintenance"),)),
            Rule("quarantine", match_re=(("alertname", re.compile("Backend.*")),), drain_timeout=5),
        )
    )
    assert settings.action_for({"alertname": "Maintenance"})[0] == "drain"
    assert settings.action_for({"alertname": "BackendDown", "lvsguard_action": "drain"})[0] == "quarantine"
    assert settings.action_for({"alertname": "Other", "lvsguard_action": "drain"}) == ("drain", None)
    assert settings.action_for({"alertname": "Other"}) == ("none", None)


def test_rule_rejects_an_unknown_action() -> None:
    with pytest.raises(ValueError, match="unknown action 'reboot'"):
        Rule("reboot")


@pytest.mark.parametrize(
    "labels, expected",
    [
        (
            {
                "proto": "TCP",
                "local_address": "192.0.2.10",
                "local_port": "80",
                "remote_address": "10.0.1.2",
                "remote_port": "80",
            },
            Target(WEB, RealServerKey.parse("10.0.1.2:80")),
        ),
        (
            {
                "proto": "UDP",
                "local_address": "2001:DB8::1",
                "local_port": "53",
                "remote_address": "2001:db8::2",
                "remote_port": "53",
            },
            Target(ServiceKey.parse("UDP [2001:db8::1]:53"), RealServerKey.parse("[2001:db8::2]:53")),
        ),
        (
            {"proto": "FWM", "local_mark": "7", "local_address": "", "remote_address": "10.0.1.2", "remote_port": "0"},
            Target(ServiceKey.parse("FWM 7"), RealServerKey.parse("10.0.1.2:0")),
        ),
        (
            {
                "proto": "FWM",
                "local_mark": "00000010",
                "local_address": "",
                "remote_address": "10.0.1.2",
                "remote_port": "0",
            },
            Target(ServiceKey.parse("FWM 16"), RealServerKey.parse("10.0.1.2:0")),
        ),
        (
            {
                "proto": "FWM",
                "local_mark": "0000000A",
                "local_address": "",
                "remote_address": "10.0.1.2",
                "remote_port": "0",
            },
            Target(ServiceKey.parse("FWM 10"), RealServerKey.parse("10.0.1.2:0")),
        ),
        ({"service": "web", "real_server": "rs1"}, Target(WEB, RealServerKey.parse("10.0.1.1:80"))),
        (
            {"service": "web", "remote_address": "10.0.1.3", "remote_port": "80"},
            Target(WEB, RealServerKey.parse("10.0.1.3:80")),
        ),
    ],
    ids=[
        "exporter-labels",
        "ipv6-normalised",
        "fwmark",
        "fwmark-hex-as-exported",
        "fwmark-hex-letter",
        "config-names",
        "name-and-address",
    ],
)
def test_target_from_labels(labels: dict[str, str], expected: Target) -> None:
    assert target_from_labels(labels, NAMES) == expected


@pytest.mark.parametrize(
    "labels, message",
    [
        ({}, "no service in the labels"),
        ({"service": "web"}, "no real server of TCP 192.0.2.10:80 in the labels"),
        ({"service": "db", "real_server": "x"}, "label service='db' names no service in the config"),
        ({"service": "web", "real_server": "rs9"}, "label real_server='rs9' names no real server"),
        (
            {"proto": "ICMP", "local_address": "192.0.2.1", "local_port": "80"},
            "label proto='ICMP' must be TCP, UDP or SCTP",
        ),
        ({"proto": "TCP", "local_address": "192.0.2.1", "local_port": "http"}, "are not an address and a port"),
        ({"proto": "TCP", "local_address": "example", "local_port": "80"}, "are not an address and a port"),
        ({"local_mark": "x"}, "is not a firewall mark"),
        ({"local_mark": "00000000"}, "is not a firewall mark"),
        ({"local_mark": "100000000"}, "is not a firewall mark"),
        ({"service": "web", "remote_address": "10.0.1.3", "remote_port": "70000"}, "remote_port='70000'"),
    ],
    ids=[
        "nothing",
        "no-real-server",
        "unknown-service-name",
        "unknown-rs-name",
        "bad-proto",
        "bad-port",
        "bad-address",
        "bad-mark",
        "zero-mark",
        "mark-too-big",
        "port-out-of-range",
    ],
)
def test_target_errors_say_which_label(labels: dict[str, str], message: str) -> None:
    with pytest.raises(TargetError, match=re.escape(message)):
        target_from_labels(labels, NAMES)


def test_settings_from_the_config_section() -> None:
    section = {
        "ledger": "/var/lib/lvsguard/a.db",
        "dry_run": True,
        "min_healthy": "50%",
        "quorum": {"web": 2, "UDP 192.0.2.10:53": 0.25},
        "rate_limit": {"actions": 10, "per": "1m"},
        "hold_down": "30s",
        "slow_start": 20,
        "rules": [
            {"match": {"alertname": "LvsRealServerDown"}, "action": "quarantine"},
            {"match_re": {"alertname": "Maint.*"}, "action": "drain", "drain_timeout": "5m", "drain_delete": True},
        ],
    }
    s = from_mapping(section, names=NAMES, tokens={"am": "x" * 16})
    assert (s.ledger_path, s.dry_run, str(s.min_healthy), s.hold_down, s.slow_start) == (
        "/var/lib/lvsguard/a.db",
        True,
        "50%",
        30.0,
        20.0,
    )
    assert s.rate_limit == RateLimit(10, 60.0) and s.tokens == {"am": "x" * 16}
    assert s.quorum_for(WEB) == Quorum(2) and s.quorum_for(ServiceKey.parse("UDP 192.0.2.10:53")) == Quorum(0.25, True)
    assert s.action_for({"alertname": "Maintenance"})[1].drain_timeout == 300.0  # type: ignore[union-attr]
    assert from_mapping(None) == ActuatorSettings()


def test_settings_report_every_problem_with_its_key() -> None:
    section = {
        "min_healthy": -1,
        "hold_down": "soon",
        "rate_limit": {"actions": "many", "per": 0, "burst": 3},
        "quorum": {"nope": 1},
        "rules": [{"action": "reboot"}, {"action": "drain", "match_re": {"x": "("}, "when": 1}, "x"],
        "dryrun": True,
    }
    with pytest.raises(ConfigError) as info:
        from_mapping(section, names=NAMES)
    assert [p.key for p in info.value.problems] == [
        "dryrun",
        "hold_down",
        "min_healthy",
        "quorum.nope",
        "rate_limit.actions",
        "rate_limit.burst",
        "rate_limit.per",
        "rules[0].action",
        "rules[1].match_re.x",
        "rules[1].when",
        "rules[2]",
    ]
    assert "unknown key (known keys: actions, per)" in str(info.value) and "must be one of quarantine, drain" in str(
        info.value
    )


@pytest.mark.parametrize(
    "text, seconds", [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("250ms", 0.25), ("1h", 3600.0), (0.5, 0.5)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds
