"""The two-director lab: ``HALab`` adds a second director and runs real keepalived on both.

::

    lvs-cli1 ── br-client ──┬── lvs-dir1 eth0 198.51.100.251 ─┐ eth1 10.0.1.251 ──┬── br-server ── lvs-rs1..N
                            └── lvs-dir2 eth0 198.51.100.252 ─┘ eth1 10.0.1.252 ──┘

Everything the single-director lab puts on its director (lab.topology) that
clients and real servers depend on is a VRRP address of ``VI_1`` here, held by
the active director only: the four VIPs, the client LAN's gateway 198.51.100.1 /
2001:db8:c::1 and the inside address 10.0.1.1 / 2001:db8:1::1 through which the
NAT real servers route back. So the client and the real servers are configured
exactly as in the single-director lab. Both directors carry the same IPVS
services and the same fwmark rule. The table is lvsguard's on both: each
director's lvsguard config has ``table: {manage: true}`` and the services' table
keys, and its actuator builds the table at start (``lvsguard_token`` set), or the
lab applies the config in-process as ``lvsguard apply`` does (no actuator runs).
keepalived does VRRP and the sync daemon only, with no ``virtual_server``: its
``lvs_sync_daemon`` replicates connections from the active to the standby
director over the server LAN.

``dir1`` has priority 150 and ``dir2`` 100. ``preempt=True``: dir1 takes the VIPs
back when it returns; ``preempt=False`` (``nopreempt`` on both): whoever holds
them keeps them. ``restart_keepalived(preempt=...)`` switches policy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lab import monitoring, traffic
from lab.keepalived import (
    InstanceFiles,
    Keepalived,
    KeepalivedError,
    VrrpConfig,
    available,
)
from lab.topology import (
    CLIENT_PREFIX4,
    CLIENT_PREFIX6,
    SERVER_PREFIX4,
    SERVER_PREFIX6,
    VIP6,
    VIP_DR,
    VIP_FWMARK,
    VIP_NAT,
    Director,
    Lab,
    LabError,
    LabService,
    Progress,
    _ip_batch,
    _sysctl,
)
from lvsguard.ipvs.addresses import local_addresses
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.netns import entered, proc_net_path

DIRECTOR2_NETNS = "lvs-dir2"
PRIORITIES = {"dir1": 150, "dir2": 100}
GATEWAY4, GATEWAY6 = CLIENT_PREFIX4 + "1", CLIENT_PREFIX6 + "1"
INSIDE4, INSIDE6 = SERVER_PREFIX4 + "1", SERVER_PREFIX6 + "1"
# Linux ignores an ARP update for a neighbour entry changed less than ``locktime``
# (default 1 s) ago, so a busy client kept sending to the old director for up to a
# second after a failover (measured 1.1 s). Hosts that route through a VRRP address
# want locktime 0 (or keepalived's use_vmac, which moves the MAC with the addresses).
NO_ARP_LOCKTIME = "ntable change name arp_cache dev eth0 locktime 0"
EXPORTER_PORTS = {"dir1": 19931, "dir2": 19932}  # on 127.0.0.1 of the VM's own namespace
ACTUATOR_PORTS = {"dir1": 19941, "dir2": 19942}
# Seconds between lvsguard processes serving and the next VRRP transition. On a loaded
# machine, their start-up (about 2 s of CPU each) can starve keepalived into a quick
# BACKUP -> MASTER -> BACKUP flap, and four times in about twenty lab runs such a
# MASTER -> BACKUP left keepalived's VRRP process blocked for good in netlink_recvmsg,
# both directors MASTER (docs/ha.md, "Known issue"; root cause not found). So the lab
# starts them before keepalived (build with lvsguard_token, revive) and pauses after.
SETTLE = 5.0
READY_TIMEOUT = 60.0  # seconds: Python start-up and importing pyroute2 take about 2 s each under UML
ROOT = Path(__file__).resolve().parent.parent


class Lvsguard:
    """``lvsguard exporter`` and ``lvsguard actuator`` of one lab director, as real processes.

    Both run in the VM's own namespace with ``--netns`` (netlink in the
    director's namespace) and listen on 127.0.0.1, so tests and benchmarks
    reach them over HTTP without entering a namespace. The exporter follows the
    director's keepalived through its ``vrrp_notify_fifo``; the actuator writes
    the director's track file and asks the other director's actuator before a
    failover.
    """

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.exporter_url = f"http://127.0.0.1:{EXPORTER_PORTS[name]}"
        self.actuator_url = f"http://127.0.0.1:{ACTUATOR_PORTS[name]}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, config: Path, token_file: Path, netns: str) -> None:
        """Start both processes (not waiting for them: ``wait_ready``), niced.

        Python's start-up (about 2 s of CPU each under UML) must not starve
        keepalived: with ``advert_int 0.1`` a backup that misses adverts for 0.4 s
        takes the VIPs, and in the lab such a flap during a preemption once left
        both directors MASTER for good.
        """
        commands = {
            "exporter": ["exporter", "--config", str(config), "--netns", netns, "--listen", self.exporter_url[7:]],
            "actuator": [
                "actuator",
                "--config",
                str(config),
                "--netns",
                netns,
                "--listen",
                self.actuator_url[7:],
                "--token-file",
                str(token_file),
                "--ledger",
                str(self.directory / "actuator.db"),
            ],
        }
        for what, argv in commands.items():
            with open(self.directory / f"{what}.log", "ab") as log:
                self.procs[what] = subprocess.Popen(
                    ["nice", "-n", "10", sys.executable, "-m", "lvsguard.cli", *argv],
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll /metrics of both until they answer; raise with the process's log if one exits or never answers."""
        deadline = time.monotonic() + timeout
        for what, url in (("exporter", self.exporter_url), ("actuator", self.actuator_url)):
            while True:
                proc = self.procs[what]
                if proc.poll() is not None:
                    raise LabError(f"lvsguard {what} of {self.name} exited ({proc.returncode}): {self.log_tail(what)}")
                try:
                    with urllib.request.urlopen(f"{url}/metrics", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise LabError(
                        f"lvsguard {what} of {self.name} does not answer on {url} after {timeout:g} s: "
                        f"{self.log_tail(what)}"
                    )
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = {}

    def log_tail(self, what: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.directory / f"{what}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _director(name: str, netns: str, host: int) -> Director:
    return Director(
        name=name,
        netns=netns,
        client_ipv4=f"{CLIENT_PREFIX4}{host}",
        client_ipv6=f"{CLIENT_PREFIX6}{host}",
        server_ipv4=f"{SERVER_PREFIX4}{host}",
        server_ipv6=f"{SERVER_PREFIX6}{host}",
        vips=(VIP_NAT, VIP_DR, VIP_FWMARK, VIP6),
    )


class HALab(Lab):
    """Two directors (lvs-dir1, lvs-dir2) with keepalived, the client and the real servers of ``Lab``.

    ``director`` stays dir1 (the primary), so every inherited helper (``ipvsadm``,
    ``counters``, ``set_weight``) acts on it; ``directors`` has both, and
    ``keepalived[name]`` each one's process and files (role, track file).
    """

    def __init__(
        self,
        real_servers: int = 3,
        *,
        preempt: bool = True,
        lvsguard_token: str = "",
        probes: str | None = None,
        cluster: str = "",
    ) -> None:
        """``lvsguard_token`` set: ``build`` starts the lvsguard processes (``start_lvsguard``) before keepalived.

        ``cluster``: a ``cluster`` section (YAML) for both directors' configs, ``{director}`` replaced by the
        director's name (``store: etcd`` on a ``lab.etcd.EtcdLab``).
        """
        super().__init__(real_servers)
        self.preempt = preempt
        self.sync = True  # keepalived runs the IPVS sync daemons
        self.directors = (_director("dir1", self.director.netns, 251), _director("dir2", DIRECTOR2_NETNS, 252))
        self.director = self.directors[0]
        self.keepalived: dict[str, Keepalived] = {}
        self.lvsguard: dict[str, Lvsguard] = {}  # the exporter and actuator processes (start_lvsguard)
        self.token = lvsguard_token
        self.probes = (
            probes or "probes:\n  enabled: false\n"
        )  # the ``probes`` section of the lvsguard processes' config
        self.crashed: set[str] = set()  # directors whose processes were killed and links taken down (crash)
        self.cluster = cluster

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (
            self.switch,
            *(d.netns for d in self.directors),
            self.client.netns,
            *(rs.netns for rs in self.real_servers),
        )

    def director_named(self, name: str) -> Director:
        for director in self.directors:
            if director.name == name:
                return director
        raise LabError(f"the HA lab has no director {name!r}")

    # --- lifecycle --------------------------------------------------------------------

    def build(self, progress: Progress | None = None) -> None:
        if not available():
            raise LabError("the HA lab needs keepalived (Debian package keepalived, /usr/sbin/keepalived)")
        super().build(progress)  # create_services: the tables, unless the actuators will build them
        say = progress or (lambda _msg: None)
        try:
            for director in self.directors[1:]:
                self._mark_fwmark_traffic(director.netns)
            if self.token:  # before keepalived: their heavy start must not starve VRRP into a flap (SETTLE)
                say("starting lvsguard exporter and lvsguard actuator for both directors (they build the tables)")
                self.start_lvsguard(self.token)
            say("starting keepalived in both directors")
            self.restart_keepalived(preempt=self.preempt)
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Stop lvsguard and keepalived (before the namespaces go), then everything ``Lab.teardown`` removes."""
        for processes in self.lvsguard.values():
            processes.stop()
        self.lvsguard = {}
        for instance in self.keepalived.values():
            instance.stop()
        self.keepalived = {}
        super().teardown()

    def _create_network(self) -> None:
        _ip_batch(f"netns add {ns}" for ns in self.namespaces)
        _sysctl(self.switch, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"})
        sysctls = self._host_sysctls()
        for netns, settings in sysctls.items():
            _sysctl(netns, settings)
        for director in self.directors[1:]:
            _sysctl(director.netns, sysctls[self.director.netns])
        _ip_batch(self._switch_commands(), netns=self.switch)
        for director in self.directors:
            _ip_batch(self._ha_director_commands(director), netns=director.netns)
        self._mark_fwmark_traffic(self.director.netns)
        _ip_batch([*self._host_commands(self.client, GATEWAY4, GATEWAY6), NO_ARP_LOCKTIME], netns=self.client.netns)
        for rs in self.real_servers:
            _ip_batch(
                [*self._host_commands(rs, INSIDE4, INSIDE6), NO_ARP_LOCKTIME, f"addr add {VIP_DR}/32 dev lo"],
                netns=rs.netns,
            )

    def _switch_commands(self) -> list[str]:
        cmds = super()._switch_commands()
        for director in self.directors[1:]:
            for port, peer, bridge in (
                (f"c-{director.name}", "eth0", "br-client"),
                (f"s-{director.name}", "eth1", "br-server"),
            ):
                cmds += [
                    f"link add {port} type veth peer name {peer} netns {director.netns}",
                    f"link set {port} master {bridge}",
                    f"link set {port} up",
                ]
        return cmds

    @staticmethod
    def _ha_director_commands(d: Director) -> list[str]:
        """The director's own addresses only: the VIPs, the gateway and the inside address are keepalived's."""
        return [
            "link set lo up",
            f"addr add {d.client_ipv4}/24 dev eth0",
            f"addr add {d.client_ipv6}/64 dev eth0 nodad",
            f"addr add {d.server_ipv4}/24 dev eth1",
            f"addr add {d.server_ipv6}/64 dev eth1 nodad",
            "link set eth0 up",
            "link set eth1 up",
        ]

    # --- the tables -------------------------------------------------------------------

    def create_services(self, progress: Progress | None = None) -> None:
        """Build both directors' tables from their lvsguard configs; with ``lvsguard_token``, their actuators do at start."""
        if self.token:
            return
        for director in self.directors:
            if progress:
                progress(f"building the IPVS table of {director.netns} from its lvsguard config")
            self.apply_table(director)

    def director_config(self, name: str) -> str:
        return self.lvsguard_config(name, self.probes)

    # --- keepalived -------------------------------------------------------------------

    def vrrp_config(self, director: Director, *, preempt: bool) -> VrrpConfig:
        vips4 = (
            (f"{GATEWAY4}/24", "eth0"),
            *((f"{vip}/32", "eth0") for vip in director.vips if ":" not in vip),
            (f"{INSIDE4}/24", "eth1"),
        )
        vips6 = (
            (f"{GATEWAY6}/64", "eth0"),
            *((f"{vip}/128", "eth0") for vip in director.vips if ":" in vip),
            (f"{INSIDE6}/64", "eth1"),
        )
        return VrrpConfig(
            director.name, director.netns, PRIORITIES[director.name], preempt, vips4, vips6, sync=self.sync
        )

    def start_keepalived(self, names: tuple[str, ...] | None = None) -> None:
        """Start keepalived in the named directors (default: both) with the lab's preemption policy."""
        if self._tmp is None:
            raise LabError("the HA lab is not built")
        for director in self.directors:
            if names is not None and director.name not in names:
                continue
            instance = self.keepalived.get(director.name)
            config = self.vrrp_config(director, preempt=self.preempt)
            if instance is None or instance.config != config:
                if instance is not None:
                    instance.stop()
                instance = Keepalived(config, self._files(director.name).directory)
                self.keepalived[director.name] = instance
            instance.start()

    def stop_keepalived(self, name: str) -> None:
        """Stop one director's keepalived (SIGTERM: it gives its VIPs up)."""
        self.keepalived[name].stop()

    def restart_keepalived(self, *, preempt: bool, sync: bool = True) -> None:
        """Both keepalived stopped, the policy switched, both started again; dir1 ends up holding the VIPs.

        ``sync=False`` leaves ``lvs_sync_daemon`` out and stops the kernel's sync
        daemons, so that no connection reaches the standby.
        """
        for instance in self.keepalived.values():
            instance.stop()
        self.sync = sync
        if not sync:
            for director in self.directors:
                with NetlinkIPVS(director.netns) as kernel:
                    for daemon in kernel.sync_daemons():
                        kernel.stop_sync_daemon(daemon.role)
        for director in self.directors:
            track = self.track_file(director.name)
            if track.exists():
                track.write_text("0\n")
        self.preempt = preempt
        self.start_keepalived(("dir1",))  # alone first: with nopreempt, the first to become MASTER keeps the VIPs
        self.wait_for_vip_owner("dir1")
        self.start_keepalived(("dir2",))
        self.keepalived["dir2"].wait_for_role(("BACKUP",))
        self.wait_for_vip_owner("dir1")

    def _files(self, name: str) -> InstanceFiles:
        return InstanceFiles(self.director_files(self.director_named(name).name))

    def track_file(self, name: str) -> Path:
        """Director ``name``'s keepalived track file: its actuator's ``failover_track_file``."""
        return self._files(name).track

    def role_file(self, name: str) -> Path:
        """Director ``name``'s VRRP state (MASTER, BACKUP, FAULT): its actuator's ``role_file``."""
        return self._files(name).role

    # --- lvsguard processes and whole-director crashes ---------------------------------

    def lvsguard_config(self, name: str, probes: str = "probes:\n  enabled: false\n") -> str:
        """The config of director ``name``'s exporter and actuator: its table, its FIFO, track and role files, its peer.

        The table is the config's (``table.manage``): the actuator builds it at
        start. ``probes`` is the config's ``probes`` section (YAML); by default none run.
        """
        peer = next(d.name for d in self.directors if d.name != name)
        files = self._files(name)
        return (
            self.config_yaml_for(name, listen=f"127.0.0.1:{EXPORTER_PORTS[name]}", table=True).replace(
                "director:\n", f"director:\n  keepalived_fifo: {files.exporter_fifo}\n", 1
            )
            + probes
            + "actuator:\n  hold_down: 0\n  job_poll_interval: 0.2\n"
            + f"  role_file: {files.role}\n  failover_track_file: {files.track}\n"
            + f"  failover_peer_url: http://127.0.0.1:{ACTUATOR_PORTS[peer]}\n"
            + self.cluster.replace("{director}", name)
        )

    def start_lvsguard(
        self, token: str, names: tuple[str, ...] | None = None, *, probes: str | None = None
    ) -> dict[str, Lvsguard]:
        """Start ``lvsguard exporter`` and ``lvsguard actuator`` for the named directors (default: both); wait for them.

        All processes start before the first wait: under UML each takes about 2 s to serve.
        ``probes`` (a ``probes`` section) is kept for later restarts (``revive``).
        """
        if self._tmp is None:
            raise LabError("the HA lab is not built")
        self.token = token
        if probes is not None:
            self.probes = probes
        token_file = self._tmp / "tokens"
        token_file.write_text(f"lab:{token}\n")
        token_file.chmod(0o600)
        started = []
        for director in self.directors:
            if names is not None and director.name not in names:
                continue
            directory = self.director_files(director.name)
            fifo = InstanceFiles(directory).exporter_fifo
            if not fifo.exists():  # keepalived may not run yet: the exporter opens its FIFO at start
                os.mkfifo(fifo, 0o600)
            config = directory / "lvsguard.yaml"
            config.write_text(self.lvsguard_config(director.name, self.probes))
            processes = self.lvsguard.get(director.name) or Lvsguard(director.name, directory)
            processes.stop()
            processes.start(config, token_file, director.netns)
            self.lvsguard[director.name] = processes
            started.append(processes)
        for processes in started:
            processes.wait_ready()
        return dict(self.lvsguard)

    def crash(self, name: str) -> float:
        """Director ``name`` dies at once: SIGKILL to keepalived, the exporter and the actuator, then its links down.

        Like a power cut, nothing is given up cleanly: the VRRP addresses stay
        configured on the dead interfaces and no priority-0 advert is sent, so the
        peer takes over when the master-down timer expires. ``vip_owners`` and
        ``wait_for_vip_owner`` leave a crashed director out. Returns the
        ``time.monotonic()`` at which keepalived was killed.
        """
        killed = time.monotonic()
        self.keepalived[name].crash()
        if name in self.lvsguard:
            self.lvsguard[name].stop(signal.SIGKILL)
        self.crashed.add(name)
        _ip_batch(["link set eth0 down", "link set eth1 down"], netns=self.director_named(name).netns)
        return killed

    def revive(self, name: str, *, lvsguard: bool = True) -> None:
        """Boot director ``name`` again after ``crash``: a clean network and no sync daemon, then lvsguard and keepalived.

        A rebooted director starts with its own addresses only (the VRRP ones are
        keepalived's to add) and no kernel sync daemon (keepalived starts it in
        the role VRRP gives it). Its IPVS table is kept; its actuator, started
        again, applies its config to it (nothing to do unless it changed).
        """
        director = self.director_named(name)
        config = self.vrrp_config(director, preempt=self.preempt)
        for address, dev in (*config.vips4, *config.vips6):
            subprocess.run(
                ["ip", "-n", director.netns, "addr", "del", address, "dev", dev],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        with NetlinkIPVS(director.netns) as kernel:
            for daemon in kernel.sync_daemons():
                kernel.stop_sync_daemon(daemon.role)
        _ip_batch(
            [command.replace("addr add", "addr replace") for command in self._ha_director_commands(director)],
            netns=director.netns,
        )
        self.crashed.discard(name)
        if lvsguard and self.token:  # first, as a booting director would: their start-up is heavy, VRRP is not
            self.start_lvsguard(self.token, (name,))
            time.sleep(SETTLE)
        self.start_keepalived((name,))

    # --- who holds the VIPs -----------------------------------------------------------

    def vip_owners(self) -> tuple[str, ...]:
        """The directors that have the NAT VIP on an interface now (one netlink dump each)."""
        return tuple(
            d.name for d in self.directors if d.name not in self.crashed and VIP_NAT in local_addresses(d.netns)
        )

    def wait_for_vip_owner(self, name: str, timeout: float = 30.0, poll: float = 0.005) -> float:
        """Poll until exactly director ``name`` holds every IPv4 VIP; return the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        wanted = {vip for vip in self.director.vips if ":" not in vip} | {GATEWAY4, INSIDE4}
        while True:
            held = {
                d.name: set(local_addresses(d.netns)) & wanted for d in self.directors if d.name not in self.crashed
            }
            others = [n for n, addresses in held.items() if n != name and addresses]
            if held.get(name) == wanted and not others:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {n}: role {k.role() or 'none'}, {k.vrrp_process()}\n{k.log_tail()}"
                    for n, k in self.keepalived.items()
                )
                raise KeepalivedError(
                    f"{name} does not hold the VIPs alone after {timeout:g} s (held: {held}, also on: {others})\n{logs}"
                )
            time.sleep(poll)

    def config_yaml_for(self, name: str, *, listen: str = "127.0.0.1:9910", table: bool = False) -> str:
        """``config_yaml`` for director ``name``."""
        return self.config_yaml(listen=listen, table=table).replace(
            f"netns: {self.director.netns}", f"netns: {self.director_named(name).netns}", 1
        )


# --- Alertmanager in front of both actuators ---------------------------------------------


def alertmanager_config(
    webhook_urls: dict[str, str], token_file: Path, *, group_interval: str | None = None
) -> dict[str, Any]:
    """alerts/alertmanager.yml with its actuator receiver pointed at ``webhook_urls`` (dir1's, dir2's) and ``token_file``.

    ``group_interval`` replaces the quarantine route's (10 s) when given, so a
    resolved notification comes sooner; nothing else of the example changes.
    """
    config = monitoring.alertmanager_config(list(webhook_urls.values()), token_file)
    if group_interval is not None:
        for route in config["route"]["routes"]:
            if route["receiver"] == monitoring.ACTUATOR_RECEIVER and "quarantine" in route["matchers"][0]:
                route["group_interval"] = group_interval
    return config


# --- connections across a failover (tests, demo and benchmark) -----------------------


def sync_roles(lab: HALab, name: str) -> set[str]:
    """The roles (master, backup) of the IPVS sync daemons running in director ``name``."""
    with NetlinkIPVS(lab.director_named(name).netns) as kernel:
        return {d.role for d in kernel.sync_daemons()}


def synced_connections(lab: HALab, name: str, socks: list[socket.socket]) -> int:
    """How many of the client's connections ``socks`` director ``name`` has as ESTABLISHED (by client port)."""
    ports = {f"{sock.getsockname()[1]:04X}" for sock in socks}
    with entered(lab.director_named(name).netns), open(proc_net_path("ip_vs_conn")) as fh:
        rows = [line.split() for line in fh]
    return sum(1 for row in rows if len(row) > 7 and row[2] in ports and row[7] == "ESTABLISHED")


def open_held(lab: HALab, service: LabService, n: int) -> list[socket.socket]:
    """``n`` long-lived HTTP connections (``/hold``) from the client, each answered with its real server's name."""
    socks = []
    with entered(lab.client.netns):
        for _ in range(n):
            sock = socket.create_connection((service.address, service.port), timeout=5)
            socks.append(sock)
            sock.sendall(b"GET /hold?seconds=120 HTTP/1.0\r\nHost: lab\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.partition(b"\r\n\r\n")[2].endswith(b"\n"):
                chunk = sock.recv(4096)
                assert chunk, f"{service}: a held connection closed before the real server named itself"
                data += chunk
    return socks


def sync_state(lab: HALab) -> str:
    """Both directors' sync daemons and keepalived's lines about them: the message of a failed wait."""
    lines = [
        f"{name}: {sorted(sync_roles(lab, name))}, role {k.role()!r}, keepalived log: "
        + " | ".join(line for line in k.log_tail(400).splitlines() if "sync" in line.lower() or "ipvs" in line.lower())
        for name, k in lab.keepalived.items()
    ]
    return "\n".join(lines)


def open_synced(
    lab: HALab, services: list[LabService], n: int, master: str = "dir1", backup: str = "dir2", timeout: float = 15.0
) -> dict[str, list[socket.socket]]:
    """``n`` held connections per service, opened once ``master`` and ``backup`` run their sync daemons, and synced.

    Waits for both daemons first: keepalived adds the VIPs before it swaps the
    sync daemon, so a connection opened in between is never sent to the
    backup. Returns the sockets by service name once ``backup`` has every one
    of them as ESTABLISHED; AssertionError (with both daemons' state) if not
    within ``timeout`` s. The caller closes the sockets.
    """
    roles = {master: {"master"}, backup: {"backup"}}
    deadline = time.monotonic() + timeout
    while {name: sync_roles(lab, name) for name in roles} != roles:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for sync daemons {roles}\n{sync_state(lab)}")
        time.sleep(0.05)
    held: dict[str, list[socket.socket]] = {}
    try:
        for service in services:
            held[service.name] = open_held(lab, service, n)
        deadline = time.monotonic() + timeout
        while (synced := {name: synced_connections(lab, backup, socks) for name, socks in held.items()}) != {
            name: n for name in held
        }:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {n} connections per service synced to {backup}: "
                    f"{synced}\n{sync_state(lab)}"
                )
            time.sleep(0.05)
    except BaseException:
        for socks in held.values():
            for sock in socks:
                sock.close()
        raise
    return held


def served_again(lab: HALab, service: LabService, since: float, timeout: float = 15.0, attempt: float = 1.0) -> float:
    """Retry one HTTP request through ``service`` until it is answered; seconds from ``since`` (monotonic).

    Right after the VIPs move, the client may still send to the old director
    (until the new one's gratuitous ARP arrives), which answers "network
    unreachable" or drops the SYN; a real client retries, and so does this,
    giving each request ``attempt`` seconds (a TCP client's own SYN retry comes
    after 1 s: a benchmark that times the director gives up sooner).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if sum(traffic.http_get(lab, service.address, service.port, 1, timeout=attempt).values()) == 1:
                return time.monotonic() - since
        except traffic.TrafficError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.005)


def survivors(socks: list[socket.socket]) -> int:
    """Close each connection from the client's side; count those the real server closes in turn (FIN, not RST).

    A director that lacks the connection answers the client's FIN with a reset:
    nothing listens on the VIP itself.
    """
    alive = 0
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            if sock.recv(4096) == b"":
                alive += 1
        except OSError:
            pass
        finally:
            sock.close()
    return alive
