"""Real keepalived (Debian's package) in a lab director's namespace: its config and its process.

One keepalived per director, in the foreground (``-n -l -D``: no systemd in the
VM), VRRP only (``--vrrp``): the IPVS table is lvsguard's and the lab's, never
keepalived's checker's. Every file of an instance (config, pid files, notify
FIFO, role file, failover track file, log) lives in one
directory per director, so two instances coexist in one VM.

The VRRP instance ``VI_1`` (VRRPv3) holds every address that must move with the
active director: the VIPs, the client LAN's gateway and the server LAN's inside
address through which the NAT real servers route back. IPv6 addresses are
``virtual_ipaddress_excluded`` (one IPv4 instance cannot advertise them). The
IPVS sync daemon is keepalived's ``lvs_sync_daemon``: master while ``VI_1`` is
MASTER, backup otherwise (docs/decisions.md says why).

The failover track file has weight 0: a non-zero value puts ``VI_1`` in FAULT,
which drops the VIPs at once and sends a priority-0 advert, so the peer takes
over without waiting for the master-down timer, with or without ``nopreempt``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KEEPALIVED = "/usr/sbin/keepalived"
VRID = 51
SYNC_ID = 51
INSTANCE = "VI_1"
STOP_TIMEOUT = 5.0
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")  # what the notify FIFO reports as an instance's state


class KeepalivedError(RuntimeError):
    """keepalived cannot be configured or started; the message names the director and its log."""


@dataclass(frozen=True)
class VrrpConfig:
    """What one director's keepalived is told."""

    name: str  # router_id: "dir1"
    netns: str
    priority: int
    preempt: bool
    vips4: tuple[tuple[str, str], ...]  # (address/prefix, interface)
    vips6: tuple[tuple[str, str], ...]
    interface: str = "eth0"  # VRRP adverts
    sync_interface: str = "eth1"  # IPVS sync daemon multicast
    advert_int: float = 0.1
    sync: bool = True  # keepalived runs the IPVS sync daemon (lvs_sync_daemon)


@dataclass(frozen=True)
class InstanceFiles:
    """The files of one director's keepalived, all under ``directory``."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "keepalived.conf"

    @property
    def pid(self) -> Path:
        return self.directory / "keepalived.pid"

    @property
    def vrrp_pid(self) -> Path:
        return self.directory / "vrrp.pid"

    @property
    def checkers_pid(self) -> Path:
        return self.directory / "checkers.pid"

    @property
    def role(self) -> Path:
        """MASTER / BACKUP / FAULT, as the notify FIFO last said (the actuator's ``role_file``)."""
        return self.directory / "state"

    @property
    def track(self) -> Path:
        """The actuator's ``failover_track_file``."""
        return self.directory / "failover"

    @property
    def fifo(self) -> Path:
        return self.directory / "notify.fifo"

    @property
    def exporter_fifo(self) -> Path:
        """keepalived's ``vrrp_notify_fifo``: the exporter's ``director.keepalived_fifo`` (a reader of its own)."""
        return self.directory / "exporter.fifo"

    @property
    def log(self) -> Path:
        return self.directory / "keepalived.log"


def render(config: VrrpConfig, files: InstanceFiles) -> str:
    """keepalived.conf for one director.

    Both start as BACKUP (``nopreempt`` requires it; with preemption the higher
    priority becomes MASTER after the master-down interval, about 0.4 s).
    """
    addresses4 = "\n".join(f"        {address} dev {dev}" for address, dev in config.vips4)
    addresses6 = "\n".join(f"        {address} dev {dev}" for address, dev in config.vips6)
    sync = f"    lvs_sync_daemon {config.sync_interface} {INSTANCE} id {SYNC_ID}\n" if config.sync else ""
    return f"""global_defs {{
    router_id {config.name}
    vrrp_version 3
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 2
{sync}    notify_fifo {files.fifo}
    vrrp_notify_fifo {files.exporter_fifo}
}}

track_file lvsguard_failover {{
    file {files.track}
    weight 0
}}

vrrp_instance {INSTANCE} {{
    state BACKUP
    interface {config.interface}
    virtual_router_id {VRID}
    priority {config.priority}
    advert_int {config.advert_int:g}
{"    nopreempt" if not config.preempt else "    preempt_delay 0"}
    track_file {{
        lvsguard_failover
    }}
    virtual_ipaddress {{
{addresses4}
    }}
    virtual_ipaddress_excluded {{
{addresses6}
    }}
}}
"""


class Keepalived:
    """One director's keepalived process: ``start()``, ``stop()``, and the role its notify FIFO reports."""

    def __init__(self, config: VrrpConfig, directory: Path) -> None:
        self.config = config
        self.files = InstanceFiles(directory)
        self._proc: subprocess.Popen[bytes] | None = None
        self._follower: threading.Thread | None = None
        self.listeners: list[Callable[[str], None]] = []  # called with every FIFO line (an exporter under test)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def write_files(self) -> None:
        """Config, the notify FIFO and a track file at 0 (keepalived reads it at start)."""
        self.files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.files.config.write_text(render(self.config, self.files))
        for fifo in (self.files.fifo, self.files.exporter_fifo):
            if not fifo.exists():
                os.mkfifo(fifo, 0o600)
        if not self.files.track.exists():
            self.files.track.write_text("0\n")

    def _follow_fifo(self) -> None:
        """Copy every instance state from the notify FIFO to the role file, in order, until ``STOP``.

        The FIFO, not a ``notify`` script: keepalived forks one script per
        transition and they run in any order, so a quick MASTER -> BACKUP could
        leave MASTER in the file (seen in the lab). Only states are copied:
        ``MASTER_RX_LOWER_PRI`` (a master heard a lower-priority advert) is an
        event, not a transition. Opened read-write, so a restarting keepalived
        never makes it hit end-of-file.
        """
        fd = os.open(self.files.fifo, os.O_RDWR)
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as fifo:
            for line in fifo:
                parts = line.split()
                if parts == ["STOP"]:
                    return
                for listener in self.listeners:
                    listener(line)
                if (
                    len(parts) >= 3
                    and parts[0] == "INSTANCE"
                    and parts[1].strip('"') == INSTANCE
                    and parts[2] in STATES
                ):
                    tmp = self.files.role.with_suffix(".tmp")
                    tmp.write_text(parts[2] + "\n")
                    os.replace(tmp, self.files.role)

    def start(self) -> None:
        """Start keepalived in the director's namespace (the VRRP process only), its log line-buffered (``stdbuf``)."""
        if self.running:
            return
        self.write_files()
        if self.files.role.exists():
            self.files.role.unlink()
        if self._follower is None or not self._follower.is_alive():
            self._follower = threading.Thread(target=self._follow_fifo, name=f"fifo-{self.config.name}", daemon=True)
            self._follower.start()
        try:
            with open(self.files.log, "ab") as log:  # the child keeps its own copy of the descriptor
                self._proc = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        self.config.netns,
                        "stdbuf",
                        "-oL",
                        KEEPALIVED,
                        "-n",
                        "-l",
                        "-D",
                        "--vrrp",
                        "-f",
                        str(self.files.config),
                        "-p",
                        str(self.files.pid),
                        "-r",
                        str(self.files.vrrp_pid),
                        "-c",
                        str(self.files.checkers_pid),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        except OSError as exc:
            raise KeepalivedError(
                f"keepalived for {self.config.name}: cannot start {KEEPALIVED}: {exc.strerror}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: it releases its VIPs and sends a priority-0 advert) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        follower, self._follower = self._follower, None
        if follower is not None and follower.is_alive():
            with open(self.files.fifo, "w") as fifo:  # the follower holds it open: this never blocks
                fifo.write("STOP\n")
            follower.join(STOP_TIMEOUT)

    def crash(self) -> None:
        """SIGKILL both keepalived processes: no priority-0 advert, the VIPs stay configured.

        Killing the parent alone is not a crash: the VRRP child would notice and
        shut down cleanly, giving the VIPs up at once. Killing the child first is
        not one either: the parent respawns a VRRP child at once, and one that
        outlived the "crash" took the VIPs back when the links came up and kept
        the rebooted keepalived from starting ("daemon is already running", seen
        in CI). So the parent is stopped (SIGSTOP) before the child is killed.
        """
        parent = self._proc.pid if self.running and self._proc is not None else 0
        if parent > 0:
            os.kill(parent, signal.SIGSTOP)
        try:
            child = int(self.files.vrrp_pid.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            child = 0
        if child > 0:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop(signal.SIGKILL)

    def processes(self) -> list[int]:
        """The live processes running this instance's config (the parent and its VRRP child): none after a crash."""
        config = os.fsencode(self.files.config)
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    argv = fh.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    zombie = fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
            except OSError:
                continue
            if config in argv and not zombie:
                found.append(int(entry))
        return found

    def role(self) -> str:
        """What the notify FIFO last said (MASTER, BACKUP, FAULT), or "" before the first transition."""
        try:
            return self.files.role.read_text().strip()
        except OSError:
            return ""

    def vrrp_process(self) -> str:
        """keepalived's VRRP process: its state and kernel wait channel (what a stuck director shows), for error messages."""
        try:
            pid = self.files.vrrp_pid.read_text().split()[0]
            state = Path(f"/proc/{pid}/status").read_text().splitlines()[2].split(":", 1)[1].strip()
            wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
            stack = (
                " <- ".join(line.split()[-1] for line in Path(f"/proc/{pid}/stack").read_text().splitlines()[:8])
                if Path(f"/proc/{pid}/stack").exists()
                else ""
            )
        except (OSError, IndexError):
            return "VRRP process not running"
        return f"VRRP process {pid} {state}, wchan {wchan}" + (f", stack {stack}" if stack else "")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.files.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for_role(self, roles: tuple[str, ...], timeout: float = 30.0) -> str:
        """Poll the role file until it shows one of ``roles``; raise with the log tail if it does not."""
        deadline = time.monotonic() + timeout
        while True:
            role = self.role()
            if role in roles:
                return role
            if not self.running:
                raise KeepalivedError(f"keepalived for {self.config.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise KeepalivedError(
                    f"keepalived for {self.config.name}: role {role or 'none'} after {timeout:g} s, "
                    f"expected {'/'.join(roles)}; log:\n{self.log_tail()}"
                )
            time.sleep(0.02)


def available() -> bool:
    return os.access(KEEPALIVED, os.X_OK)
