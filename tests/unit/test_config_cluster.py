"""The ``cluster`` section goes through the config driver: defaults keep one director, problems name file:line:key."""

from __future__ import annotations

import socket

import pytest

from lvsguard import config
from lvsguard.config import ClusterConfig, ConfigError

ETCD = """\
cluster:
  store: etcd
  endpoints: ["https://10.0.9.1:2379", "https://10.0.9.2:2379"]
  ca_file: /etc/lvsguard/ca.crt
  cert_file: /etc/lvsguard/client.crt
  key_file: /etc/lvsguard/client.key
  prefix: /lb/
  name: dc1
  director: lvs1
"""


def test_without_the_section_the_store_is_local() -> None:
    cfg = config.loads("director: {}\n")
    assert cfg.cluster == ClusterConfig()
    assert cfg.cluster.store == "local" and not cfg.cluster.shared
    assert cfg.cluster.root == "/lvsguard/default/"
    assert cfg.cluster.director_name == socket.gethostname()


def test_an_etcd_store_with_every_key() -> None:
    cluster = config.loads(ETCD, "lvsguard.yaml").cluster
    assert cluster == ClusterConfig(
        store="etcd",
        endpoints=("https://10.0.9.1:2379", "https://10.0.9.2:2379"),
        ca_file="/etc/lvsguard/ca.crt",
        cert_file="/etc/lvsguard/client.crt",
        key_file="/etc/lvsguard/client.key",
        prefix="/lb/",
        name="dc1",
        director="lvs1",
    )
    assert cluster.shared and cluster.root == "/lb/dc1/" and cluster.director_name == "lvs1"


def test_operators_holds_alone_are_shared_unless_the_section_says_more() -> None:
    cluster = config.loads(ETCD).cluster
    assert cluster.share == ("operator",)
    assert cluster.shares("operator") and not cluster.shares("alertmanager") and not cluster.shares("passive")
    more = config.loads(ETCD + "  share: [alertmanager, passive]\n").cluster
    assert more.shares("alertmanager") and more.shares("passive") and not more.shares("operator")
    assert not ClusterConfig(share=("operator", "alertmanager")).shares("alertmanager")  # store: local shares nothing


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("cluster:\n  store: zookeeper\n", "lvsguard.yaml:2:10: cluster.store: must be one of local, etcd"),
        ("cluster:\n  store: etcd\n", "lvsguard.yaml:2:3: cluster.endpoints: store: etcd needs at least one endpoint"),
        (
            "cluster:\n  endpoints: [10.0.9.1:2379]\n",
            "lvsguard.yaml:2:15: cluster.endpoints[0]: must be an http:// or https:// URL",
        ),
        ("cluster:\n  prefix: lvsguard\n", "lvsguard.yaml:2:11: cluster.prefix: must start and end with '/'"),
        ("cluster:\n  name: 'dc 1'\n", "lvsguard.yaml:2:9: cluster.name: must be 1 to 63 letters"),
        ("cluster:\n  director: ''\n", "lvsguard.yaml:2:13: cluster.director: must be 1 to 63 letters"),
        (
            "cluster:\n  cert_file: /c.crt\n",
            "lvsguard.yaml:2:3: cluster.key_file: cert_file and key_file go together",
        ),
        (
            "cluster:\n  endpoints: ['http://10.0.9.1:2379']\n  ca_file: /ca.crt\n",
            "lvsguard.yaml:2:3: cluster.endpoints: TLS files are set but an endpoint is http://",
        ),
        ("cluster:\n  stor: etcd\n", "lvsguard.yaml:2:3: cluster.stor: unknown key; did you mean 'store'?"),
        (
            "cluster:\n  share: [operator, alert]\n",
            "lvsguard.yaml:2:21: cluster.share[1]: must be one of operator, alertmanager, passive, got 'alert'",
        ),
    ],
    ids=[
        "unknown_store",
        "etcd_without_endpoints",
        "endpoint_not_a_url",
        "prefix_without_slashes",
        "bad_name",
        "empty_director",
        "cert_without_key",
        "tls_files_with_http",
        "misspelt_key",
        "unknown_share",
    ],
)
def test_bad_values_name_file_line_and_key(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config.loads(text, "lvsguard.yaml")
    assert any(str(p).startswith(problem) for p in raised.value.problems), [str(p) for p in raised.value.problems]


def test_the_actuator_settings_carry_the_section() -> None:
    from lvsguard.config.actuator import ActuatorSettings

    assert ActuatorSettings().cluster == ClusterConfig()
