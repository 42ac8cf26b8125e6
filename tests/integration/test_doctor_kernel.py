"""``lvsguard doctor`` against a real director in the lab VM: every check passes, then each planted fault is found.

The director is a namespace of its own (``lvsg-doc``) with one IPVS service and
the master sync daemon. A real ``lvsguard exporter`` and ``lvsguard actuator``
run on an address of the VM that is not loopback (a dummy interface), the
"other director's" actuator in the test process says it is the BACKUP, and
the keepalived side is its files: the notify FIFO and the role file.

Then the faults, each undone afterwards; faults of different checks are
planted together where they cannot hide each other (a doctor run costs seconds
in the VM), and the test asserts that exactly their checks fail: a broken
config, a process
without CAP_NET_ADMIN (the doctor itself, and a running exporter), a server
that does not answer and one bound to loopback, a FIFO that is a plain file,
a role file with no state, a sync daemon in the wrong role, a peer that is
down, a token file and a ledger open to others, a missing state directory,
and last the ip_vs module unloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.actuator import running_actuator
from lab.topology import in_lab_vm
from lvsguard.actuator.settings import ActuatorSettings
from tests.integration.test_actuator_kernel import TOKEN
from tests.waiting import wait_for

pytestmark = pytest.mark.kernel

NETNS = "lvsg-doc"
DUMMY = "lvsgdoc0"
OUTSIDE = "198.51.100.7"  # the VM's address "outside" loopback
EXPORTER_PORT, ACTUATOR_PORT = 19951, 19952
ROOT = Path(__file__).resolve().parents[2]
NAMES = (
    "config",
    "ip_vs",
    "capabilities",
    "netlink read",
    "netlink write",
    "exporter listen",
    "actuator listen",
    "keepalived fifo",
    "vrrp state",
    "sync daemon",
    "peer",
    "tokens",
    "ledger",
)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@dataclass
class Report:
    status: int
    text: str

    def of(self, name: str) -> list[str]:
        """The statuses of check ``name`` (one per line: capabilities has one per process)."""
        found = []
        for line in self.text.splitlines():
            match = re.match(r"(OK|FAIL|SKIP)\s+(.*)", line)
            if match and match.group(2).startswith(name + " "):
                found.append(match.group(1).lower())
        return found

    def failed(self) -> set[str]:
        return {name for name in NAMES if "fail" in self.of(name)}


@dataclass
class Director:
    top: Path
    config: Path
    fifo: Path
    role: Path
    tokens: Path
    ledger: Path

    def doctor(self, *extra: str, wrap: tuple[str, ...] = (), python: Path | None = None) -> Report:
        env = {**os.environ, "PYTHONPATH": str(ROOT)} if python is None else dict(os.environ)
        env.pop("LVSGUARD_TOKEN", None)
        done = subprocess.run(
            [*wrap, str(python or sys.executable), "-m", "lvsguard.cli", "doctor", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Report(done.returncode, done.stdout)

    def check(self, *extra: str, wrap: tuple[str, ...] = (), python: Path | None = None) -> Report:
        """The doctor on the director's config and tokens."""
        return self.doctor(
            "--config", str(self.config), "--token-file", str(self.tokens), *extra, wrap=wrap, python=python
        )


def config_text(top: Path, exporter_listen: str, peer_url: str) -> str:
    return f"""\
director:
  netns: {NETNS}
  keepalived_fifo: {top / "notify.fifo"}
exporter:
  listen: "{exporter_listen}"
services:
  - name: web
    service: TCP 192.0.2.10:80
actuator:
  role_file: {top / "state"}
  failover_peer_url: {peer_url}
  ledger: {top / "lib" / "actuator.db"}
"""


def serve(argv: list[str], port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "LVSGUARD_TOKEN": ""},
        umask=0o027,  # as the actuator's unit (UMask=0027): the ledger is not open to others
    )
    wait_for(lambda: proc.poll() is not None or _answers(OUTSIDE, port), f"a server on {OUTSIDE}:{port}", timeout=60)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def director() -> Iterator[Director]:
    if not (os.path.exists("/proc/net/ip_vs") and os.geteuid() == 0):
        pytest.skip("needs a kernel with IPVS and root (run it in the lab VM: make test)")
    if not in_lab_vm():
        pytest.skip("adds an interface and unloads ip_vs: runs inside lab/vm.sh only")
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "link", "del", DUMMY], capture_output=True)
    sh("ip", "netns", "add", NETNS)
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")
    sh("ip", "netns", "exec", NETNS, "ipvsadm", "-A", "-t", "192.0.2.10:80", "-s", "rr")
    sh("ip", "netns", "exec", NETNS, "ipvsadm", "--start-daemon", "master", "--mcast-interface", "lo")
    sh("ip", "link", "add", DUMMY, "type", "dummy")
    sh("ip", "addr", "add", f"{OUTSIDE}/24", "dev", DUMMY)
    sh("ip", "link", "set", DUMMY, "up")
    top = Path(tempfile.mkdtemp(prefix="lvsguard-doctor-", dir="/tmp"))
    procs: list[subprocess.Popen[str]] = []
    try:
        (top / "lib").mkdir(mode=0o750)
        os.mkfifo(top / "notify.fifo", 0o600)
        (top / "state").write_text("MASTER\n")
        (top / "peer-state").write_text("BACKUP\n")
        tokens = top / "tokens"
        tokens.write_text(f"test:{TOKEN}\n")
        tokens.chmod(0o600)
        peer_settings = ActuatorSettings(tokens={"test": TOKEN}, role_file=str(top / "peer-state"))
        with running_actuator(peer_settings, NETNS, str(top / "peer.db")) as peer_url:
            config = top / "lvsguard.yaml"
            config.write_text(config_text(top, f"{OUTSIDE}:{EXPORTER_PORT}", peer_url))
            cli = [sys.executable, "-m", "lvsguard.cli"]
            procs.append(serve([*cli, "exporter", "--config", str(config), "--netns", NETNS], EXPORTER_PORT))
            actuator = [*cli, "actuator", "--config", str(config), "--listen", f"{OUTSIDE}:{ACTUATOR_PORT}"]
            procs.append(serve([*actuator, "--token-file", str(tokens)], ACTUATOR_PORT))
            yield Director(top, config, top / "notify.fifo", top / "state", tokens, top / "lib" / "actuator.db")
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(top, ignore_errors=True)
        subprocess.run(["ip", "link", "del", DUMMY], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


def test_a_healthy_director_passes_every_check(director: Director) -> None:
    report = director.check()
    assert report.status == 0, report.text
    assert report.failed() == set()
    for name in NAMES:
        assert report.of(name) and set(report.of(name)) == {"ok"}, f"{name}:\n{report.text}"
    assert report.of("capabilities") == ["ok", "ok", "ok"]  # the doctor, the exporter, the actuator


def test_a_broken_config(director: Director) -> None:
    bad = director.top / "bad.yaml"
    bad.write_text(director.config.read_text().replace("  netns:", "  netnss:"))
    report = director.doctor("--config", str(bad), "--token-file", str(director.tokens))
    assert report.status == 1 and "config" in report.failed(), report.text
    assert f"fix: lvsguard config check {bad}" in report.text


def test_no_cap_net_admin_in_the_doctor(director: Director, installed_python: Path) -> None:
    director.top.chmod(0o755)  # the unprivileged doctor reads the config
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all")
    report = director.check(wrap=nobody, python=installed_python)
    assert report.status == 1
    assert {"capabilities", "netlink read", "netlink write"} <= report.failed(), report.text
    assert "this process has no CAP_NET_ADMIN" in report.text


def test_a_running_exporter_without_cap_net_admin(director: Director, installed_python: Path) -> None:
    director.top.chmod(0o755)
    port = 19953
    caps = ["--inh-caps=-all,+sys_admin", "--ambient-caps=-all,+sys_admin", "--bounding-set=-all,+sys_admin"]
    proc = serve(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *caps,
            str(installed_python),
            "-m",
            "lvsguard.cli",
            "exporter",
            "--netns",
            NETNS,
            "--listen",
            f"{OUTSIDE}:{port}",
        ],
        port,
    )
    try:
        report = director.check()
    finally:
        stop(proc)
    assert report.status == 1 and "capabilities" in report.failed(), report.text
    assert f"lvsguard exporter (pid {proc.pid}) has no CAP_NET_ADMIN" in report.text


def with_peer(text: str, url: str) -> str:
    return re.sub(r"failover_peer_url: .*", f"failover_peer_url: {url}", text)


def test_faults_of_the_files_the_listen_address_and_the_peer(director: Director) -> None:
    """Six faults at once, each a check of its own: exactly those six fail (the sync daemon check then skips)."""
    planted = director.top / "planted.yaml"
    planted.write_text(
        with_peer(config_text(director.top, "127.0.0.1:9910", ""), "http://127.0.0.1:19958")  # loopback; peer down
    )
    director.fifo.unlink()
    director.fifo.write_text("")
    director.role.write_text("garbage\n")
    director.tokens.chmod(0o644)
    director.ledger.chmod(0o644)
    try:
        report = director.doctor("--config", str(planted), "--token-file", str(director.tokens))
    finally:
        director.fifo.unlink()
        os.mkfifo(director.fifo, 0o600)
        director.role.write_text("MASTER\n")
        director.tokens.chmod(0o600)
        director.ledger.chmod(0o640)
    assert report.status == 1
    assert report.failed() == {"exporter listen", "peer", "keepalived fifo", "vrrp state", "tokens", "ledger"}, (
        report.text
    )
    assert report.of("sync daemon") == ["skip"]
    for found in (
        "127.0.0.1:9910 is loopback only",
        "http://127.0.0.1:19958",
        "is not a FIFO",
        "names no VRRP state",
        f"fix: chmod 640 {director.tokens}",
        f"{director.ledger} is open to others (mode 0644)",
    ):
        assert found in report.text, report.text


def test_a_sync_daemon_in_the_wrong_role_a_silent_port_and_no_state_directory(director: Director) -> None:
    silent = director.top / "silent.yaml"
    silent.write_text(director.config.read_text().replace(f"{OUTSIDE}:{EXPORTER_PORT}", f"{OUTSIDE}:19959"))
    director.role.write_text("BACKUP\n")
    missing = director.top / "missing" / "actuator.db"
    try:
        report = director.doctor(
            "--config", str(silent), "--token-file", str(director.tokens), "--ledger", str(missing)
        )
    finally:
        director.role.write_text("MASTER\n")
    assert report.failed() == {"sync daemon", "exporter listen", "ledger"}, report.text
    assert "VRRP says backup, sync daemons running: master" in report.text
    assert f"nothing answers on {OUTSIDE}:19959" in report.text  # the running exporter has no --listen of its own
    assert f"directory {missing.parent} does not exist" in report.text


def test_ip_vs_unloaded(director: Director) -> None:
    """Last: the services and the sync daemon go, then every IPVS module; they are loaded again afterwards."""
    modprobe = Path("/proc/sys/kernel/modprobe").read_text().strip()  # lab/vm.sh's, with the VM kernel's modules
    loaded = sorted((m for m in os.listdir("/sys/module") if m.startswith("ip_vs")), key=lambda m: m == "ip_vs")
    sh("ip", "netns", "exec", NETNS, "ipvsadm", "--stop-daemon", "master")
    sh("ip", "netns", "exec", NETNS, "ipvsadm", "-C")
    subprocess.run(["ipvsadm", "-C"], capture_output=True)
    try:
        unload = subprocess.run([modprobe, "-r", *loaded], capture_output=True, text=True, timeout=60)
        if unload.returncode != 0:
            pytest.skip(f"ip_vs is in use and cannot be unloaded: {unload.stderr.strip()}")
        report = director.check()
    finally:
        subprocess.run([modprobe, "-a", *loaded], capture_output=True, timeout=60)
    # The doctor's own netlink request then loads the module again (the kernel autoloads the IPVS
    # genetlink family), so only the ip_vs check, which runs first, sees it missing.
    assert "ip_vs" in report.failed(), report.text
    assert "fix: modprobe ip_vs" in report.text
