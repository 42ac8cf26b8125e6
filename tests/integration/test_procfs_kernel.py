"""ProcfsReader against the real kernel: a table built with ipvsadm, read back exactly.

Everything happens in network namespaces of our own, so the reader is also
shown to stay in the namespace it was opened in. The traffic test sends real
TCP connections through a NAT service and checks the active/inactive counts
and host totals against what the client did and against ``ipvsadm -Ln``
(which reads over netlink).
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from lvsguard.ipvs.netns import entered
from lvsguard.ipvs.procfs import ProcfsReader
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceFlags, ServiceKey, Table, VirtualService

pytestmark = pytest.mark.kernel

HASHED, OPS, PERSISTENT = ServiceFlags.HASHED, ServiceFlags.ONEPACKET, ServiceFlags.PERSISTENT
M, R, T = Forward.MASQ, Forward.ROUTE, Forward.TUNNEL

# (ipvsadm -R rules, the services they make). Direct routing and tunnelling
# keep the service's port, whatever port the rule gives.
RULES = """\
-A -t 192.0.2.10:80 -s wrr
-a -t 192.0.2.10:80 -r 10.0.1.2:8080 -m -w 3
-a -t 192.0.2.10:80 -r 10.0.1.3:80 -g -w 0
-a -t 192.0.2.10:80 -r 10.0.1.4:80 -i -w 65535 -x 100 -y 10
-A -u 192.0.2.10:53 -s rr -o
-a -u 192.0.2.10:53 -r 10.0.1.2:53 -m -w 1
-A --sctp-service 192.0.2.10:5060 -s sh
-A -t [2001:db8::10]:443 -s wlc -p 60 -M 64
-a -t [2001:db8::10]:443 -r [2001:db8:1::2]:443 -m -w 2
-a -t [2001:db8::10]:443 -r 10.0.1.5:443 -i -w 1
-A -f 1 -s wlc -p 1800 -M 255.255.255.0
-a -f 1 -r 10.0.1.2:0 -g -w 1
-A -f 2 -6 -s rr
-a -f 2 -6 -r [2001:db8:1::3]:0 -g -w 7
"""


def service(
    key: str, scheduler: str, *servers: RealServer, flags: int = 0, timeout: int = 0, netmask: int = 0
) -> VirtualService:
    return VirtualService(ServiceKey.parse(key), scheduler, int(HASHED | flags), timeout, netmask, real_servers=servers)


def server(endpoint: str, forward: Forward, weight: int) -> RealServer:
    return RealServer(RealServerKey.parse(endpoint), weight, forward)


EXPECTED = (
    service(
        "TCP 192.0.2.10:80",
        "wrr",
        server("10.0.1.2:8080", M, 3),
        server("10.0.1.3:80", R, 0),
        server("10.0.1.4:80", T, 65535),
    ),
    service("UDP 192.0.2.10:53", "rr", server("10.0.1.2:53", M, 1), flags=OPS),
    service("SCTP 192.0.2.10:5060", "sh"),
    service(
        "TCP [2001:db8::10]:443",
        "wlc",
        server("[2001:db8:1::2]:443", M, 2),
        server("10.0.1.5:443", T, 1),
        flags=PERSISTENT,
        timeout=60,
        netmask=64,
    ),
    service("FWM 1", "wlc", server("10.0.1.2:0", R, 1), flags=PERSISTENT, timeout=1800, netmask=0xFFFFFF00),
    service("FWM 2 IPv6", "rr", server("[2001:db8:1::3]:0", R, 7)),
)


def run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def add_netns(name: str) -> None:
    run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")


def normalized(table: Table) -> dict[ServiceKey, VirtualService]:
    """Services by key with real servers sorted: the kernel lists both in hash/insertion order."""

    def order(rs: RealServer) -> tuple[int, str, int]:
        return (rs.key.family, rs.key.address, rs.key.port)

    return {
        s.key: dataclasses.replace(s, real_servers=tuple(sorted(s.real_servers, key=order))) for s in table.services
    }


def expected_table(services: tuple[VirtualService, ...]) -> dict[ServiceKey, VirtualService]:
    return normalized(Table(services=services))


@pytest.fixture
def director() -> Iterator[str]:
    name = "lvsg-procfs-dir"
    add_netns(name)
    try:
        yield name
    finally:
        run("ip", "netns", "del", name)


def test_reads_the_table_ipvsadm_built(director: str) -> None:
    run("ip", "netns", "exec", director, "ipvsadm", "-R", stdin=RULES)
    with ProcfsReader(director) as reader:
        assert reader.hz is not None, "kernel_hz() found no CONFIG_HZ: persistence timeouts would read 0"
        table = reader.read()
        from_thread: list[Table] = []
        worker = threading.Thread(target=lambda: from_thread.append(reader.read()))
        worker.start()
        worker.join()
    assert table.source == "procfs"
    assert normalized(table) == expected_table(EXPECTED)
    assert from_thread == [table], "a read from another thread saw another namespace"
    with ProcfsReader() as here:
        assert not set(normalized(here.read())) & set(expected_table(EXPECTED)), (
            "the test's services leaked into the root namespace"
        )


def test_reader_follows_changes(director: str) -> None:
    run("ip", "netns", "exec", director, "ipvsadm", "-R", stdin=RULES)
    with ProcfsReader(director) as reader:
        before = normalized(reader.read())
        run(
            "ip",
            "netns",
            "exec",
            director,
            "ipvsadm",
            "-R",
            stdin="-e -t 192.0.2.10:80 -r 10.0.1.2:8080 -m -w 0\n-d -t 192.0.2.10:80 -r 10.0.1.3:80\n-D -u 192.0.2.10:53\n",
        )
        after = normalized(reader.read())
    assert before == expected_table(EXPECTED)
    web = ServiceKey.parse("TCP 192.0.2.10:80")
    assert [(str(rs), rs.weight) for rs in after[web].real_servers] == [("10.0.1.2:8080", 0), ("10.0.1.4:80", 65535)]
    assert ServiceKey.parse("UDP 192.0.2.10:53") not in after
    assert len(after) == len(EXPECTED) - 1


VIP = "10.9.0.1"
REAL_SERVERS = {"lvsg-procfs-rs1": ("10.9.1.2", "10.9.1.1"), "lvsg-procfs-rs2": ("10.9.2.2", "10.9.2.1")}
CLIENT = ("lvsg-procfs-cli", "10.9.0.2", "10.9.0.254")
PORT = 8080


def wire(director: str, ns: str, address: str, gateway: str) -> None:
    """A veth from ``director`` to ``ns``; ``ns`` routes everything through the director."""
    add_netns(ns)
    link = f"v-{ns[-3:]}"
    run("ip", "-n", director, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
    run("ip", "-n", director, "addr", "add", f"{gateway}/24", "dev", link)
    run("ip", "-n", director, "link", "set", link, "up")
    run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    run("ip", "-n", ns, "link", "set", "eth0", "up")
    run("ip", "-n", ns, "route", "add", "default", "via", gateway)


class SinkServer:
    """A TCP server in a namespace that reads until the client closes, then closes too."""

    def __init__(self, netns: str):
        with entered(netns):
            self.listener = socket.create_server(("0.0.0.0", PORT), backlog=64)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(4096):
                pass

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def nat_cluster(director: str) -> Iterator[str]:
    """director + client + two real servers, NAT service VIP:80 -> both (rr)."""
    names = [CLIENT[0], *REAL_SERVERS]
    servers: list[SinkServer] = []
    try:
        run("ip", "netns", "exec", director, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        wire(director, *CLIENT)
        run("ip", "-n", director, "addr", "add", f"{VIP}/32", "dev", f"v-{CLIENT[0][-3:]}")
        for ns, (address, gateway) in REAL_SERVERS.items():
            wire(director, ns, address, gateway)
            servers.append(SinkServer(ns))
        rules = f"-A -t {VIP}:80 -s rr\n" + "".join(
            f"-a -t {VIP}:80 -r {a}:{PORT} -m -w 1\n" for a, _ in REAL_SERVERS.values()
        )
        run("ip", "netns", "exec", director, "ipvsadm", "-R", stdin=rules)
        yield director
    finally:
        for s in servers:
            s.close()
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def connect() -> socket.socket:
    with entered(CLIENT[0]):
        sock = socket.create_connection((VIP, 80), timeout=10)
    sock.sendall(b"hello\n")
    return sock


def ipvsadm_connections(director: str) -> dict[str, tuple[int, int, int]]:
    """Weight, ActiveConn, InActConn per real server as ``ipvsadm -Ln`` (netlink) shows them."""
    rows = {}
    for line in run("ip", "netns", "exec", director, "ipvsadm", "-Ln").splitlines():
        fields = line.split()
        if fields[:1] == ["->"] and fields[1] != "RemoteAddress:Port":
            rows[fields[1]] = (int(fields[3]), int(fields[4]), int(fields[5]))
    return rows


def poll(read: Callable[[], Table], done: Callable[[Table], bool], timeout: float = 15.0) -> Table:
    """Read until ``done(table)``: the kernel updates states per packet and totals every 2 s."""
    deadline = time.monotonic() + timeout
    while True:
        table = read()
        if done(table) or time.monotonic() > deadline:
            return table
        time.sleep(0.2)


def test_connections_and_totals_follow_real_traffic(nat_cluster: str) -> None:
    closed, held = 4, 3
    for _ in range(closed):
        connect().close()
    sockets = [connect() for _ in range(held)]
    try:
        with ProcfsReader(nat_cluster) as reader:

            def settled(table: Table) -> bool:
                servers = table.services[0].real_servers
                return (
                    sum(rs.active_connections for rs in servers) == held
                    and sum(rs.inactive_connections for rs in servers) == closed
                    and table.totals is not None
                    and table.totals.connections == closed + held
                )

            table = poll(reader.read, settled)
            netlink_view = ipvsadm_connections(nat_cluster)
    finally:
        for s in sockets:
            s.close()
    (svc,) = table.services
    assert str(svc.key) == f"TCP {VIP}:80"
    procfs_view = {str(rs.key): (rs.weight, rs.active_connections, rs.inactive_connections) for rs in svc.real_servers}
    assert sum(v[1] for v in procfs_view.values()) == held
    assert sum(v[2] for v in procfs_view.values()) == closed
    assert procfs_view == netlink_view
    assert table.totals is not None
    assert table.totals.connections == closed + held
    assert table.totals.incoming_packets >= 3 * (closed + held)  # SYN, ACK and data at least
    assert table.totals.outgoing_packets > 0 and table.totals.incoming_bytes > 0 and table.totals.outgoing_bytes > 0
