"""``lvsguard import ipvsadm``: an ipvsadm-save dump becomes services that load back to the same table."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from lvsguard import cli
from lvsguard.errors import ConfigError
from lvsguard.model import Forward, ServiceFlags, ServiceKey
from lvsguard.table.importers import render
from lvsguard.table.importers.ipvsadm import parse
from lvsguard.table.load import load_table

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "import"


def test_every_option_is_read_and_the_output_loads_back() -> None:
    path = FIXTURES / "ipvsadm-all-options.save"
    imported = parse(path.read_text(), str(path))
    settings, desired, problems = load_table(yaml.safe_load(render(imported)))
    assert problems == [] and settings.manage and settings.prune == "owned"
    assert desired.services == tuple(s.service for s in imported.services)
    mh = desired.service(ServiceKey.parse("TCP 192.0.2.10:80"))
    assert mh is not None and mh.flags == ServiceFlags.SCHED1 | ServiceFlags.SCHED2
    assert (mh.real_servers[0].upper_threshold, mh.real_servers[0].lower_threshold) == (100, 10)
    fwm = desired.service(ServiceKey.parse("FWM 1"))
    assert fwm is not None and (fwm.timeout, fwm.netmask) == (360, 0xFFFFFF00)
    tunnel = fwm.real_servers[0]
    assert (tunnel.forward, tunnel.tunnel_type, tunnel.tunnel_port, tunnel.tunnel_flags) == (Forward.TUNNEL, 1, 6080, 1)
    dns = desired.service(ServiceKey.parse("UDP [2001:db8::10]:53"))
    assert dns is not None and dns.flags == ServiceFlags.ONEPACKET


def test_defaults_are_ipvsadms() -> None:
    imported = parse("-A -t 192.0.2.10:80 -p\n-a -t 192.0.2.10:80 -r 10.0.1.2\n")
    svc = imported.services[0].service
    assert (svc.scheduler, svc.timeout) == ("wlc", 300)
    rs = svc.real_servers[0]
    assert (str(rs.key), rs.forward, rs.weight) == ("10.0.1.2:80", Forward.ROUTE, 1)


def test_long_options_and_ipv6_fwmark() -> None:
    imported = parse("--add-service --fwmark-service 3 -6 --scheduler=sh --sched-flags sh-port\n")
    svc = imported.services[0].service
    assert str(svc.key) == "FWM 3 IPv6" and svc.flags == ServiceFlags.SCHED2


def test_malformed_lines_are_all_reported_with_file_and_line() -> None:
    path = FIXTURES / "ipvsadm-malformed.save"
    with pytest.raises(ConfigError) as caught:
        parse(path.read_text(), "ipvsadm-malformed.save")
    assert str(caught.value).splitlines() == [
        "ipvsadm-malformed.save:2: real server of TCP 192.0.2.11:80, which no -A rule above adds",
        "ipvsadm-malformed.save:3: 'www.example.com:http': 'www.example.com' is not an IP address"
        " (numeric addresses only: save with ipvsadm-save -n)",
        "ipvsadm-malformed.save:4: -w must be 0..65535, got 'heavy'",
        "ipvsadm-malformed.save:5: unknown option '--frobnicate'",
    ]


@pytest.mark.parametrize(
    "rule, message",
    [
        ("-i --tun-type gre --tun-remcsum", "--tun-remcsum does not apply to a gre tunnel"),
        ("-i --tun-csum", "--tun-csum does not apply to a ipip tunnel"),
        ("-i --tun-type gue", "a gue tunnel needs --tun-port"),
    ],
    ids=["remcsum-gre", "csum-ipip", "gue-without-port"],
)
def test_tunnel_options_ipvsadm_refuses_are_refused(rule: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(f"-A -f 1\n-a -f 1 -r 10.0.1.2:0 {rule}\n", "t")
    assert parse("-A -f 1\n-a -f 1 -r 10.0.1.2:0 -i --tun-type ipip --tun-nocsum\n").services


def test_cli_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("-A -t 192.0.2.10:80 -s rr\n-a -t 192.0.2.10:80 -r 10.0.1.2:80 -m\n"))
    assert cli.main(["import", "ipvsadm"]) == 0
    out = capsys.readouterr().out
    assert "# lvsguard config imported from ipvsadm <stdin>" in out
    assert "- {name: 10.0.1.2-80, address: '10.0.1.2:80', weight: 1}" in out
    assert cli.main(["import", "ipvsadm", str(FIXTURES / "no-such.save")]) == 1
    assert "no-such.save: cannot read: No such file or directory" in capsys.readouterr().err
