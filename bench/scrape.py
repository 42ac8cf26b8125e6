"""Full-scrape benchmark: lvsguard's exporter vs node_exporter's IPVS collector.

Runs inside the lab VM (``make bench`` starts it there). For each table size
it builds one IPVS table (``lab.bigtable``: services x 100 real servers) in a
namespace, starts both exporters in that namespace on the same table, and
scrapes each several times with the same client (curl, as Prometheus does:
``Accept-Encoding: gzip``). lvsguard runs with its health checks off, so both
export the IPVS table only. It reports per exporter: median scrape wall time,
CPU seconds per scrape (the exporter process's utime+stime), peak RSS
(VmHWM), the number of series per real server, and the ratios.

Not a test: the figures depend on the machine. Compare only numbers measured
in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import bigtable
from lab.processes import stop

NETNS = "lvs-bench"
NODE_EXPORTER = "prometheus-node-exporter"
OURS_PORT = 9910
NODE_PORT = 9100
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    exporter: str
    real_servers: int
    scrapes: int
    wall_median_s: float
    wall_min_s: float
    cpu_per_scrape_s: float
    peak_rss_mb: float
    series_total: int
    series_per_real_server: float
    body_bytes: int


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scrape_with_curl(url: str) -> tuple[float, int]:
    """One scrape as Prometheus does it (gzip), the body read to the end; (seconds, bytes)."""
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            NETNS,
            "curl",
            "-sS",
            "--compressed",
            "-H",
            "Accept-Encoding: gzip",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total} %{size_download}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), int(out[1])


def count_series(url: str, backend_prefix: str, real_servers: int) -> tuple[int, float]:
    """Series in one uncompressed scrape, and how many of them are per real server."""
    body = subprocess.run(["ip", "netns", "exec", NETNS, "curl", "-sS", url], check=True, capture_output=True).stdout
    total = backend = 0
    for line in body.splitlines():
        if line and not line.startswith(b"#"):
            total += 1
            if line.startswith(backend_prefix.encode()):
                backend += 1
    return total, backend / max(real_servers, 1)


def wait_ready(url: str, proc: subprocess.Popen[bytes], name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {name} exited with {proc.returncode} before serving")
        try:
            subprocess.run(["ip", "netns", "exec", NETNS, "curl", "-sf", "-o", "/dev/null", url], check=True, timeout=5)
            return
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            time.sleep(0.3)
    raise SystemExit(f"bench: {name} did not answer on {url} within {timeout:.0f} s")


def measure(name: str, cmd: list[str], url: str, backend_prefix: str, real_servers: int, scrapes: int) -> Measurement:
    proc = subprocess.Popen(["ip", "netns", "exec", NETNS, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url.replace("/metrics", "/"), proc, name)
        scrape_with_curl(url)  # warm-up: caches, first allocation
        walls: list[float] = []
        size = 0
        cpu0 = cpu_seconds(proc.pid)
        for i in range(scrapes):
            wall, size = scrape_with_curl(url)
            walls.append(wall)
            print(f"    {name} scrape {i + 1}/{scrapes}: {wall:.3f} s", flush=True)
        cpu = (cpu_seconds(proc.pid) - cpu0) / scrapes
        series, per_rs = count_series(url, backend_prefix, real_servers)
        return Measurement(
            name,
            real_servers,
            scrapes,
            statistics.median(walls),
            min(walls),
            cpu,
            peak_rss_mb(proc.pid),
            series,
            per_rs,
            size,
        )
    finally:
        stop(proc)


OURS_CONFIG = "/tmp/lvsguard-bench.yaml"
"""The IPVS metrics only, as node_exporter's collector: no health checks (with no config
the exporter would also run a default tcp check on every real server of the table)."""


def run_size(services: int, per_service: int, scrapes: int) -> list[Measurement]:
    print(f"== {services * per_service} real servers ({services} services x {per_service})", flush=True)
    big = bigtable.build(services, per_service, netns=NETNS, progress=lambda m: print("  " + m, flush=True))
    print(f"  table built in {big.seconds:.1f} s", flush=True)
    try:
        n = big.real_server_count
        Path(OURS_CONFIG).write_text("probes:\n  enabled: false\n")
        ours = measure(
            "lvsguard",
            [
                sys.executable,
                "-m",
                "lvsguard.cli",
                "--log-level",
                "warning",
                "exporter",
                "--config",
                OURS_CONFIG,
                "--listen",
                f"127.0.0.1:{OURS_PORT}",
            ],
            f"http://127.0.0.1:{OURS_PORT}/metrics",
            "ipvs_backend_",
            n,
            scrapes,
        )
        node = measure(
            "node_exporter",
            [
                NODE_EXPORTER,
                "--collector.disable-defaults",
                "--collector.ipvs",
                f"--web.listen-address=127.0.0.1:{NODE_PORT}",
            ],
            f"http://127.0.0.1:{NODE_PORT}/metrics",
            "node_ipvs_backend_",
            n,
            scrapes,
        )
        return [ours, node]
    finally:
        bigtable.destroy(NETNS)


def report(rows: list[Measurement]) -> str:
    lines = [
        "| real servers | exporter | scrape (median) | CPU / scrape | peak RSS | series / real server | series total |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        lines.append(
            f"| {m.real_servers:,} | {m.exporter} | {m.wall_median_s:.3f} s | {m.cpu_per_scrape_s:.3f} s | "
            f"{m.peak_rss_mb:.0f} MB | {m.series_per_real_server:.0f} | {m.series_total:,} |"
        )
    lines += [
        "",
        "| real servers | scrape time ratio (node / ours) | per-series ratio | CPU ratio | peak RSS ratio (ours / node) |",
        "|---:|---:|---:|---:|---:|",
    ]
    by_size: dict[int, dict[str, Measurement]] = {}
    for m in rows:
        by_size.setdefault(m.real_servers, {})[m.exporter] = m
    for n, pair in sorted(by_size.items()):
        ours, node = pair["lvsguard"], pair["node_exporter"]
        speed = node.wall_median_s / ours.wall_median_s
        per_series = (node.wall_median_s / node.series_per_real_server) / (
            ours.wall_median_s / ours.series_per_real_server
        )
        cpu = node.cpu_per_scrape_s / max(ours.cpu_per_scrape_s, 1e-9)
        lines.append(
            f"| {n:,} | {speed:.2f}x | {per_series:.2f}x | {cpu:.2f}x | {ours.peak_rss_mb / node.peak_rss_mb:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="10,100,1000", help="services per table, comma-separated (x 100 real servers)"
    )
    parser.add_argument(
        "--scrapes", type=int, default=5, help="scrapes per exporter and size (default 5; 3 at 100 000)"
    )
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    if os.environ.get("IPVS_VM_GUEST") != "1":
        print("bench/scrape.py runs inside the lab VM: use `make bench` or lab/vm.sh", file=sys.stderr)
        return 2
    for tool in (NODE_EXPORTER, "curl"):
        if not shutil.which(tool):
            print(f"bench: {tool} is not installed (make bench installs it)", file=sys.stderr)
            return 2
    rows: list[Measurement] = []
    for services in (int(s) for s in args.sizes.split(",")):
        rows += run_size(services, 100, args.scrapes if services < 1000 else min(args.scrapes, 3))
    text = report(rows)
    print(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
