"""``lvsguard import keepalived|ldirectord``: the table the peer builds, checks as probes, the rest as comments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lvsguard import cli, config
from lvsguard.errors import ConfigError
from lvsguard.model import Forward, RealServerKey, ServiceFlags, ServiceKey, VirtualService
from lvsguard.table.importers import ipvsadm, keepalived, ldirectord, render
from lvsguard.table.importers._emit import Imported
from lvsguard.table.load import load_table

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "import"
KEEPALIVED = FIXTURES / "keepalived"
LDIRECTORD = FIXTURES / "ldirectord"
NEGOTIATE = FIXTURES / "ldirectord-negotiate"


def imported(path: Path) -> Imported:
    module = keepalived if path.suffix == ".conf" else ldirectord
    return module.parse(path.read_text(), str(path))


def output(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(render(imported(path)))
    assert isinstance(doc, dict)
    return doc


def service(path: Path, key: str) -> VirtualService:
    _, desired, problems = load_table(output(path))
    assert problems == []
    svc = desired.service(ServiceKey.parse(key))
    assert svc is not None, f"{key} not in {[str(s.key) for s in desired]}"
    return svc


def names_and_probes_load(doc: dict[str, Any], name: str) -> config.Config:
    """The config loader of today accepts the output once the table keys are taken out."""
    doc = dict(doc)
    doc.pop("table")
    doc["services"] = [
        {
            "name": s["name"],
            "service": s["service"],
            "real_servers": [{"name": r["name"], "address": r["address"]} for r in s["real_servers"]],
        }
        for s in doc["services"]
    ]
    return config.loads(yaml.safe_dump(doc), name)


@pytest.mark.parametrize(
    "path",
    [
        *(KEEPALIVED / f"{n}.conf" for n in ("nat", "dr", "tunnel-fwmark", "group")),
        LDIRECTORD / "ldirectord.cf",
    ],
    ids=lambda p: p.name,
)
def test_output_is_a_valid_managed_config(path: Path) -> None:
    doc = output(path)
    settings, desired, problems = load_table(doc)
    assert problems == [] and settings.manage and settings.prune == "owned"
    assert desired.services == tuple(s.service for s in imported(path).services)
    cfg = names_and_probes_load(doc, path.name)
    assert len(cfg.services) == len(desired)
    assert cfg.probes.default_tcp is False  # the peers check only what their config says


def test_keepalived_nat_weights_thresholds_and_checks() -> None:
    path = KEEPALIVED / "nat.conf"
    svc = service(path, "TCP 192.0.2.10:80")
    assert svc.scheduler == "wrr"
    assert [
        (str(rs.key), rs.forward, rs.weight, rs.upper_threshold, rs.lower_threshold) for rs in svc.real_servers
    ] == [
        ("10.0.1.2:80", Forward.MASQ, 3, 100, 10),
        ("10.0.1.3:8080", Forward.MASQ, 1, 0, 0),
    ]
    checks = names_and_probes_load(output(path), "nat.conf").probes.checks
    assert [(c.type, c.label, c.path, c.port, c.interval, c.timeout, c.rise, c.fall) for c in checks] == [
        ("http", "http", "/health", None, 5.0, 2.0, 1, 3),
        ("http", "http-2", "/ready", None, 5.0, 2.0, 1, 3),
        ("tcp", "tcp", "/", 8081, 5.0, 5.0, 1, 3),
        ("script", "script", "/", None, 5.0, 3.0, 1, 3),
    ]
    assert checks[0].statuses == (200, 201, 202, 203, 204, 301)
    # Several url blocks stay several checks (http, http-2), each with its own url's digest: the first has one.
    assert [c.digest for c in checks[:2]] == ["9b3a0c85a887a256d6939da88aabd8cd", ""]
    assert checks[3].command == ("/usr/local/bin/check-web", "10.0.1.3")  # misc_dynamic: lvsguard's exit codes


def test_keepalived_dr_forces_ports_and_keeps_persistence() -> None:
    svc = service(KEEPALIVED / "dr.conf", "TCP 192.0.2.20:443")
    assert (svc.timeout, svc.netmask, svc.flags & ServiceFlags.PERSISTENT) == (600, 0xFFFFFF00, 1)
    assert [str(rs.key) for rs in svc.real_servers] == ["10.0.1.4:443", "10.0.1.5:443"]  # 8443: DR keeps the VIP's
    checks = names_and_probes_load(output(KEEPALIVED / "dr.conf"), "dr.conf").probes.checks
    assert (checks[0].type, checks[0].host, checks[0].sni, checks[0].tls_verify) == (
        "https",
        "www.example.com",
        "www.example.com",
        False,
    )
    assert checks[1].command[:4] == ("/bin/sh", "-c", '"$@" || exit 1', "sh")  # no misc_dynamic: non-zero is down


def test_keepalived_fwmark_tunnel_mh_flags_and_ipv6() -> None:
    path = KEEPALIVED / "tunnel-fwmark.conf"
    fwm = service(path, "FWM 7")
    assert fwm.flags == ServiceFlags.SCHED1 | ServiceFlags.SCHED2
    gue, ipip = fwm.real_servers
    assert (str(gue.key), gue.tunnel_type, gue.tunnel_port, gue.tunnel_flags, gue.weight) == (
        "10.0.1.6:0",
        1,
        6080,
        1,
        4,
    )
    assert (str(ipip.key), ipip.forward, ipip.tunnel_type, ipip.tunnel_port) == ("10.0.1.7:0", Forward.TUNNEL, 0, 0)
    dns = service(path, "UDP [2001:db8::10]:53")
    assert dns.flags == ServiceFlags.ONEPACKET | ServiceFlags.SCHED2 and dns.real_servers[0].forward is Forward.ROUTE


def test_keepalived_group_with_an_include_is_one_service_per_entry() -> None:
    doc = output(KEEPALIVED / "group.conf")
    assert [s["service"] for s in doc["services"]] == ["TCP 192.0.2.30:80", "TCP 192.0.2.31:80", "TCP 192.0.2.40:8080"]
    svc = service(KEEPALIVED / "group.conf", "TCP 192.0.2.40:8080")
    assert [(str(rs.key), rs.weight) for rs in svc.real_servers] == [("10.0.1.2:80", 2), ("10.0.1.3:80", 1)]


def test_keepalived_defaults_are_keepalived_s() -> None:
    result = keepalived.parse("virtual_server 192.0.2.10 0 {\n real_server 10.0.1.2 {\n }\n}\n", "k.conf")
    svc = result.services[0].service
    assert (str(svc.key), svc.scheduler, svc.timeout) == ("UDP 192.0.2.10:0", "wlc", 360)
    assert (svc.real_servers[0].forward, svc.real_servers[0].weight) == (Forward.MASQ, 1)
    assert all(n.translated for n in result.notes)


def test_untranslated_settings_are_comments_and_strict_fails(capsys: pytest.CaptureFixture[str]) -> None:
    text = render(imported(KEEPALIVED / "nat.conf"))
    assert "# 3 settings not translated: see the comments." in text
    assert f"# {KEEPALIVED / 'nat.conf'}:12: not translated: sorry_server 10.0.9.9 80:" in text
    assert cli.main(["import", "keepalived", str(KEEPALIVED / "nat.conf")]) == 0
    assert cli.main(["import", "keepalived", str(KEEPALIVED / "nat.conf"), "--strict"]) == 3
    err = capsys.readouterr().err
    assert f"{KEEPALIVED / 'nat.conf'}:12: not translated: sorry_server" in err
    assert ":22:" not in err  # nat.conf:22 (digest) is translated: the check's digest key
    assert cli.main(["import", "keepalived", str(KEEPALIVED / "tunnel-fwmark.conf"), "--strict"]) == 0


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "malformed-keyword.conf",
            [
                "malformed-keyword.conf:6: unknown keyword 'wieght' in real_server",
                "malformed-keyword.conf:11: lb_kind must be NAT, DR or TUN, got 'BRIDGE'",
            ],
        ),
        ("malformed-include.conf", ["malformed-include.conf:4: include conf.d/missing-*.conf: no such file"]),
        ("malformed-brace.conf", ["malformed-brace.conf:1: '{' is never closed"]),
        ("malformed-included.conf", ["bad.inc:1: virtual_server: '192.0.2.300' is not an IP address"]),
    ],
    ids=["unknown-keyword", "missing-include", "unclosed-brace", "error-in-an-include"],
)
def test_malformed_keepalived_conf_gets_file_line_errors(
    name: str, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        imported(KEEPALIVED / name)
    lines = str(caught.value).splitlines()
    assert [line.removeprefix(f"{KEEPALIVED}/").removeprefix("group.d/") for line in lines] == expected
    assert cli.main(["import", "keepalived", str(KEEPALIVED / name)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lvsguard: ") and "Traceback" not in err


def test_keepalived_digest_becomes_the_checks_md5_and_strict_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(
        "virtual_server 192.0.2.10 443 {\n lb_kind NAT\n protocol TCP\n"
        " real_server 10.0.1.2 443 {\n  SSL_GET {\n   url {\n    path /\n"
        "    digest 9B3A0C85A887A256D6939DA88AABD8CD\n   }\n  }\n }\n}\n"
    )
    assert cli.main(["import", "keepalived", str(conf), "--strict"]) == 0
    out = capsys.readouterr().out
    (check,) = names_and_probes_load(yaml.safe_load(out), "k.yaml").probes.checks
    assert (check.type, check.digest) == ("https", "9b3a0c85a887a256d6939da88aabd8cd")


@pytest.mark.parametrize("value", ["9b3a0c85", "9b3a0c85a887a256d6939da88aabd8cz", ""])
def test_keepalived_digest_that_is_not_an_md5_is_a_file_line_error(value: str) -> None:
    text = f"virtual_server 192.0.2.10 80 {{\n real_server 10.0.1.2 80 {{\n  HTTP_GET {{\n   url {{\n    digest {value}\n   }}\n  }}\n }}\n}}\n"
    with pytest.raises(ConfigError) as caught:
        keepalived.parse(text, "k.conf")
    assert str(caught.value).startswith("k.conf:5: digest")


def test_ldirectord_table_and_checks() -> None:
    path = LDIRECTORD / "ldirectord.cf"
    web = service(path, "TCP 192.0.2.10:80")
    assert (web.scheduler, web.timeout, web.netmask) == ("wlc", 600, 0xFFFFFF00)
    assert [(str(r.key), r.forward, r.weight, r.upper_threshold, r.lower_threshold) for r in web.real_servers] == [
        ("10.0.1.2:80", Forward.ROUTE, 5, 0, 0),
        ("10.0.1.3:80", Forward.ROUTE, 2, 100, 10),
        ("10.0.1.4:80", Forward.ROUTE, 2, 100, 10),
    ]
    dns = service(path, "UDP 192.0.2.10:53")
    assert dns.real_servers[0].key == RealServerKey("10.0.1.5", 5353) and dns.scheduler == "wrr"
    fwm = service(path, "FWM 7")
    assert fwm.flags == ServiceFlags.SCHED1 | ServiceFlags.SCHED2 and fwm.real_servers[0].forward is Forward.TUNNEL
    service(path, "TCP [2001:db8::10]:443")
    checks = names_and_probes_load(output(path), "ldirectord.cf").probes.checks
    assert [(c.type, c.path, c.body, c.host, c.port) for c in checks[:2]] == [
        ("http", "/index.html", "Test Page", "www.example.com", None),
        ("http", "/.healthcheck.html", "OK", "www.example.com", None),
    ]
    assert (checks[3].type, checks[3].query_name, checks[3].answer) == ("dns", "www.example.com", "192.0.2")
    assert checks[4].command[-4:] == ("7", "0", "{address}", "{port}")
    assert (checks[5].type, checks[5].port, checks[5].tls_verify) == ("https", 8443, False)


def test_ldirectord_negotiate_and_connect_become_http_and_tcp_probes() -> None:
    """negotiate.cf and mismatch.cf, which the kernel test runs Debian's ldirectord on against the lab's servers."""
    checks = names_and_probes_load(output(NEGOTIATE / "negotiate.cf"), "negotiate.cf").probes.checks
    assert [(str(c.real_server), c.type, c.path, c.body, c.port, c.timeout, c.interval, c.fall) for c in checks] == [
        *((f"10.0.1.{i}:8080", "http", "/health", "^rs[0-9]+$", None, 2.0, 3.0, 1) for i in (2, 3, 4)),
        *((f"10.0.1.{i}:80", "tcp", "/", "", None, 2.0, 3.0, 1) for i in (2, 3, 4)),
    ]
    assert all(c.statuses == tuple(range(200, 209)) + (226,) for c in checks[:3])
    checks = names_and_probes_load(output(NEGOTIATE / "mismatch.cf"), "mismatch.cf").probes.checks
    assert [(str(c.real_server), c.type, c.path, c.body) for c in checks] == [
        ("10.0.1.2:8080", "http", "/", "^rs1$"),  # the virtual's request and receive
        ("10.0.1.3:8080", "http", "/health", ""),  # its own, the receive empty: any 2xx answer
        ("10.0.1.4:8080", "http", "/index.html", "^rs2$"),  # its own, with the leading / ldirectord adds
        ("10.0.1.2:8080", "http", "/", "^rs1$"),  # its own begins with /: ldirectord checks the virtual's
    ]


@pytest.mark.parametrize(
    "real, path, body",
    [
        ("10.0.1.2:80 gate", "/virtual", "v"),
        ('10.0.1.2:80 gate 1 "own", "o"', "/own", "o"),
        ('10.0.1.2:80 gate 1 "own", ""', "/own", ""),
        ('10.0.1.2:80 gate 1 "", ""', "/", ""),
        ('10.0.1.2:80 gate 1 "/own", "o"', "/virtual", "v"),
    ],
    ids=["virtuals", "own", "own-empty-receive", "own-empty-request", "own-with-a-slash-is-ignored"],
)
def test_ldirectord_a_real_servers_request_and_receive_replace_the_virtuals(real: str, path: str, body: str) -> None:
    """As ldirectord 4.12 reads them: a pair taken whole, empty strings included (an empty receive: any 2xx); a pair
    whose request begins with "/" ignored (its receive is lost, and the check is the virtual's), with a comment."""
    text = f'virtual=192.0.2.10:80\n\treal={real}\n\tservice=http\n\trequest="virtual"\n\treceive="v"\n'
    [found] = ldirectord.parse(text, "l.cf").checks
    assert (found.check["path"], found.check.get("body", "")) == (path, body)
    ignored = [n.message for n in found.notes if "ignores" in n.message]
    assert ignored == (
        [
            'real "/own", "o": ldirectord ignores a real server\'s request and receive when the request begins with'
            ' "/" and checks the virtual\'s; write "own" to have it checked'
        ]
        if '"/own"' in real
        else []
    )


@pytest.mark.parametrize(
    "virtual, one_packet, noted",
    [("192.0.2.10:53", True, False), ("7", False, True), ("192.0.2.10:80", False, True)],
    ids=["udp", "fwmark", "tcp"],
)
def test_ldirectord_ops_is_for_udp_services_only(virtual: str, one_packet: bool, noted: bool) -> None:
    """ldirectord passes -o for a UDP service alone (a fwmark service with ops = yes gets none)."""
    found = ldirectord.parse(f"virtual={virtual}\n\treal=10.0.1.2 gate\n\tops=yes\n", "l.cf").services[0]
    assert found.service.flags & ServiceFlags.ONEPACKET == (ServiceFlags.ONEPACKET if one_packet else 0)
    assert [n.message for n in found.notes] == (
        ["ops = yes: ldirectord schedules one packet at a time on UDP services only"] if noted else []
    )


@pytest.mark.parametrize(
    "method, port", [("masq", 0), ("gate", 80), ("ipip", 80)], ids=["nat-keeps-port-0", "dr-on-80", "tunnel-on-80"]
)
def test_ldirectord_real_server_without_a_port(method: str, port: int) -> None:
    """ldirectord adds it on port 0: the kernel puts the service's port in its place unless NAT."""
    found = ldirectord.parse(f"virtual=192.0.2.10:80\n\treal=10.0.1.2 {method}\n\tchecktype=connect\n", "l.cf")
    assert found.services[0].service.real_servers[0].key == RealServerKey("10.0.1.2", port)
    assert found.checks[0].check.get("port", port) == 80  # ldirectord checks the service's port


def test_malformed_ldirectord_cf_reports_every_line() -> None:
    with pytest.raises(ConfigError) as caught:
        imported(LDIRECTORD / "malformed.cf")
    assert [line.removeprefix(f"{LDIRECTORD}/") for line in str(caught.value).splitlines()] == [
        "malformed.cf:3: real: the forwarding method must be gate, masq or ipip",
        "malformed.cf:4: unknown setting 'frobnicate' of a virtual service",
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "frobnicate=yes\nvirtual=192.0.2.10:80\n\treal=10.0.1.2:80 gate\n",
            "l.cf:1: unknown global setting 'frobnicate'",
        ),
        ("virtual=192.0.2.10:80\n\treal=10.0.1.2:80 gate\n\tchecktype=sometimes\n", "l.cf:3: checktype must be one of"),
        ("virtual=192.0.2.10:80\n\treal=10.0.1.2:80 gate\n\tservice=gopher\n", "l.cf:3: service must be one of"),
        ("virtual=192.0.2.10:80\n\treal=10.0.1.2:80 gate heavy\n", "l.cf:2: real: unexpected 'heavy'"),
        ('virtual=192.0.2.10:80\n\treal=10.0.1.2:80 gate 1 "/only-a-request"\n', 'l.cf:2: real: expected "request"'),
        ("virtual=192.0.2.300:80\n\treal=10.0.1.2:80 gate\n", "l.cf:1: virtual: "),
        ("virtual=192.0.2.10:80\n\treal6=[2001:db8::2]:80 gate\n", "l.cf:2: real6 in a virtual: write real"),
        ("virtual=192.0.2.10:80\n\treal=10.0.1.2:80 gate\n\tpersistent=forever\n", "l.cf:3: persistent must be 1.."),
        ("    checkinterval=2\n", "l.cf:1: indented 'checkinterval' outside a virtual service"),
        ("virtual 192.0.2.10:80\n", "l.cf:1: not a 'key = value' line"),
    ],
    ids=[
        "unknown-global",
        "bad-checktype",
        "unknown-service",
        "bad-weight",
        "request-without-receive",
        "bad-address",
        "real6-in-virtual",
        "bad-persistent",
        "indented-outside",
        "no-equals",
    ],
)
def test_broken_ldirectord_cf_is_a_file_line_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ldirectord.parse(text, "l.cf")
    assert str(caught.value).startswith(expected), str(caught.value)


@pytest.mark.parametrize("kind", ["keepalived", "ldirectord", "ipvsadm"])
def test_import_of_a_file_that_is_not_there_names_it(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["import", kind, str(tmp_path / "gone.conf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lvsguard: {tmp_path / 'gone.conf'}") and "cannot read" in err and "Traceback" not in err


def test_ldirectord_errors_and_strict_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["import", "ldirectord", str(LDIRECTORD / "malformed.cf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lvsguard: {LDIRECTORD / 'malformed.cf'}:3: ") and "Traceback" not in err, err
    assert cli.main(["import", "ldirectord", str(LDIRECTORD / "ldirectord.cf"), "--strict"]) == 3
    assert f"{LDIRECTORD / 'ldirectord.cf'}:6: not translated: emailalert" in capsys.readouterr().err
    assert cli.main(["import", "ldirectord", str(NEGOTIATE / "negotiate.cf"), "--strict"]) == 0
    assert cli.main(["import", "ldirectord", str(NEGOTIATE / "mismatch.cf"), "--strict"]) == 3, "the ignored pair"


@pytest.mark.parametrize(
    "method, message",
    [
        ("TUN type gre remcsum", "remcsum is for gue tunnels only"),
        ("TUN type gue", "a gue tunnel needs its port"),
        ("TUN csum", "checksum options are for gue and gre tunnels"),
        ("DR type gue port 1", "lvs_method DR takes no tunnel options"),
    ],
    ids=["remcsum-gre", "gue-without-port", "csum-ipip", "options-on-dr"],
)
def test_keepalived_tunnel_options_the_kernel_refuses_are_errors(method: str, message: str) -> None:
    text = (
        f"virtual_server 192.0.2.10 80 {{\n protocol TCP\n real_server 10.0.1.2 80 {{\n  lvs_method {method}\n }}\n}}\n"
    )
    with pytest.raises(ConfigError, match=f"k.conf:4: (lvs_method: )?{message}"):
        keepalived.parse(text, "k.conf")


@pytest.mark.parametrize(
    "directory, source, module",
    [
        ("keepalived", "nat.conf", keepalived),
        ("ldirectord", "ldirectord.cf", ldirectord),
        (".", "ipvsadm-all-options.save", ipvsadm),
    ],
    ids=["keepalived", "ldirectord", "ipvsadm"],
)
def test_output_matches_the_golden_file(directory: str, source: str, module: Any) -> None:
    """The printed config, comments and layout included (regenerate by hand when it changes on purpose)."""
    folder = FIXTURES / directory
    text = render(module.parse((folder / source).read_text(), source))
    golden = folder / (source.rsplit(".", 1)[0] + ".expected.yaml")
    assert text == golden.read_text()
