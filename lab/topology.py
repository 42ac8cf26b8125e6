"""A small LVS cluster in network namespaces, carrying real traffic through the kernel's IPVS.

::

    lvs-cli1 (client)                      lvs-dir1 (director)                    lvs-rs1..N
    eth0 198.51.100.10   ── br-client ──   eth0 198.51.100.1 + the VIPs
                                           eth1 10.0.1.1      ── br-server ──   eth0 10.0.1.2..

The two bridges live in their own namespace (``lvs-sw``), so nothing touches the
VM's root namespace and a second director can later plug into the same LANs.
docs/lab.md has the full address plan. The services (``Lab.services``):

- ``nat``    TCP 192.0.2.10:80 wrr -> real servers :8080, masquerading, weights N..1
- ``dr``     TCP 192.0.2.20:80 rr -> real servers :80, direct routing (VIP on their lo)
- ``fwmark`` FWM 1 wrr (iptables marks TCP 192.0.2.30 ports 80 and 443) -> real servers,
  masquerading, port kept, weights 1..N
- ``nat6``   TCP [2001:db8::10]:80 wrr -> real servers [..]:8080, masquerading
- ``dr6``    TCP [2001:db8::20]:80 rr -> real servers [..]:80, direct routing (VIP on their lo)
- ``udp``    UDP 192.0.2.10:53 rr -> real servers :53 (echo), masquerading

Building uses ``ip -batch`` once per namespace, run from a thread that entered the
namespace, because every process start costs 30-60 ms under User-Mode Linux.
The real servers are one process (``lab.servers``). The IPVS table is lvsguard's:
the lab writes the director's lvsguard config (``table: {manage: true}`` and the
services' table keys, ``config_yaml(table=True)``) and the table reconciler builds
the table from it, in this process, as ``lvsguard apply`` does when no actuator
runs (``apply_table``). ipvsadm (lab.ipvsadm) stays the independent witness that
reads the table back, and the tool of "hand changes". It refuses to run outside
the lab VM unless ``FORCE=1``.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

import yaml

from lab import ipvsadm
from lab.servers import ServerSpec
from lvsguard.errors import LvsguardError
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.netns import NETNS_RUN_DIR, entered
from lvsguard.model import FWM, Forward, RealServer, RealServerKey, ServiceKey, Stats, Table, VirtualService
from lvsguard.table.load import service_mapping

if TYPE_CHECKING:
    from lvsguard.actuator.actions.table import TableOutcome

ROOT = Path(__file__).resolve().parent.parent

SWITCH_NETNS = "lvs-sw"
DIRECTOR_NETNS = "lvs-dir1"
CLIENT_NETNS = "lvs-cli1"
REAL_SERVER_NETNS = "lvs-rs{}"

# Client LAN (br-client) and server LAN (br-server): documentation / private ranges only.
CLIENT_PREFIX4, CLIENT_PREFIX6 = "198.51.100.", "2001:db8:c::"
SERVER_PREFIX4, SERVER_PREFIX6 = "10.0.1.", "2001:db8:1::"
VIP_NAT = "192.0.2.10"  # the NAT service and the UDP service
VIP_DR = "192.0.2.20"
VIP_FWMARK = "192.0.2.30"
VIP6 = "2001:db8::10"
VIP6_DR = "2001:db8::20"
FWMARK = 1
HTTP_PORT, HTTPS_PORT, BACKEND_PORT, UDP_PORT = 80, 443, 8080, 53
NFT_TABLE = "lvsguard_lab"

SERVERS_READY_TIMEOUT = 30.0  # seconds for lab.servers to open every socket


class LabError(RuntimeError):
    """The lab cannot be built or used; the message says which step and object."""


@dataclass(frozen=True)
class Node:
    """A host of the lab: its name, network namespace and addresses on its LAN."""

    name: str  # "rs1", "cli1"
    netns: str
    ipv4: str
    ipv6: str


@dataclass(frozen=True)
class Director:
    """The director: one leg on the client LAN (with the VIPs), one on the server LAN."""

    name: str
    netns: str
    client_ipv4: str
    client_ipv6: str
    server_ipv4: str
    server_ipv6: str
    vips: tuple[str, ...]


@dataclass(frozen=True)
class LabService:
    """One virtual service: how the kernel is configured, and where clients send traffic."""

    name: str  # "nat", "dr", "fwmark", "nat6", "dr6", "udp"
    config: VirtualService  # key, scheduler, real servers with weight and forwarding method
    address: str  # the VIP clients connect to
    ports: tuple[int, ...]  # the client-side ports; a fwmark service has several
    backends: tuple[tuple[RealServerKey, str], ...]  # real server key -> lab node name

    @property
    def key(self) -> ServiceKey:
        return self.config.key

    @property
    def port(self) -> int:
        """The first client-side port."""
        return self.ports[0]

    @property
    def weights(self) -> dict[str, int]:
        """Configured weight per real-server node name."""
        return {self.name_of(rs.key): rs.weight for rs in self.config.real_servers}

    def real_server(self, name: str) -> RealServerKey:
        """The key of node ``name`` (``"rs2"``) in this service."""
        for key, node in self.backends:
            if node == name:
                return key
        raise LabError(f"service {self.name} ({self.key}) has no real server {name!r}")

    def name_of(self, key: RealServerKey) -> str:
        for k, node in self.backends:
            if k == key:
                return node
        raise LabError(f"service {self.name} ({self.key}) has no real server {key}")

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"


@dataclass(frozen=True)
class ConnectionCounts:
    """Connections the kernel scheduled for one service: its own counter and per real server."""

    total: int
    by_real_server: Counter[str]  # node name -> connections

    def __sub__(self, other: ConnectionCounts) -> ConnectionCounts:
        diff = Counter({name: self.by_real_server[name] - other.by_real_server[name] for name in self.by_real_server})
        return ConnectionCounts(self.total - other.total, +diff)


Progress = Callable[[str], None]


def in_lab_vm() -> bool:
    """True inside lab/vm.sh (or when FORCE=1 allows a disposable host)."""
    return os.environ.get("IPVS_VM_GUEST") == "1" or os.environ.get("FORCE") == "1"


def _namespace_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_RUN_DIR, name))


def _ip_batch(commands: Iterable[str], *, netns: str | None = None, force: bool = False) -> None:
    """Run iproute2 commands in one ``ip -batch`` inside ``netns``."""
    args = ["ip", "-batch", "-"] if not force else ["ip", "-force", "-batch", "-"]
    try:
        ipvsadm.run(args, netns=netns, stdin="\n".join(commands) + "\n")
    except ipvsadm.IpvsadmError as exc:
        raise LabError(f"network setup failed: {exc}") from None


def _sysctl(netns: str, settings: dict[str, str]) -> None:
    """Write /proc/sys/net settings of ``netns`` (they follow the writing thread's namespace)."""
    with entered(netns):
        for name, value in settings.items():
            path = "/proc/sys/" + name.replace(".", "/")
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError as exc:
                raise LabError(f"sysctl {name}={value} in netns {netns}: {exc.strerror}") from None


class Lab:
    """The cluster: build it, send traffic through it (lab.traffic), read the kernel's view, tear it down.

    ``Lab(real_servers=3)`` only computes names and addresses; ``build()`` creates
    everything (tearing down leftovers of an earlier run first) and ``teardown()``
    removes it all again; both are safe to call twice. Use it as a context manager
    or call them yourself.
    """

    def __init__(self, real_servers: int = 3) -> None:
        if not 1 <= real_servers <= 200:
            raise LabError(f"real_servers must be 1..200, got {real_servers}")
        self.switch = SWITCH_NETNS
        self.director = Director(
            name="dir1",
            netns=DIRECTOR_NETNS,
            client_ipv4=CLIENT_PREFIX4 + "1",
            client_ipv6=CLIENT_PREFIX6 + "1",
            server_ipv4=SERVER_PREFIX4 + "1",
            server_ipv6=SERVER_PREFIX6 + "1",
            vips=(VIP_NAT, VIP_DR, VIP_FWMARK, VIP6, VIP6_DR),
        )
        self.client = Node("cli1", CLIENT_NETNS, CLIENT_PREFIX4 + "10", CLIENT_PREFIX6 + "10")
        self.real_servers = tuple(
            Node(f"rs{i}", REAL_SERVER_NETNS.format(i), SERVER_PREFIX4 + str(i + 1), SERVER_PREFIX6 + str(i + 1))
            for i in range(1, real_servers + 1)
        )
        self.services = {s.name: s for s in self._services()}
        self._servers: subprocess.Popen[str] | None = None
        self._servers_listening = False
        self._servers_log: IO[bytes] | None = None
        self._servers_error = ""  # what lab.servers printed on stderr, once stopped
        self._tmp: Path | None = None  # per director: its lvsguard config and ledger (``director_files``)

    # --- the services ---------------------------------------------------------------

    def _service(
        self,
        name: str,
        key: ServiceKey,
        scheduler: str,
        forward: Forward,
        address: str,
        ports: tuple[int, ...],
        weights: list[int],
        port: int,
        ipv6: bool = False,
    ) -> LabService:
        backends = tuple(
            (RealServerKey(node.ipv6 if ipv6 else node.ipv4, port, 6 if ipv6 else 4), node.name)
            for node in self.real_servers
        )
        real_servers = tuple(RealServer(key, weight, forward) for (key, _), weight in zip(backends, weights))
        return LabService(name, VirtualService(key, scheduler, real_servers=real_servers), address, ports, backends)

    def _services(self) -> list[LabService]:
        n = len(self.real_servers)
        return [
            self._service(
                "nat",
                ServiceKey("TCP", VIP_NAT, HTTP_PORT),
                "wrr",
                Forward.MASQ,
                VIP_NAT,
                (HTTP_PORT,),
                list(range(n, 0, -1)),
                BACKEND_PORT,
            ),
            self._service(
                "dr",
                ServiceKey("TCP", VIP_DR, HTTP_PORT),
                "rr",
                Forward.ROUTE,
                VIP_DR,
                (HTTP_PORT,),
                [1] * n,
                HTTP_PORT,
            ),
            self._service(
                "fwmark",
                ServiceKey(FWM, "", 0, FWMARK),
                "wrr",
                Forward.MASQ,
                VIP_FWMARK,
                (HTTP_PORT, HTTPS_PORT),
                list(range(1, n + 1)),
                0,
            ),
            self._service(
                "nat6",
                ServiceKey("TCP", VIP6, HTTP_PORT, family=6),
                "wrr",
                Forward.MASQ,
                VIP6,
                (HTTP_PORT,),
                [2] + [1] * (n - 1),
                BACKEND_PORT,
                ipv6=True,
            ),
            self._service(
                "dr6",
                ServiceKey("TCP", VIP6_DR, HTTP_PORT, family=6),
                "rr",
                Forward.ROUTE,
                VIP6_DR,
                (HTTP_PORT,),
                [1] * n,
                HTTP_PORT,
                ipv6=True,
            ),
            self._service(
                "udp", ServiceKey("UDP", VIP_NAT, UDP_PORT), "rr", Forward.MASQ, VIP_NAT, (UDP_PORT,), [1] * n, UDP_PORT
            ),
        ]

    @property
    def nat(self) -> LabService:
        return self.services["nat"]

    @property
    def dr(self) -> LabService:
        return self.services["dr"]

    @property
    def fwmark(self) -> LabService:
        return self.services["fwmark"]

    @property
    def nat6(self) -> LabService:
        return self.services["nat6"]

    @property
    def dr6(self) -> LabService:
        return self.services["dr6"]

    @property
    def udp(self) -> LabService:
        return self.services["udp"]

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace the lab creates, the switch first."""
        return (self.switch, self.director.netns, self.client.netns, *(rs.netns for rs in self.real_servers))

    def node(self, name: str) -> Node:
        for node in (self.client, *self.real_servers):
            if node.name == name:
                return node
        raise LabError(f"the lab has no node {name!r}")

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def build(self, progress: Progress | None = None) -> None:
        """Create namespaces, links, addresses, the fwmark rule, the real servers and the services."""
        say = progress or (lambda _msg: None)
        if not in_lab_vm():
            raise LabError(
                "the lab creates namespaces, bridges and IPVS rules: run it inside lab/vm.sh "
                "(or set FORCE=1 on a disposable host)"
            )
        self.teardown()
        t0 = time.monotonic()
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix="lvsguard-lab-"))
            self._spawn_servers()  # Python's start-up overlaps the network set-up
            say(f"creating {len(self.namespaces)} network namespaces, bridges and veth links")
            self._create_network()
            say(f"starting the HTTP and UDP echo servers in {len(self.real_servers)} real servers")
            self.start_servers()
            self.create_services(progress)
        except BaseException:
            self.teardown()
            raise
        say(f"lab ready in {time.monotonic() - t0:.1f} s")

    def teardown(self) -> None:
        """Stop the servers and delete every lab namespace (with it the IPVS table, links and rules)."""
        self.stop_servers()
        existing = [ns for ns in self.namespaces if _namespace_exists(ns)]
        if existing:
            _ip_batch((f"netns del {ns}" for ns in existing), force=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _create_network(self) -> None:
        _ip_batch(f"netns add {ns}" for ns in self.namespaces)
        # Before any link exists: a new interface copies its namespace's "default" settings.
        _sysctl(self.switch, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"})
        for netns, settings in self._host_sysctls().items():
            _sysctl(netns, settings)
        _ip_batch(self._switch_commands(), netns=self.switch)
        _ip_batch(self._director_commands(), netns=self.director.netns)
        self._mark_fwmark_traffic()
        _ip_batch(
            self._host_commands(self.client, self.director.client_ipv4, self.director.client_ipv6),
            netns=self.client.netns,
        )
        for rs in self.real_servers:
            commands = self._host_commands(rs, self.director.server_ipv4, self.director.server_ipv6)
            _ip_batch([*commands, f"addr add {VIP_DR}/32 dev lo", f"addr add {VIP6_DR}/128 dev lo"], netns=rs.netns)

    def _host_sysctls(self) -> dict[str, dict[str, str]]:
        # No duplicate address detection: while a link-local address is tentative
        # (about 1 s after link up) the kernel sends no neighbour solicitation from
        # it, and the first IPv6 connection through the director waited for a SYN
        # retransmission (observed on 6.1).
        no_dad = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
        director = {
            **no_dad,
            "net.ipv4.ip_forward": "1",
            "net.ipv6.conf.all.forwarding": "1",
            # DR replies come back through the director with the VIP, a local address, as source.
            "net.ipv4.conf.all.accept_local": "1",
            "net.ipv4.conf.all.rp_filter": "0",
        }
        # ARP for the DR VIP (on lo) must come from the director only.
        real_server = {**no_dad, "net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}
        return {
            self.director.netns: director,
            self.client.netns: no_dad,
            **{rs.netns: real_server for rs in self.real_servers},
        }

    def _switch_commands(self) -> list[str]:
        cmds = ["link set lo up"]
        for bridge in ("br-client", "br-server"):
            cmds += [f"link add {bridge} type bridge mcast_snooping 0", f"link set {bridge} up"]
        ports = [
            ("c-dir1", "eth0", self.director.netns, "br-client"),
            ("s-dir1", "eth1", self.director.netns, "br-server"),
            (f"c-{self.client.name}", "eth0", self.client.netns, "br-client"),
        ]
        ports += [(f"s-{rs.name}", "eth0", rs.netns, "br-server") for rs in self.real_servers]
        for port, peer, netns, bridge in ports:
            cmds += [
                f"link add {port} type veth peer name {peer} netns {netns}",
                f"link set {port} master {bridge}",
                f"link set {port} up",
            ]
        return cmds

    def _director_commands(self) -> list[str]:
        d = self.director
        cmds = [
            "link set lo up",
            f"addr add {d.client_ipv4}/24 dev eth0",
            f"addr add {d.client_ipv6}/64 dev eth0 nodad",
        ]
        cmds += [
            f"addr add {vip}/{128 if ':' in vip else 32} dev eth0" + (" nodad" if ":" in vip else "") for vip in d.vips
        ]
        cmds += [
            f"addr add {d.server_ipv4}/24 dev eth1",
            f"addr add {d.server_ipv6}/64 dev eth1 nodad",
            "link set eth0 up",
            "link set eth1 up",
        ]
        return cmds

    @staticmethod
    def _host_commands(node: Node, gateway4: str, gateway6: str) -> list[str]:
        return [
            "link set lo up",
            f"addr add {node.ipv4}/24 dev eth0",
            f"addr add {node.ipv6}/64 dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {gateway4}",
            f"route add default via {gateway6}",
        ]

    def _mark_fwmark_traffic(self, netns: str | None = None) -> None:
        """Mark TCP to the fwmark VIP on ports 80 and 443 before routing.

        iptables-legacy first: Debian's user-mode-linux 6.1 kernel has nf_tables
        without its ip/ip6/inet families (CONFIG_NF_TABLES_IPV4 unset), so nft and
        the nft-based ``iptables`` fail there with "Operation not supported";
        ip_tables + iptable_mangle are modules. nft is the fallback for full kernels.
        """
        if shutil.which("iptables-legacy"):
            args = [
                "iptables-legacy",
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-d",
                f"{VIP_FWMARK}/32",
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--dports",
                f"{HTTP_PORT},{HTTPS_PORT}",
                "-j",
                "MARK",
                "--set-mark",
                str(FWMARK),
            ]
            stdin = None
        elif shutil.which("nft"):
            args = ["nft", "-f", "-"]
            stdin = (
                f"table ip {NFT_TABLE} {{\n  chain prerouting {{\n"
                "    type filter hook prerouting priority mangle; policy accept;\n"
                f"    ip daddr {VIP_FWMARK} tcp dport {{ {HTTP_PORT}, {HTTPS_PORT} }} meta mark set {FWMARK}\n"
                "  }\n}\n"
            )
        else:
            raise LabError("the fwmark service needs iptables-legacy (Debian package iptables) or nft")
        try:
            ipvsadm.run(args, netns=netns or self.director.netns, stdin=stdin)
        except ipvsadm.IpvsadmError as exc:
            raise LabError(f"fwmark rule: {exc}") from None

    # --- real servers -------------------------------------------------------------------

    def _server_spec(self) -> ServerSpec:
        return ServerSpec(
            servers=tuple((rs.name, rs.netns) for rs in self.real_servers),
            tcp=(HTTP_PORT, HTTPS_PORT, BACKEND_PORT),
            tcp6=(BACKEND_PORT, HTTP_PORT),
            udp=(UDP_PORT,),
        )

    def _spawn_servers(self) -> None:
        """Start the lab.servers process; it waits for its spec on stdin (see start_servers)."""
        if self._servers is None:
            self._servers_log = tempfile.TemporaryFile()  # a file: a full pipe would stall the servers
            self._servers = subprocess.Popen(
                [sys.executable, "-m", "lab.servers"],
                cwd=ROOT,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._servers_log,
            )
            self._servers_listening = False

    def start_servers(self) -> None:
        """HTTP on 80, 443, 8080, [::]:80 and [::]:8080, UDP echo on 53 in every real server; return once they listen."""
        self._spawn_servers()
        proc = self._servers
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        if self._servers_listening:
            return
        try:
            proc.stdin.write(self._server_spec().to_json() + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died: reported below with its stderr
        ready, _, _ = select.select([proc.stdout], [], [], SERVERS_READY_TIMEOUT)
        line = proc.stdout.readline().strip() if ready else ""
        if line != "ready":
            self.stop_servers()
            raise LabError(f"the real servers (lab.servers) did not start: {self._servers_error or 'no ready line'}")
        self._servers_listening = True

    def stop_servers(self) -> None:
        proc, self._servers = self._servers, None
        self._servers_listening = False
        if proc is None:
            return
        if proc.stdin:
            proc.stdin.close()  # lab.servers exits at EOF on stdin
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if self._servers_log is not None:
            self._servers_log.seek(0)
            self._servers_error = self._servers_log.read().decode(errors="replace").strip()
            self._servers_log.close()
            self._servers_log = None

    # --- the IPVS table ----------------------------------------------------------------

    def create_services(self, progress: Progress | None = None) -> None:
        """Build the director's table from its lvsguard config (``apply_table``)."""
        if progress:
            progress(f"building the IPVS table of {self.director.netns} from its lvsguard config")
        self.apply_table(self.director)

    def reset_services(self) -> None:
        """Delete every service of the director and build the lab's again (counters start at 0)."""
        with NetlinkIPVS(self.director.netns) as kernel:
            kernel.flush()
        self.create_services()

    def director_files(self, name: str) -> Path:
        """The directory of director ``name``'s lvsguard files: ``lvsguard.yaml``, the ledger ``actuator.db``."""
        if self._tmp is None:
            raise LabError("the lab is not built")
        directory = self._tmp / name
        directory.mkdir(mode=0o700, exist_ok=True)
        return directory

    def director_config(self, name: str) -> str:
        """Director ``name``'s lvsguard config: the table (``table.manage``) and the services with their table keys."""
        return self.config_yaml(table=True)

    def apply_table(self, director: Director) -> TableOutcome:
        """Make ``director``'s table its lvsguard config's, as ``lvsguard apply --config FILE --netns NS`` does.

        The config is written to ``director_files`` and applied in this process
        by the table reconciler (``actuator.tableapply.apply_here``), with the
        director's ledger (the one its actuator uses, if one starts later): no
        process to start, which costs 1-2 s under User-Mode Linux. Raises
        LabError when the kernel refuses an entry.
        """
        from lvsguard import config
        from lvsguard.actuator.actions import Actor, Source
        from lvsguard.actuator.tableapply import apply_here

        directory = self.director_files(director.name)
        path = directory / "lvsguard.yaml"
        path.write_text(self.director_config(director.name))
        try:
            outcome = apply_here(
                config.load(path),
                netns=director.netns,
                ledger_path=str(directory / "actuator.db"),
                actor=Actor(Source.CLI, "lab"),
            )
        except LvsguardError as exc:
            raise LabError(f"the table of {director.name} from {path}: {exc}") from None
        if outcome.failures:
            raise LabError(f"the table of {director.name} from {path}: {outcome.message}")
        return outcome

    def ipvsadm(self, *args: str) -> str:
        """Run ipvsadm in the director; its stdout."""
        return ipvsadm.run(["ipvsadm", *args], netns=self.director.netns)

    def read_table(self) -> Table:
        """The director's table as ipvsadm lists it (an independent view for comparisons)."""
        return ipvsadm.read_table(netns=self.director.netns)

    def counters(self) -> dict[tuple[ServiceKey, RealServerKey | None], Stats]:
        """Every counter from one ``ipvsadm -Ln --stats --exact``; real server None = the service's own."""
        return ipvsadm.read_counters(netns=self.director.netns)

    def connections(self, service: LabService) -> ConnectionCounts:
        """Connections the kernel counted for ``service``, now (lags up to 2 s behind traffic)."""
        counters = self.counters()
        if (service.key, None) not in counters:
            raise LabError(f"service {service} is not in the director's table")
        by_rs = Counter(
            {
                service.name_of(rk): st.connections
                for (sk, rk), st in counters.items()
                if sk == service.key and rk is not None
            }
        )
        return ConnectionCounts(counters[(service.key, None)].connections, by_rs)

    def wait_for_connections(
        self, service: LabService, before: ConnectionCounts, expected: Counter[str], timeout: float = 10.0
    ) -> ConnectionCounts:
        """Poll until the counters moved by exactly ``expected`` since ``before``; return the last difference.

        The kernel folds its per-CPU counters every 2 seconds, so a single read
        right after the traffic sees old values. Returns when they match or at
        ``timeout``; the caller asserts on the returned difference.
        """
        deadline = time.monotonic() + timeout
        while True:
            delta = self.connections(service) - before
            if (
                delta.by_real_server == +expected and delta.total == sum(expected.values())
            ) or time.monotonic() > deadline:
                return delta
            time.sleep(0.25)

    def config_yaml(self, *, listen: str = "127.0.0.1:9910", table: bool = False) -> str:
        """An lvsguard config for this lab: the director's netns, and services and real servers named as here.

        ``table=True``: the config that owns the table (``table: {manage: true,
        prune: owned}``, every service with its scheduler, forwarding and
        weights), from which the lab builds its directors' tables.
        """
        lines = ["director:", f"  netns: {self.director.netns}", "exporter:", f'  listen: "{listen}"']
        if table:
            mappings = [service_mapping(s.config, s.name, dict(s.backends)) for s in self.services.values()]
            text = yaml.safe_dump({"services": mappings}, sort_keys=False, default_flow_style=None, width=1000)
            return "\n".join([*lines, "table:", "  manage: true", "  prune: owned"]) + "\n" + text
        lines.append("services:")
        for service in self.services.values():
            lines += [f"  - name: {service.name}", f'    service: "{service.key}"', "    real_servers:"]
            lines += [f'      - {{name: {name}, address: "{key}"}}' for key, name in service.backends]
        return "\n".join(lines) + "\n"

    def set_weight(self, service: LabService, real_server: str, weight: int) -> None:
        """Change one real server's weight (``ipvsadm -e``), keeping its forwarding method and thresholds."""
        rs = service.config.real_server(service.real_server(real_server))
        if rs is None:
            raise LabError(f"service {service} has no real server {real_server!r}")
        line = ipvsadm.real_server_rule(service.key, replace(rs, weight=weight), command="-e")
        ipvsadm.run(["ipvsadm", *line.split()], netns=self.director.netns)
