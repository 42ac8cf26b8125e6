"""The ``probes`` section: parsed into checks, refused with file:line:key, documented and shown in the example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lvsguard import config
from lvsguard.errors import ConfigError
from lvsguard.exporter.main import start_probes
from lvsguard.exporter.probes.plan import build_plan
from lvsguard.model import RealServerKey, ServiceKey

ROOT = Path(__file__).resolve().parent.parent.parent
SERVICES = """services:
  - name: web
    service: TCP 192.0.2.10:80
    real_servers:
      - {name: web1, address: "10.0.1.2:80"}
      - {name: web2, address: "10.0.1.3:80"}
  - name: dns
    service: UDP 192.0.2.10:53
"""
WEB = ServiceKey.parse("TCP 192.0.2.10:80")
DNS = ServiceKey.parse("UDP 192.0.2.10:53")
WEB1, WEB2 = RealServerKey.parse("10.0.1.2:80"), RealServerKey.parse("10.0.1.3:80")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.loads(SERVICES + text, "lvsguard.yaml")
    return [str(p) for p in caught.value.problems]


def test_checks_become_a_plan() -> None:
    cfg = config.loads(
        SERVICES
        + """probes:
  checks:
    - {service: web, real_server: web1, type: http, path: /h, statuses: [204, 200], body: ok, interval: 500ms, timeout: 0.25}
    - {service: web, type: agent, port: 5555}
"""
    )
    http, agent = cfg.probes.checks
    assert (http.real_server, http.statuses, http.interval, http.timeout) == (WEB1, (200, 204), 0.5, 0.25)
    plan = build_plan(cfg.probes)
    assert [s.name for s in plan(WEB, WEB1)] == ["http", "agent"]
    assert [(s.name, s.port) for s in plan(WEB, WEB2)] == [("agent", 5555)]
    assert plan(DNS, RealServerKey.parse("10.0.1.2:53")) == ()  # UDP: no default tcp check
    assert build_plan(config.Config().probes)(WEB, WEB2) == ()  # nothing is probed unless asked


def test_nothing_is_probed_without_config_and_default_tcp_is_an_opt_in() -> None:
    assert config.Config().probes.default_tcp is False
    assert start_probes(config.Config(), None) is None  # no engine: no probe traffic, no lvs_probe_* series
    opted = config.loads("probes:\n  default_tcp: true\n", "lvsguard.yaml")
    assert [s.name for s in build_plan(opted.probes)(WEB, WEB2)] == ["tcp"]
    assert build_plan(opted.probes)(DNS, RealServerKey.parse("10.0.1.2:53")) == ()  # UDP: no default tcp check


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "probes:\n  checks:\n    - {type: dns, path: /x}\n",
            [
                "lvsguard.yaml:11:7: probes.checks[0].query_name: required for a dns check",
                "lvsguard.yaml:11:19: probes.checks[0].path: does not apply to a dns check (it takes query_name, query_type, rcode, answer)",
            ],
        ),
        (
            "probes:\n  checks:\n    - {type: tcp, service: web, real_server: web9}\n",
            [
                "lvsguard.yaml:11:46: probes.checks[0].real_server: 'web9' is neither an address:port nor the name of a real server of TCP 192.0.2.10:80"
            ],
        ),
        (
            "probes:\n  checks:\n    - {type: htp}\n",
            [
                "lvsguard.yaml:11:14: probes.checks[0].type: must be one of tcp, http, https, udp, icmp, dns, script, agent, prometheus, got 'htp'; did you mean 'http'?"
            ],
        ),
        (
            "probes:\n  checks:\n    - {type: tcp, interval: 1s, timeout: 2s}\n",
            ["lvsguard.yaml:11:7: probes.checks[0]: timeout (2 s) must not exceed interval (1 s)"],
        ),
        (
            "probes:\n  refresh: soon\n  checks:\n    - {type: tcp, rise: 0}\n",
            [
                "lvsguard.yaml:10:12: probes.refresh: must be a duration such as 1s, 500ms or 2m, got 'soon'",
                "lvsguard.yaml:12:25: probes.checks[0].rise: must be 1..100, got 0",
            ],
        ),
        (
            "probes:\n  publish: {mode: actuator, url: 'ftp://x'}\n",
            ["lvsguard.yaml:10:34: probes.publish.url: must be an http:// or https:// URL, got 'ftp://x'"],
        ),
        (
            "probes:\n  checks:\n    - {type: http, body: '(unclosed'}\n",
            [
                "lvsguard.yaml:11:26: probes.checks[0].body: is not a regular expression: missing ), unterminated subpattern at position 0"
            ],
        ),
        (
            "probes:\n  checks:\n    - {type: http, digest: 9b3a0c85}\n    - {type: tcp, digest: 9b3a0c85a887a256d6939da88aabd8cd}\n",
            [
                "lvsguard.yaml:11:28: probes.checks[0].digest: must be an MD5 as 32 hex digits, got '9b3a0c85'",
                "lvsguard.yaml:12:19: probes.checks[1].digest: does not apply to a tcp check (it takes only the common keys)",
            ],
        ),
    ],
)
def test_bad_checks_name_file_line_and_key(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_digest_is_kept_in_lowercase_and_reaches_the_checker() -> None:
    cfg = config.loads(
        SERVICES + "probes:\n  checks:\n    - {service: web, type: http, digest: 9B3A0C85A887A256D6939DA88AABD8CD}\n",
        "lvsguard.yaml",
    )
    assert cfg.probes.checks[0].digest == "9b3a0c85a887a256d6939da88aabd8cd"
    (spec,) = build_plan(cfg.probes)(WEB, WEB1)
    assert spec.checker.digest == "9b3a0c85a887a256d6939da88aabd8cd"  # type: ignore[attr-defined]


def test_every_key_is_documented_and_in_the_full_example() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    example = yaml.safe_load((ROOT / "examples" / "lvsguard.yaml").read_text())["probes"]
    for where, schema, used in (
        ("probes", config.PROBES, set(example)),
        ("probes.publish", config.PUBLISH, set(example["publish"])),
        ("probes.checks[]", config.CHECK, {k for c in example["checks"] for k in c}),
    ):
        assert [k for k in schema.keys if f"`{where}.{k}`" not in doc] == [], where
        assert set(schema.keys) - used == set(), f"examples/lvsguard.yaml does not show these keys of {where}"
    assert config.load(ROOT / "examples" / "lvsguard.yaml").probes.publish is not None
