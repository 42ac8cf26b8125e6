"""Config loading: the model it builds, and every validation rule failing with file:line:column and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvsguard import config
from lvsguard.config import Config, DirectorConfig, ExporterConfig, RealServerConfig, ServiceConfig
from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.exporter.collector import BACKEND_LABELS
from lvsguard.model import RealServerKey, ServiceKey

FULL = """\
director:
  netns: lvs-dir1
exporter:
  listen: "[::1]:9911"
  ipvs_source: procfs
  backend_labels: [proto, local_address, service, real_server]
  services: [web, "UDP [2001:db8::10]:53", web, "FWM 7"]
services:
  - name: web
    service: TCP 192.0.2.10:80
    real_servers:
      - name: web1
        address: 10.0.1.2:80
      - name: web2
        address: 10.0.1.3:8080
  - name: dns6
    service: "UDP [2001:db8::10]:53"
    real_servers:
      - {name: dns1, address: "[2001:db8:1::2]:53"}
  - name: marked
    service: FWM 1
"""

WEB = ServiceKey("TCP", "192.0.2.10", 80)
DNS6 = ServiceKey("UDP", "2001:db8::10", 53, family=6)


def test_full_config_becomes_frozen_objects() -> None:
    cfg = config.loads(FULL, "lvsguard.yaml")
    assert cfg == Config(
        director=DirectorConfig(netns="lvs-dir1"),
        exporter=ExporterConfig(
            listen="[::1]:9911",
            ipvs_source="procfs",
            backend_labels=("local_address", "proto", "service", "real_server"),  # the exporter's output order
            services=(WEB, DNS6, ServiceKey("FWM", "", 0, fwmark=7)),  # names resolved, repeats dropped
        ),
        services=(
            ServiceConfig(
                "web",
                WEB,
                (
                    RealServerConfig("web1", RealServerKey("10.0.1.2", 80)),
                    RealServerConfig("web2", RealServerKey("10.0.1.3", 8080)),
                ),
            ),
            ServiceConfig("dns6", DNS6, (RealServerConfig("dns1", RealServerKey("2001:db8:1::2", 53, family=6)),)),
            ServiceConfig("marked", ServiceKey("FWM", "", 0, fwmark=1)),
        ),
        file="lvsguard.yaml",
    )
    with pytest.raises(AttributeError):
        cfg.director.netns = "other"  # type: ignore[misc]


def test_names_by_key() -> None:
    cfg = config.loads(FULL)
    assert cfg.service_name(WEB) == "web"
    assert cfg.service_name(ServiceKey.parse("FWM 1")) == "marked"
    assert cfg.service_name(ServiceKey.parse("TCP 192.0.2.10:443")) == ""
    assert cfg.real_server_name(WEB, RealServerKey.parse("10.0.1.3:8080")) == "web2"
    assert cfg.real_server_name(DNS6, RealServerKey.parse("[2001:db8:1::2]:53")) == "dns1"
    assert cfg.real_server_name(DNS6, RealServerKey.parse("10.0.1.2:80")) == ""  # web1 belongs to web only
    assert Config().service_name(WEB) == "" and Config().real_server_name(WEB, RealServerKey.parse("10.0.1.2:80")) == ""


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty-file"),
        pytest.param("# nothing configured yet\n", id="only-a-comment"),
        pytest.param("~\n", id="null-document"),
        pytest.param("director:\nexporter:\nservices:\n", id="empty-sections"),
        pytest.param("director: {}\nexporter: {}\nservices: []\n", id="empty-mappings"),
        pytest.param(
            "exporter:\n  listen:\n  ipvs_source:\n  backend_labels:\n  services:\n", id="keys-without-values"
        ),
    ],
)
def test_missing_or_empty_means_defaults(text: str) -> None:
    cfg = config.loads(text, "x.yaml")
    assert cfg == Config(file="x.yaml")
    assert cfg.director.netns is None
    assert cfg.exporter.listen == "127.0.0.1:9910"
    assert cfg.exporter.ipvs_source == "auto"
    assert cfg.exporter.backend_labels == BACKEND_LABELS
    assert cfg.exporter.services == ()
    assert cfg.services == ()


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        pytest.param("[]", (), id="empty-list-sums-everything"),
        pytest.param("''", (), id="empty-flag-string"),
        pytest.param("'remote_address,remote_port'", ("remote_address", "remote_port"), id="flag-string"),
        pytest.param("[real_server, proto, proto]", ("proto", "real_server"), id="list-in-output-order"),
    ],
)
def test_backend_labels_like_node_exporter_flag(text: str, labels: tuple[str, ...]) -> None:
    assert config.loads(f"exporter:\n  backend_labels: {text}\n").exporter.backend_labels == labels


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1:9910",
        "[::1]:9910",
        "[2001:db8::1]:443",
        ":9910",
        "0.0.0.0:0",
        "localhost:9910",
        "lvs-dir1.example.net:9910",
    ],
)
def test_listen_addresses_accepted(listen: str) -> None:
    assert config.loads(f"exporter:\n  listen: '{listen}'\n").exporter.listen == listen


@pytest.mark.parametrize("netns", ["lvs-dir1", "dir_2", "/run/netns/lvs-dir1", "/proc/1/ns/net"])
def test_netns_names_and_paths_accepted(netns: str) -> None:
    assert config.loads(f"director:\n  netns: {netns}\n").director.netns == netns


def test_yaml_merge_keys_are_followed() -> None:
    text = """\
services:
  - &web {name: web, service: TCP 192.0.2.10:80, real_servers: [{name: web1, address: 10.0.1.2:80}]}
  - <<: *web
    name: web-tls
    service: TCP 192.0.2.10:443
"""
    first, second = config.loads(text).services
    assert second.name == "web-tls" and str(second.service) == "TCP 192.0.2.10:443"
    assert second.real_servers == first.real_servers


def case(id: str, text: str, *problems: str) -> object:
    return pytest.param(text, list(problems), id=id)


# Every rule fails once: the YAML, then each problem as it prints (after "lvsguard.yaml:").
@pytest.mark.parametrize(
    ("text", "problems"),
    [
        case(
            "yaml-syntax-error",
            "director:\n  netns: [lvs\n",
            "3:1: YAML syntax error: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence on line 2)",
        ),
        case(
            "yaml-tab-indent",
            "director:\n\tnetns: x\n",
            "2:1: YAML syntax error: found character '\\t' that cannot start any token",
        ),
        case(
            "two-documents",
            "director: {}\n---\nexporter: {}\n",
            "2:1: YAML syntax error: but found another document (expected a single document in the stream on line 1)",
        ),
        case(
            "root-is-a-list",
            "- director\n",
            "1:1: a config is a mapping of sections (director, table, services, exporter, actuator, snmp, probes, passive, cluster), got a list",
        ),
        case(
            "root-is-a-string",
            "director\n",
            "1:1: a config is a mapping of sections (director, table, services, exporter, actuator, snmp, probes, passive, cluster), got a string 'director'",
        ),
        case(
            "unknown-section-did-you-mean",
            "exportr:\n  listen: :9910\n",
            "1:1: exportr: unknown key; did you mean 'exporter'?",
        ),
        case(
            "unknown-section-listed",
            "balancer: {}\n",
            "1:1: balancer: unknown key (known keys: director, table, services, exporter, actuator, snmp, probes, passive, cluster)",
        ),
        case(
            "section-not-a-mapping",
            "director: lvs-dir1\n",
            "1:11: director: must be a mapping, got a string 'lvs-dir1'",
        ),
        case(
            "duplicate-yaml-key",
            "director:\n  netns: a\n  netns: b\n",
            "3:3: director.netns: duplicate key (first given on line 2)",
        ),
        case("non-string-key", "director:\n  1: a\n", "2:3: director: keys must be strings, got an integer '1'"),
        case(
            "bad-merge-key",
            "director:\n  <<: 5\n",
            "2:3: director: bad merge key: expected a mapping or list of mappings for merging, but found scalar",
        ),
        case(
            "netns-unknown-key",
            "director:\n  namespace: lvs\n",
            "2:3: director.namespace: unknown key (known keys: netns, keepalived_fifo)",
        ),
        case(
            "netns-empty",
            "director:\n  netns: ''\n",
            "2:10: director.netns: must be a network namespace name (as 'ip netns') or an absolute path, got ''",
        ),
        case(
            "netns-relative-path",
            "director:\n  netns: run/netns/x\n",
            "2:10: director.netns: a namespace path must be absolute, got 'run/netns/x'",
        ),
        case(
            "netns-with-space",
            "director:\n  netns: lvs dir\n",
            "2:10: director.netns: must be a network namespace name (as 'ip netns') or an absolute path, got 'lvs dir'",
        ),
        case(
            "netns-number",
            "director:\n  netns: 1\n",
            "2:10: director.netns: must be a string, got an integer '1' (quote it to make it a string)",
        ),
        case(
            "listen-integer",
            "exporter:\n  listen: 9910\n",
            "2:11: exporter.listen: must be a string, got an integer '9910' (quote it to make it a string)",
        ),
        case(
            "listen-no-port",
            "exporter:\n  listen: localhost\n",
            "2:11: exporter.listen: must be HOST:PORT, [IPv6]:PORT or :PORT with a port 0..65535, got 'localhost'",
        ),
        case(
            "listen-port-too-big",
            "exporter:\n  listen: 127.0.0.1:65536\n",
            "2:11: exporter.listen: must be HOST:PORT, [IPv6]:PORT or :PORT with a port 0..65535, got '127.0.0.1:65536'",
        ),
        case(
            "listen-ipv6-without-brackets",
            "exporter:\n  listen: '::1:9910'\n",
            "2:11: exporter.listen: write an IPv6 address in brackets, as [::1]:9910, got '::1:9910'",
        ),
        case(
            "listen-bad-ipv6",
            "exporter:\n  listen: '[::g]:9910'\n",
            "2:11: exporter.listen: '::g' is not an IPv6 address",
        ),
        case(
            "listen-bad-ipv4",
            "exporter:\n  listen: 999.0.0.1:9910\n",
            "2:11: exporter.listen: '999.0.0.1' is not an IPv4 address",
        ),
        case(
            "listen-bad-host-name",
            "exporter:\n  listen: my_host:9910\n",
            "2:11: exporter.listen: 'my_host' is not an IP address or host name",
        ),
        case(
            "ipvs-source-typo",
            "exporter:\n  ipvs_source: netlnk\n",
            "2:16: exporter.ipvs_source: must be one of auto, netlink, procfs, got 'netlnk'; did you mean 'netlink'?",
        ),
        case(
            "ipvs-source-unknown",
            "exporter:\n  ipvs_source: snmp\n",
            "2:16: exporter.ipvs_source: must be one of auto, netlink, procfs, got 'snmp'",
        ),
        case(
            "backend-labels-unknown",
            "exporter:\n  backend_labels: [proto, invalid_label, bad_label]\n",
            '2:19: exporter.backend_labels: unknown IPVS backend labels: "bad_label, invalid_label"',
        ),
        case(
            "backend-labels-unknown-in-flag-string",
            "exporter:\n  backend_labels: proto,bad_label\n",
            '2:19: exporter.backend_labels: unknown IPVS backend labels: "bad_label"',
        ),
        case(
            "backend-labels-not-strings",
            "exporter:\n  backend_labels: [proto, 1]\n",
            "2:27: exporter.backend_labels[1]: must be a string, got an integer '1' (quote it to make it a string)",
        ),
        case(
            "backend-labels-mapping",
            "exporter:\n  backend_labels: {proto: 1}\n",
            "2:19: exporter.backend_labels: must be a list of label names or one comma-separated string, got a mapping",
        ),
        case(
            "allow-list-unknown-name",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\nexporter:\n  services: [wbe]\n",
            "5:14: exporter.services[0]: 'wbe' is neither a service name nor a service like 'TCP 192.0.2.10:80'; did you mean 'web'?",
        ),
        case(
            "allow-list-name-without-services",
            "exporter:\n  services: [web]\n",
            "2:14: exporter.services[0]: 'web' is neither a service name nor a service like 'TCP 192.0.2.10:80' (no service is named in 'services')",
        ),
        case(
            "allow-list-bad-key",
            "exporter:\n  services: ['TCP 192.0.2.10']\n",
            "2:14: exporter.services[0]: '192.0.2.10': expected ADDRESS:PORT",
        ),
        case(
            "allow-list-not-a-list",
            "exporter:\n  services: web\n",
            "2:13: exporter.services: must be a list, got a string 'web'",
        ),
        case("services-not-a-list", "services:\n  name: web\n", "2:3: services: must be a list, got a mapping"),
        case(
            "service-not-a-mapping", "services:\n  - web\n", "2:5: services[0]: must be a mapping, got a string 'web'"
        ),
        case(
            "service-name-missing",
            "services:\n  - service: TCP 192.0.2.10:80\n",
            "2:5: services[0].name: required key is missing",
        ),
        case(
            "service-name-empty",
            "services:\n  - name:\n    service: TCP 192.0.2.10:80\n",
            "2:10: services[0].name: must not be empty",
        ),
        case(
            "service-name-with-space",
            "services:\n  - name: web site\n    service: TCP 192.0.2.10:80\n",
            "2:11: services[0].name: must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit, got 'web site'",
        ),
        case(
            "service-name-boolean",
            "services:\n  - name: yes\n    service: TCP 192.0.2.10:80\n",
            "2:11: services[0].name: must be a string, got a boolean 'yes' (quote it to make it a string)",
        ),
        case(
            "service-name-too-long",
            "services:\n  - name: wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww\n    service: TCP 192.0.2.10:80\n",
            "2:11: services[0].name: must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit, got 'wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww'",
        ),
        case("service-key-missing", "services:\n  - name: web\n", "2:5: services[0].service: required key is missing"),
        case(
            "service-key-bad-protocol",
            "services:\n  - name: web\n    service: ICMP 192.0.2.10:80\n",
            "3:14: services[0].service: 'ICMP 192.0.2.10:80': protocol must be TCP, UDP, SCTP or FWM",
        ),
        case(
            "service-key-bad-address",
            "services:\n  - name: web\n    service: TCP 192.0.2.300:80\n",
            "3:14: services[0].service: '192.0.2.300:80': '192.0.2.300' is not an IP address",
        ),
        case(
            "service-key-bad-fwmark",
            "services:\n  - name: web\n    service: FWM one\n",
            "3:14: services[0].service: 'FWM one': expected 'FWM MARK' or 'FWM MARK IPv6'",
        ),
        case(
            "service-unknown-key",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n    schedular: wrr\n",
            "4:5: services[0].schedular: unknown key; did you mean 'scheduler'?",
        ),
        case(
            "duplicate-service-name",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n  - name: web\n    service: TCP 192.0.2.10:443\n",
            "4:11: services[1].name: duplicate name 'web' (first in services[0])",
        ),
        case(
            "duplicate-service-key",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n  - name: www\n    service: tcp 192.0.2.10:80\n",
            "5:14: services[1].service: duplicate service 'TCP 192.0.2.10:80' (first in services[0])",
        ),
        case(
            "real-servers-not-a-list",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n    real_servers: web1\n",
            "4:19: services[0].real_servers: must be a list, got a string 'web1'",
        ),
        case(
            "real-server-address-typo",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n    real_servers:\n      - name: web1\n        adress: 10.0.1.2:80\n",
            "5:9: services[0].real_servers[0].address: required key is missing",
            "6:9: services[0].real_servers[0].adress: unknown key; did you mean 'address'?",
        ),
        case(
            "real-server-address-bad",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n    real_servers:\n      - name: web1\n        address: 10.0.1.2\n",
            "6:18: services[0].real_servers[0].address: '10.0.1.2': expected ADDRESS:PORT",
        ),
        case(
            "real-server-port-too-big",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n    real_servers:\n      - name: web1\n        address: 10.0.1.2:80000\n",
            "6:18: services[0].real_servers[0].address: '10.0.1.2:80000': port must be 0..65535",
        ),
        case(
            "real-server-name-missing",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n    real_servers:\n      - address: 10.0.1.2:80\n",
            "5:9: services[0].real_servers[0].name: required key is missing",
        ),
        case(
            "duplicate-real-server-name",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n    real_servers:\n      - {name: web1, address: 10.0.1.2:80}\n      - {name: web1, address: 10.0.1.3:80}\n",
            "6:16: services[0].real_servers[1].name: duplicate name 'web1' (first in services[0].real_servers[0])",
        ),
        case(
            "duplicate-real-server-address",
            "services:\n  - name: web\n    service: TCP 192.0.2.10:80\n    real_servers:\n      - {name: web1, address: 10.0.1.2:80}\n      - {name: web2, address: 10.0.1.2:80}\n",
            "6:31: services[0].real_servers[1].address: duplicate address '10.0.1.2:80' (first in services[0].real_servers[0])",
        ),
    ],
)
def test_each_rule_names_file_line_column_and_key(text: str, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        config.loads(text, "lvsguard.yaml")
    assert [str(p) for p in caught.value.problems] == [f"lvsguard.yaml:{p}" for p in problems]
    assert str(caught.value) == "\n".join(f"lvsguard.yaml:{p}" for p in problems)


MANY_ERRORS = """\
services:
  - name: web
    service: TCP 192.0.2.10:80
    real_servers:
      - {name: web1, adress: 10.0.1.2:80}
exporter:
  ipvs_source: netlnk
  listen: 9910
director:
  netns: ''
surplus: 1
"""


def test_every_error_at_once_sorted_by_position() -> None:
    with pytest.raises(ConfigError) as caught:
        config.loads(MANY_ERRORS, "lvsguard.yaml")
    problems = caught.value.problems
    assert all(isinstance(p, ConfigProblem) and p.file == "lvsguard.yaml" for p in problems)
    assert [(p.line, p.column, p.key) for p in problems] == [
        (5, 9, "services[0].real_servers[0].address"),
        (5, 22, "services[0].real_servers[0].adress"),
        (7, 16, "exporter.ipvs_source"),
        (8, 11, "exporter.listen"),
        (10, 10, "director.netns"),
        (11, 1, "surplus"),
    ]
    assert problems[1].message == "unknown key; did you mean 'address'?"


def test_load_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "lvsguard.yaml"
    path.write_text(FULL)
    assert config.load(path) == config.loads(FULL, str(path))
    path.write_text("director:\n  netns: ''\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2:10: director.netns: must be a network namespace name"):
        config.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


def test_load_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("director:\n  netns: r\xe9seau\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == f"{path}:2: not UTF-8 text: invalid continuation byte at byte 20"


def test_allow_list_name_of_a_broken_service_is_not_reported_twice() -> None:
    text = "services:\n  - name: web\n    service: TCP 192.0.2.10\nexporter:\n  services: [web]\n"
    with pytest.raises(ConfigError) as caught:
        config.loads(text, "lvsguard.yaml")
    assert [p.key for p in caught.value.problems] == ["services[0].service"]
