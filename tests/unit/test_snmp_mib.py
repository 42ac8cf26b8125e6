"""LVSGUARD-MIB: smilint finds nothing at level 4, and the agent's layout is the MIB's."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess

import pytest

from lvsguard.exporter.snmp import layout, snapshot
from lvsguard.exporter.snmp.mibfiles import MIB_DIR, MIB_FILE, BaseMibsUnavailable, base_mib_dir

pytestmark = pytest.mark.skipif(shutil.which("smilint") is None, reason="smilint not installed (Debian smitools)")


@pytest.fixture(scope="module")
def smipath() -> str:
    try:
        return f"{base_mib_dir()}:{MIB_DIR}"
    except BaseMibsUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def mib(smipath: str) -> dict:
    """The module as smidump's python output (a literal dict)."""
    out = subprocess.run(
        ["smidump", "-f", "python", str(MIB_FILE)],
        env={**os.environ, "SMIPATH": smipath},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return ast.literal_eval(out.split("MIB = ", 1)[1])


def test_smilint_level4_is_clean(smipath: str) -> None:
    result = subprocess.run(
        ["smilint", "-l", "4", "-s", str(MIB_FILE)],
        env={**os.environ, "SMIPATH": smipath},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_smilint_reports_a_broken_module(smipath: str, tmp_path) -> None:
    """The lint really reads the file: a dangling reference is an error."""
    broken = tmp_path / "LVSGUARD-MIB.txt"
    broken.write_text(MIB_FILE.read_text().replace("lvsgVsName, lvsgVsScheduler,", "lvsgVsNam, lvsgVsScheduler,"))
    result = subprocess.run(
        ["smilint", "-l", "4", str(broken)],
        env={**os.environ, "SMIPATH": smipath},
        capture_output=True,
        text=True,
        check=False,
    )
    assert "lvsgVsNam" in result.stdout + result.stderr


KIND_OF_SYNTAX = {
    "Counter64": "counter64",
    "Gauge32": "gauge32",
    "Unsigned32": "unsigned32",
    "InetAddressPrefixLength": "unsigned32",
    "TimeStamp": "timeticks",
    "SnmpAdminString": "text",
    "TruthValue": "integer",
    "Integer32": "integer",
    "Enumeration": "integer",
}


def _kind(node: dict) -> str:
    syntax = node["syntax"]["type"]
    return KIND_OF_SYNTAX[syntax.get("name") or syntax["basetype"]]


SERVED = [
    (layout.DIRECTOR, layout.DIRECTOR_COLUMNS),
    (layout.VS_ENTRY, layout.VS_COLUMNS),
    (layout.RS_ENTRY, layout.RS_COLUMNS),
    (layout.PROBE_ENTRY, layout.PROBE_COLUMNS),
    (layout.SYNC_ENTRY, layout.SYNC_COLUMNS),
    (layout.VIP_ENTRY, layout.VIP_COLUMNS),
]


def test_every_served_column_is_the_mibs(mib: dict) -> None:
    nodes = mib["nodes"]
    base = ".".join(map(str, layout.DEFAULT_BASE))
    for entry, columns in SERVED:
        for column in columns:
            node = nodes[column.name]
            assert node["oid"] == ".".join([base, *map(str, entry), str(column.subid)]), column.name
            assert node["access"] == "readonly", column.name
            assert _kind(node) == column.kind, column.name


def test_every_readable_object_of_the_mib_is_served(mib: dict) -> None:
    served = {c.name for _, columns in SERVED for c in columns}
    readable = {name for name, node in mib["nodes"].items() if node.get("access") == "readonly"}
    assert readable == served


def _enum(mib: dict, name: str) -> dict[str, int]:
    syntax = mib["nodes"][name]["syntax"]["type"]
    return {
        k: int(v["number"]) for k, v in syntax.items() if isinstance(v, dict) and v.get("nodetype") == "namednumber"
    }


def test_enumerations_match_the_code(mib: dict) -> None:
    assert _enum(mib, "lvsgRsStatus") == {h.name.lower(): h.value for h in snapshot.Health}
    assert _enum(mib, "lvsgDirectorRole") == {r.name.lower(): r.value for r in snapshot.Role}
    holds = _enum(mib, "lvsgRsQuarantineState")
    assert holds == {h.name.lower(): h.value for h in snapshot.Hold}
    assert _enum(mib, "lvsgVsProtocol") == {p.lower(): n for p, n in layout.PROTOCOL_NUMBERS.items() if p != "FWM"} | {
        "fwmark": layout.PROTOCOL_NUMBERS["FWM"]
    }
    probe_types = _enum(mib, "lvsgProbeType")
    assert [probe_types[t] for t in snapshot.PROBE_TYPES] == list(range(1, len(snapshot.PROBE_TYPES) + 1))
    assert probe_types["other"] == len(snapshot.PROBE_TYPES) + 1
    from lvsguard.model import Forward

    assert _enum(mib, "lvsgRsForwarding") == {f.label: f.value + 1 for f in Forward}
    assert _enum(mib, "lvsgSyncRole") == dict(layout.SYNC_ROLES)


def test_notifications_carry_objects_of_this_module(mib: dict) -> None:
    notifications = mib["notifications"]
    assert set(notifications) == {
        "lvsgRsHealthChange",
        "lvsgVsQuorumLost",
        "lvsgVsQuorumRegained",
        "lvsgRsQuarantined",
        "lvsgRsRestored",
        "lvsgRsDrainDone",
        "lvsgDirectorRoleChange",
    }
    for name, node in notifications.items():
        assert node["objects"], name
        for obj in node["objects"]:
            assert obj in mib["nodes"], (name, obj)
