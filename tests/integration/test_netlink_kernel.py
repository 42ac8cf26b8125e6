"""NetlinkIPVS against the real kernel: writes read back over netlink and with ``ipvsadm -Ln``.

Everything happens in a network namespace of our own (``lvsg-nl``), which also
shows that a reader stays in the namespace it was opened in; the table there
is flushed before each test. ``ipvsadm`` is an independent reader (libnl):
what we write must look to it exactly as it would had ipvsadm written it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsguard.errors import (
    AlreadyExists,
    BulkFailed,
    InvalidRequest,
    KernelError,
    NoSuchDestination,
    NoSuchService,
    NotPermitted,
)
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import (
    Forward,
    RealServer,
    RealServerKey,
    ServiceFlags,
    ServiceKey,
    Stats,
    SyncDaemon,
    VirtualService,
)

pytestmark = pytest.mark.kernel

NETNS = "lvsg-nl"
OTHER_NETNS = "lvsg-nl-other"
HASHED, PERSISTENT = int(ServiceFlags.HASHED), int(ServiceFlags.PERSISTENT)
VIP = ServiceKey.parse("TCP 192.0.2.10:80")


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def ipvsadm(*args: str, netns: str = NETNS) -> str:
    return run("ip", "netns", "exec", netns, "ipvsadm", *args)


def ipvsadm_table(*options: str, netns: str = NETNS) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """``ipvsadm -Ln OPTIONS`` as {service: (service line words, {real server: words after the address})}."""
    table: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    current: dict[str, list[str]] = {}
    for line in ipvsadm("-Ln", *options, netns=netns).splitlines()[3:]:
        words = line.split()
        if words[0] == "->":
            current[words[1]] = words[2:]
        else:
            six = words[0] == "FWM" and len(words) > 2 and words[2] == "IPv6"
            key = f"{words[0]} {words[1]}" + (" IPv6" if six else "")
            current = {}
            table[key] = (words[2 + six :], current)
    return table


@pytest.fixture(scope="module")
def ipvs() -> Iterator[NetlinkIPVS]:
    for name in (NETNS, OTHER_NETNS):
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
    run("ip", "-n", NETNS, "link", "add", "sync0", "type", "dummy")
    run("ip", "-n", NETNS, "addr", "add", "10.9.9.1/24", "dev", "sync0")
    run("ip", "-n", NETNS, "link", "set", "sync0", "multicast", "on", "up")
    reader = NetlinkIPVS(netns=NETNS)
    try:
        yield reader
    finally:
        reader.close()
        for name in (NETNS, OTHER_NETNS):
            run("ip", "netns", "del", name)


@pytest.fixture(autouse=True)
def empty_table(ipvs: NetlinkIPVS) -> Iterator[None]:
    ipvs.flush()
    for daemon in ipvs.sync_daemons():
        ipvs.stop_sync_daemon(daemon.role)
    yield


def nat(endpoint: str, weight: int = 1, upper: int = 0, lower: int = 0) -> RealServer:
    return RealServer(RealServerKey.parse(endpoint), weight, Forward.MASQ, upper, lower)


# -- services ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "svc, ipvsadm_line",
    [
        (VirtualService(VIP, "wrr"), ["wrr"]),
        (
            VirtualService(VIP, "wlc", flags=PERSISTENT, timeout=300, netmask=0xFFFFFF00),
            ["wlc", "persistent", "300", "mask", "255.255.255.0"],
        ),
        (
            VirtualService(ServiceKey.parse("UDP [2001:db8::10]:53"), "rr", flags=PERSISTENT, timeout=60, netmask=64),
            ["rr", "persistent", "60", "mask", "64"],
        ),
        (VirtualService(ServiceKey.parse("SCTP 192.0.2.11:3868"), "sh", flags=0x18), ["sh", "(sh-fallback,sh-port)"]),
        (VirtualService(ServiceKey.parse("FWM 5"), "mh", flags=0x10), ["mh", "(mh-port)"]),
        (
            VirtualService(ServiceKey.parse("FWM 6 IPv6"), "lc", flags=PERSISTENT, timeout=30),
            ["lc", "persistent", "30"],
        ),
        (
            VirtualService(ServiceKey.parse("UDP 192.0.2.13:5060"), "rr", flags=PERSISTENT, timeout=60, pe_name="sip"),
            ["rr", "persistent", "60", "pe", "sip"],
        ),
    ],
    ids=["tcp", "tcp-persistent", "udp-ipv6-persistent", "sctp-sched-flags", "fwmark", "fwmark-ipv6", "udp-sip"],
)
def test_service_round_trip(ipvs: NetlinkIPVS, svc: VirtualService, ipvsadm_line: list[str]) -> None:
    ipvs.add_service(svc)
    default_mask = 0xFFFFFFFF if svc.key.family == 4 else 128
    expected = dataclasses.replace(svc, flags=svc.flags | HASHED, netmask=svc.netmask or default_mask)
    assert ipvs.read_service(svc.key) == expected
    assert ipvs.read().services == (expected,)
    assert ipvsadm_table()[str(svc.key)][0] == ipvsadm_line


def test_edit_then_delete_service(ipvs: NetlinkIPVS) -> None:
    ipvs.add_service(VirtualService(VIP, "wlc", flags=PERSISTENT, timeout=300, pe_name=""))
    ipvs.edit_service(VirtualService(VIP, "rr"))
    assert ipvs.read_service(VIP) == VirtualService(VIP, "rr", flags=HASHED, netmask=0xFFFFFFFF)
    assert ipvsadm_table()[str(VIP)][0] == ["rr"]
    ipvs.delete_service(VIP)
    assert ipvs.read().services == ()
    assert ipvsadm_table() == {}


# -- real servers ------------------------------------------------------------------------------------

GUE = RealServer(
    RealServerKey.parse("10.0.3.3:80"), 4, Forward.TUNNEL, 50, 5, tunnel_type=1, tunnel_port=6080, tunnel_flags=2
)


def test_real_server_round_trip(ipvs: NetlinkIPVS) -> None:
    servers = (
        nat("10.0.1.2:8080", 3, 100, 10),
        RealServer(RealServerKey.parse("10.0.1.3:80"), 0, Forward.ROUTE),
        GUE,
        RealServer(RealServerKey.parse("10.0.3.4:80"), 1, Forward.TUNNEL, tunnel_type=2, tunnel_flags=1),
    )
    ipvs.add_service(VirtualService(VIP, "wrr"))
    for rs in servers:
        ipvs.add_real_server(VIP, rs)
    assert ipvs.read_service(VIP).real_servers == servers[::-1]  # the kernel lists the newest first
    plain = ipvsadm_table()[str(VIP)][1]
    assert {rs: words[:2] for rs, words in plain.items()} == {
        "10.0.1.2:8080": ["Masq", "3"],
        "10.0.1.3:80": ["Route", "0"],
        "10.0.3.3:80": ["Tunnel", "4"],
        "10.0.3.4:80": ["Tunnel", "1"],
    }
    thresholds = ipvsadm_table("--thresholds")[str(VIP)][1]  # Uthreshold Lthreshold ActiveConn InActConn
    assert (thresholds["10.0.1.2:8080"][:2], thresholds["10.0.3.3:80"][:2]) == (["100", "10"], ["50", "5"])
    tunnels = ipvsadm_table("--tun-info")[str(VIP)][1]  # Forward TunnelInfo Weight ...
    assert (tunnels["10.0.3.3:80"][1], tunnels["10.0.3.4:80"][1]) == ("gue:6080:r+c", "gre:+c")


def test_edit_then_delete_real_server(ipvs: NetlinkIPVS) -> None:
    ipvs.add_service(VirtualService(VIP, "wrr"))
    ipvs.add_real_server(VIP, nat("10.0.1.2:8080", 3))
    edited = RealServer(RealServerKey.parse("10.0.1.2:8080"), 7, Forward.MASQ, 20, 2)
    ipvs.edit_real_server(VIP, edited)
    assert ipvs.read_service(VIP).real_servers == (edited,)
    assert ipvsadm_table()[str(VIP)][1]["10.0.1.2:8080"][:2] == ["Masq", "7"]
    assert ipvsadm_table("--thresholds")[str(VIP)][1]["10.0.1.2:8080"][:2] == ["20", "2"]
    ipvs.delete_real_server(VIP, edited.key)
    assert ipvs.read_service(VIP).real_servers == ()
    assert ipvsadm_table()[str(VIP)][1] == {}


@pytest.mark.parametrize("rs", [nat("10.0.1.2:8080", 100, 100, 10), GUE], ids=["masq-thresholds", "gue-tunnel"])
def test_set_weight_keeps_everything_else(ipvs: NetlinkIPVS, rs: RealServer) -> None:
    ipvs.add_service(VirtualService(VIP, "wrr"))
    ipvs.add_real_server(VIP, rs)
    returned = ipvs.set_weight(VIP, rs.key, 0)
    expected = dataclasses.replace(rs, weight=0)
    assert returned == expected
    assert ipvs.read_service(VIP).real_servers == (expected,)
    assert ipvsadm_table()[str(VIP)][1][str(rs.key)][:2] == [str(rs.forward), "0"]
    assert ipvsadm_table("--thresholds")[str(VIP)][1][str(rs.key)][:2] == [
        str(rs.upper_threshold),
        str(rs.lower_threshold),
    ]


def test_ipv4_real_server_behind_an_ipv6_service(ipvs: NetlinkIPVS) -> None:
    key = ServiceKey.parse("TCP [2001:db8::10]:80")
    mixed = RealServer(RealServerKey.parse("10.0.3.5:80"), 2, Forward.TUNNEL)
    ipvs.add_service(VirtualService(key, "rr"))
    ipvs.add_real_server(key, mixed)
    assert ipvs.read_service(key).real_servers == (mixed,)
    assert ipvsadm_table()[str(key)][1]["10.0.3.5:80"][:2] == ["Tunnel", "2"]


# -- typed errors that name the object ---------------------------------------------------------------


def test_errors_name_the_object(ipvs: NetlinkIPVS) -> None:
    ipvs.add_service(VirtualService(VIP, "wrr"))
    ipvs.add_real_server(VIP, nat("10.0.1.2:80"))
    missing_rs = RealServerKey.parse("10.0.1.9:80")
    missing_svc = ServiceKey.parse("TCP 192.0.2.99:80")
    cases = [
        (
            lambda: ipvs.delete_real_server(VIP, missing_rs),
            NoSuchDestination,
            "real server 10.0.1.9:80 of TCP 192.0.2.10:80: no such destination",
        ),
        (
            lambda: ipvs.edit_real_server(VIP, nat("10.0.1.9:80")),
            NoSuchDestination,
            "real server 10.0.1.9:80 of TCP 192.0.2.10:80: no such destination",
        ),
        (
            lambda: ipvs.set_weight(VIP, missing_rs, 0),
            NoSuchDestination,
            "real server 10.0.1.9:80 of TCP 192.0.2.10:80: no such destination",
        ),
        (
            lambda: ipvs.add_real_server(VIP, nat("10.0.1.2:80")),
            AlreadyExists,
            "real server 10.0.1.2:80 of TCP 192.0.2.10:80: already exists",
        ),
        (
            lambda: ipvs.add_real_server(missing_svc, nat("10.0.1.2:80")),
            NoSuchService,
            "service TCP 192.0.2.99:80: no such service",
        ),
        (
            lambda: ipvs.set_weight(missing_svc, missing_rs, 0),
            NoSuchService,
            "service TCP 192.0.2.99:80: no such service",
        ),
        (lambda: ipvs.read_service(missing_svc), NoSuchService, "service TCP 192.0.2.99:80: no such service"),
        (lambda: ipvs.delete_service(missing_svc), NoSuchService, "service TCP 192.0.2.99:80: no such service"),
        (
            lambda: ipvs.edit_service(VirtualService(missing_svc, "rr")),
            NoSuchService,
            "service TCP 192.0.2.99:80: no such service",
        ),
        (
            lambda: ipvs.add_service(VirtualService(VIP, "rr")),
            AlreadyExists,
            "service TCP 192.0.2.10:80: already exists",
        ),
        (
            lambda: ipvs.add_service(VirtualService(missing_svc, "nosuch")),
            InvalidRequest,
            "service TCP 192.0.2.99:80: no scheduler 'nosuch' in this kernel",
        ),
        (
            lambda: ipvs.add_real_server(VIP, nat("10.0.1.3:80", 1, upper=5, lower=10)),
            InvalidRequest,
            "real server 10.0.1.3:80 of TCP 192.0.2.10:80: numerical result out of range",
        ),
        (
            lambda: ipvs.add_real_server(VIP, RealServer(RealServerKey("10.0.1.300", 80), 1, Forward.MASQ)),
            InvalidRequest,
            "real server 10.0.1.300:80 of TCP 192.0.2.10:80: address '10.0.1.300' is not an IPv4 address",
        ),
    ]
    failures = []
    for call, cls, message in cases:
        with pytest.raises(KernelError) as info:
            call()
        if type(info.value) is not cls or not str(info.value).startswith(message):
            failures.append(
                f"expected {cls.__name__}({message!r}), got {type(info.value).__name__}({str(info.value)!r})"
            )
    assert failures == []
    assert ipvs.read_service(VIP).real_servers == (nat("10.0.1.2:80"),)


# -- sync daemons --------------------------------------------------------------------------------------


def test_sync_daemons_start_read_stop(ipvs: NetlinkIPVS) -> None:
    ipvs.start_sync_daemon(SyncDaemon("master", "sync0", 9))
    ipvs.start_sync_daemon(
        SyncDaemon("backup", "sync0", 10, max_sync_len=1400, mcast_group="239.1.2.3", mcast_port=9000, mcast_ttl=2)
    )
    # the kernel fills in its defaults: group 224.0.0.81, port 8848, ttl 1, the interface MTU's payload
    assert sorted(ipvs.sync_daemons(), key=lambda d: d.role) == [
        SyncDaemon("backup", "sync0", 10, 1400, "239.1.2.3", 9000, 2),
        SyncDaemon("master", "sync0", 9, 1472, "224.0.0.81", 8848, 1),
    ]
    assert ipvs.read().sync_daemons == ipvs.sync_daemons()
    assert sorted(ipvsadm("-Ln", "--daemon").splitlines()) == [
        "backup sync daemon (mcast=sync0, syncid=10, maxlen=1400, group=239.1.2.3, port=9000, ttl=2)",
        "master sync daemon (mcast=sync0, syncid=9, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)",
    ]
    with pytest.raises(AlreadyExists, match="^sync daemon master: already running$"):
        ipvs.start_sync_daemon(SyncDaemon("master", "sync0", 11))
    ipvs.stop_sync_daemon("master")
    assert [d.role for d in ipvs.sync_daemons()] == ["backup"]
    with pytest.raises(KernelError, match="^sync daemon master: not running$"):
        ipvs.stop_sync_daemon("master")
    with pytest.raises(InvalidRequest, match="^sync daemon master: "):
        ipvs.start_sync_daemon(SyncDaemon("master", "nosuch0", 9))


# -- namespaces, bulk, the whole table ------------------------------------------------------------------


def test_namespace_is_kept_apart(ipvs: NetlinkIPVS) -> None:
    ipvs.add_service(VirtualService(VIP, "rr"))
    with NetlinkIPVS(netns=OTHER_NETNS) as other:
        assert other.read().services == ()
        other.add_service(VirtualService(ServiceKey.parse("UDP 192.0.2.50:53"), "wrr"))
        assert [str(s.key) for s in other.read().services] == ["UDP 192.0.2.50:53"]
        other.flush()
    with NetlinkIPVS() as root:
        assert VIP not in [s.key for s in root.read().services]
    assert [str(s.key) for s in ipvs.read().services] == [str(VIP)]
    assert list(ipvsadm_table()) == [str(VIP)]
    assert str(VIP) not in ipvsadm_table(netns=OTHER_NETNS)


def test_bulk_add_of_10000_real_servers(ipvs: NetlinkIPVS) -> None:
    servers = [
        RealServer(RealServerKey(f"10.1.{i // 250}.{i % 250 + 1}", 80), 1 + i % 9, Forward.ROUTE) for i in range(10_000)
    ]
    ipvs.add_service(VirtualService(VIP, "wrr"))
    assert ipvs.add_real_servers(VIP, servers) == 10_000
    table = ipvs.read()
    assert table.real_server_count == 10_000
    assert sorted(table.services[0].real_servers, key=lambda rs: rs.key.address) == sorted(
        servers, key=lambda rs: rs.key.address
    )
    shown = ipvsadm_table()[str(VIP)][1]
    assert len(shown) == 10_000
    assert shown["10.1.39.250:80"][:2] == ["Route", str(1 + 9999 % 9)]


def test_bulk_add_reports_each_failure(ipvs: NetlinkIPVS) -> None:
    ipvs.add_service(VirtualService(VIP, "wrr"))
    ipvs.add_real_server(VIP, nat("10.0.1.5:80"))
    batch = [nat(f"10.0.1.{i}:80") for i in range(1, 9)] + [
        nat("10.0.1.2:80"),
        RealServer(RealServerKey("10.0.1.999", 80), 1, Forward.MASQ),
    ]
    with pytest.raises(BulkFailed) as info:
        ipvs.add_real_servers(VIP, batch)
    assert sorted((type(f).__name__, str(f.real_server)) for f in info.value.failures) == [
        ("AlreadyExists", "10.0.1.2:80"),
        ("AlreadyExists", "10.0.1.5:80"),
        ("InvalidRequest", "10.0.1.999:80"),
    ]
    assert str(info.value).startswith("service TCP 192.0.2.10:80: 3 of 10 real servers not added: ")
    assert len(ipvs.read_service(VIP).real_servers) == 8


def test_bulk_edit_changes_each_real_server_and_keeps_what_it_was_sent(ipvs: NetlinkIPVS) -> None:
    servers = [
        RealServer(RealServerKey(f"10.1.{i // 250}.{i % 250 + 1}", 80), 5, Forward.ROUTE, 100, 10) for i in range(600)
    ]
    ipvs.add_service(VirtualService(VIP, "wrr"))
    ipvs.add_real_servers(VIP, servers)
    changed = [dataclasses.replace(rs, weight=i % 3) for i, rs in enumerate(servers)]  # 600: three sendmsg batches
    assert ipvs.edit_real_servers(VIP, changed) == 600
    assert sorted(ipvs.read_real_servers(VIP), key=lambda rs: str(rs.key)) == sorted(
        changed, key=lambda rs: str(rs.key)
    )
    shown = ipvsadm_table()[str(VIP)][1]
    assert shown["10.1.2.100:80"][:2] == ["Route", str(599 % 3)]


def test_bulk_edit_reports_each_failure_and_applies_the_rest(ipvs: NetlinkIPVS) -> None:
    ipvs.add_service(VirtualService(VIP, "wrr"))
    for i in (1, 2, 3):
        ipvs.add_real_server(VIP, nat(f"10.0.1.{i}:80"))
    batch = [
        dataclasses.replace(nat("10.0.1.1:80"), weight=0),
        dataclasses.replace(nat("10.0.1.9:80"), weight=0),
        dataclasses.replace(nat("10.0.1.3:80"), weight=7),
    ]
    with pytest.raises(BulkFailed) as info:
        ipvs.edit_real_servers(VIP, batch)
    assert [(type(f).__name__, str(f.service), str(f.real_server)) for f in info.value.failures] == [
        ("NoSuchDestination", str(VIP), "10.0.1.9:80")
    ]
    assert str(info.value).startswith(
        "service TCP 192.0.2.10:80: 1 of 3 real servers not changed: real server 10.0.1.9:80"
    )
    assert {str(rs.key): rs.weight for rs in ipvs.read_real_servers(VIP)} == {
        "10.0.1.1:80": 0,
        "10.0.1.2:80": 1,
        "10.0.1.3:80": 7,
    }
    with pytest.raises(BulkFailed) as info:
        ipvs.edit_real_servers(ServiceKey.parse("TCP 192.0.2.99:80"), [nat("10.0.1.1:80")])
    assert type(info.value.failures[0]).__name__ == "NoSuchService"


def test_read_real_servers_tells_an_empty_service_from_a_missing_one(ipvs: NetlinkIPVS) -> None:
    ipvs.add_service(VirtualService(VIP, "rr"))
    assert ipvs.read_real_servers(VIP) == ()
    ipvs.add_real_server(VIP, nat("10.0.1.1:80"))
    assert ipvs.read_real_servers(VIP) == ipvs.read_service(VIP).real_servers
    with pytest.raises(NoSuchService) as info:
        ipvs.read_real_servers(ServiceKey.parse("TCP 192.0.2.99:80"))
    assert "TCP 192.0.2.99:80" in str(info.value)


def test_read_has_host_totals(ipvs: NetlinkIPVS) -> None:
    ipvs.add_service(VirtualService(VIP, "rr"))
    table = ipvs.read()
    assert table.source == "netlink"
    assert isinstance(table.totals, Stats)
    assert [str(s.key) for s in table.services] == [str(VIP)]


def test_without_cap_net_admin_is_not_permitted(installed_python: Path) -> None:
    code = "from lvsguard.ipvs.netlink import NetlinkIPVS\ntry:\n    NetlinkIPVS()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    out = run(
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        str(installed_python),
        "-c",
        code,
    )
    assert out.startswith("NotPermitted "), out
    assert NotPermitted.__name__ in out and "CAP_NET_ADMIN" in out
    assert os.geteuid() == 0
