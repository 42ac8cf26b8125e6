"""A three-member etcd 3.4 cluster (Debian's ``etcd-server``) in network namespaces of the lab VM.

::

    lvs-etcd1 10.0.9.1 ─┐
    lvs-etcd2 10.0.9.2 ─┼── br-etcd (in lvs-esw) ──┬── clients: 10.0.9.101.. (a director, the VM itself)
    lvs-etcd3 10.0.9.3 ─┘                          └── ...

Each member runs in its own namespace with its data directory under ``.lab/`` of the checkout,
peers on port 2380 and clients (the v3 API and its JSON gateway) on 2379.
A client joins the etcd LAN with ``attach(netns)`` (None: the VM's own
namespace): a veth whose switch-side port ``partition`` takes down and ``heal``
brings back up, so the node keeps its other links (a director keeps its VIPs
and its table) and only loses etcd. ``kill``/``start`` stop and restart one
member with its data, as a crashed and rebooted etcd host would.

The processes follow lab.keepalived's pattern: one ``ip netns exec`` child per
member in the foreground, its log in the member's directory. Under User-Mode
Linux a process start costs 30-60 ms and an fsync is slow, so the heartbeat and
election timeout are 2.5 times etcd's defaults (a member that misses a
heartbeat because the VM is busy must not start an election).
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.topology import LabError, _ip_batch, _namespace_exists, in_lab_vm
from lvsguard.ipvs.netns import entered

ETCD = "/usr/bin/etcd"
SWITCH_NETNS = "lvs-esw"
BRIDGE = "br-etcd"
PREFIX4 = "10.0.9."
CLIENT_PORT, PEER_PORT = 2379, 2380
CLUSTER_TOKEN = "lvsguard-lab"
HEARTBEAT_MS, ELECTION_MS = 250, 2500
# The members' data: on the host's disk (the checkout is shared read-write with the VM), not on the
# VM's tmpfs: each member preallocates a 64 MB write-ahead log, three of them filled the overlay.
DATA_ROOT = Path(__file__).resolve().parent.parent / ".lab"
READY_TIMEOUT = 60.0  # seconds for three members to elect a leader under UML
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Member:
    """One etcd member: its name, namespace and address on the etcd LAN."""

    name: str  # "etcd1"
    netns: str
    address: str

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{PEER_PORT}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdLab:
    """The etcd cluster: ``build()`` the LAN and start the members, ``teardown()`` removes it all.

    ``members`` has the three members; ``endpoints`` their client URLs on the
    etcd LAN (the VM's own namespace is on it). The helpers
    ``put``/``get``/``members_list`` talk to one member's v3 JSON gateway.
    """

    def __init__(self, size: int = 3) -> None:
        if not 1 <= size <= 9:
            raise LabError(f"an etcd lab has 1..9 members, got {size}")
        self.members = tuple(Member(f"etcd{i}", f"lvs-etcd{i}", f"{PREFIX4}{i}") for i in range(1, size + 1))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._clients: dict[str, str] = {}  # switch port -> the namespace it connects ("" = the VM's own)
        self._tmp: Path | None = None

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.client_url for m in self.members)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (SWITCH_NETNS, *(m.netns for m in self.members))

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise LabError(f"the etcd lab has no member {name!r}")

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> EtcdLab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def build(self) -> None:
        """The etcd LAN, the VM's own leg on it, three members started; returns once they have a leader."""
        if not in_lab_vm():
            raise LabError("the etcd lab creates namespaces: run it inside lab/vm.sh (or FORCE=1 on a disposable host)")
        if not shutil.which(ETCD):
            raise LabError(f"the etcd lab needs {ETCD} (Debian package etcd-server)")
        self.teardown()
        try:
            DATA_ROOT.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix="etcd-", dir=DATA_ROOT))
            _ip_batch(f"netns add {ns}" for ns in self.namespaces)
            _ip_batch(["link set lo up", f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up"], netns=SWITCH_NETNS)
            for member in self.members:
                self._plug(f"e-{member.name}", member.netns, member.address)
            self.attach(None)
            for member in self.members:
                self.start(member.name)
            self.wait_ready()
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Stop every member and delete the namespaces and the VM's leg."""
        for name in list(self._procs):
            self.kill(name)  # the data goes with the lab: no need to wait for a clean stop
        self._clients = {}  # deleting the switch's namespace deletes each veth's other end too
        existing = [ns for ns in self.namespaces if _namespace_exists(ns)]
        if existing:
            _ip_batch((f"netns del {ns}" for ns in existing), force=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _plug(self, port: str, netns: str | None, address: str) -> None:
        """A veth from ``netns`` (None: the VM's own) to the bridge: ``etcd0`` with ``address`` there, ``port`` here."""
        _ip_batch(
            [
                f"link add etcd0 type veth peer name {port} netns {SWITCH_NETNS}",
                f"addr add {address}/24 dev etcd0",
                "link set lo up",
                "link set etcd0 up",
            ],
            netns=netns,
        )
        _ip_batch([f"link set {port} master {BRIDGE}", f"link set {port} up"], netns=SWITCH_NETNS)

    def attach(self, netns: str | None) -> str:
        """Connect ``netns`` (None: the VM's own namespace) to the etcd LAN; its address there."""
        key = netns or ""
        port = "e-host" if not netns else f"e-{netns.removeprefix('lvs-')}"
        if port in self._clients:
            return self._client_address(port)
        self._clients[port] = key
        address = self._client_address(port)
        self._plug(port, netns, address)
        return address

    def _client_address(self, port: str) -> str:
        return f"{PREFIX4}{101 + list(self._clients).index(port)}"

    def _port_of(self, netns: str | None) -> str:
        for port, ns in self._clients.items():
            if ns == (netns or ""):
                return port
        for member in self.members:
            if member.netns == netns or member.name == netns:
                return f"e-{member.name}"
        raise LabError(f"{netns or 'the VM'} is not on the etcd LAN")

    def partition(self, netns: str | None) -> None:
        """Cut ``netns`` (a client's namespace, or a member's name or namespace) off the etcd LAN."""
        _ip_batch([f"link set {self._port_of(netns)} down"], netns=SWITCH_NETNS)

    def heal(self, netns: str | None) -> None:
        """Undo ``partition``."""
        _ip_batch([f"link set {self._port_of(netns)} up"], netns=SWITCH_NETNS)

    # --- members ----------------------------------------------------------------------

    def _directory(self, member: Member) -> Path:
        if self._tmp is None:
            raise LabError("the etcd lab is not built")
        directory = self._tmp / member.name
        directory.mkdir(mode=0o700, exist_ok=True)
        return directory

    def start(self, name: str) -> None:
        """Start member ``name`` (again: with its data, ``initial-cluster-state`` no longer matters)."""
        member = self.member(name)
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            return
        directory = self._directory(member)
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        argv = [
            "ip",
            "netns",
            "exec",
            member.netns,
            ETCD,
            "--name",
            member.name,
            "--data-dir",
            str(directory / "data"),
            "--listen-client-urls",
            f"{member.client_url},http://127.0.0.1:{CLIENT_PORT}",
            "--advertise-client-urls",
            member.client_url,
            "--listen-peer-urls",
            member.peer_url,
            "--initial-advertise-peer-urls",
            member.peer_url,
            "--initial-cluster",
            cluster,
            "--initial-cluster-token",
            CLUSTER_TOKEN,
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            str(HEARTBEAT_MS),
            "--election-timeout",
            str(ELECTION_MS),
            "--logger",
            "zap",
        ]
        with open(directory / "etcd.log", "ab") as log:
            try:
                self._procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            except OSError as exc:
                raise LabError(f"etcd member {name}: cannot start {ETCD}: {exc.strerror}") from None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop member ``name`` (SIGKILL: a crash, no goodbye to its peers) and wait for it."""
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self._directory(self.member(name)) / "etcd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, names: tuple[str, ...] | None = None, timeout: float = READY_TIMEOUT) -> None:
        """Poll each member's ``/health`` until it reports a leader; raise with its log if it exits or never does."""
        deadline = time.monotonic() + timeout
        for member in self.members:
            if names is not None and member.name not in names:
                continue
            while True:
                if not self.running(member.name):
                    raise LabError(f"etcd member {member.name} exited: {self.log_tail(member.name)}")
                try:
                    if json.loads(_http(f"{member.client_url}/health", None, 2.0)).get("health") == "true":
                        break
                except (OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise LabError(
                        f"etcd member {member.name} not healthy after {timeout:g} s: {self.log_tail(member.name)}"
                    )
                time.sleep(0.2)

    # --- the v3 JSON gateway, on each member's own loopback --------------------------------

    def call(self, member: str, path: str, body: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` of ``member``; the JSON reply (LabError when it fails).

        Sent from inside the member's namespace to its 127.0.0.1, as an operator
        on that host would: it answers while it is partitioned (``partition``).
        """
        m = self.member(member)
        url = f"http://127.0.0.1:{CLIENT_PORT}/v3/{path}"
        try:
            with entered(m.netns):
                reply = json.loads(_http(url, body, timeout))
        except (OSError, ValueError) as exc:
            raise LabError(f"etcd member {member} {url}: {exc}") from None
        if not isinstance(reply, dict):
            raise LabError(f"etcd member {member} {url}: not a JSON object: {reply!r}")
        return reply

    def put(self, member: str, key: str, value: str, *, timeout: float = 10.0) -> int:
        """Put through ``member``; the cluster's revision after the put."""
        reply = self.call(member, "kv/put", {"key": _b64(key), "value": _b64(value)}, timeout=timeout)
        return int(reply.get("header", {}).get("revision", 0))

    def get(self, member: str, key: str, *, serializable: bool = False, timeout: float = 10.0) -> str | None:
        """The value of ``key`` as ``member`` reads it (``serializable``: its local copy, no quorum read)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if serializable:
            body["serializable"] = True
        kvs = self.call(member, "kv/range", body, timeout=timeout).get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def wait_leader(self, names: tuple[str, ...], timeout: float = 30.0) -> str:
        """Poll the members ``names`` until they all follow one leader among them; its name.

        After the leader is lost, the others elect a new one within one to two
        election timeouts; until then a write through any member waits or fails.
        """
        ids: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while True:
            try:
                statuses = {n: self.call(n, "maintenance/status", {}, timeout=2.0) for n in names}
                ids = {str(st.get("header", {}).get("member_id")): n for n, st in statuses.items()}
                leaders = {str(st.get("leader")) for st in statuses.values()}
                if len(leaders) == 1 and (leader := leaders.pop()) in ids:
                    return ids[leader]
            except LabError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"etcd members {', '.join(names)}: no common leader after {timeout:g} s")
            time.sleep(0.2)

    def members_list(self, member: str) -> list[str]:
        """Names of the cluster's members as ``member`` knows them."""
        return sorted(m.get("name", "") for m in self.call(member, "cluster/member/list", {}).get("members", []))


def _http(url: str, body: dict[str, Any] | None, timeout: float) -> str:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text: str = response.read().decode()
        return text
