"""What passive detection costs: the IPVS connection table against conntrack events (lab VM).

Part 1 fills the director's connection table with N ESTABLISHED entries
(``lab.synflood.fill``: a SYN and an ACK per entry from spoofed client
addresses to the DR service; the real servers drop them, so IPVS alone keeps
the state) and times full reads of /proc/net/ip_vs_conn, one pass of the
detector's reader over all of it, and one pass capped at 10 000 entries. Part 2 makes real HTTP connections through the NAT service
with ``net.ipv4.vs.conntrack=1`` and measures the CPU of ``conntrack -E``
(Debian's conntrack package) per 1 000 connections, for all events and for
the DESTROY group alone (the kernel filters by multicast group). Part 3
runs the detector with ``source: conntrack`` (its kernel-filtered ctnetlink
socket) in a thread and reads that thread's CPU time from
/proc/self/task/TID/stat: while HTTP requests go through the NAT service as
fast as the client makes them, and while spoofed SYNs come at 1 000 a second
(the real servers answer each: a NEW and a SYN_RECV event, what a real
connection leaves after the filter), with the table empty and with 100 000
ESTABLISHED entries (``--established``).

    lab/vm.sh --mem 1024 .venv/bin/python bench/passive.py [--sizes 10000 100000] [--connections 2000]
    lab/vm.sh --mem 1024 .venv/bin/python bench/passive.py --only-detector [--established 100000]
    .venv/bin/python bench/passive.py --replay [--rate 1000]     # on the host, no VM
    lab/vm.sh --mem 1024 .venv/bin/python bench/passive.py --false-positives [--seconds 600]

``--kills N`` answers the issue's question in one run (``bench.keepalived_checker``
underneath): rs1 of a NAT service is SIGKILLed N times (its port then refuses)
under a client load of 40 and of 200 new connections a second
(``--kill-rates``), for lvsguard with passive detection beside tcp checks every
5 s and every 1 s and for keepalived's checker every 5 s, 1 s and 0.1 s; per
checker, setting and rate: failed client requests per kill (cut, refused,
timed out) and the time from the kill to weight 0::

    lab/vm.sh --mem 1024 .venv/bin/python bench/passive.py --kills 3 [--kill-rates 40 200]

``--false-positives`` runs ``lab.passive_soak``: clients that reset and
abandon their own connections and a spoofed SYN flood beside normal requests,
with both detectors and the actuator on, and reports what was taken out
(nothing, if the rule holds) and what the detectors counted.

``--replay`` measures the detector's own work without UML's costs: another
process sends recorded, filtered events (``tests/fixtures/netlink/
conntrack_events.bin``: a NEW and a SYN_RECV per handshake) over a datagram
socket at ``--rate`` handshakes a second to the same detector thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench import keepalived_checker
from lab import conntrack, passive_soak, synflood, traffic
from lab.topology import VIP_DR, VIP_NAT, Lab
from lvsguard.config.passive import CONNTRACK, PassiveConfig
from lvsguard.exporter.passive.conntable import ConnTableReader, PassCounts
from lvsguard.exporter.passive.metrics import PassiveMetrics
from lvsguard.exporter.passive.rule import Verdict
from lvsguard.exporter.passive.runner import PassiveDetector
from lvsguard.ipvs.netns import entered

CONN_TABLE = "/proc/thread-self/net/ip_vs_conn"


def fill(lab: Lab, n: int, start: int) -> None:
    """Add ``n`` ESTABLISHED entries to the DR service's connection table."""
    synflood.fill(lab.client.netns, [rs.netns for rs in lab.real_servers], VIP_DR, 80, n, start)


def entries(lab: Lab) -> int:
    with entered(lab.director.netns), open(CONN_TABLE, "rb") as f:
        return f.read().count(b"\n") - 1


def time_reads(lab: Lab, repeat: int = 5) -> dict[str, float]:
    """Median wall and CPU seconds of a full read of the table, and of one detector pass."""
    raw_wall, raw_cpu, pass_wall, pass_cpu, capped_wall = [], [], [], [], []
    with entered(lab.director.netns):
        reader = ConnTableReader(CONN_TABLE, max_entries=10**7)
        capped = ConnTableReader(CONN_TABLE)
        for _ in range(repeat):
            w, c = time.perf_counter(), time.process_time()
            with open(CONN_TABLE, "rb") as f:
                size = len(f.read())
            raw_wall.append(time.perf_counter() - w)
            raw_cpu.append(time.process_time() - c)
            w, c = time.perf_counter(), time.process_time()
            reader.read_pass()
            pass_wall.append(time.perf_counter() - w)
            pass_cpu.append(time.process_time() - c)
            w = time.perf_counter()
            capped.read_pass()
            capped_wall.append(time.perf_counter() - w)
    med = lambda xs: sorted(xs)[len(xs) // 2]
    return {
        "bytes": size,
        "read_wall": med(raw_wall),
        "read_cpu": med(raw_cpu),
        "pass_wall": med(pass_wall),
        "pass_cpu": med(pass_cpu),
        "capped_wall": med(capped_wall),
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def conntrack_events(lab: Lab, connections: int, events: str | None) -> dict[str, float]:
    """CPU of ``conntrack -E`` while ``connections`` HTTP requests go through the NAT service."""
    args = ["ip", "netns", "exec", lab.director.netns, "stdbuf", "-oL", "conntrack", "-E"]
    if events:
        args += ["-e", events]
    out = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe (64 KiB) would stall the tool and lose events
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.PIPE)
    time.sleep(0.5)
    try:
        before = _cpu_seconds(proc.pid)
        t0 = time.monotonic()
        traffic.http_get(lab, lab.nat.address, 80, connections)
        wall = time.monotonic() - t0
        time.sleep(11)  # CLOSE/TIME_WAIT destroys come later; count what arrived meanwhile too
        cpu = _cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        _, err = proc.communicate()
        out.seek(0)
        lines = out.read().count(b"\n")
        out.close()
    lost = err.decode(errors="replace").count("ENOBUFS")
    return {"events": lines, "cpu": cpu, "wall": wall, "enobufs": lost}


def _thread_cpu(tid: int) -> float:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Detector:
    """The conntrack-source detector on its thread, the handshakes (and refusals) it counted, its thread's CPU seconds."""

    def __init__(self, netns: str) -> None:
        config = PassiveConfig(enabled=True, source=CONNTRACK, min_failures=1, min_passes=1, chance=0.05)
        self.detector = PassiveDetector(config, netns, PassiveMetrics())
        self.handshakes = self.refused = 0
        observe = self.detector.judge.observe

        def counting(counts: PassCounts, now: float) -> list[Verdict]:
            self.handshakes += sum(counts.attempts.values())
            self.refused += sum(counts.failures["refused"].values())
            return observe(counts, now)

        self.detector.judge.observe = counting  # type: ignore[method-assign]  # a bench's probe, not production
        self.detector.start()
        time.sleep(1.0)
        assert self.detector._thread is not None and self.detector._thread.native_id is not None
        self.tid = self.detector._thread.native_id

    def cpu(self) -> float:
        return _thread_cpu(self.tid)

    def stop(self) -> None:
        self.detector.stop()


def syn_load(lab: Lab, rate: float, seconds: float, start: int) -> int:
    """Spoofed SYNs to the NAT service at ``rate`` a second (in batches every 50 ms); how many were sent."""
    sent, t0 = 0, time.monotonic()
    while (elapsed := time.monotonic() - t0) < seconds:
        due = int(rate * elapsed) - sent
        if due > 0:
            sent += synflood.syn_flood(lab.client.netns, VIP_NAT, 80, start + sent, due)
        time.sleep(0.05)
    return sent


def detector_costs(lab: Lab, established: int, seconds: float, connections: int) -> list[str]:
    """Rows of the detector's CPU table: HTTP as fast as the client goes, 1 000 SYNs/s, with and without a full table."""
    conntrack.track(lab.director.netns)
    rows = []
    d = Detector(lab.director.netns)
    try:
        c0, t0, h0 = d.cpu(), time.monotonic(), d.handshakes
        traffic.http_get(lab, VIP_NAT, 80, connections)
        wall = time.monotonic() - t0
        time.sleep(1.5)
        cpu = d.cpu() - c0
        rows.append(
            f"| HTTP requests, {connections / wall:.0f}/s | {entries(lab):,} | {d.handshakes - h0} "
            f"| {cpu:.2f} s | {100 * cpu / (wall + 1.5):.1f} % | {1e6 * cpu / max(1, d.handshakes - h0):.0f} µs |"
        )
        for size in (0, established):
            if size:
                fill(lab, size, 0)
                for rs in lab.real_servers:  # let the real servers answer the SYNs of the load again
                    subprocess.run(
                        ["ip", "netns", "exec", rs.netns, "iptables-legacy", "-D", "INPUT", "-s"]
                        + [synflood.SPOOF_PREFIX + "0/24", "-j", "DROP"],
                        check=True,
                    )
            n = entries(lab)
            c0, t0, h0 = d.cpu(), time.monotonic(), d.handshakes
            sent = syn_load(lab, 1000.0, seconds, 10_000_000 + 100_000 * len(rows))
            wall = time.monotonic() - t0
            cpu = d.cpu() - c0
            rows.append(
                f"| spoofed SYNs, {sent / wall:.0f}/s | {n:,} | {d.handshakes - h0} | {cpu:.2f} s "
                f"| {100 * cpu / wall:.1f} % | {1e6 * cpu / max(1, d.handshakes - h0):.0f} µs |"
            )
    finally:
        d.stop()
        conntrack.untrack(lab.director.netns)
    return rows


FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "netlink" / "conntrack_events.bin"


def _handshakes() -> list[tuple[bytes, bytes]]:
    """(NEW, SYN_RECV) message pairs of the recording, for NAT connections."""
    from lvsguard.exporter.passive.ctevents import ANSWERED, NEW, parse_event

    data, messages, i = FIXTURE.read_bytes(), [], 0
    while i < len(data):
        length = int.from_bytes(data[i : i + 4], sys.byteorder)
        messages.append(data[i : i + length])
        i += (length + 3) & ~3
    new: dict[bytes, bytes] = {}
    pairs = []
    for m in messages:
        e = parse_event(m)
        if e is None or e.backend is None:
            continue
        if e.kind == NEW:
            new[e.key] = m
        elif e.kind == ANSWERED and e.key in new:
            pairs.append((new.pop(e.key), m))
    return pairs


def _send(sock: socket.socket, rate: float, seconds: float) -> None:
    pairs = _handshakes()
    sent, t0 = 0, time.monotonic()
    while (elapsed := time.monotonic() - t0) < seconds:
        for _ in range(int(rate * elapsed) - sent):
            first, second = pairs[sent % len(pairs)]
            sock.send(first)
            sock.send(second)
            sent += 1
        time.sleep(0.01)


def replay(rate: float, seconds: float) -> str:
    """The detector thread's CPU while another process sends ``rate`` recorded handshakes a second."""
    import multiprocessing

    from lvsguard.exporter.passive.ctevents import ConntrackEvents

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    refusals, _unused = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # as the detector's: no refusal comes
    for sock in (ours, refusals):
        sock.setblocking(False)
    config = PassiveConfig(enabled=True, source=CONNTRACK, min_failures=1, min_passes=1, chance=0.05)
    detector = PassiveDetector(config, None, PassiveMetrics())
    detector.events = ConntrackEvents(ours, refusals=refusals, handshake_timeout=config.handshake_timeout)
    counted = [0]
    observe = detector.judge.observe

    def counting(counts: PassCounts, now: float) -> list[Verdict]:
        counted[0] += sum(counts.attempts.values())
        return observe(counts, now)

    detector.judge.observe = counting  # type: ignore[method-assign]  # a bench's probe, not production
    detector.start()
    time.sleep(0.5)
    assert detector._thread is not None and detector._thread.native_id is not None
    tid = detector._thread.native_id
    sender = multiprocessing.get_context("fork").Process(target=_send, args=(theirs, rate, seconds))
    c0, t0 = _thread_cpu(tid), time.monotonic()
    sender.start()
    sender.join()
    time.sleep(1.2)  # the last events and a pass
    cpu, wall = _thread_cpu(tid) - c0, time.monotonic() - t0
    detector.stop()
    n = counted[0]
    return (
        f"| replayed handshakes, {rate:.0f}/s | {n} | {cpu:.2f} s | {100 * cpu / wall:.1f} % "
        f"| {1e6 * cpu / max(1, n):.0f} µs |"
    )


# --- on the host: real handshakes through conntrack, no IPVS ----------------------------------------------------------

HOST_VIP, HOST_CLIENT, HOST_RS = "10.99.2.10", "10.99.0.2", "10.99.1.2"


class HostNet:
    """Three namespaces on the host: client -> director (conntrack, DNAT of the VIP) -> real server.

    The host kernel has no IPVS. A DNAT rule rewrites the conntrack entry's
    reply tuple to the real server exactly as IPVS does with
    ``net.ipv4.vs.conntrack=1`` for a NAT service, so the director's events
    are the ones the detector reads on a director (docs/probes.md): VIP:80 ->
    RS:8080 (a listener: answered), VIP:81 -> RS:8081 (nothing listens:
    refused), VIP:10000-10099 -> RS, same port (held connections).
    """

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.client, self.director, self.server = (f"lvsg-pb{tag}-{n}" for n in "cds")

    def _ns(self, netns: str, *args: str) -> None:
        subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)

    def _exec(self, netns: str, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", netns, *args], check=True, capture_output=True)

    def build(self) -> None:
        for ns in (self.client, self.director, self.server):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self._ns(ns, "link", "set", "lo", "up")
        subprocess.run(
            ["ip", "link", "add", "pbc0", "netns", self.client, "type", "veth", "peer", "pbd0", "netns", self.director],
            check=True,
        )
        subprocess.run(
            ["ip", "link", "add", "pbs0", "netns", self.server, "type", "veth", "peer", "pbd1", "netns", self.director],
            check=True,
        )
        for ns, dev, address in (
            (self.client, "pbc0", f"{HOST_CLIENT}/24"),
            (self.director, "pbd0", "10.99.0.1/24"),
            (self.director, "pbd1", "10.99.1.1/24"),
            (self.server, "pbs0", f"{HOST_RS}/24"),
        ):
            self._ns(ns, "addr", "add", address, "dev", dev)
            self._ns(ns, "link", "set", dev, "up")
        self._ns(self.client, "route", "add", "default", "via", "10.99.0.1")
        self._ns(self.server, "route", "add", "default", "via", "10.99.1.1")
        self._exec(self.director, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._exec(self.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
        self._exec(self.client, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        for vport, to in ((80, ":8080"), (81, ":8081"), (f"{HELD_PORT}:{HELD_PORT + 99}", "")):
            self._exec(
                self.director,
                *("iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-d", HOST_VIP, "-p", "tcp"),
                *("--dport", str(vport), "-j", "DNAT", "--to-destination", f"{HOST_RS}{to}"),
            )

    def teardown(self) -> None:
        for ns in (self.client, self.director, self.server):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def entries(self) -> int:
        out = subprocess.run(
            ["ip", "netns", "exec", self.director, "conntrack", "-C"], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())


def _serve(netns: str, ports: tuple[int, ...], stop: object) -> None:
    """Accept and close, on ``ports`` in ``netns`` (a child process)."""
    import select as select_

    with entered(netns):
        listeners = []
        for port in ports:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen(4096)
            sock.setblocking(False)
            listeners.append(sock)
    while not stop.is_set():  # type: ignore[attr-defined]
        ready, _, _ = select_.select(listeners, [], [], 0.2)
        for sock in ready:
            for _ in range(256):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()


def _connect_load(netns: str, rates: dict[int, float], seconds: float, made: object) -> None:
    """New connections to the VIP's ports at ``rates`` a second, each closed once open (a child process)."""
    with entered(netns):
        sent = dict.fromkeys(rates, 0)
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            for port, rate in rates.items():
                for _ in range(int(rate * elapsed) - sent[port]):
                    sent[port] += 1
                    try:
                        socket.create_connection((HOST_VIP, port), timeout=1.0).close()
                    except OSError:
                        pass
            time.sleep(0.002)
    made.value = sum(sent.values())  # type: ignore[attr-defined]


HELD_PORT = 10_000  # VIP ports HELD_PORT.. are DNATed to the same port of the real server: one per holder
PER_HOLDER = 9_000  # connections a holder process keeps: both ends, within a hard limit of 20 000 descriptors


def _holder(net: HostNet, port: int, n: int, ready: object, stop: object) -> None:
    """``n`` connections VIP:port -> RS:port, held open on both ends until ``stop`` (a child process)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with entered(net.server):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(4096)
        listener.setblocking(False)
    held = []
    with entered(net.client):
        for i in range(n):
            held.append(socket.create_connection((HOST_VIP, port), timeout=5.0))
            if i % 1000 == 999 or i == n - 1:
                while True:
                    try:
                        held.append(listener.accept()[0])
                    except BlockingIOError:
                        break
    ready.set()  # type: ignore[attr-defined]
    stop.wait()  # type: ignore[attr-defined]


def _hold(net: HostNet, n: int, stop: object) -> list[object]:
    """``n`` ESTABLISHED connections through the director, held by child processes until ``stop`` (them)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    holders = []
    for k in range(0, n, PER_HOLDER):
        ready = ctx.Event()
        p = ctx.Process(target=_holder, args=(net, HELD_PORT + k // PER_HOLDER, min(PER_HOLDER, n - k), ready, stop))
        p.start()
        holders.append((p, ready))
    for _, ready in holders:
        if not ready.wait(300):
            raise RuntimeError("a holder of established connections did not finish")
    return [p for p, _ in holders]


def host_costs(rate: float, refused: float, established: int, seconds: float) -> list[str]:
    """Rows: the detector thread's CPU and ``conntrack -E``'s (all events, same run) at ``rate`` handshakes a second."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    net = HostNet()
    rows: list[str] = []
    holders: list[object] = []
    stop = ctx.Event()
    try:
        net.build()
        server = ctx.Process(target=_serve, args=(net.server, (8080,), stop))
        server.start()
        d = Detector(net.director)
        try:
            for size in (0, established):
                if size:
                    holders = _hold(net, size, stop)
                    time.sleep(2.0)  # their events drained
                out = tempfile.TemporaryFile()
                tool = subprocess.Popen(
                    ["ip", "netns", "exec", net.director, "conntrack", "-E"], stdout=out, stderr=subprocess.PIPE
                )
                time.sleep(0.5)
                entries = net.entries()
                made = ctx.Value("q", 0)
                load = ctx.Process(target=_connect_load, args=(net.client, {80: rate, 81: refused}, seconds, made))
                c0, t0, h0, r0, k0 = d.cpu(), time.monotonic(), d.handshakes, d.refused, _cpu_seconds(tool.pid)
                load.start()
                load.join()
                time.sleep(1.0)  # the last events, one pass
                wall = time.monotonic() - t0
                cpu, tool_cpu = d.cpu() - c0, _cpu_seconds(tool.pid) - k0
                tool.terminate()
                _, err = tool.communicate()
                out.seek(0)
                lines = out.read().count(b"\n")
                out.close()
                lost = err.decode(errors="replace").count("ENOBUFS")
                n, refusals = d.handshakes - h0, d.refused - r0
                rows.append(
                    f"| {made.value / seconds:.0f}/s ({refused:g}/s refused) | {entries:,} | {n} ({refusals} refused) "
                    f"| {cpu:.2f} s | {100 * cpu / wall:.1f} % | {1e6 * cpu / max(1, n):.0f} µs "
                    f"| {tool_cpu:.2f} s | {100 * tool_cpu / wall:.1f} % | {lines}{f' (ENOBUFS {lost})' if lost else ''} |"
                )
                print(rows[-1], flush=True)
        finally:
            d.stop()
            stop.set()
            server.join(5)
            for p in holders:
                p.join(30)  # type: ignore[attr-defined]
    finally:
        net.teardown()
    return rows


RESULTS = Path(__file__).resolve().parent / "results"
KILL_PLAN = (  # (checker, setting name): lvsguard+passive's checks at 5 s and 1 s, keepalived's at 5 s, 1 s, 0.1 s
    (keepalived_checker.PASSIVE, "slow"),
    ("keepalived", "slow"),
    (keepalived_checker.PASSIVE, "common"),
    ("keepalived", "common"),
    ("keepalived", "fast"),
)


def kills(n: int, rates: list[float], json_path: str) -> int:
    """Failed client requests per refused kill and time to weight 0, every checker of ``KILL_PLAN`` at ``rates``."""
    settings = {s.name: s for s in keepalived_checker.SETTINGS}
    plan = [(checker, settings[name]) for checker, name in KILL_PLAN]
    try:
        results = keepalived_checker.run(plan, rates, n, seed=1, json_path=json_path)
    except keepalived_checker.BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print()
    print(keepalived_checker.report(results))
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000, 10000, 20000, 40000, 100000])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--only-detector", action="store_true", help="part 3 only")
    ap.add_argument("--established", type=int, default=100_000, help="part 3: entries in the full table")
    ap.add_argument(
        "--seconds", type=float, help="part 3: seconds of SYN load (10); --false-positives: of the run (600)"
    )
    ap.add_argument("--false-positives", action="store_true", help="clients' failures and a SYN flood, actuator on")
    ap.add_argument("--host", action="store_true", help="real handshakes through the host's conntrack (no IPVS)")
    ap.add_argument("--refused", type=float, default=50.0, help="--host: refused handshakes a second beside --rate")
    ap.add_argument("--replay", action="store_true", help="the detector's own CPU on the host, recorded events")
    ap.add_argument(
        "--rate", type=float, nargs="*", default=[1000.0, 5000.0], help="--replay, --host: handshakes a second"
    )
    ap.add_argument(
        "--kills",
        type=int,
        metavar="N",
        help="kill a real server N times per checker, setting and rate: failed requests per kill, "
        "lvsguard+passive (checks every 5 s, 1 s) against keepalived's checker (5 s, 1 s, 0.1 s)",
    )
    ap.add_argument(
        "--kill-rates", type=float, nargs="*", default=[40.0, 200.0], help="--kills: new client connections a second"
    )
    ap.add_argument("--json", default=str(RESULTS / "passive_kills.json"), help="--kills: where the figures go")
    args = ap.parse_args(argv)
    if args.kills:
        return kills(args.kills, args.kill_rates, args.json)
    if args.false_positives:
        lab = Lab(3)
        lab.build()
        try:
            with tempfile.TemporaryDirectory(prefix="lvsguard-soak-") as tmp:
                result = passive_soak.run(lab, args.seconds or 600.0, Path(tmp))
        finally:
            lab.teardown()
        print(result.report())
        return 0 if result.clean() else 1
    args.seconds = args.seconds or 10.0
    if args.host:
        print(
            "| handshakes a second | conntrack entries | handshakes counted | detector thread CPU | share of a core "
            "| per handshake | conntrack -E CPU | share of a core | events printed |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for rate in args.rate:
            host_costs(rate, args.refused, args.established, args.seconds)
        return 0
    if args.replay:
        print(
            "| load (conntrack source, host) | handshakes counted | detector thread CPU | share of a core | per handshake |"
        )
        print("|---|---:|---:|---:|---:|")
        for rate in args.rate:
            print(replay(rate, args.seconds), flush=True)
        return 0
    lab = Lab(3)
    lab.build()
    try:
        if args.only_detector:
            print(
                "| load (conntrack source) | IPVS entries | handshakes counted | detector thread CPU | share of a core | per handshake |"
            )
            print("|---|---:|---:|---:|---:|---:|")
            for row in detector_costs(lab, args.established, args.seconds, args.connections):
                print(row, flush=True)
            return 0
        print(
            "| entries in the table | text | full read: wall | CPU | detector pass: wall | CPU "
            "| pass capped at 10 000: wall |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        filled = 0
        for size in sorted(set([0, *args.sizes])):
            fill(lab, size - filled, filled)
            filled = size
            n = entries(lab)
            t = time_reads(lab, repeat=5 if size <= 20000 else 3)
            print(
                f"| {n:,} | {t['bytes'] / 1e6:.1f} MB | {t['read_wall'] * 1e3:.1f} ms | {t['read_cpu'] * 1e3:.1f} ms "
                f"| {t['pass_wall'] * 1e3:.1f} ms | {t['pass_cpu'] * 1e3:.1f} ms | {t['capped_wall'] * 1e3:.1f} ms |"
            )
        if shutil.which("conntrack") is None:
            print("conntrack (Debian package conntrack) is not installed: no event figures")
            return 0
        # 6.1 tracks connections in a namespace only once a rule asks for it; vs.conntrack alone is not enough
        for cmd in (
            ["sysctl", "-qw", "net.ipv4.vs.conntrack=1"],
            ["iptables-legacy", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"],
        ):
            subprocess.run(["ip", "netns", "exec", lab.director.netns, *cmd], check=True)
        print()
        print(
            "| conntrack -E | connections | events | ENOBUFS | conntrack CPU | CPU per 1 000 connections | client rate |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for events in (None, "DESTROY"):
            r = conntrack_events(lab, args.connections, events)
            print(
                f"| {events or 'all'} | {args.connections} | {r['events']} | {r['enobufs']} | {r['cpu']:.2f} s "
                f"| {r['cpu'] / args.connections * 1000:.2f} s | {args.connections / r['wall']:.0f}/s |"
            )
    finally:
        lab.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
