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
services and the same fwmark rule; keepalived's ``lvs_sync_daemon`` replicates
connections from the active to the standby director over the server LAN.

``dir1`` has priority 150 and ``dir2`` 100. ``preempt=True``: dir1 takes the VIPs
back when it returns; ``preempt=False`` (``nopreempt`` on both): whoever holds
them keeps them. ``restart_keepalived(preempt=...)`` switches policy.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

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
    Progress,
    _ip_batch,
    _sysctl,
)
from lvsguard.ipvs.addresses import local_addresses
from lvsguard.ipvs.netlink import NetlinkIPVS

DIRECTOR2_NETNS = "lvs-dir2"
PRIORITIES = {"dir1": 150, "dir2": 100}
GATEWAY4, GATEWAY6 = CLIENT_PREFIX4 + "1", CLIENT_PREFIX6 + "1"
INSIDE4, INSIDE6 = SERVER_PREFIX4 + "1", SERVER_PREFIX6 + "1"
# Linux ignores an ARP update for a neighbour entry changed less than ``locktime``
# (default 1 s) ago, so a busy client kept sending to the old director for up to a
# second after a failover (measured 1.1 s). Hosts that route through a VRRP address
# want locktime 0 (or keepalived's use_vmac, which moves the MAC with the addresses).
NO_ARP_LOCKTIME = "ntable change name arp_cache dev eth0 locktime 0"


def _director(name: str, netns: str, host: int) -> Director:
    return Director(name=name, netns=netns, client_ipv4=f"{CLIENT_PREFIX4}{host}", client_ipv6=f"{CLIENT_PREFIX6}{host}",
                    server_ipv4=f"{SERVER_PREFIX4}{host}", server_ipv6=f"{SERVER_PREFIX6}{host}",
                    vips=(VIP_NAT, VIP_DR, VIP_FWMARK, VIP6))  # fmt: skip


class HALab(Lab):
    """Two directors (lvs-dir1, lvs-dir2) with keepalived, the client and the real servers of ``Lab``.

    ``director`` stays dir1 (the primary), so every inherited helper (``ipvsadm``,
    ``counters``, ``set_weight``) acts on it; ``directors`` has both, and
    ``keepalived[name]`` each one's process and files (role, track file).
    """

    def __init__(self, real_servers: int = 3, *, preempt: bool = True) -> None:
        super().__init__(real_servers)
        self.preempt = preempt
        self.sync = True  # keepalived runs the IPVS sync daemons
        self.directors = (_director("dir1", self.director.netns, 251), _director("dir2", DIRECTOR2_NETNS, 252))
        self.director = self.directors[0]
        self._tmp: Path | None = None
        self.keepalived: dict[str, Keepalived] = {}

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.switch, *(d.netns for d in self.directors), self.client.netns,
                *(rs.netns for rs in self.real_servers))  # fmt: skip

    def director_named(self, name: str) -> Director:
        for director in self.directors:
            if director.name == name:
                return director
        raise LabError(f"the HA lab has no director {name!r}")

    # --- lifecycle --------------------------------------------------------------------

    def build(self, progress: Progress | None = None) -> None:
        if not available():
            raise LabError("the HA lab needs keepalived (Debian package keepalived, /usr/sbin/keepalived)")
        super().build(progress)
        say = progress or (lambda _msg: None)
        try:
            for director in self.directors[1:]:
                self._mark_fwmark_traffic(director.netns)
                self.create_services(director.netns)
            say("starting keepalived in both directors")
            self._tmp = Path(tempfile.mkdtemp(prefix="lvsguard-ha-"))
            self.restart_keepalived(preempt=self.preempt)
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Stop keepalived (before the namespaces go), then everything ``Lab.teardown`` removes."""
        for instance in self.keepalived.values():
            instance.stop()
        self.keepalived = {}
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
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
            _ip_batch([*self._host_commands(rs, INSIDE4, INSIDE6), NO_ARP_LOCKTIME, f"addr add {VIP_DR}/32 dev lo"],
                      netns=rs.netns)  # fmt: skip

    def _switch_commands(self) -> list[str]:
        cmds = super()._switch_commands()
        for director in self.directors[1:]:
            for port, peer, bridge in ((f"c-{director.name}", "eth0", "br-client"),
                                       (f"s-{director.name}", "eth1", "br-server")):  # fmt: skip
                cmds += [f"link add {port} type veth peer name {peer} netns {director.netns}",
                         f"link set {port} master {bridge}", f"link set {port} up"]  # fmt: skip
        return cmds

    @staticmethod
    def _ha_director_commands(d: Director) -> list[str]:
        """The director's own addresses only: the VIPs, the gateway and the inside address are keepalived's."""
        return ["link set lo up",
                f"addr add {d.client_ipv4}/24 dev eth0", f"addr add {d.client_ipv6}/64 dev eth0 nodad",
                f"addr add {d.server_ipv4}/24 dev eth1", f"addr add {d.server_ipv6}/64 dev eth1 nodad",
                "link set eth0 up", "link set eth1 up"]  # fmt: skip

    # --- keepalived -------------------------------------------------------------------

    def vrrp_config(self, director: Director, *, preempt: bool) -> VrrpConfig:
        vips4 = ((f"{GATEWAY4}/24", "eth0"), *((f"{vip}/32", "eth0") for vip in director.vips if ":" not in vip),
                 (f"{INSIDE4}/24", "eth1"))  # fmt: skip
        vips6 = ((f"{GATEWAY6}/64", "eth0"), *((f"{vip}/128", "eth0") for vip in director.vips if ":" in vip),
                 (f"{INSIDE6}/64", "eth1"))  # fmt: skip
        return VrrpConfig(director.name, director.netns, PRIORITIES[director.name], preempt, vips4, vips6, sync=self.sync)

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
        if self._tmp is None:
            raise LabError("the HA lab is not built")
        return InstanceFiles(self._tmp / self.director_named(name).name)

    def track_file(self, name: str) -> Path:
        """Director ``name``'s keepalived track file: its actuator's ``failover_track_file``."""
        return self._files(name).track

    def role_file(self, name: str) -> Path:
        """Director ``name``'s VRRP state (MASTER, BACKUP, FAULT): its actuator's ``role_file``."""
        return self._files(name).role

    # --- who holds the VIPs -----------------------------------------------------------

    def vip_owners(self) -> tuple[str, ...]:
        """The directors that have the NAT VIP on an interface now (one netlink dump each)."""
        return tuple(d.name for d in self.directors if VIP_NAT in local_addresses(d.netns))

    def wait_for_vip_owner(self, name: str, timeout: float = 30.0, poll: float = 0.005) -> float:
        """Poll until exactly director ``name`` holds every IPv4 VIP; return the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        wanted = {vip for vip in self.director.vips if ":" not in vip} | {GATEWAY4, INSIDE4}
        while True:
            held = {d.name: set(local_addresses(d.netns)) & wanted for d in self.directors}
            others = [n for n, addresses in held.items() if n != name and addresses]
            if held[name] == wanted and not others:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}: role {k.role() or 'none'}\n{k.log_tail()}" for n, k in self.keepalived.items())
                raise KeepalivedError(f"{name} does not hold the VIPs alone after {timeout:g} s "
                                      f"(held: {held}, also on: {others})\n{logs}")  # fmt: skip
            time.sleep(poll)

    def config_yaml_for(self, name: str, *, listen: str = "127.0.0.1:9910") -> str:
        """``config_yaml`` for director ``name``."""
        return self.config_yaml(listen=listen).replace(f"netns: {self.director.netns}",
                                                       f"netns: {self.director_named(name).netns}", 1)
