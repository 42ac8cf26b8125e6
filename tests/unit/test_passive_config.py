"""The ``passive`` section: off by default, its values checked at load with file:line:column:key."""

from __future__ import annotations

import pytest

from lvsguard.config import ConfigError, loads
from lvsguard.config.passive import PassiveConfig


def test_off_by_default() -> None:
    assert loads("").passive == PassiveConfig() and not PassiveConfig().enabled


def test_values_are_read() -> None:
    config = loads("passive:\n  enabled: true\n  interval: 500ms\n  min_share: 0.6\n  holddown_max: 10m\n")
    assert (config.passive.enabled, config.passive.interval, config.passive.min_share) == (True, 0.5, 0.6)
    assert config.passive.holddown_max == 600.0


def test_every_problem_at_once_with_its_position() -> None:
    with pytest.raises(ConfigError) as failed:
        loads("passive:\n  handshake_timeout: 60\n  margin: 1.5\n  max_entries: 10\n  chanse: 0.1\n", "x.yaml")
    assert str(failed.value).splitlines() == [
        "x.yaml:2:22: passive.handshake_timeout: must be below 60 s (a connection leaves SYN_RECV after 60 s), got 60",
        "x.yaml:3:11: passive.margin: must be from 0 to 1, got 1.5",
        "x.yaml:4:16: passive.max_entries: must be 100..1000000, got 10",
        "x.yaml:5:3: passive.chanse: unknown key; did you mean 'chance'?",
    ]
