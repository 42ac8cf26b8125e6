"""``make bench``: every lvsguard benchmark against its peers, in one command.

1. The netlink dump decoder alone, on the host: µs per real server, ours vs
   pyroute2's generic decoder, on the same recorded bytes (bench/decoder.py).
2. Full scrapes of 1 000, 10 000 and 100 000 real servers inside the lab VM,
   lvsguard vs node_exporter's IPVS collector on the same kernel table
   (bench/scrape.py).
3. The actuator inside the lab VM: Alertmanager webhook -> weight in the
   kernel at 100 requests/s, and one payload of 1 000 alerts (bench/actuator.py).
4. The monitoring loop end to end inside the lab VM: a killed real server's
   service -> probe -> Prometheus rule -> Alertmanager -> actuator -> weight 0,
   and back, per-hop medians (bench/e2e_loop.py).
5. Probes on the host: CPU per tcp/http probe against blackbox_exporter on the
   same targets, and 5 000 checks at 1 s (bench/probes.py).
6. A killed real server -> weight 0 under 40 new connections/s inside the lab
   VM: lvsguard's fast path vs keepalived's own checker, at the common and the
   fast setting (bench/keepalived_checker.py).

The director failover (bench/failover.py, lab VM): from a failover request to
the VIP answering on the backup, through the actuator and through keepalived's
track file alone, and the long-lived connections kept with and without sync.

The results are printed as Markdown tables (bench/README.md keeps a copy of
the last run with the machine it ran on) and written as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VM_MEM_MIB = 3072  # node_exporter peaks at ~670 MB on 100 000 real servers; the table itself lives in guest RAM


def step(title: str, cmd: list[str]) -> None:
    print(f"\n### {title}\n", flush=True)
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if rc != 0:
        raise SystemExit(f"bench: {title} failed with exit code {rc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000", help="services per scraped table (x 100 real servers)")
    parser.add_argument("--skip-decoder", action="store_true")
    parser.add_argument("--skip-scrape", action="store_true")
    parser.add_argument("--skip-actuator", action="store_true")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-probes", action="store_true")
    parser.add_argument("--skip-keepalived", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    if not args.skip_decoder:
        step("netlink decoder alone (host)", [py, "bench/decoder.py"])
    if not args.skip_scrape:
        step(
            "full scrape vs node_exporter (lab VM, same kernel table)",
            [
                "lab/vm.sh",
                "--mem",
                str(VM_MEM_MIB),
                "--timeout",
                "3000",
                py,
                "bench/scrape.py",
                "--sizes",
                args.sizes,
                "--json",
                str(RESULTS / "scrape.json"),
            ],
        )
    if not args.skip_actuator:
        step(
            "actuator: webhook -> weight in the kernel (lab VM)",
            [
                "lab/vm.sh",
                "--mem",
                "1024",
                "--timeout",
                "900",
                py,
                "bench/actuator.py",
                "--json",
                str(RESULTS / "actuator.json"),
            ],
        )
    if not args.skip_failover:
        step(
            "director failover: POST /api/v1/failover vs keepalived's track file alone, connections kept by sync (lab VM)",
            [
                "lab/vm.sh",
                "--mem",
                "1024",
                "--timeout",
                "900",
                py,
                "bench/failover.py",
                "--runs",
                "10",
                "--json",
                str(RESULTS / "failover.json"),
            ],
        )
    if not args.skip_e2e:
        step(
            "end-to-end loop: probe -> Prometheus -> Alertmanager -> actuator -> kernel (lab VM)",
            [
                "lab/vm.sh",
                "--timeout",
                "900",
                py,
                "bench/e2e_loop.py",
                "--runs",
                "5",
                "--json",
                str(RESULTS / "e2e_loop.json"),
            ],
        )
    if not args.skip_probes:
        step("probes: CPU per probe vs blackbox_exporter, 5 000 checks at 1 s (host)", [py, "bench/probes.py"])
    if not args.skip_keepalived:
        step(
            "real server killed -> weight 0: lvsguard's fast path vs keepalived's checker (lab VM, 40 connections/s)",
            [
                "lab/vm.sh",
                "--timeout",
                "1400",
                py,
                "bench/keepalived_checker.py",
                "--kills",
                "5",
                "--json",
                str(RESULTS / "keepalived_checker.json"),
            ],
        )
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
