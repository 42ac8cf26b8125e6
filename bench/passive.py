"""What passive detection costs: the IPVS connection table against conntrack events (lab VM).

Part 1 fills the director's connection table with N ESTABLISHED entries
(``lab.synflood.fill``: a SYN and an ACK per entry from spoofed client
addresses to the DR service; the real servers drop them, so IPVS alone keeps
the state) and times full reads of /proc/net/ip_vs_conn, one pass of the
detector's reader over all of it, and one pass capped at 10 000 entries. Part 2 makes real HTTP connections through the NAT service
with ``net.ipv4.vs.conntrack=1`` and measures the CPU of ``conntrack -E``
(Debian's conntrack package) per 1 000 connections, for all events and for
the DESTROY group alone (the kernel filters by multicast group).

    lab/vm.sh --mem 1024 .venv/bin/python bench/passive.py [--sizes 10000 100000] [--connections 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import synflood, traffic
from lab.topology import VIP_DR, Lab
from lvsguard.exporter.passive.conntable import ConnTableReader
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


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000, 10000, 20000, 40000, 100000])
    ap.add_argument("--connections", type=int, default=2000)
    args = ap.parse_args(argv)
    lab = Lab(3)
    lab.build()
    try:
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
