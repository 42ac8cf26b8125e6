"""The ``actuator`` section: validated by the actuator, reported at its place in the file."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lvsguard import config
from lvsguard.config.actuator import Names
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


def test_a_name_is_looked_up_not_searched_for() -> None:
    """Every service of a big table is named per API call, metrics scrape and console page: one comparison each.

    A scan of the names per lookup (n²/2 comparisons) kept an actuator with 10 000 services busy for
    minutes on each ``GET /api/v1/services``.
    """
    compared = 0

    @dataclass(frozen=True, slots=True, eq=False)
    class Counted(ServiceKey):
        def __eq__(self, other: object) -> bool:
            nonlocal compared
            compared += 1
            return type(other) is Counted and ServiceKey.__eq__(self, other) is True

        __hash__ = ServiceKey.__hash__

    n = 2000
    names = Names(
        services={f"s{i}": Counted("TCP", f"10.0.{i // 250}.{i % 250}", 80) for i in range(n)},
        real_servers={Counted("TCP", "10.0.0.0", 80): {"rs": RealServerKey.parse("10.1.0.1:80")}},
    )
    compared = 0
    found = [names.service_name(Counted("TCP", f"10.0.{i // 250}.{i % 250}", 80)) for i in range(n)]
    assert found == [f"s{i}" for i in range(n)]
    assert names.service_name(Counted("TCP", "192.0.2.1", 80)) == ""
    assert names.real_server_name(Counted("TCP", "10.0.0.0", 80), RealServerKey.parse("10.1.0.1:80")) == "rs"
    assert compared <= 2 * n, f"{compared} key comparisons for {n} lookups"
