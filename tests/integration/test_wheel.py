"""The wheel: it builds from a fresh checkout, installs into a clean venv, and works from there.

Host-side (no kernel). The checkout's tracked files are copied to a temporary
directory first, so nothing that only exists in this working tree (egg-info,
caches, untracked files) can end up in the wheel or make it work. The venv is
laid out as docs/install.md says (``/opt/lvsguard``, the wheel with its
``director`` extra), so the units' ExecStart is checked against a real install;
a second venv gets the bare wheel, the agent of a real server, which installs
nothing but lvsguard. It needs the package index (PyPI) for the build backend
and the dependencies; without it the module skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lvsguard",)
HINT = "pip install 'lvsguard[director]'"
INSTALL_PREFIX = "/opt/lvsguard"  # the venv of docs/install.md and packaging/systemd


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"),
    pytest.mark.skipif(
        not _index_reachable(), reason="needs the package index (pypi.org) for the build backend and the dependencies"
    ),
]


def attempt(*argv: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )


def run(*argv: str | Path, cwd: Path, timeout: float = 600) -> str:
    done = attempt(*argv, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(map(str, argv))} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built with ``python -m build`` from a copy of the tracked files."""
    checkout = tmp_path_factory.mktemp("checkout")
    for name in tracked_files():
        target = checkout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, checkout, cwd=checkout)
    wheels = list(dist.glob("lvsguard-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def installed_distributions(prefix: Path) -> set[str]:
    code = "import importlib.metadata as m; print(*sorted({d.metadata['Name'].lower() for d in m.distributions()}))"
    return set(run(prefix / "bin" / "python", "-c", code, cwd=prefix).split())


def pip_install(prefix: Path, requirement: str) -> None:
    run(prefix / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement, cwd=prefix)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv (no system site-packages) with the wheel and its director extra installed (docs/install.md)."""
    prefix = tmp_path_factory.mktemp("opt") / "lvsguard"
    run(sys.executable, "-m", "venv", prefix, cwd=prefix.parent)
    pip_install(prefix, f"{wheel}[director]")
    return prefix


@pytest.fixture(scope="module")
def bare(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A clean venv with the bare wheel (a real server's agent), and what it held before the install."""
    prefix = tmp_path_factory.mktemp("bare") / "venv"
    run(sys.executable, "-m", "venv", prefix, cwd=prefix.parent)
    before = installed_distributions(prefix)
    pip_install(prefix, str(wheel))
    return prefix, before


def test_the_wheel_holds_every_packaged_file_of_the_checkout(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f for f in tracked_files() if f.split("/")[0] in PACKAGES and "__pycache__" not in f}
    assert sorted(expected - names) == []
    assert "lvsguard/exporter/snmp/mibs/LVSGUARD-MIB.txt" in names
    assert not [n for n in names if n.startswith(("tests/", "lab/", "bench/"))]
    licenses = [n for n in names if ".dist-info/" in n and n.rsplit("/", 1)[1] == "LICENSE"]
    assert len(licenses) == 1 and zipfile.ZipFile(wheel).read(licenses[0]) == (ROOT / "LICENSE").read_bytes()


def test_help_and_version_from_the_venv(venv: Path, tmp_path: Path) -> None:
    lvsguard = venv / "bin" / "lvsguard"
    assert "exporter" in run(lvsguard, "--help", cwd=tmp_path)
    for command in ("exporter", "actuator", "status", "config"):
        assert run(lvsguard, command, "--help", cwd=tmp_path).startswith(f"usage: lvsguard {command}")
    from lvsguard import __version__

    assert run(lvsguard, "--version", cwd=tmp_path).strip() == f"lvsguard {__version__}"


def test_config_check_of_the_example_from_the_venv(venv: Path, tmp_path: Path) -> None:
    example = ROOT / "examples" / "lvsguard.yaml"
    assert run(venv / "bin" / "lvsguard", "config", "check", example, cwd=tmp_path).startswith(f"{example}: ok (")


def test_the_installed_code_is_the_wheel_and_finds_its_mib(venv: Path, tmp_path: Path) -> None:
    code = "import lvsguard.exporter.snmp.mibfiles as m, lvsguard; print(lvsguard.__file__); print((m.MIB_DIR / 'LVSGUARD-MIB.txt').is_file())"
    where, mib = run(venv / "bin" / "python", "-c", code, cwd=tmp_path).split()
    assert where.startswith(str(venv))  # not the source tree
    assert mib == "True"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)"
)
def test_the_units_exec_start_exists_in_the_installed_layout(venv: Path, tmp_path: Path) -> None:
    for unit in (ROOT / "packaging" / "systemd").glob("*.service"):
        text = unit.read_text()
        assert f"ExecStart={INSTALL_PREFIX}/bin/lvsguard " in text
        (tmp_path / unit.name).write_text(text.replace(INSTALL_PREFIX, str(venv)))
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if str(tmp_path) in line] == []


def test_the_bare_wheel_installs_nothing_but_lvsguard(bare: tuple[Path, set[str]]) -> None:
    prefix, before = bare
    assert installed_distributions(prefix) - before == {"lvsguard"}


def test_the_bare_wheel_runs_the_agent(bare: tuple[Path, set[str]], tmp_path: Path) -> None:
    prefix, _ = bare
    lvsguard = prefix / "bin" / "lvsguard"
    assert run(lvsguard, "agent", "--help", cwd=tmp_path).startswith("usage: lvsguard agent")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    maint = tmp_path / "maint"
    maint.touch()
    agent = subprocess.Popen(
        [lvsguard, "agent", "--listen", f"127.0.0.1:{port}", "--maint-file", maint],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reply = b""
        for _ in range(100):  # up to 10 s for the agent to listen
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    reply = conn.makefile("rb").read()
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
        assert reply.strip() == b"maint"
    finally:
        agent.terminate()
        agent.wait(timeout=10)


@pytest.mark.parametrize("name", ["exporter", "actuator"])
def test_no_top_level_exporter_or_actuator_in_either_venv(
    name: str, bare: tuple[Path, set[str]], venv: Path, tmp_path: Path
) -> None:
    for prefix in (bare[0], venv):
        done = attempt(prefix / "bin" / "python", "-c", f"import {name}", cwd=tmp_path)
        assert done.returncode == 1 and f"No module named '{name}'" in done.stderr


@pytest.mark.parametrize("argv", [["exporter"], ["actuator"], ["config", "check", "lvsguard.yaml"], ["doctor"]])
def test_a_director_command_on_the_bare_wheel_names_the_extra(
    argv: list[str], bare: tuple[Path, set[str]], tmp_path: Path
) -> None:
    (tmp_path / "lvsguard.yaml").write_text("services: []\n")
    done = attempt(bare[0] / "bin" / "lvsguard", *argv, cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"lvsguard: lvsguard {' '.join(argv[:2])} needs the director's packages")
    assert done.stderr.rstrip().endswith(HINT)


def shipped_files() -> dict[str, str]:
    """The wheel's name of each file that lvsguard.paths.SHARE ships, with its name in the checkout."""
    from lvsguard.paths import SHARE

    out = {}
    for name, (folder, globs) in SHARE.items():
        for pattern in globs:
            for path in (ROOT / folder).glob(pattern):
                out[f"lvsguard/share/{name}/{path.relative_to(ROOT / folder).as_posix()}"] = str(path.relative_to(ROOT))
    return out


def test_the_wheel_ships_units_sysusers_examples_rules_dashboards_as_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = shipped_files()
    for expected in (
        "packaging/systemd/lvsguard-exporter.service",
        "packaging/systemd/lvsguard-actuator.service",
        "packaging/systemd/lvsguard-agent.service",
        "packaging/sysusers.d/lvsguard.conf",
        "examples/lvsguard.yaml",
        "alerts/lvsguard.rules.yml",
        "alerts/alertmanager.yml",
        "dashboards/lvsguard-overview.json",
        "dashboards/provisioning/dashboards.yml",
    ):
        assert expected in shipped.values()
    assert sorted(set(shipped) - names) == []
    assert [n for n in names if n.startswith("lvsguard/share/") and n not in shipped] == []  # no .py, no tests


@pytest.mark.parametrize("which", ["bare", "venv"])
def test_lvsguard_paths_prints_the_installed_folders(
    which: str, bare: tuple[Path, set[str]], venv: Path, tmp_path: Path
) -> None:
    prefix = bare[0] if which == "bare" else venv
    lines = run(prefix / "bin" / "lvsguard", "paths", cwd=tmp_path).splitlines()
    printed = {name: Path(folder) for name, folder in (line.split(maxsplit=1) for line in lines)}
    assert list(printed) == ["systemd", "sysusers", "examples", "alerts", "dashboards", "mib"]
    for folder in printed.values():
        assert folder.is_relative_to(prefix) and folder.is_dir(), folder
    for wheel_name, checkout_name in shipped_files().items():
        name, _, rest = wheel_name.removeprefix("lvsguard/share/").partition("/")
        assert (printed[name] / rest).read_bytes() == (ROOT / checkout_name).read_bytes()
    assert (printed["mib"] / "LVSGUARD-MIB.txt").read_bytes() == (
        ROOT / "lvsguard/exporter/snmp/mibs/LVSGUARD-MIB.txt"
    ).read_bytes()
    assert run(prefix / "bin" / "lvsguard", "paths", "alerts", cwd=tmp_path) == f"{printed['alerts']}\n"
