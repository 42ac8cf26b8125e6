"""Several directors sharing their holds through the lab's etcd (``cluster.store: etcd``; docs/cluster.md).

::

    lvs-cdir1 ─┐                       lvs-etcd1..3
    lvs-cdir2 ─┼── etcd0 ── br-etcd ── (lab.etcd.EtcdLab)
    lvs-cdir3 ─┘

Each director is a network namespace with its own IPVS table and its own
``lvsguard actuator``, a real process started with ``ip netns exec`` so that
its netlink socket, its HTTP listener (127.0.0.1 of that namespace) and its
etcd client all live there: ``EtcdLab.partition(director.netns)`` cuts it off
etcd alone, its table and its API stay. The table is the actuator's: its
config has ``table: {manage: true}`` and one NAT service, built at start.
By default the directors carry no traffic (the VIP is on no interface): what
the tests look at is each kernel's weights. With ``traffic=True`` each director
gets its own client namespace (``lvs-ccliN``, 10.0.2.2, routed through the
director) and its own real-server namespace (``lvs-crsN`` with the three real
servers' addresses, served by one ``lab.servers`` process), and the VIP on its
``lo``: ``hold(name, n)`` opens long-lived connections through that director's
IPVS (NAT), so each kernel has its own active connections. With
``manage=False`` the actuators do not own the table (a drain with ``delete``
is refused on a table the config manages): the lab builds it through netlink.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.etcd import ETCD, EtcdLab
from lab.polling import poll
from lab.servers import ServerSpec
from lab.topology import LabError, _ip_batch, _namespace_exists, _sysctl, in_lab_vm
from lab.traffic import hold_connections
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.netns import entered
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, VirtualService

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ServiceKey.parse("TCP 192.0.2.10:80")
REAL_SERVERS = {"rs1": ("10.0.1.2:8080", 3), "rs2": ("10.0.1.3:8080", 2), "rs3": ("10.0.1.4:8080", 1)}
BULK_SERVICE = ServiceKey.parse("TCP 192.0.2.11:80")  # ``ClusterLab(bulk=n)``: n + 1 real servers, for bulk actions


def bulk_real_servers(n: int) -> list[RealServerKey]:
    """The real servers of ``BULK_SERVICE`` in a lab built with ``bulk=n``: 10.2.0.1:8080 ..."""
    return [RealServerKey.parse(f"10.2.{i // 250}.{i % 250 + 1}:8080") for i in range(n + 1)]


TOKEN = "cluster-lab-token-0123456789"
ACTUATOR_PORT = 9911  # on 127.0.0.1 of each director's namespace
READY_TIMEOUT = 90.0  # seconds: three Pythons importing pyroute2 and Flask at once under UML
RS_PORT = 8080
SERVERS_READY_TIMEOUT = 30.0
CONVERGE_TIMEOUT = 60.0  # seconds: ``ClusterLab.wait``'s default; etcd commits in tens of ms, the VM is slow and shared


@dataclass
class ClusterDirector:
    """One director: its namespace, its files and its actuator process."""

    name: str  # "dir1"
    netns: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_netns(self) -> str:
        return self.netns.replace("cdir", "ccli")

    @property
    def server_netns(self) -> str:
        return self.netns.replace("cdir", "crs")

    @property
    def log(self) -> Path:
        return self.directory / "actuator.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def web_service(real_servers: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """The lab's ``web`` service (NAT, wrr) with these real servers (name -> (address, weight)), as config."""
    return {
        "name": "web",
        "service": str(SERVICE),
        "scheduler": "wrr",
        "forward": "masq",
        "real_servers": [
            {"name": name, "address": address, "weight": weight} for name, (address, weight) in real_servers.items()
        ],
    }


@dataclass(frozen=True)
class _Node:
    netns: str


@dataclass(frozen=True)
class _Lab:
    """What ``lab.traffic`` needs: the namespace its client runs in."""

    netns: str

    @property
    def client(self) -> _Node:
        return _Node(self.netns)


class ClusterLab:
    """``EtcdLab`` plus ``n`` directors, each with its table and its actuator on the shared etcd."""

    def __init__(
        self,
        directors: int = 3,
        *,
        etcd: EtcdLab | None = None,
        retry_interval: float = 1.0,
        actuator: dict[str, Any] | None = None,
        table_source: str = "config",
        bulk: int = 0,
        traffic: bool = False,
        manage: bool = True,
    ) -> None:
        """``actuator``: more keys of the directors' ``actuator`` section (a benchmark lifts the rate limit).

        ``table_source``: ``config`` (each director's table from its own config) or ``cluster`` (the
        cluster's record in etcd, pushed with :meth:`push`; until then the tables stay empty).
        ``bulk``: a second service, ``BULK_SERVICE``, with ``bulk + 1`` real servers of weight 1 (bulk actions).
        """
        self.table_source = table_source
        self.etcd = etcd or EtcdLab()
        self.bulk = bulk
        self.retry_interval = retry_interval
        self.actuator = actuator or {}
        self.traffic = traffic
        self.manage = manage
        self._servers: subprocess.Popen[str] | None = None
        self._tmp: Path | None = None  # the directors' configs, ledgers and logs (the VM's tmpfs)
        self.directors = [ClusterDirector(f"dir{i}", f"lvs-cdir{i}", Path()) for i in range(1, directors + 1)]

    def director(self, name: str) -> ClusterDirector:
        for d in self.directors:
            if d.name == name:
                return d
        raise LabError(f"the cluster lab has no director {name!r}")

    # --- lifecycle --------------------------------------------------------------------

    def build(self) -> None:
        """etcd, the directors' namespaces on its LAN, their actuators started and serving their tables."""
        self.teardown_directors()
        self.etcd.build()
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix="lvsguard-cluster-"))
            _ip_batch(f"netns add {d.netns}" for d in self.directors)
            for d in self.directors:
                d.directory = self._tmp / d.name
                d.directory.mkdir(mode=0o700, exist_ok=True)
                (d.directory / "lvsguard.yaml").write_text(self.config(d))
                self.etcd.attach(d.netns)
            if self.traffic:
                self._plumb()
            if not self.manage:
                self._build_tables()
            for d in self.directors:
                self.start(d.name)
            for d in self.directors:
                self.wait_ready(d.name)
        except BaseException:
            self.teardown()
            raise

    def teardown_directors(self) -> None:
        for d in self.directors:
            self.kill(d.name, signal.SIGTERM)
        self._stop_servers()
        namespaces = [ns for d in self.directors for ns in (d.netns, d.client_netns, d.server_netns)]
        existing = [ns for ns in namespaces if _namespace_exists(ns)]
        if existing:
            _ip_batch((f"netns del {ns}" for ns in existing), force=True)

    def teardown(self) -> None:
        self.teardown_directors()
        self.etcd.teardown()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> ClusterLab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def wait(self, check: Callable[[], bool], what: str, timeout: float = CONVERGE_TIMEOUT) -> float:
        """Seconds until ``check()`` holds; AssertionError naming ``what``, with every director's state, after ``timeout``."""
        started = time.monotonic()
        poll(what, check, bool, timeout, interval=0.1, detail=self.describe)
        return time.monotonic() - started

    def describe(self) -> str:
        """Every director's IPVS table (``ipvsadm -Ln``: weights and connections) and its actuator's log tail."""
        parts = []
        for d in self.directors:
            table = subprocess.run(
                ["ip", "netns", "exec", d.netns, "ipvsadm", "-Ln"], capture_output=True, text=True, check=False
            )
            parts.append(f"--- {d.name}\n{table.stdout}{table.stderr}{d.log_tail()}")
        return "\n".join(parts)

    def bulk_service(self) -> dict[str, Any]:
        """The ``bulk`` service (``BULK_SERVICE``: ``self.bulk + 1`` real servers of weight 1), as config."""
        return {
            "name": "bulk",
            "service": str(BULK_SERVICE),
            "scheduler": "wrr",
            "forward": "masq",
            "real_servers": [
                {"name": f"b{i}", "address": str(rs), "weight": 1}
                for i, rs in enumerate(bulk_real_servers(self.bulk), 1)
            ],
        }

    def config(self, d: ClusterDirector) -> str:
        """Director ``d``'s lvsguard config: its managed table, a short retry interval, the cluster store."""
        doc = {
            "table": {"manage": True, "prune": "owned", "source": self.table_source}
            if self.manage
            else {"manage": False},
            "services": [web_service(REAL_SERVERS), *([self.bulk_service()] if self.bulk else [])],
            "actuator": {"hold_down": "0s", "retry_interval": f"{self.retry_interval:g}s", **self.actuator},
            "cluster": {"store": "etcd", "endpoints": list(self.etcd.endpoints), "name": "lab", "director": d.name},
        }
        return yaml.safe_dump(doc, sort_keys=False)

    def push(self, services: list[dict[str, Any]], *, via: str = "dir1") -> str:
        """``lvsguard apply --cluster`` of a config with ``services``, run in director ``via``'s namespace; its output."""
        if self._tmp is None:
            raise LabError("the cluster lab is not built")
        path = self._tmp / "cluster-table.yaml"
        doc = {
            "table": {"manage": True},
            "services": services,
            "cluster": {"store": "etcd", "endpoints": list(self.etcd.endpoints), "name": "lab", "director": via},
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        argv = ["ip", "netns", "exec", self.director(via).netns, sys.executable, "-m", "lvsguard.cli"]
        done = subprocess.run(
            [*argv, "apply", "--cluster", "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise LabError(f"apply --cluster exited {done.returncode}: {done.stderr or done.stdout}")
        return done.stdout

    def diff(self, name: str) -> tuple[int, str]:
        """``lvsguard diff`` of director ``name``'s config, kernel and ledger, in its namespace: (exit status, output)."""
        d = self.director(name)
        argv = ["ip", "netns", "exec", d.netns, sys.executable, "-m", "lvsguard.cli", "diff"]
        argv += ["--config", str(d.directory / "lvsguard.yaml"), "--ledger", str(d.directory / "actuator.db")]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    def saved(self, name: str) -> str:
        """Director ``name``'s IPVS table as ``ipvsadm -Sn`` writes it."""
        netns = self.director(name).netns
        return subprocess.run(
            ["ip", "netns", "exec", netns, "ipvsadm", "-Sn"], check=True, capture_output=True, text=True
        ).stdout

    def flush(self, name: str) -> None:
        """Empty director ``name``'s IPVS table (``ipvsadm -C``), as a reboot leaves it."""
        subprocess.run(["ip", "netns", "exec", self.director(name).netns, "ipvsadm", "-C"], check=True)

    # --- traffic (``traffic=True``) ---------------------------------------------------------

    def _plumb(self) -> None:
        """Each director: a client namespace and a real-server namespace on veths, the VIP on its lo."""
        _ip_batch(f"netns add {ns}" for d in self.directors for ns in (d.client_netns, d.server_netns))
        for d in self.directors:
            _ip_batch(
                [
                    f"link add cli0 type veth peer name eth0 netns {d.client_netns}",
                    f"link add rs0 type veth peer name eth0 netns {d.server_netns}",
                    "link set lo up",
                    f"addr add {SERVICE.address}/32 dev lo",
                    "addr add 10.0.2.1/24 dev cli0",
                    "addr add 10.0.1.1/24 dev rs0",
                    "link set cli0 up",
                    "link set rs0 up",
                ],
                netns=d.netns,
            )
            _sysctl(d.netns, {"net.ipv4.ip_forward": "1"})
            _ip_batch(
                [
                    "link set lo up",
                    "addr add 10.0.2.2/24 dev eth0",
                    "link set eth0 up",
                    "route add default via 10.0.2.1",
                ],
                netns=d.client_netns,
            )
            addresses = [f"addr add {RealServerKey.parse(a).address}/24 dev eth0" for a, _w in REAL_SERVERS.values()]
            _ip_batch(
                ["link set lo up", *addresses, "link set eth0 up", "route add default via 10.0.1.1"],
                netns=d.server_netns,
            )
        spec = ServerSpec(tuple((f"rs-{d.name}", d.server_netns) for d in self.directors), (RS_PORT,), (), ())
        self._servers = subprocess.Popen(
            [sys.executable, "-m", "lab.servers"],
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self._servers.stdin is not None and self._servers.stdout is not None
        self._servers.stdin.write(spec.to_json() + "\n")
        self._servers.stdin.flush()
        ready, _, _ = select.select([self._servers.stdout], [], [], SERVERS_READY_TIMEOUT)
        if not ready or self._servers.stdout.readline().strip() != "ready":
            raise LabError("the cluster lab's real servers (lab.servers) did not start")

    def _stop_servers(self) -> None:
        proc, self._servers = self._servers, None
        if proc is None:
            return
        if proc.stdin:
            proc.stdin.close()  # lab.servers exits at EOF on stdin
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _build_tables(self) -> None:
        """``manage=False``: the service and its real servers in each director's kernel, as an operator would."""
        for d in self.directors:
            with NetlinkIPVS(d.netns) as kernel:
                kernel.add_service(VirtualService(SERVICE, "wrr"))
                for address, weight in REAL_SERVERS.values():
                    kernel.add_real_server(SERVICE, RealServer(RealServerKey.parse(address), weight, Forward.MASQ))

    @contextmanager
    def hold(self, name: str, n: int, *, seconds: float = 600.0) -> Iterator[dict[str, int]]:
        """``n`` long-lived connections through director ``name``'s IPVS, open inside the block; count by real server."""
        d = self.director(name)
        with hold_connections(_Lab(d.client_netns), SERVICE.address, SERVICE.port, n, seconds=seconds) as held:
            yield dict(held)

    def active(self, name: str) -> dict[str, int]:
        """Director ``name``'s active connections by real server name (netlink)."""
        addresses = {RealServerKey.parse(address): rs for rs, (address, _w) in REAL_SERVERS.items()}
        with NetlinkIPVS(self.director(name).netns) as kernel:
            svc = kernel.read().service(SERVICE)
        if svc is None:
            return {}
        return {addresses[rs.key]: rs.active_connections for rs in svc.real_servers if rs.key in addresses}

    # --- actuators ----------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Start director ``name``'s actuator in its namespace (not waiting: ``wait_ready``)."""
        d = self.director(name)
        if d.proc is not None and d.proc.poll() is None:
            return
        argv = [
            "ip",
            "netns",
            "exec",
            d.netns,
            sys.executable,
            "-m",
            "lvsguard.cli",
            "actuator",
            "--config",
            str(d.directory / "lvsguard.yaml"),
            "--ledger",
            str(d.directory / "actuator.db"),
            "--listen",
            f"127.0.0.1:{ACTUATOR_PORT}",
        ]
        with open(d.log, "ab") as log:
            d.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, "LVSGUARD_TOKEN": TOKEN},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop director ``name``'s actuator (SIGKILL: it dies mid-whatever, as ``kill -9``)."""
        d = self.director(name)
        proc, d.proc = d.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT, *, store_up: bool = True) -> None:
        """Until the actuator answers and reports the cluster store up (``store_up=False``: only answers)."""
        d = self.director(name)
        deadline = time.monotonic() + timeout
        while True:
            if d.proc is None or d.proc.poll() is not None:
                raise LabError(f"the actuator of {name} exited: {d.log_tail()}")
            try:
                if self.metric(name, "lvsguard_cluster_store_up") in ((1,) if store_up else (0, 1)):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"the actuator of {name} not ready after {timeout:g} s: {d.log_tail()}")
            time.sleep(0.2)

    # --- talking to a director ---------------------------------------------------------

    def call(self, name: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """An API call to director ``name``'s actuator, from inside its namespace; (status, JSON body)."""
        d = self.director(name)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{ACTUATOR_PORT}{path}",
            data=data,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with entered(d.netns):
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read() or b"{}")

    def metrics(self, name: str) -> str:
        """Director ``name``'s actuator ``/metrics``, as text (the HTTP head included)."""
        d = self.director(name)
        with entered(d.netns), socket.create_connection(("127.0.0.1", ACTUATOR_PORT), timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def metric(self, name: str, metric: str) -> float | None:
        """One unlabelled sample of director ``name``'s actuator ``/metrics``; None when absent."""
        for line in self.metrics(name).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == metric:
                return float(parts[1])
        return None

    def weights(self, name: str) -> dict[str, int]:
        """Director ``name``'s kernel weights of the service, by real server name (read through netlink)."""
        addresses = {RealServerKey.parse(address): rs for rs, (address, _w) in REAL_SERVERS.items()}
        with NetlinkIPVS(self.director(name).netns) as kernel:
            svc = kernel.read().service(SERVICE)
        if svc is None:
            return {}
        return {addresses[rs.key]: rs.weight for rs in svc.real_servers if rs.key in addresses}


@contextmanager
def running(directors: int = 3, **options: Any) -> Iterator[ClusterLab]:
    """``ClusterLab(directors, **options)`` built for the block, then torn down: a kernel test module's lab.

    Raises ``unittest.SkipTest`` (pytest: a skip) where it cannot be built:
    outside the lab VM or without root, or without Debian's etcd. After the
    block, a traceback in any director's actuator log fails it.
    """
    if not (in_lab_vm() and os.geteuid() == 0):
        raise unittest.SkipTest(
            "builds namespaces and IPVS tables: runs inside lab/vm.sh, or with FORCE=1 on a disposable host"
        )
    if not os.access(ETCD, os.X_OK):
        raise unittest.SkipTest(f"needs {ETCD} (Debian package etcd-server)")
    lab = ClusterLab(directors, **options)
    lab.build()
    try:
        yield lab
    finally:
        try:
            for d in lab.directors:
                if "Traceback" in d.log.read_text(errors="replace"):
                    raise AssertionError(f"the actuator of {d.name} logged a traceback:\n{d.log_tail(60)}")
        finally:
            lab.teardown()
