"""The systemd units in packaging/systemd: least privilege, the right commands, and systemd accepts them.

The keys are checked by reading the files; ``systemd-analyze verify`` and
``systemd-analyze security --offline`` (when installed) check them the way
systemd reads them, with ExecStart pointed at this checkout's ``lvsguard``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvsguard import defaults
from lvsguard.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
INSTALLED = "/opt/lvsguard/bin/lvsguard"  # where docs/install.md puts the venv
ALLOWED_CAPS = {
    "lvsguard-exporter.service": {"CAP_NET_ADMIN", "CAP_NET_RAW"},  # netlink reads; ICMP probes
    "lvsguard-actuator.service": {"CAP_NET_ADMIN"},  # netlink writes
    "lvsguard-agent.service": set(),  # on a real server: nothing
}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
}


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd keys may repeat), comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{number}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(name: str) -> dict[str, list[str]]:
    return read_unit(UNITS / name)["Service"]


def one(svc: dict[str, list[str]], key: str) -> str:
    values = svc.get(key, [])
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


def test_the_three_units_are_shipped() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(ALLOWED_CAPS)


@pytest.mark.parametrize("name", sorted(ALLOWED_CAPS))
def test_hardening_keys(name: str) -> None:
    svc = service(name)
    for key, value in HARDENING.items():
        assert one(svc, key) == value, f"{name}: {key}"
    assert "User" in svc or one(svc, "DynamicUser") == "yes", f"{name}: runs as root"
    assert svc.get("User", ["lvsguard"]) != ["root"]
    assert one(svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert "AF_PACKET" not in one(svc, "RestrictAddressFamilies")
    assert "PrivateNetwork" not in svc  # the kernel table is the host's (or a netns entered on purpose)


@pytest.mark.parametrize("name", sorted(ALLOWED_CAPS))
def test_capabilities_are_only_what_the_service_needs(name: str) -> None:
    svc = service(name)
    bounding = set(one(svc, "CapabilityBoundingSet").split())
    ambient = set(one(svc, "AmbientCapabilities").split())
    assert bounding == ALLOWED_CAPS[name]
    assert ambient == bounding  # a non-root user gets exactly what the bounding set allows


def test_the_actuator_keeps_its_ledger_in_the_state_directory() -> None:
    svc = service("lvsguard-actuator.service")
    assert one(svc, "StateDirectory") == "lvsguard"
    args = build_parser().parse_args(shlex.split(one(svc, "ExecStart"))[1:])
    assert Path(args.ledger).parent == Path("/var/lib") / one(svc, "StateDirectory")
    assert one(svc, "RuntimeDirectory") == "lvsguard"  # /run/lvsguard/failover, the keepalived track file
    assert one(svc, "RuntimeDirectoryPreserve") == "yes"


@pytest.mark.parametrize("name", sorted(ALLOWED_CAPS))
def test_exec_start_is_a_command_lvsguard_has(name: str) -> None:
    argv = shlex.split(one(service(name), "ExecStart"))
    assert argv[0] == INSTALLED
    subcommand = argv[1]
    parser = build_parser()
    if subcommand not in parser.format_help():
        pytest.skip(f"'lvsguard {subcommand}' is not implemented yet")
    args = parser.parse_args(argv[1:])
    assert args.func is not None
    if getattr(args, "config", None) is not None:
        assert str(args.config) == "/etc/lvsguard/lvsguard.yaml"


@pytest.fixture(scope="module")
def local_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart pointing at this checkout's lvsguard (systemd checks that it is executable)."""
    lvsguard = Path(sys.executable).parent / "lvsguard"
    if not lvsguard.exists():
        pytest.skip(f"{lvsguard} not installed (pip install -e .)")
    out = tmp_path_factory.mktemp("units")
    for unit in UNITS.glob("*.service"):
        (out / unit.name).write_text(unit.read_text().replace(INSTALLED, str(lvsguard)))
    return out


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)"
)
def test_systemd_analyze_verify_accepts_the_units(local_units: Path) -> None:
    units = sorted(str(p) for p in local_units.glob("*.service"))
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    ours = [line for line in done.stderr.splitlines() if str(local_units) in line]
    assert done.returncode == 0, done.stderr
    assert ours == []  # an unknown or misspelt key is only a warning for systemd


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)"
)
@pytest.mark.parametrize("name", sorted(ALLOWED_CAPS))
def test_systemd_security_exposure_is_low(local_units: Path, name: str) -> None:
    # exposure 0.0 (locked down) .. 10.0 (UNSAFE); --threshold is in tenths. 2.5 and below is "OK".
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=25", "--no-pager", str(local_units / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


def test_netns_drop_in_adds_what_setns_needs() -> None:
    svc = read_unit(UNITS / "netns.conf.example")["Service"]
    assert one(svc, "AmbientCapabilities") == one(svc, "CapabilityBoundingSet") == "CAP_SYS_ADMIN"
    assert one(svc, "RestrictNamespaces") == "net"
    assert one(svc, "SystemCallFilter") == "setns"


@pytest.mark.parametrize(
    "name, values",
    [
        ("lvsguard-exporter.service", [defaults.EXPORTER_LISTEN, defaults.CONFIG_PATH]),
        ("lvsguard-actuator.service", [defaults.ACTUATOR_LISTEN, defaults.LEDGER_PATH, defaults.CONFIG_PATH]),
        ("lvsguard-agent.service", [defaults.AGENT_LISTEN]),
    ],
)
def test_the_units_name_the_defaults_of_lvsguard_defaults(name: str, values: list[str]) -> None:
    """The addresses and paths the units' comments and command lines show are the ones the code defaults to."""
    text = (UNITS / name).read_text()
    assert [v for v in values if v not in text] == []
