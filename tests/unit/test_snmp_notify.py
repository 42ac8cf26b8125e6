"""Notifications: what a snapshot transition sends, and a real snmptrapd receiving it from the agent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_snmp_agent import AgentThread  # the threaded agent harness

from lvsguard.exporter.snmp import layout
from lvsguard.exporter.snmp.mibfiles import BaseMibsUnavailable, mib_search_path
from lvsguard.exporter.snmp.notify import changes, encode_notification, response_request_id
from lvsguard.exporter.snmp.settings import V3User
from lvsguard.exporter.snmp.snapshot import DirectorState, Health, Hold, RealServerState, Role, ServiceState, Snapshot
from lvsguard.exporter.snmp.v3 import crypto_available
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService

BASE = layout.DEFAULT_BASE
TRAP_USER = V3User("trapper", "trapper-auth-key", "trapper-priv-key", "SHA-256", "AES")
ENGINE_ID = "80001f8880c0ffee0001"
needs_crypto = pytest.mark.skipif(not crypto_available(), reason="SNMPv3 AES needs the Python package cryptography")
WEB = ServiceKey("TCP", "192.0.2.10", 80)
KEYS = [RealServerKey(f"10.0.0.{i}", 80) for i in (1, 2, 3)]
TABLE = Table((VirtualService(WEB, "wlc", real_servers=tuple(RealServer(k, 5, Forward.ROUTE) for k in KEYS)),))
RS2 = layout.service_index(WEB) + layout.address_index("10.0.0.2") + (80,)


def snap(states: dict[int, RealServerState], quorum: int = 0, role: Role = Role.UNKNOWN) -> Snapshot:
    return Snapshot(
        TABLE,
        services={WEB: ServiceState(name="web", quorum=quorum)},
        real_servers={(WEB, KEYS[i]): s for i, s in states.items()},
        director=DirectorState(role),
    )


def values(notification) -> dict[str, object]:
    """Objects by column number and instance, e.g. 'rs9' -> status of the real server."""
    out = {}
    for oid, _, value in notification.objects:
        rest = oid[len(BASE) :]
        table = {(1, 1): "dir", (1, 2, 1): "vs", (1, 3, 1): "rs", (1, 7): "notify"}
        for prefix, name in table.items():
            if rest[: len(prefix)] == prefix:
                out[f"{name}{rest[len(prefix)]}"] = value
    return out


ALIVE, DEAD = RealServerState(Health.ALIVE), RealServerState(Health.DEAD, reason="connect refused")


def test_first_snapshot_sends_nothing() -> None:
    assert changes(None, snap({1: DEAD}), BASE) == []


@pytest.mark.parametrize(
    "before,after,sent",
    [
        (ALIVE, DEAD, True),
        (DEAD, ALIVE, True),
        (RealServerState(), DEAD, True),
        (RealServerState(), ALIVE, False),
        (ALIVE, ALIVE, False),
        (DEAD, RealServerState(), False),
    ],
    ids=["alive-dead", "dead-alive", "first-result-dead", "first-result-alive", "no-change", "probe-removed"],
)
def test_health_change(before, after, sent) -> None:
    found = changes(snap({1: before}), snap({1: after}), BASE)
    assert [n.name for n in found] == (["lvsgRsHealthChange"] if sent else [])
    if sent:
        v = values(found[0])
        assert (v["rs4"], v["rs9"], v["rs6"], v["vs6"], v["vs12"]) == ("10.0.0.2:80", after.health.value, 5, "web", 3)
        assert v["notify1"] == after.reason
        assert found[0].objects[0][0] == BASE + layout.RS_ENTRY + (4,) + RS2


def test_quorum_lost_and_regained() -> None:
    two = {0: ALIVE, 1: ALIVE, 2: DEAD}
    one = {0: ALIVE, 1: DEAD, 2: DEAD}
    lost = changes(snap(two, quorum=2), snap(one, quorum=2), BASE)
    assert [n.name for n in lost] == ["lvsgRsHealthChange", "lvsgVsQuorumLost"]
    v = values(lost[1])
    assert (v["vs15"], v["vs14"], v["vs13"], v["vs12"]) == (layout.QUORUM_NOT_MET, 2, 1, 3)
    regained = changes(snap(one, quorum=2), snap(two, quorum=2), BASE)
    assert [n.name for n in regained] == ["lvsgRsHealthChange", "lvsgVsQuorumRegained"]
    assert changes(snap(two), snap(one), BASE)[-1].name == "lvsgRsHealthChange"  # no quorum configured


@pytest.mark.parametrize(
    "before,after,name",
    [
        (Hold.NONE, Hold.QUARANTINED, "lvsgRsQuarantined"),
        (Hold.QUARANTINED, Hold.NONE, "lvsgRsRestored"),
        (Hold.DRAINED, Hold.NONE, "lvsgRsRestored"),
        (Hold.DRAINING, Hold.DRAINED, "lvsgRsDrainDone"),
        (Hold.NONE, Hold.DRAINING, None),
    ],
    ids=["quarantine", "restore", "restore-after-drain", "drain-done", "drain-started"],
)
def test_hold_changes(before, after, name) -> None:
    old = RealServerState(hold=before, original_weight=7 if before is not Hold.NONE else None)
    new = RealServerState(
        hold=after, actor="alertmanager", reason="RealServerDown", original_weight=7 if after is not Hold.NONE else None
    )
    found = changes(snap({1: old}), snap({1: new}), BASE)
    assert [n.name for n in found] == ([name] if name else [])
    if name:
        v = values(found[0])
        assert (v["rs10"], v["notify2"], v["notify1"]) == (after.value, "alertmanager", "RealServerDown")
        if name != "lvsgRsDrainDone":
            assert v["notify3"] == 7


def test_role_change() -> None:
    found = changes(snap({}, role=Role.BACKUP), snap({}, role=Role.MASTER), BASE)
    assert [n.name for n in found] == ["lvsgDirectorRoleChange"]
    assert values(found[0])["dir1"] == Role.MASTER.value


def test_inform_acknowledgement_is_matched_by_request_id() -> None:
    data = encode_notification(changes(snap({}, role=Role.BACKUP), snap({}), BASE)[0], BASE, b"c", 77, 5, inform=True)
    assert response_request_id(data) is None  # an InformRequest is not a Response
    response = b"\x30" + data[1:]
    pdu_at = response.index(b"\xa6")
    response = response[:pdu_at] + b"\xa2" + response[pdu_at + 1 :]
    assert response_request_id(response) == 77


# --- a real snmptrapd ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mibpath() -> str:
    if shutil.which("snmptrapd") is None:
        pytest.skip("snmptrapd not installed (Debian snmptrapd)")
    try:
        return mib_search_path()
    except BaseMibsUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def trapd(mibpath: str, tmp_path: Path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "trapd.conf"
    user = f"{TRAP_USER.name} {TRAP_USER.auth_protocol} {TRAP_USER.auth_key} {TRAP_USER.priv_protocol} {TRAP_USER.priv_key}"
    conf.write_text(
        "authCommunity log traps\n"
        f"createUser -e 0x{ENGINE_ID} {user}\n"  # traps: the agent is the authoritative engine
        f"createUser {user}\n"  # informs: snmptrapd is
        f"authUser log {TRAP_USER.name} priv\n"
    )
    out = tmp_path / "traps.log"
    (tmp_path / "state").mkdir()
    proc = subprocess.Popen(
        [
            "snmptrapd",
            "-f",
            "-Lf",
            str(out),
            "-C",
            "-c",
            str(conf),
            "-M",
            mibpath,
            "-m",
            "SNMPv2-MIB:LVSGUARD-MIB",
            f"udp:127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SNMP_PERSISTENT_DIR": str(tmp_path / "state")},
    )
    try:
        _wait_until_listening(port, out, proc)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(path: Path, needles: list[str], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if all(n in text for n in needles):
            return text
        time.sleep(0.1)
    raise AssertionError(f"snmptrapd did not log {needles}; it logged:\n{text}")


@pytest.mark.parametrize(
    "version,inform",
    [
        ("v2c", False),
        ("v2c", True),
        pytest.param("v3", False, marks=needs_crypto),
        pytest.param("v3", True, marks=needs_crypto),
    ],
    ids=["v2c-trap", "v2c-inform", "v3-trap", "v3-inform"],
)
def test_snmptrapd_receives_failure_and_recovery(trapd, version: str, inform: bool) -> None:
    port, log_file = trapd
    state = {"now": {1: ALIVE}}
    auth = {"trap_community": "traps"} if version == "v2c" else {"trap_user": TRAP_USER, "engine_id": ENGINE_ID}
    agent = AgentThread(
        lambda: snap(state["now"], quorum=1),
        communities=("public",),
        users=(),
        max_age=0.05,
        trap_targets=(f"127.0.0.1:{port}",),
        inform=inform,
        **auth,
    )
    try:
        state["now"] = {1: RealServerState(Health.DEAD, reason="HTTP 503")}
        rs = 'tcp.ipv4."192.0.2.10".80.0.ipv4."10.0.0.2".80'
        wait_for(
            log_file,
            [f"lvsgRsStatus.{rs} = INTEGER: dead(2)", "STRING: HTTP 503", "OID: LVSGUARD-MIB::lvsgVsQuorumLost"],
        )
        state["now"] = {1: ALIVE}
        text = wait_for(log_file, [f"lvsgRsStatus.{rs} = INTEGER: alive(1)", "OID: LVSGUARD-MIB::lvsgVsQuorumRegained"])
        assert "Unknown" not in text
        sender = agent.agent._sender
        assert sender is not None and sender.unacknowledged == 0
    finally:
        agent.close()


def _wait_until_listening(port: int, log_file: Path, proc: subprocess.Popen) -> None:
    """Send a v2c trap until snmptrapd logs it: then it has bound its port (the agent must not get it first)."""
    import socket

    from lvsguard.exporter.snmp.notify import Notification, encode_notification

    ready = Notification("lvsgDirectorRoleChange", ((layout.DEFAULT_BASE + (1, 7, 1, 0), "text", "snmptrapd-ready"),))
    data = encode_notification(ready, layout.DEFAULT_BASE, b"traps", 1, 0, inform=False)
    deadline = time.monotonic() + 30
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while "snmptrapd-ready" not in (log_file.read_text() if log_file.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"snmptrapd did not start on port {port}: {log_file.read_text() if log_file.exists() else ''}"
                )
            sock.sendto(data, ("127.0.0.1", port))
            time.sleep(0.2)
