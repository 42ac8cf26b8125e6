"""The procfs parser on text captured from a real kernel, and the reader on files.

The fixtures in tests/fixtures/proc/ come from capture.sh, run in the lab VM
(kernel 6.1, CONFIG_HZ=100). The expected tables below restate the ipvsadm
commands of that script, in the order the kernel printed the services.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lvsguard.errors import IPVSUnavailable, KernelError, NamespaceError, NotPermitted
from lvsguard.ipvs.procfs import (
    ProcfsFormatError,
    ProcfsReader,
    _hz_estimate,
    parse_ip_vs,
    parse_ip_vs_stats,
)
from lvsguard.model import (
    ZERO_STATS,
    Forward,
    RealServer,
    RealServerKey,
    ServiceFlags,
    ServiceKey,
    Stats,
    VirtualService,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "proc"
CAPTURE_HZ = 100  # CONFIG_HZ of the UML kernel the fixtures were captured on

HASHED = ServiceFlags.HASHED
OPS = ServiceFlags.ONEPACKET
PERSISTENT = ServiceFlags.PERSISTENT


def svc(
    key: str, scheduler: str, *servers: RealServer, flags: int = 0, timeout: int = 0, netmask: int = 0
) -> VirtualService:
    return VirtualService(ServiceKey.parse(key), scheduler, int(HASHED | flags), timeout, netmask, real_servers=servers)


def rs(endpoint: str, forward: Forward, weight: int, active: int = 0, inactive: int = 0) -> RealServer:
    return RealServer(
        RealServerKey.parse(endpoint), weight, forward, active_connections=active, inactive_connections=inactive
    )


M, R, T, L = Forward.MASQ, Forward.ROUTE, Forward.TUNNEL, Forward.LOCAL

# Direct routing and tunnelling cannot change the port: ipvsadm stores the
# service's port for `-g`/`-i` real servers whatever port was given.
EXPECTED_TABLES = {
    "empty": (),
    "nat_dr_tunnel": (
        svc("UDP 192.0.2.10:53", "rr", rs("10.0.1.2:53", M, 1), flags=OPS),
        svc("SCTP 192.0.2.10:5060", "sh"),
        svc(
            "TCP 192.0.2.10:80",
            "wrr",
            rs("10.0.1.5:80", L, 1),
            rs("10.0.1.4:80", T, 65535),
            rs("10.0.1.3:80", R, 0),
            rs("10.0.1.2:80", M, 3),
        ),
    ),
    "ipv6": (
        svc("SCTP [2001:db8::11]:9", "rr"),
        svc(
            "TCP [2001:db8::10]:443",
            "wlc",
            rs("10.0.1.5:443", T, 1),
            rs("[2001:db8:1::3]:443", R, 1),
            rs("[2001:db8:1::2]:443", M, 2),
        ),
        svc("UDP [2001:db8::10]:53", "rr"),  # created with -o: IPv6 lines never print "ops"
    ),
    "fwm": (
        svc("FWM 1", "wlc", rs("10.0.1.3:80", M, 4), rs("10.0.1.2:0", R, 1)),
        svc("FWM 2 IPv6", "rr", rs("[2001:db8:1::3]:0", R, 1)),
        svc("FWM 4294967295", "rr", flags=OPS),
    ),
    "persistent": (
        svc("TCP [2001:db8::12]:443", "sh", flags=PERSISTENT, timeout=60, netmask=64),
        svc("TCP 192.0.2.11:80", "rr", rs("10.0.1.2:80", M, 1), flags=PERSISTENT, timeout=1800, netmask=0xFFFFFF00),
        svc("TCP 192.0.2.12:443", "wlc", flags=PERSISTENT, timeout=360, netmask=0xFFFFFFFF),  # ipvsadm's -p default
        svc("FWM 5", "wrr", flags=OPS | PERSISTENT, timeout=600, netmask=0xFFFFFFFF),
        svc("FWM 6 IPv6", "rr", flags=PERSISTENT, timeout=120, netmask=96),  # family from the netmask alone
        svc("FWM 7 IPv6", "rr", flags=PERSISTENT, timeout=30, netmask=128),
    ),
    "traffic": (  # 3 connections held open, 8 opened and closed (FIN_WAIT/TIME_WAIT)
        svc("TCP 10.0.0.1:80", "rr", rs("10.0.2.2:8080", M, 1, 2, 4), rs("10.0.1.2:8080", M, 1, 1, 4)),
    ),
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize("name", sorted(EXPECTED_TABLES))
def test_kernel_table_parses_exactly(name: str) -> None:
    assert parse_ip_vs(fixture(f"{name}.ip_vs"), hz=CAPTURE_HZ) == EXPECTED_TABLES[name]


def test_procfs_has_no_per_object_counters() -> None:
    services = parse_ip_vs(fixture("traffic.ip_vs"))
    assert all(s.stats is ZERO_STATS for s in services)
    assert all(r.stats is ZERO_STATS for s in services for r in s.real_servers)


def test_timeout_is_unknown_without_hz() -> None:
    services = parse_ip_vs(fixture("persistent.ip_vs"))
    assert [s.timeout for s in services] == [0] * 6
    assert all(s.persistent for s in services)


@pytest.mark.parametrize(
    ("hz", "timeout"),
    [pytest.param(100, 300, id="hz-100"), pytest.param(250, 120, id="hz-250"), pytest.param(1000, 30, id="hz-1000")],
)
def test_timeout_jiffies_become_seconds(hz: int, timeout: int) -> None:
    text = fixture("empty.ip_vs") + "TCP  C000020A:0050 rr  persistent 30000 FFFFFFFF\n"
    (service,) = parse_ip_vs(text, hz=hz)
    assert service.timeout == timeout


@pytest.mark.parametrize(
    ("printed", "prefix"),
    [
        pytest.param("40000000", 64, id="little-endian-64"),
        pytest.param("80000000", 128, id="little-endian-128"),
        pytest.param("00000040", 64, id="big-endian-64"),
        pytest.param("00000080", 128, id="big-endian-128"),
    ],
)
def test_ipv6_netmask_is_a_prefix_length(printed: str, prefix: int) -> None:
    line = f"TCP  [2001:0db8:0000:0000:0000:0000:0000:0010]:0050 rr persistent 6000 {printed}\n"
    (service,) = parse_ip_vs(fixture("empty.ip_vs") + line)
    assert service.netmask == prefix


@pytest.mark.parametrize(
    ("lines", "family"),
    [
        pytest.param(
            [
                "FWM  00000003 rr ",
                "  -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0000      Route   1      0          0",
            ],
            6,
            id="ipv6-routed-server",
        ),
        pytest.param(
            ["FWM  00000003 rr ", "  -> 0A000102:0000      Route   1      0          0"], 4, id="ipv4-routed-server"
        ),
        pytest.param(
            [
                "FWM  00000003 rr ",
                "  -> 0A000102:0000      Tunnel  1      0          0",
                "  -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0000      Masq    1      0          0",
            ],
            6,
            id="tunnel-skipped",
        ),
        pytest.param(["FWM  00000003 rr persistent 100 FFFFFF00"], 4, id="ipv4-netmask"),
        pytest.param(["FWM  00000003 rr persistent 100 30000000"], 6, id="ipv6-netmask-48"),
        pytest.param(["FWM  00000003 rr "], 4, id="no-evidence-means-ipv4"),
    ],
)
def test_fwmark_family_is_inferred(lines: list[str], family: int) -> None:
    (service,) = parse_ip_vs(fixture("empty.ip_vs") + "\n".join(lines) + "\n")
    assert service.key.family == family


def test_service_printed_twice_during_a_read_is_kept_once() -> None:
    block = "TCP  C000020A:0050 wrr  \n  -> 0A000102:0050      Masq    3      0          0\n"
    second = "TCP  C000020A:0051 wrr  \n"
    services = parse_ip_vs(fixture("empty.ip_vs") + block + second + block.replace("Masq    3", "Masq    4"))
    assert [str(s.key) for s in services] == ["TCP 192.0.2.10:80", "TCP 192.0.2.10:81"]
    assert services[0].real_servers[0].weight == 3


HEADER = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"


@pytest.mark.parametrize(
    ("text", "lineno", "reason"),
    [
        pytest.param("", 1, "not an IPVS table", id="empty-file"),
        pytest.param("TCP  C000020A:0050 wrr\n", 1, "not an IPVS table", id="no-header"),
        pytest.param(
            HEADER + "  -> 0A000102:0050 Masq 1 0 0\n", 4, "real server before any service", id="real-server-first"
        ),
        pytest.param(HEADER + "ICMP  C000020A:0050 rr\n", 4, "unknown line type 'ICMP'", id="unknown-protocol"),
        pytest.param(
            HEADER + "TCP  C000020A:0050\n", 4, "needs a protocol, an address and a scheduler", id="no-scheduler"
        ),
        pytest.param(HEADER + "TCP  C00002:0050 rr\n", 4, "is not IPv4:PORT in hex", id="short-ipv4-address"),
        pytest.param(HEADER + "TCP  [2001:0db8::10]:0050 rr\n", 4, "is not [IPv6]:PORT in hex", id="compressed-ipv6"),
        pytest.param(HEADER + "TCP  C000020A:50 rr\n", 4, "is not 4 hex digits", id="short-port"),
        pytest.param(HEADER + "TCP  C000020A:00G0 rr\n", 4, "port '00G0' is not hexadecimal", id="non-hex-port"),
        pytest.param(HEADER + "TCP  C000020A:0050 rr sticky\n", 4, "unknown service flags 'sticky'", id="unknown-flag"),
        pytest.param(
            HEADER + "TCP  C000020A:0050 rr persistent 300\n",
            4,
            "unknown service flags",
            id="persistent-without-netmask",
        ),
        pytest.param(
            HEADER + "TCP  C000020A:0050 rr persistent 3x0 FFFFFFFF\n", 4, "persistence timeout '3x0'", id="bad-timeout"
        ),
        pytest.param(HEADER + "FWM  0000000G rr\n", 4, "firewall mark '0000000G' is not hexadecimal", id="bad-fwmark"),
        pytest.param(
            HEADER + "TCP  C000020A:0050 rr\n  -> 0A000102:0050 Magic 1 0 0\n",
            5,
            "unknown forwarding method 'Magic'",
            id="unknown-forward",
        ),
        pytest.param(
            HEADER + "TCP  C000020A:0050 rr\n  -> 0A000102:0050 Masq -1 0 0\n",
            5,
            "weight '-1' is not a decimal number",
            id="negative-weight",
        ),
        pytest.param(
            HEADER + "TCP  C000020A:0050 rr\n  -> 0A000102:0050 Masq 1 0\n",
            5,
            "needs address, forward, weight",
            id="missing-inactconn",
        ),
    ],
)
def test_unparsable_ip_vs_names_line_and_reason(text: str, lineno: int, reason: str) -> None:
    with pytest.raises(ProcfsFormatError) as caught:
        parse_ip_vs(text, path="/proc/net/ip_vs")
    err = caught.value
    assert isinstance(err, KernelError)
    assert err.lineno == lineno
    assert reason in str(err)
    assert str(err).startswith(f"/proc/net/ip_vs:{lineno}: ")
    if text:
        assert repr(text.splitlines()[lineno - 1]) in str(err)


def _ipvsadm_totals(name: str) -> tuple[int, ...]:
    """Conns, InPkts, OutPkts, InBytes, OutBytes summed over services in ``ipvsadm -Ln --stats --exact``."""
    rows = [
        line.split()[2:]
        for line in fixture(name).splitlines()
        if line.split()[:1] in (["TCP"], ["UDP"], ["SCTP"], ["FWM"])
    ]
    return tuple(sum(int(row[i]) for row in rows) for i in range(5))


def test_host_totals_agree_with_ipvsadm() -> None:
    stats = parse_ip_vs_stats(fixture("traffic.ip_vs_stats"))
    assert (
        stats.connections,
        stats.incoming_packets,
        stats.outgoing_packets,
        stats.incoming_bytes,
        stats.outgoing_bytes,
    ) == _ipvsadm_totals("traffic.ipvsadm")
    assert (stats.cps, stats.incoming_pps, stats.outgoing_pps, stats.incoming_bps, stats.outgoing_bps) == (
        1,
        4,
        3,
        0xF6,
        0x97,
    )


def test_idle_host_totals_are_zero() -> None:
    assert parse_ip_vs_stats(fixture("idle.ip_vs_stats")) == Stats(0, 0, 0, 0, 0)


def _kernel_stats_text(totals: tuple[int, ...], rates: tuple[int, ...]) -> str:
    """ip_vs_stats_show's own layout (printf "%8LX %8LX %8LX %16LX %16LX")."""
    row = "{:8X} {:8X} {:8X} {:16X} {:16X}\n"
    return (
        "   Total Incoming Outgoing         Incoming         Outgoing\n"
        "   Conns  Packets  Packets            Bytes            Bytes\n"
        + row.format(*totals)
        + "\n Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
        + row.format(*rates)
    )


def test_64_bit_counters_stay_exact() -> None:
    totals = (2**64 - 1, 2**53 + 1, 2**32, 2**63 + 12345, 9_007_199_254_740_993)
    rates = (2**32 - 1, 0, 7, 2**40, 1)
    assert parse_ip_vs_stats(_kernel_stats_text(totals, rates)) == Stats(*totals, *rates)


@pytest.mark.parametrize(
    ("text", "lineno", "reason"),
    [
        pytest.param("", 1, "file ends early", id="empty-file"),
        pytest.param(fixture("traffic.ip_vs"), 1, "expected a 'Total' header", id="ip_vs-not-ip_vs_stats"),
        pytest.param(
            "".join(fixture("idle.ip_vs_stats").splitlines(True)[:3]), 3, "file ends early", id="no-rate-lines"
        ),
        pytest.param(
            fixture("idle.ip_vs_stats").replace(
                "       0        0        0                0                0\n\n", "       0        0        0\n\n", 1
            ),
            3,
            "expected 5 hex numbers, found 3",
            id="short-totals",
        ),
        pytest.param(
            fixture("traffic.ip_vs_stats").replace("A8B", "A8Z"),
            3,
            "counter 'A8Z' is not hexadecimal",
            id="non-hex-counter",
        ),
    ],
)
def test_unparsable_ip_vs_stats_names_line_and_reason(text: str, lineno: int, reason: str) -> None:
    with pytest.raises(ProcfsFormatError) as caught:
        parse_ip_vs_stats(text)
    assert caught.value.lineno == lineno
    assert reason in str(caught.value)
    assert str(caught.value).startswith(f"/proc/net/ip_vs_stats:{lineno}: ")


@pytest.mark.parametrize(
    ("jiffies", "uptime", "hz"),
    [
        pytest.param(4294937616, 3.0, 100, id="uml-3s-after-boot"),
        pytest.param(2**32 + (86400 - 300) * 250, 86400.4, 250, id="debian-one-day"),
        pytest.param(2**32 + (3600 - 300) * 1000 + 700, 3600.0, 1000, id="hz-1000-with-tick-lag"),
        pytest.param(2**32 + (600 - 300) * 300, 600.0, 300, id="hz-300"),
        pytest.param(2**32 + 10 * 100, 310.0, None, id="too-close-to-300s"),
        pytest.param(2**32 + (1000 - 300) * 170, 1000.0, None, id="no-config-hz-fits"),
    ],
)
def test_hz_from_jiffies_and_uptime(jiffies: int, uptime: float, hz: int | None) -> None:
    assert _hz_estimate(jiffies, uptime) == hz


def _proc_dir(tmp_path: Path, scenario: str, stats: str = "traffic") -> Path:
    (tmp_path / "ip_vs").write_text(fixture(f"{scenario}.ip_vs"))
    (tmp_path / "ip_vs_stats").write_text(fixture(f"{stats}.ip_vs_stats"))
    return tmp_path


def test_reader_reads_both_files(tmp_path: Path) -> None:
    with ProcfsReader(proc_net=str(_proc_dir(tmp_path, "traffic")), hz=CAPTURE_HZ) as reader:
        table = reader.read()
    assert reader.source == table.source == "procfs"
    assert table.services == EXPECTED_TABLES["traffic"]
    assert table.totals == parse_ip_vs_stats(fixture("traffic.ip_vs_stats"))
    assert table.sync_daemons == ()


def test_reader_rereads_the_open_files(tmp_path: Path) -> None:
    directory = _proc_dir(tmp_path, "empty", "idle")
    with ProcfsReader(proc_net=str(directory), hz=CAPTURE_HZ) as reader:
        assert reader.read().services == ()
        with open(directory / "ip_vs", "w") as f:  # same inode: the reader's descriptor sees the new text
            f.write(fixture("persistent.ip_vs"))
        assert reader.read().services == EXPECTED_TABLES["persistent"]


def test_reader_reads_a_table_larger_than_one_pread(tmp_path: Path) -> None:
    lines = [HEADER]
    for s in range(400):
        lines.append(f"TCP  C0{s >> 8:02X}{s & 0xFF:02X}0A:0050 wlc  \n")
        lines.extend(
            f"  -> 0A{s >> 8:02X}{s & 0xFF:02X}{d:02X}:1F90      Route   {d}      {d % 7:<10d} {d % 5:<10d}\n"
            for d in range(100)
        )
    (tmp_path / "ip_vs").write_text("".join(lines))
    (tmp_path / "ip_vs_stats").write_text(fixture("idle.ip_vs_stats"))
    assert (tmp_path / "ip_vs").stat().st_size > 2 * (1 << 20)
    with ProcfsReader(proc_net=str(tmp_path)) as reader:
        table = reader.read()
    assert len(table.services) == 400 and table.real_server_count == 40_000
    last = table.services[-1]
    assert str(last.key) == "TCP 192.1.143.10:80"
    assert [(str(r), r.weight, r.active_connections, r.inactive_connections) for r in last.real_servers[-2:]] == [
        ("10.1.143.98:8080", 98, 0, 3),
        ("10.1.143.99:8080", 99, 1, 4),
    ]


def test_missing_file_means_no_ipvs(tmp_path: Path) -> None:
    (tmp_path / "ip_vs_stats").write_text(fixture("idle.ip_vs_stats"))
    with pytest.raises(IPVSUnavailable) as caught:
        ProcfsReader(proc_net=str(tmp_path))
    assert str(tmp_path / "ip_vs") in str(caught.value)
    assert "ip_vs module" in str(caught.value)


def test_unreadable_file_is_not_permitted(tmp_path: Path) -> None:
    directory = _proc_dir(tmp_path, "traffic")
    os.chmod(directory / "ip_vs", 0o600)
    os.chmod(directory, 0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child without root's bypass of file permissions
        os.close(read_end)
        try:
            if os.geteuid() == 0:
                os.setresuid(65534, 65534, 65534)
            ProcfsReader(proc_net=str(directory), hz=CAPTURE_HZ)
            message = "opened"
        except NotPermitted as exc:
            message = f"NotPermitted {exc}"
        except BaseException as exc:
            message = f"{type(exc).__name__} {exc}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert message == f"NotPermitted {directory / 'ip_vs'}: Permission denied"


def test_corrupt_file_names_path_and_line(tmp_path: Path) -> None:
    directory = _proc_dir(tmp_path, "traffic")
    (directory / "ip_vs").write_text(fixture("traffic.ip_vs").replace("Masq", "Mask", 1))
    with ProcfsReader(proc_net=str(directory)) as reader, pytest.raises(ProcfsFormatError) as caught:
        reader.read()
    assert str(caught.value).startswith(f"{directory / 'ip_vs'}:5: unknown forwarding method 'Mask'")


def test_closed_reader_refuses_to_read(tmp_path: Path) -> None:
    reader = ProcfsReader(proc_net=str(_proc_dir(tmp_path, "traffic")))
    reader.close()
    with pytest.raises(KernelError, match="reader is closed"):
        reader.read()


def test_unknown_namespace_is_named() -> None:
    with pytest.raises(NamespaceError, match="lvsguard-no-such-netns"):
        ProcfsReader("lvsguard-no-such-netns")
