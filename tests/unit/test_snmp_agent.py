"""The agent on the host loopback, read by net-snmp's own clients with LVSGUARD-MIB loaded."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import socket
import subprocess
from collections.abc import Callable

import pytest
from pyasn1.codec.ber import encoder
from pyasn1.type import univ
from pysnmp.proto import api

from lvsguard.exporter.snmp import layout
from lvsguard.exporter.snmp.agent import SnmpAgent, SnmpAgentError
from lvsguard.exporter.snmp.mibfiles import BaseMibsUnavailable, mib_search_path
from lvsguard.exporter.snmp.runner import start_in_thread
from lvsguard.exporter.snmp.settings import V3User, build_settings
from lvsguard.exporter.snmp.snapshot import Health, PassiveState, RealServerState, Snapshot
from lvsguard.exporter.snmp.v3 import crypto_available
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Stats, SyncDaemon, Table, VirtualService

pytestmark = pytest.mark.skipif(
    shutil.which("snmpbulkwalk") is None, reason="net-snmp clients not installed (Debian snmp)"
)
needs_crypto = pytest.mark.skipif(not crypto_available(), reason="SNMPv3 AES needs the Python package cryptography")

WEB = ServiceKey("TCP", "192.0.2.10", 80)
DNS6 = ServiceKey("UDP", "2001:db8::1", 53, family=6)
MARK = ServiceKey("FWM", "", 0, 7)
ALICE = V3User("alice", "alice-auth-key", "alice-priv-key", "SHA-256", "AES")
BOB = V3User("bob", "bob-auth-key", "bob-priv-key", "SHA", "AES")


def make_table(web_servers: int = 4) -> Table:
    web = tuple(
        RealServer(
            RealServerKey(f"10.0.0.{i + 1}", 8080),
            weight=i + 1,
            forward=Forward.MASQ,
            active_connections=10 * i,
            inactive_connections=i,
            stats=Stats(1000 + i, 20 + i, 30 + i, 2**40 + i, 50 + i, cps=i, incoming_bps=2**33),
        )
        for i in range(web_servers)
    )
    dns = (RealServer(RealServerKey("2001:db8::2", 53, 6), 3, Forward.ROUTE, stats=Stats(7, 8, 0, 9, 0)),)
    return Table(
        (
            VirtualService(WEB, "wlc", stats=Stats(11, 12, 13, 14, 15), real_servers=web),
            VirtualService(DNS6, "rr", real_servers=dns),
            VirtualService(MARK, "sh", flags=1, timeout=300, netmask=0xFFFFFF00),
        ),
        totals=Stats(91, 92, 93, 94, 95),
        sync_daemons=(SyncDaemon("master", "eth0", 5),),
    )


class AgentThread:
    """An SnmpAgent on its own event loop in a thread (``runner.start_in_thread``), so that tests can run blocking clients."""

    def __init__(self, provider: Callable[[], Snapshot], clock: Callable[[], float] | None = None, **settings) -> None:
        settings.setdefault("communities", ("public",))
        settings.setdefault("users", (ALICE, BOB) if crypto_available() else ())
        self.settings = build_settings(listen="127.0.0.1:0", **settings)
        self.running = start_in_thread(self.settings, provider, **({"clock": clock} if clock else {}))
        self.agent = self.running.agent
        self.target = "127.0.0.1:%d" % self.agent.address[1]

    def close(self) -> None:
        self.running.stop()


@pytest.fixture(scope="module")
def mibs() -> list[str]:
    try:
        return ["-M", mib_search_path(), "-m", "SNMPv2-MIB:LVSGUARD-MIB"]
    except BaseMibsUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def running():
    table = make_table()
    rs1 = (WEB, table.services[0].real_servers[0].key)
    state = {rs1: RealServerState(Health.ALIVE, name="web-1")}
    passive = {rs1: PassiveState(refused=2**33, timeouts=2, verdicts=1, holddown=4.2)}
    agent = AgentThread(lambda: Snapshot(table, real_servers=state, passive=passive))
    yield agent
    agent.close()


def net_snmp(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [tool, "-t", "1", "-r", "0", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def v2c(community: str = "public") -> list[str]:
    return ["-v2c", "-c", community]


def v3(user: V3User, level: str = "authPriv", auth_key: str | None = None, priv_key: str | None = None) -> list[str]:
    args = ["-v3", "-l", level, "-u", user.name]
    if level != "noAuthNoPriv":
        args += ["-a", user.auth_protocol, "-A", auth_key or user.auth_key]
    if level == "authPriv":
        args += ["-x", user.priv_protocol, "-X", priv_key or user.priv_key]
    return args


LINE = re.compile(r"^(?P<name>\S+) = (?:(?P<type>[\w-]+): )?(?P<value>.*)$")


def parse(out: str) -> dict[str, str]:
    values = {}
    for line in out.splitlines():
        m = LINE.match(line)
        assert m, line
        values[m["name"]] = m["value"]
    return values


@pytest.mark.parametrize(
    "security",
    ["v2c", pytest.param("v3-sha256-aes", marks=needs_crypto), pytest.param("v3-sha-aes", marks=needs_crypto)],
)
def test_bulkwalk_resolves_every_name_and_reads_model_values(running: AgentThread, mibs, security: str) -> None:
    auth = {"v2c": v2c(), "v3-sha256-aes": v3(ALICE), "v3-sha-aes": v3(BOB)}[security]
    out = net_snmp("snmpbulkwalk", *auth, *mibs, "-Cr25", running.target, "lvsguardMIB").stdout
    # the walk ends at the end of the agent's view, which net-snmp prints as one more line
    out = "\n".join(line for line in out.splitlines() if "No more variables left in this MIB View" not in line)
    lines = out.splitlines()
    assert all(line.startswith("LVSGUARD-MIB::lvsg") for line in lines), [
        l for l in lines if not l.startswith("LVSGUARD-MIB::lvsg")
    ]
    served = sum(
        1
        for pos in _positions(running.agent.current_view())
        if running.agent.current_view().oid(pos)[:9] == layout.DEFAULT_BASE
    )
    assert len(lines) == served
    values = parse(out)
    rs3 = 'tcp.ipv4."192.0.2.10".8080.0.ipv4."10.0.0.3".8080'.replace("8080.0", "80.0")
    assert values[f"LVSGUARD-MIB::lvsgRsStatsConns.{rs3}"] == "1002 connections"
    assert values[f"LVSGUARD-MIB::lvsgRsStatsInBytes.{rs3}"] == f"{2**40 + 2} bytes"
    assert values[f"LVSGUARD-MIB::lvsgRsRateInBPS.{rs3}"] == "4294967295 bytes per second"
    assert values[f"LVSGUARD-MIB::lvsgRsStatsActiveConns.{rs3}"] == "20 connections"
    assert values[f"LVSGUARD-MIB::lvsgRsWeight.{rs3}"] == "3"
    assert values[f"LVSGUARD-MIB::lvsgRsForwarding.{rs3}"] == "masq(1)"
    assert values[f"LVSGUARD-MIB::lvsgRsStatus.{rs3}"] == "unknown(3)"
    rs1 = rs3.replace('"10.0.0.3"', '"10.0.0.1"')
    assert values[f"LVSGUARD-MIB::lvsgRsStatus.{rs1}"] == "alive(1)"
    assert values[f"LVSGUARD-MIB::lvsgRsName.{rs1}"] == "web-1"
    assert values[f"LVSGUARD-MIB::lvsgRsHandshakeRefused.{rs1}"] == f"{2**33} handshakes"
    assert values[f"LVSGUARD-MIB::lvsgRsHandshakeTimeouts.{rs1}"] == "2 handshakes"
    assert values[f"LVSGUARD-MIB::lvsgRsPassiveVerdicts.{rs1}"] == "1 verdicts"
    assert values[f"LVSGUARD-MIB::lvsgRsPassiveHoldDown.{rs1}"] == "5 seconds"  # rounded up: a running hold-down
    assert values[f"LVSGUARD-MIB::lvsgRsHandshakeRefused.{rs3}"] == "0 handshakes"  # none seen, or passive off
    assert values[f"LVSGUARD-MIB::lvsgRsPassiveHoldDown.{rs3}"] == "0 seconds"
    assert values['LVSGUARD-MIB::lvsgVsRealServersUp.tcp.ipv4."192.0.2.10".80.0'] == "1 real servers"
    assert values['LVSGUARD-MIB::lvsgVsScheduler.fwmark.ipv4."0.0.0.0".0.7'] == "sh"
    assert values['LVSGUARD-MIB::lvsgVsPersistGranularity.fwmark.ipv4."0.0.0.0".0.7'] == "24"
    dns = 'udp.ipv6."20:01:0d:b8:00:00:00:00:00:00:00:00:00:00:00:01".53.0.ipv6."20:01:0d:b8:00:00:00:00:00:00:00:00:00:00:00:02".53'
    assert values[f"LVSGUARD-MIB::lvsgRsForwarding.{dns}"] == "route(4)"
    assert values["LVSGUARD-MIB::lvsgDirectorStatsOutBytes.0"] == "95 bytes"
    assert values["LVSGUARD-MIB::lvsgSyncState.master"] == "running(1)"
    assert values["LVSGUARD-MIB::lvsgSyncState.backup"] == "stopped(2)"


def _positions(view):
    pos = view.next_position((0, 0))
    while pos is not None:
        yield pos
        pos = view.advance(pos)


def test_snmptable_reads_the_real_server_table(running: AgentThread, mibs) -> None:
    out = net_snmp("snmptable", *v2c(), *mibs, "-Cf", ",", "-Cb", "-CH", "-Ci", running.target, "lvsgRsTable").stdout
    rows = [line.split(",") for line in out.strip().splitlines()]
    assert len(rows) == 5
    by_index = {row[0]: row for row in rows}
    assert by_index['tcp.ipv4."192.0.2.10".80.0.ipv4."10.0.0.2".8080'][1] == "10.0.0.2:8080"


def test_wrong_community_gets_nothing(running: AgentThread, mibs) -> None:
    before = running.agent.stats.bad_community_names
    result = net_snmp("snmpbulkwalk", *v2c("private"), *mibs, running.target, "lvsguardMIB", check=False)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Timeout" in result.stderr
    assert running.agent.stats.bad_community_names > before


@pytest.mark.parametrize(
    "security,error",
    [
        (v3(ALICE, auth_key="not-the-auth-key"), "Authentication failure"),
        (v3(ALICE, priv_key="not-the-priv-key"), "Decryption error"),
        (v3(ALICE, level="authNoPriv"), "Unsupported security level"),
        (v3(ALICE, level="noAuthNoPriv"), "Unsupported security level"),
        (v3(V3User("mallory", "mallory-auth", "mallory-priv")), "Unknown user name"),
    ],
    ids=["wrong-auth-key", "wrong-priv-key", "authNoPriv", "noAuthNoPriv", "unknown-user"],
)
@needs_crypto
def test_v3_without_the_right_keys_gets_no_data(running: AgentThread, mibs, security, error) -> None:
    result = net_snmp("snmpbulkwalk", *security, *mibs, running.target, "lvsguardMIB", check=False)
    assert "LVSGUARD-MIB::" not in result.stdout
    assert error in result.stdout + result.stderr


@pytest.mark.parametrize("security", [v2c(), pytest.param(v3(ALICE), marks=needs_crypto)], ids=["v2c", "v3"])
def test_set_is_refused(running: AgentThread, mibs, security) -> None:
    result = net_snmp("snmpset", *security, *mibs, running.target, "SNMPv2-MIB::sysDescr.0", "s", "owned", check=False)
    assert result.returncode != 0
    assert "noAccess" in result.stderr
    out = net_snmp("snmpget", *v2c(), *mibs, "-Ov", running.target, "SNMPv2-MIB::sysDescr.0").stdout
    assert out.strip() == f"STRING: {layout.SYS_DESCR}"


def test_counters_are_served_as_the_snmp_group(running: AgentThread, mibs) -> None:
    net_snmp("snmpget", *v2c("wrong"), *mibs, running.target, "sysDescr.0", check=False)
    values = parse(net_snmp("snmpbulkwalk", *v2c(), *mibs, running.target, "SNMPv2-MIB::snmp").stdout)
    assert (
        int(values["SNMPv2-MIB::snmpInBadCommunityNames.0"].split()[-1]) == running.agent.stats.bad_community_names >= 1
    )
    assert int(values["SNMPv2-MIB::snmpInPkts.0"].split()[-1]) >= 2


def _v2c_request(oid: tuple[int, ...], community: str = "public", request_id: int | None = None) -> bytes:
    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    pdu = p.GetNextRequestPDU()
    p.apiPDU.set_defaults(pdu)
    if request_id is not None:
        p.apiPDU.set_request_id(pdu, request_id)
    p.apiPDU.set_varbinds(pdu, [(oid, p.Null(""))])
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, community)
    p.apiMessage.set_pdu(msg, pdu)
    return encoder.encode(msg)


def _pysnmp_v3_discovery() -> bytes:
    """An SNMPv3 engine-discovery request (noAuthNoPriv, empty user), as a manager sends first."""
    from pysnmp.proto import rfc1905
    from pysnmp.proto.mpmod import rfc3412

    msg = rfc3412.SNMPv3Message()
    msg["msgVersion"] = 3
    header = msg.setComponentByName("msgGlobalData").getComponentByName("msgGlobalData")
    header["msgID"] = 1234
    header["msgMaxSize"] = 65507
    header["msgFlags"] = b"\x04"
    header["msgSecurityModel"] = 3
    msg["msgSecurityParameters"] = bytes.fromhex("300e0400020100020100040004000400")
    scoped = (
        msg.setComponentByName("msgData")
        .getComponentByName("msgData")
        .setComponentByName("plaintext")
        .getComponentByName("plaintext")
    )
    scoped["contextEngineId"] = b""
    scoped["contextName"] = b""
    pdu = rfc1905.GetRequestPDU()
    api.PROTOCOL_MODULES[api.SNMP_VERSION_2C].apiPDU.set_defaults(pdu)
    scoped.setComponentByName("data").getComponentByName("data").setComponentByName("get-request", pdu)
    return encoder.encode(msg)


def _mutations(seeds: list[bytes], count: int, rng: random.Random):
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        kind = rng.randrange(5)
        if kind == 0 and data:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:
            data = data[: rng.randrange(len(data) + 1)]
        elif kind == 2:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif kind == 3:
            data = bytearray(rng.randbytes(rng.randrange(1, 200)))
        else:
            at = rng.randrange(len(data))
            data[at] = 0x84 if rng.random() < 0.5 else 0x80
        yield bytes(data)


def test_fuzzed_packets_do_not_stop_the_agent(running: AgentThread) -> None:
    """Thousands of mutated v2c/v3 requests and random bytes, then a good request still gets its answer."""
    seeds = [_v2c_request(layout.DEFAULT_BASE), _v2c_request((1, 3, 6, 1, 2, 1, 1)), _pysnmp_v3_discovery()]
    before = running.agent.stats.in_packets
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", running.agent.address[1]))
        sent = 0
        for packet in _mutations(seeds, 4000, random.Random(1161)):
            sock.send(packet)
            sent += 1
            if sent % 50 == 0:  # wait until the agent has read everything: no kernel drops
                marker = 0x7A000000 + sent
                sock.send(_v2c_request((1, 3), request_id=marker))
                sent += 1
                _drain_until_answer(sock, encoder.encode(univ.Integer(marker)))
        sock.send(_v2c_request((1, 3, 6, 1, 2, 1, 1, 1), request_id=0x7B000000))
        answer = _drain_until_answer(sock, encoder.encode(univ.Integer(0x7B000000)))
    assert SYS_DESCR in answer
    stats = running.agent.stats
    assert stats.in_packets - before >= sent
    assert stats.asn_parse_errors > 0
    if crypto_available():
        assert stats.v3_rejected > 0  # pysnmp raised on some of them; counted, not fatal
    assert stats.internal_errors == 0


SYS_DESCR = layout.SYS_DESCR.encode()


def _drain_until_answer(sock: socket.socket, marker: bytes) -> bytes:
    """Read answers (fuzzed requests may get some) until the one carrying ``marker`` (its request-id)."""
    while True:
        data = sock.recv(65535)
        if marker in data:
            return data


@needs_crypto
def test_v3_discovery_is_answered_with_a_report(running: AgentThread) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(_pysnmp_v3_discovery(), ("127.0.0.1", running.agent.address[1]))
        data = sock.recv(65535)
    assert data[:1] == b"\x30"
    assert b"\xa8" in data  # a Report-PDU carrying usmStatsUnknownEngineIDs


def test_snapshot_is_reread_only_when_older_than_max_age(mibs) -> None:
    now = [1000.0]
    tables = [make_table(web_servers=2), make_table(web_servers=3)]
    reads = []

    def provider() -> Snapshot:
        reads.append(now[0])
        return Snapshot(tables[min(len(reads) - 1, 1)])

    agent = AgentThread(provider, clock=lambda: now[0], users=(), max_age=5.0)
    try:

        def count_rows() -> int:
            out = net_snmp("snmpbulkwalk", *v2c(), *mibs, agent.target, "lvsgRsName").stdout
            return len(out.splitlines())

        assert count_rows() == 2 + 1
        now[0] += 4.0
        assert count_rows() == 2 + 1
        assert len(reads) == 1
        now[0] += 2.0
        assert count_rows() == 3 + 1
        assert len(reads) == 2
    finally:
        agent.close()


def test_a_failing_provider_keeps_the_agent_serving(mibs) -> None:
    now = [0.0]
    calls = []

    def provider() -> Snapshot:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("probe engine went away")
        return Snapshot(make_table(web_servers=1))

    agent = AgentThread(provider, clock=lambda: now[0], users=(), max_age=1.0)
    try:
        now[0] = 10.0
        out = net_snmp("snmpbulkwalk", *v2c(), *mibs, agent.target, "lvsgRsName").stdout
        assert len(out.splitlines()) == 2
        assert len(calls) == 2
    finally:
        agent.close()


def test_listen_on_a_busy_port_names_the_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        agent = SnmpAgent(build_settings(listen=f"127.0.0.1:{port}", communities=("public",)), lambda: Snapshot(None))
        with pytest.raises(SnmpAgentError, match=f"127.0.0.1:{port}: Address already in use"):
            asyncio.run(agent.start())


@pytest.fixture
def snmpd_proxy(running: AgentThread, tmp_path):
    """net-snmp's snmpd with the ``proxy`` line of docs/snmp.md, forwarding LVSGUARD-MIB to the agent."""
    if shutil.which("snmpd") is None:
        pytest.skip("snmpd not installed (Debian snmpd)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "proxy.conf"
    base = ".".join(map(str, layout.DEFAULT_BASE))
    conf.write_text(f"rocommunity nms 127.0.0.1\nproxy -v 2c -c public {running.target} .{base}\n")
    (tmp_path / "state").mkdir()
    proc = subprocess.Popen(
        ["snmpd", "-f", "-Lo", "-C", "-c", str(conf), "-p", str(tmp_path / "pid"), f"udp:127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SNMP_PERSISTENT_DIR": str(tmp_path / "state"), "MIBS": ""},
    )
    target = f"127.0.0.1:{port}"
    for _ in range(100):
        if (
            net_snmp("snmpget", "-v2c", "-c", "nms", "-m", "", target, ".1.3.6.1.2.1.1.3.0", check=False).returncode
            == 0
        ):
            break
    yield target
    proc.terminate()
    proc.wait(10)


def test_snmpd_proxy_serves_the_agent_under_its_own_port(running: AgentThread, snmpd_proxy: str, mibs) -> None:
    direct = net_snmp("snmpbulkwalk", *v2c(), *mibs, running.target, "lvsguardMIB").stdout
    proxied = net_snmp("snmpbulkwalk", *v2c("nms"), *mibs, snmpd_proxy, "lvsguardMIB").stdout
    keep = lambda out: [
        line for line in out.splitlines() if line.startswith("LVSGUARD-MIB::lvsg") and "No more variables" not in line
    ]
    assert keep(proxied) == keep(direct)
    assert len(keep(direct)) > 100
    # snmpd still answers its own objects: only the LVSGUARD-MIB subtree is forwarded
    own = net_snmp("snmpget", *v2c("nms"), *mibs, "-Ov", snmpd_proxy, "SNMPv2-MIB::sysDescr.0").stdout
    assert layout.SYS_DESCR not in own


def test_ipv6_listen(mibs) -> None:
    settings = build_settings(listen="[::1]:0", communities=("v6",))
    try:
        running = start_in_thread(settings, lambda: Snapshot(make_table(web_servers=1)))
    except SnmpAgentError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        out = net_snmp(
            "snmpget", *v2c("v6"), *mibs, "-Ov", f"udp6:[::1]:{running.address[1]}", "SNMPv2-MIB::sysDescr.0"
        ).stdout
        assert out.strip() == f"STRING: {layout.SYS_DESCR}"
    finally:
        running.stop()


def _v2c_bulk(oid: tuple[int, ...], max_repetitions: int, community: str = "public") -> bytes:
    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    pdu = p.GetBulkRequestPDU()
    p.apiBulkPDU.set_defaults(pdu)
    p.apiBulkPDU.set_non_repeaters(pdu, 0)
    p.apiBulkPDU.set_max_repetitions(pdu, max_repetitions)
    p.apiPDU.set_varbinds(pdu, [(oid, p.Null(""))])
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, community)
    p.apiMessage.set_pdu(msg, pdu)
    return encoder.encode(msg)


def test_a_small_getbulk_gets_a_bounded_answer_by_default() -> None:
    """Reflection: a GETBULK with a spoofed source must not make the agent send 300 times what it got."""
    table = make_table(web_servers=200)
    agent = AgentThread(lambda: Snapshot(table), users=())
    try:
        request = _v2c_bulk(layout.DEFAULT_BASE, 10_000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(request, ("127.0.0.1", agent.agent.address[1]))
            reply = sock.recv(65535)
    finally:
        agent.close()
    assert len(request) < 60
    assert len(reply) <= 1472  # one Ethernet frame: no IP fragments
    assert len(reply) / len(request) < 35  # 64 944 bytes (1 400 times) with the old default
    assert agent.settings.max_response_size == 1472
