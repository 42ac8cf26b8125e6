"""End-to-end loop benchmark: a killed real server's service -> weight 0 in the kernel and back, N times.

Runs inside the lab VM (``bench/run.py`` starts it there; by hand:
``lab/vm.sh .venv/bin/python bench/e2e_loop.py --runs 5``). It builds the lab,
then lab.e2e_loop.Loop: a real ``lvsguard exporter`` process whose probes
publish nothing (fast path off), a real Prometheus scraping it every second
and evaluating the bundled rules every second, a real Alertmanager running the
bundled alerts/alertmanager.yml (only the actuator's URL and token file
swapped) and the real actuator. Each run kills rs1's HTTP service (SIGKILL),
waits for weight 0, starts it again and waits for its weight (``--pause`` s
between runs, so that each starts as a first failure does); it prints each
run's hop table, then the median of every hop and of the whole loop, with the
ratio to the loop's bound (scrape + evaluation + for + group_wait + 1 s in;
group_interval instead of group_wait back: lab.e2e_loop.Bounds).

Not a test: the figures depend on the machine (the test,
tests/integration/test_e2e_loop_kernel.py, asserts the bound with slack).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import monitoring
from lab.e2e_loop import Hops, Loop
from lab.topology import Lab


def medians(runs: list[Hops]) -> list[tuple[str, float]]:
    """The median time of each hop over the runs, in the order of the medians."""
    names = {name for run in runs for name, _ in run.hops}
    table = [(name, statistics.median(dict(run.hops)[name] for run in runs)) for name in names]
    return sorted(table, key=lambda hop: hop[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="loops to run (each about 5-15 s)")
    parser.add_argument(
        "--pause",
        type=float,
        default=31.0,
        help="seconds between runs: Alertmanager drops a resolved alert's empty group only every 30 s,"
        " and a group that still exists sends a new alert at its next group_interval, not after group_wait",
    )
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if os.environ.get("IPVS_VM_GUEST") != "1":
        print(
            "bench/e2e_loop.py: run it inside the lab VM: lab/vm.sh .venv/bin/python bench/e2e_loop.py", file=sys.stderr
        )
        return 2
    ways_in: list[Hops] = []
    ways_back: list[Hops] = []
    with tempfile.TemporaryDirectory(prefix="lvsguard-e2e-") as tmp, Lab() as lab, Loop(lab, Path(tmp)) as loop:
        bounds = loop.bounds
        print(f"bounds: {bounds.describe()}", flush=True)
        for i in range(args.runs):
            if i:
                time.sleep(args.pause)
            way_in, way_back = loop.run()
            ways_in.append(way_in)
            ways_back.append(way_back)
            print(f"\nrun {i + 1}/{args.runs}\n{way_in.table()}\n{way_back.table()}", flush=True)
            slowest = monitoring.query(
                loop.prometheus, 'max_over_time(scrape_duration_seconds{job="lvsguard-exporter"}[10m])'
            )
            print(
                f"  failed exporter scrapes so far: {loop.failed_scrapes()}; slowest scrape {slowest[0]['value'][1]} s"
            )
    print(f"\nmedians of {args.runs} runs (seconds after the start event):\n")
    for title, runs, bound in (
        ("way in: service killed", ways_in, bounds.way_in),
        ("way back: service listening again", ways_back, bounds.way_back),
    ):
        totals = [run.total for run in runs]
        print(f"| {title} | median | |\n|---|---:|---:|")
        for name, at in medians(runs):
            print(f"| {name} | {at:.3f} s | |")
        print(
            f"| **whole loop** (min-max {min(totals):.2f}-{max(totals):.2f} s) | **{statistics.median(totals):.3f} s** |"
            f" {statistics.median(totals) / bound:.2f} x the bound of {bound:g} s |\n"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "bounds": {"way_in": bounds.way_in, "way_back": bounds.way_back},
                    "way_in": [dict(run.hops) for run in ways_in],
                    "way_back": [dict(run.hops) for run in ways_back],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
