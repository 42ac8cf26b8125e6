"""Cluster convergence: an operator's action on one director -> the kernel change on every director.

Runs inside the lab VM (by hand: ``lab/vm.sh --mem 1024 .venv/bin/python
bench/cluster_converge.py --runs 30``). It builds ``lab.cluster.ClusterLab``:
a three-member etcd 3.4 (Debian's etcd-server) in namespaces and the
directors (``--directors``, default 3), each with its own IPVS table and a
real ``lvsguard actuator`` process with ``cluster.store: etcd``. Then, ``--runs`` times, alternating:

1. **etcd put (the floor)**: one put through the JSON gateway from the VM's
   own namespace (``lvsguard.cluster.etcd.EtcdClient``, a kept-alive
   connection), as the actuator's own client does it: what etcd's commit (a
   Raft round and an fsync on the members) costs at this moment;
2. **quarantine**: ``POST /api/v1/quarantine`` to one director (each in
   turn); from the request, the time until each director's kernel has the
   real server at weight 0 (netlink, each kernel polled every 2 ms);
3. **restore**: ``POST /api/v1/restore`` to the next director; the time until
   every kernel has the weight back.

A watch of the benchmark's own on the holds' prefix times when each action's
record change reached etcd (request -> record), which splits the acting
director's share from the propagation to the others.
For the directors that did not take the action, the actuator's own share
(``lvsguard_cluster_apply_seconds``: watch event -> kernel written) is read
from its metrics after each action.

Not a test: the figures depend on the machine (keep other VMs quiet).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.cluster import REAL_SERVERS, SERVICE, ClusterLab
from lvsguard.cluster.etcd import EtcdClient
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import RealServerKey

RESULTS = ROOT / "bench" / "results"
TARGET = "rs2"
POLL = 0.002  # seconds between two reads of each kernel
TIMEOUT = 30.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {name} | {statistics.median(ms):.0f} ms | {percentile(ms, 99):.0f} ms | "
        f"{min(ms):.0f}-{max(ms):.0f} ms | {len(ms)} |"
    )


def wait_kernels(kernels: dict[str, NetlinkIPVS], weight: int, started: float) -> dict[str, float]:
    """Seconds from ``started`` until each director's kernel has ``TARGET`` at ``weight``."""
    key = RealServerKey.parse(REAL_SERVERS[TARGET][0])
    seen: dict[str, float] = {}
    while len(seen) < len(kernels):
        for name, kernel in kernels.items():
            if name in seen:
                continue
            svc = kernel.read().service(SERVICE)
            rs = svc.real_server(key) if svc is not None else None
            if rs is not None and rs.weight == weight:
                seen[name] = time.monotonic() - started
        if time.monotonic() - started > TIMEOUT:
            raise RuntimeError(f"not converged after {TIMEOUT:g} s: {seen}")
        time.sleep(POLL)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--directors", type=int, default=3, help="directors (each its own actuator); 10 needs --mem 2048"
    )
    args = parser.parse_args(argv)
    lab = ClusterLab(args.directors, actuator={"rate_limit": {"actions": 0}})
    print(f"building the cluster lab (etcd + {args.directors} directors with their actuators) ...", flush=True)
    lab.build()
    names = [d.name for d in lab.directors]
    kernels = {d.name: NetlinkIPVS(d.netns) for d in lab.directors}
    client = EtcdClient(lab.etcd.endpoints)
    results: dict[str, list[float]] = {"put": [], "quarantine_all": [], "restore_all": [], "apply": [], "record": []}
    events: list[float] = []  # when the benchmark's own watch saw each change of the holds
    watcher = EtcdClient(lab.etcd.endpoints)

    def follow() -> None:
        try:
            for batch in watcher.watch("/lvsguard/lab/holds/", 1, idle_timeout=3600):
                if batch:
                    events.append(time.monotonic())
        except Exception:  # the lab is torn down at the end
            return

    threading.Thread(target=follow, daemon=True).start()
    per_director: dict[str, list[float]] = {f"{a} {n}": [] for a in ("quarantine", "restore") for n in names}
    origin_share: list[float] = []
    try:
        client.put("/bench/warm", "0")
        for run in range(args.runs):
            started = time.monotonic()
            client.put("/bench/floor", str(run))
            results["put"].append(time.monotonic() - started)
            for action, weight, origin in (
                ("quarantine", 0, names[run % len(names)]),
                ("restore", REAL_SERVERS[TARGET][1], names[(run + 1) % len(names)]),
            ):
                seen_before = len(events)
                replies: list[tuple[tuple[int, dict[str, Any]], float]] = []

                def request(origin: str = origin, action: str = action) -> None:
                    body = {"service": "web", "real_server": TARGET}
                    replies.append((lab.call(origin, f"/api/v1/{action}", body), time.monotonic()))

                started = time.monotonic()
                caller = threading.Thread(target=request)
                caller.start()  # the reply waits for every director (the fleet's confirmation): poll meanwhile
                seen = wait_kernels(kernels, weight, started)
                caller.join()
                (status, reply), at = replies[0]
                answered = at - started
                if status != 200 or reply.get("result") != "applied":
                    raise RuntimeError(f"{action} through {origin}: {status} {reply}")
                results[f"{action}_all"].append(max(seen.values()))
                if len(events) > seen_before:
                    results["record"].append(events[seen_before] - started)
                origin_share.append(answered)
                for name, seconds in seen.items():
                    per_director[f"{action} {name}"].append(seconds)
                for name in names:
                    if name != origin:
                        value = lab.metric(name, "lvsguard_cluster_apply_seconds")
                        if value is not None:
                            results["apply"].append(value)
            print(
                f"run {run + 1}/{args.runs}: put {results['put'][-1] * 1000:.0f} ms, "
                f"quarantine on all {results['quarantine_all'][-1] * 1000:.0f} ms, "
                f"restore on all {results['restore_all'][-1] * 1000:.0f} ms",
                flush=True,
            )
    finally:
        for kernel in kernels.values():
            kernel.close()
        client.close()
        lab.teardown()
        watcher.close()
    print()
    print("| measure | p50 | p99 | min-max | n |")
    print("|---|---:|---:|---:|---:|")
    print(row("etcd put round trip (the floor)", results["put"]))
    n = len(names)
    print(row(f"quarantine -> weight 0 on all {n} directors", results["quarantine_all"]))
    print(row(f"restore -> weight back on all {n} directors", results["restore_all"]))
    print(row("request -> the record's change seen by a watch", results["record"]))
    print(row("API reply on the director that acted", origin_share))
    print(row("a watching director's share (watch event -> kernel)", results["apply"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cluster_converge_{len(names)}.json"
    out.write_text(json.dumps({"results": results, "per_director": per_director, "origin": origin_share}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
