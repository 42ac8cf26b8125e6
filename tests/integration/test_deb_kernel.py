"""The Debian package on the lab kernel: dpkg -i, then the exporter and the actuator as its units start them.

``make deb`` builds ``dist/lvsguard_VERSION_ARCH.deb`` on the host (pip needs the
package index, which the VM cannot reach); ``make test`` builds it before the
kernel tests and sets LVSGUARD_REQUIRE_PACKAGES=1, so that a missing package
fails there instead of skipping.

In the lab VM the root file system is the host's, read-only, under a tmpfs
overlay (lab/vm.sh): ``dpkg -i`` installs for real (maintainer scripts, the
lvsguard user from the sysusers file) and nothing of it reaches the host. The
module refuses to run anywhere else, and purges the package, its user and its
directories at the end, so later modules in the same VM see no trace.

The VM has no systemd: the test reads the installed units and runs their
``ExecStart=`` as systemd would, as the unit's ``User=``/``Group=`` with exactly
its ``AmbientCapabilities=`` (plus the shipped netns drop-in's, as the lab's
director is a network namespace), with its ``Environment=``, its
``StateDirectory=`` and ``RuntimeDirectory=`` made as systemd makes them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.topology import Lab
from lvsguard import __version__
from tests.integration.systemctl_shim import service_settings
from tests.integration.test_actuator_kernel import TOKEN, http
from tests.waiting import wait_for

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
PREFIX = Path("/opt/lvsguard")
COMMAND = "/usr/bin/lvsguard"  # the package's link: not the first lvsguard on PATH, which may be a checkout's
UNITS = Path("/lib/systemd/system")
EXPORTER_PORT, ACTUATOR_PORT = 19962, 19963
TRACES = (PREFIX, Path("/etc/lvsguard"), Path("/var/lib/lvsguard"), Path("/run/lvsguard"), Path("/usr/bin/lvsguard"))


def the_deb() -> Path:
    debs = sorted((ROOT / "dist").glob(f"lvsguard_{__version__}_*.deb"))
    if not debs:
        message = f"no dist/lvsguard_{__version__}_*.deb: build it on the host with make deb"
        if os.environ.get("LVSGUARD_REQUIRE_PACKAGES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return debs[-1]


def sh(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, f"{' '.join(map(str, argv))}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """The package installed with dpkg -i in the VM's throw-away root; purged with its traces afterwards."""
    if os.environ.get("IPVS_VM_GUEST") != "1":
        pytest.skip("installs a package system-wide: only inside the lab VM, whose root is a throw-away overlay")
    deb = the_deb()
    assert [p for p in TRACES if p.exists()] == [], "lvsguard is installed in this VM already"
    assert sh("getent", "passwd", "lvsguard", check=False).returncode == 2
    sh("dpkg", "-i", deb)
    try:
        yield deb
    finally:
        sh("dpkg", "--purge", "lvsguard", check=False)
        sh("userdel", "lvsguard", check=False)
        sh("groupdel", "lvsguard", check=False)
        for path in TRACES:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def as_the_unit(unit: Path, *drop_ins: Path) -> tuple[list[str], dict[str, str]]:
    """The unit's ExecStart as its user with its (and the drop-ins') ambient capabilities, and its environment."""
    settings = service_settings(unit)
    caps: list[str] = []
    for source in (settings, *(service_settings(d) for d in drop_ins)):
        for value in source.get("AmbientCapabilities", []):
            caps += [c.removeprefix("CAP_").lower() for c in value.split()]
    spec = ",".join(f"+{c}" for c in caps)
    (user,), (group,), (exec_start,) = settings["User"], settings["Group"], settings["ExecStart"]
    argv = [
        "setpriv",
        f"--reuid={user}",
        f"--regid={group}",
        "--init-groups",
        f"--bounding-set=-all,{spec}",
        f"--inh-caps=-all,{spec}",
        f"--ambient-caps=-all,{spec}",
        "--no-new-privs",
        *shlex.split(exec_start),
    ]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for value in settings.get("Environment", []):
        env.update(dict(item.split("=", 1) for item in shlex.split(value)))
    return argv, env


def directories(unit: Path) -> None:
    """``StateDirectory=`` and ``RuntimeDirectory=`` as systemd makes them: owned by the unit's user, its modes."""
    settings = service_settings(unit)
    for kind, top in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run")):
        for name in settings.get(kind, []):
            mode = settings.get(f"{kind}Mode", ["0755"])[0]
            sh("install", "-d", "-m", mode, "-o", settings["User"][0], "-g", settings["Group"][0], f"{top}/{name}")


def test_the_package_installs_its_files_user_and_command(installed: Path) -> None:
    files = set(sh("dpkg", "-L", "lvsguard").stdout.split())
    for name in ("exporter", "actuator", "agent"):
        assert f"/lib/systemd/system/lvsguard-{name}.service" in files
    assert {"/usr/lib/sysusers.d/lvsguard.conf", "/usr/bin/lvsguard"} <= files
    assert {"/usr/share/doc/lvsguard/examples/lvsguard.yaml", "/usr/share/doc/lvsguard/examples/minimal.yaml"} <= files
    assert sh("getent", "passwd", "lvsguard").stdout.split(":")[5] == "/var/lib/lvsguard"  # systemd-sysusers ran
    assert sh(COMMAND, "--version").stdout.strip() == f"lvsguard {__version__}"
    lines = sh(COMMAND, "paths").stdout.splitlines()
    printed = {name: Path(folder) for name, folder in (line.split(maxsplit=1) for line in lines)}
    assert all(folder.is_relative_to(PREFIX) for folder in printed.values()), printed
    for name, file in (
        ("alerts", "lvsguard.rules.yml"),
        ("dashboards", "lvsguard-overview.json"),
        ("mib", "LVSGUARD-MIB.txt"),
        ("systemd", "netns.conf.example"),
    ):
        assert (printed[name] / file).is_file()
    for unit in (UNITS / f"lvsguard-{n}.service" for n in ("exporter", "actuator", "agent")):
        assert unit.read_bytes() == (ROOT / "packaging" / "systemd" / unit.name).read_bytes()
    for module in ("exporter", "actuator"):
        assert sh(PREFIX / "bin" / "python", "-c", f"import {module}", check=False).returncode == 1
    sh("dpkg", "-i", installed)  # again: the upgrade path of the maintainer scripts
    assert sh(COMMAND, "--version").stdout.strip() == f"lvsguard {__version__}"


def test_the_units_exec_start_runs_the_exporter_and_the_actuator_on_the_lab(installed: Path, lab: Lab) -> None:
    netns_drop_in = Path(sh(COMMAND, "paths", "systemd").stdout.strip()) / "netns.conf.example"
    etc = Path("/etc/lvsguard")
    sh("install", "-d", "-m", "0750", "-g", "lvsguard", etc)
    (etc / "lvsguard.yaml").write_text(
        f"director:\n  netns: {lab.director.netns}\n"
        f"exporter:\n  listen: 127.0.0.1:{EXPORTER_PORT}\n"
        f"actuator:\n  listen: 127.0.0.1:{ACTUATOR_PORT}\n  hold_down: 0s\n"
    )
    (etc / "tokens").write_text(f"test:{TOKEN}\n")
    for name in ("lvsguard.yaml", "tokens"):
        sh("chgrp", "lvsguard", etc / name)
        (etc / name).chmod(0o640)

    processes: list[subprocess.Popen[str]] = []
    try:
        for name in ("exporter", "actuator"):
            unit = UNITS / f"lvsguard-{name}.service"
            directories(unit)
            argv, env = as_the_unit(unit, netns_drop_in)
            assert argv[argv.index("--no-new-privs") + 1] == str(PREFIX / "bin" / "lvsguard")
            processes.append(
                subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            )

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{EXPORTER_PORT}/metrics", timeout=10) as response:
                return str(response.read().decode())

        def answers() -> bool:
            assert all(p.poll() is None for p in processes), "a unit's ExecStart exited"
            try:
                scrape()
                http("GET", f"http://127.0.0.1:{ACTUATOR_PORT}/api/v1/jobs")
            except OSError:
                return False
            return True

        wait_for(answers, "the exporter and the actuator to listen", timeout=60, step=0.5)
        metrics = scrape()
        assert 'ipvs_source="netlink"' in metrics
        nat = lab.nat
        backends = [line for line in metrics.splitlines() if line.startswith("ipvs_backend_weight{")]
        assert len(backends) >= len(nat.backends), backends
        assert "process_resident_memory_bytes" in metrics

        url = f"http://127.0.0.1:{ACTUATOR_PORT}"
        target = {"service": str(nat.key), "real_server": str(nat.real_server("rs2"))}
        assert http("POST", f"{url}/api/v1/quarantine", target)[1]["result"] == "applied"
        service = lab.read_table().service(nat.key)
        assert service is not None
        real_server = service.real_server(nat.real_server("rs2"))
        assert real_server is not None and real_server.weight == 0
        assert http("POST", f"{url}/api/v1/restore", {**target, "force": True})[1]["result"] == "applied"
        assert (Path("/var/lib/lvsguard/actuator.db")).stat().st_uid == int(sh("id", "-u", "lvsguard").stdout)
    finally:
        logs = []
        for proc in processes:
            proc.terminate()
            logs.append(proc.communicate(timeout=30)[1])
        lab.reset_services()
    assert all("Traceback" not in log for log in logs), logs
