"""The ``actuator`` section: validated by the actuator, reported at its place in the file."""

from __future__ import annotations

import pytest

from lvsguard import config
from lvsguard.errors import ConfigError
from lvsguard.model import RealServerKey, ServiceKey

HEAD = """\
services:
  - name: web
    service: TCP 192.0.2.10:80
    real_servers:
      - {name: web1, address: 10.0.1.2:8080}
"""


def test_section_resolves_the_names_of_services() -> None:
    cfg = config.loads(HEAD + "actuator:\n  quorum: {web: '50%'}\n  dry_run: true\n", "a.yaml")
    assert cfg.actuator is not None
    assert cfg.actuator.dry_run is True
    web = ServiceKey.parse("TCP 192.0.2.10:80")
    assert cfg.actuator.quorum_for(web).fraction
    assert cfg.actuator.real_servers_allowed == {web: frozenset({RealServerKey.parse("10.0.1.2:8080")})}


def test_no_section_means_no_settings() -> None:
    assert config.loads(HEAD, "a.yaml").actuator is None


@pytest.mark.parametrize(
    "section, expected",
    [
        (
            "  rules:\n    - match: {alertname: X}\n      action: quarentine\n",
            "a.yaml:9:15: actuator.rules[0].action: must be one of",
        ),
        ("  hold_dwn: 10s\n", "a.yaml:7:3: actuator.hold_dwn: unknown key"),
        ("  quorum: {nosuch: 2}\n", "a.yaml:7:20: actuator.quorum.nosuch: neither a service name"),
        ("  drain_timeout: soon\n", "a.yaml:7:18: actuator.drain_timeout: must be a duration"),
    ],
    ids=["bad-action", "unknown-key", "unknown-service-name", "bad-duration"],
)
def test_problems_name_file_line_column_and_key(section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(HEAD + "actuator:\n" + section, "a.yaml")
    assert str(info.value).startswith(expected), str(info.value)


def test_unknown_key_suggests_the_near_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'hold_down'"):
        config.loads(HEAD + "actuator:\n  hold_dwn: 10s\n", "a.yaml")
