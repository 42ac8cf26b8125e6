"""The ``snmp`` section: the agent's own checks, reported at their place in the file."""

from __future__ import annotations

import pytest

from lvsguard import config
from lvsguard.errors import ConfigError

GOOD = """\
snmp:
  listen: 127.0.0.1:1161
  communities: [lvs-ro]
  users:
    - {name: nms, auth_key: secretsecret, priv_key: secretsecret2, auth_protocol: SHA-256}
  trap_targets: ["127.0.0.1:162"]
  trap_community: traps
"""


def test_section_becomes_agent_settings() -> None:
    cfg = config.loads(GOOD, "a.yaml")
    assert cfg.snmp is not None
    assert cfg.snmp.listen == "127.0.0.1:1161"
    assert cfg.snmp.communities == ("lvs-ro",)
    assert [(u.name, u.auth_protocol, u.priv_protocol) for u in cfg.snmp.users] == [("nms", "SHA-256", "AES")]
    assert cfg.snmp.trap_targets == ("127.0.0.1:162",)


def test_no_section_means_no_agent() -> None:
    assert config.loads("exporter: {}\n", "a.yaml").snmp is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("snmp:\n  listn: x\n  communities: [a]\n", ["a.yaml:2:3: snmp.listn: unknown key; did you mean 'listen'?"]),
        ("snmp:\n  communities: [a]\n  max_age: fast\n", ["a.yaml:3:12: snmp.max_age: must be a number, got 'fast'"]),
        ("snmp:\n  communities: a\n", ["a.yaml:2:16: snmp.communities: must be a list, got a string 'a'"]),
        (
            "snmp:\n  listen: 127.0.0.1:1161\n",
            ["a.yaml:2:3: snmp.communities/users: neither a v2c community nor a v3 user is configured"],
        ),
        (
            "snmp:\n  users:\n    - {name: a, auth_key: short, priv_key: alsoshort, auth_protocol: MD5}\n",
            [
                "a.yaml:3:27: snmp.users[0].auth_key: must have at least 8 characters",
                "a.yaml:3:70: snmp.users[0].auth_protocol: must be one of SHA, SHA-224, SHA-256, SHA-384, SHA-512, got 'MD5'",
            ],
        ),
        (
            "snmp:\n  users:\n    - {name: a, auth_key: '12345678'}\n",
            ["a.yaml:3:7: snmp.users[0].priv_key: required key is missing"],
        ),
        (
            "snmp:\n  users:\n    - {name: a, auth_key: 12345678}\n",
            [
                "a.yaml:3:7: snmp.users[0].priv_key: required key is missing",
                "a.yaml:3:27: snmp.users[0].auth_key: must be a string, got an integer '12345678' (quote it to make it a string)",
            ],
        ),
        (
            "snmp:\n  communities: [a]\n  trap_targets: ['127.0.0.1:162']\n",
            ["a.yaml:2:3: snmp.trap_community/trap_user: one is required when trap_targets are configured"],
        ),
    ],
    ids=[
        "unknown-key",
        "bad-number",
        "not-a-list",
        "no-community-nor-user",
        "weak-user",
        "user-missing-key",
        "user-key-not-a-string",
        "traps-without-credentials",
    ],
)
def test_problems_name_file_line_column_and_key(text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(text, "a.yaml")
    assert str(info.value).splitlines() == expected
