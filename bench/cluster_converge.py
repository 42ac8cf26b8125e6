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
   real server at weight 0 (each kernel's ``/proc/net/ip_vs`` polled every
   2 ms, ``ProcPoll``, by a thread that runs first, ``first_in_line``);
3. **restore**: ``POST /api/v1/restore`` to the next director; the time until
   every kernel has the weight back.

A watch of the benchmark's own on the holds' prefix times when each action's
record change reached etcd (request -> record), which splits the acting
director's share from the propagation to the others.

Then, ``--bulk-runs`` times, many holds at once (``--bulk``, default 1 000,
on a second service of ``--bulk`` + 1 real servers): ``POST
/api/v1/bulk/quarantine`` naming them all to one director (one batch there,
one etcd transaction), timed until every director's kernel has every one at
weight 0; then ``POST /api/v1/bulk/restore`` to the next director, until
every kernel has them back.
For the directors that did not take the action, the actuator's own share
(``lvsguard_cluster_apply_seconds``: watch event -> kernel written) is read
from its metrics after each action.

With ``--table`` the directors take their table from the cluster
(``table.source: cluster``) and each run, after the same etcd put (the
floor), writes the cluster's table with one real server's weight changed, as
``lvsguard apply --cluster`` does (``TableStore.write``: the table read, the
changed chunk and the manifest written), and times it until every
director's kernel has the new weight; each director's own lag (manifest
written -> its kernel written) is read from
``lvsguard_cluster_table_lag_seconds``. Then (``--push-size``, default
100 000) a table of that many real servers is pushed to a cluster name no
director watches: the first push, the whole table read back, and one weight
changed in it.

Not a test: the figures depend on the machine (keep other VMs quiet).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.cluster import BULK_SERVICE, REAL_SERVERS, SERVICE, ClusterLab, bulk_real_servers
from lvsguard.cluster.etcd import EtcdClient
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.netns import entered, proc_net_path
from lvsguard.model import RealServerKey, ServiceKey

RESULTS = ROOT / "bench" / "results"
TARGET = "rs2"
POLL = 0.002  # seconds between two reads of each kernel
BULK_POLL = 0.05  # the same for a bulk action (a read of 1 000 real servers costs more: poll less, disturb less)
TIMEOUT = 30.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"| {name} | - | - | - | 0 |"
    ms = [v * 1000 for v in values]
    return (
        f"| {name} | {statistics.median(ms):.0f} ms | {percentile(ms, 99):.0f} ms | "
        f"{min(ms):.0f}-{max(ms):.0f} ms | {len(ms)} |"
    )


def print_head(put: list[float]) -> None:
    """The Markdown table's head and its first row: the floor."""
    print()
    print("| measure | p50 | p99 | min-max | n |")
    print("|---|---:|---:|---:|---:|")
    print(row("etcd put round trip (the floor)", put))


class ProcPoll:
    """One director's ``/proc/net/ip_vs``, opened in its namespace and read in one ``pread``: what the polls read.

    Under UML a netlink dump of one service costs 0.3 ms of the VM's one CPU;
    polling three kernels that way every 2 ms took a quarter of that CPU (half
    with ten) from etcd and the directors being timed. One read of this file
    costs about 20 us.
    """

    def __init__(self, netns: str):
        with entered(netns):
            self.fd = os.open(proc_net_path("ip_vs"), os.O_RDONLY | os.O_CLOEXEC)

    def weight(self, service: ServiceKey, real_server: RealServerKey) -> int | None:
        """The real server's weight in the service (IPv4 addresses, as the lab's), None when it is not there."""
        text = os.pread(self.fd, 1 << 20, 0).decode()
        start = text.find(f"{service.protocol}  {_hex(service.address, service.port)} ")
        if start < 0:
            return None
        wanted = _hex(real_server.address, real_server.port)
        for line in text[start:].splitlines()[1:]:
            fields = line.split()
            if fields[:1] != ["->"]:
                return None  # the next service
            if fields[1] == wanted:
                return int(fields[3])
        return None

    def close(self) -> None:
        os.close(self.fd)


def _hex(address: str, port: int) -> str:
    return f"{int(ipaddress.IPv4Address(address)):08X}:{port:04X}"


@contextmanager
def first_in_line() -> Iterator[None]:
    """Run this thread as soon as its sleep ends (``SCHED_FIFO``) inside the block, as before after it.

    A poll at the normal priority waited for the VM's one CPU behind etcd's
    members and the directors' announcements, which follow each convergence:
    timestamps in every process put its reading 18-22 ms (p50) after the
    kernel write it looked for. Each poll costs about 20 us a kernel.
    """
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:  # not permitted: polls at the normal priority
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, policy, param)


def wait_kernels(kernels: dict[str, ProcPoll], weight: int, started: float) -> dict[str, float]:
    """Seconds from ``started`` until each director's kernel has ``TARGET`` at ``weight``."""
    key = RealServerKey.parse(REAL_SERVERS[TARGET][0])
    seen: dict[str, float] = {}
    with first_in_line():
        while len(seen) < len(kernels):
            for name, kernel in kernels.items():
                if name in seen:
                    continue
                if kernel.weight(SERVICE, key) == weight:
                    seen[name] = time.monotonic() - started
            if time.monotonic() - started > TIMEOUT:
                raise RuntimeError(f"not converged after {TIMEOUT:g} s: {seen}")
            time.sleep(POLL)
    return seen


def wait_bulk(kernels: dict[str, NetlinkIPVS], keys: set[RealServerKey], out: bool, started: float) -> dict[str, float]:
    """Seconds from ``started`` until each director's kernel has every one of ``keys`` out (weight 0) or back in."""
    seen: dict[str, float] = {}
    while len(seen) < len(kernels):
        for name, kernel in kernels.items():
            if name in seen:
                continue
            done = sum(1 for rs in kernel.read_real_servers(BULK_SERVICE) if rs.key in keys and (rs.weight == 0) == out)
            if done == len(keys):
                seen[name] = time.monotonic() - started
        if time.monotonic() - started > TIMEOUT * 4:
            raise RuntimeError(f"bulk not converged after {TIMEOUT * 4:g} s: {seen}")
        time.sleep(BULK_POLL)
    return seen


def bulk_runs(
    lab: ClusterLab, kernels: dict[str, NetlinkIPVS], names: list[str], n: int, runs: int
) -> dict[str, list[float]]:
    """``runs`` times: ``n`` holds in one bulk quarantine through one director, then one bulk restore through the next."""
    keys = bulk_real_servers(n)[:n]
    targets = [{"service": "bulk", "real_server": str(rs)} for rs in keys]
    results: dict[str, list[float]] = {
        "bulk_quarantine_all": [],
        "bulk_restore_all": [],
        "bulk_reply": [],
        "bulk_apply": [],
    }
    for run in range(runs):
        for action, out, origin in (
            ("quarantine", True, names[run % len(names)]),
            ("restore", False, names[(run + 1) % len(names)]),
        ):
            replies: list[tuple[tuple[int, dict[str, Any]], float]] = []

            def request(origin: str = origin, action: str = action) -> None:
                replies.append((lab.call(origin, f"/api/v1/bulk/{action}", {"targets": targets}), time.monotonic()))

            started = time.monotonic()
            caller = threading.Thread(target=request)
            caller.start()
            seen = wait_bulk(kernels, set(keys), out, started)
            caller.join()
            (status, reply), at = replies[0]
            if status != 200 or reply.get("counts") != {"applied": n}:
                raise RuntimeError(
                    f"bulk {action} through {origin}: {status} {reply.get('counts')} {reply.get('error')}"
                )
            results[f"bulk_{action}_all"].append(max(seen.values()))
            results["bulk_reply"].append(at - started)
            for name in names:
                if name != origin:
                    try:
                        value = lab.metric(name, "lvsguard_cluster_apply_seconds")
                    except OSError:  # a director too busy to answer in 5 s: its log line has the figure
                        value = None
                    if value is not None:
                        results["bulk_apply"].append(value)
        print(
            f"bulk run {run + 1}/{runs}: {n} holds on all {results['bulk_quarantine_all'][-1] * 1000:.0f} ms, "
            f"released on all {results['bulk_restore_all'][-1] * 1000:.0f} ms",
            flush=True,
        )
    return results


def applied_lines(lab: ClusterLab) -> list[dict[str, float]]:
    """Every director's ``cluster_applied`` log lines: its convergences' wall time, CPU time and lock wait."""
    found = []
    for d in lab.directors:
        try:
            text = d.log.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if " cluster_applied " not in line:
                continue
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            try:
                found.append({k: float(fields[k]) for k in ("written", "seconds", "cpu", "lock_wait")})
            except (KeyError, ValueError):
                continue
    return found


def breakdown(lines: list[dict[str, float]], many: bool) -> None:
    """Where a watching director's share goes: its thread's CPU, the lock, and the rest (waiting to run)."""
    picked = [line for line in lines if (line["written"] > 1) == many]
    if not picked:
        return
    label = "bulk" if many else "one hold"
    print(row(f"{label}: a director's share, wall (its log)", [x["seconds"] for x in picked]))
    print(row(f"{label}: of which its thread's CPU", [x["cpu"] for x in picked]))
    print(row(f"{label}: of which the wait for the action lock", [x["lock_wait"] for x in picked]))
    rest = [max(0.0, x["seconds"] - x["cpu"] - x["lock_wait"]) for x in picked]
    print(row(f"{label}: the rest (waiting for the CPU or the GIL)", rest))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--directors", type=int, default=3, help="directors (each its own actuator); 10 needs --mem 2048"
    )
    parser.add_argument("--bulk", type=int, default=1000, help="holds in one bulk action (default 1000)")
    parser.add_argument("--bulk-runs", type=int, default=3, help="bulk quarantine + restore rounds (0: none)")
    parser.add_argument(
        "--table", action="store_true", help="time a push of the cluster's table (apply --cluster) instead of holds"
    )
    parser.add_argument(
        "--push-size",
        type=int,
        default=100_000,
        help="with --table: then time a push of a table of this many real servers (0: none)",
    )
    args = parser.parse_args(argv)
    if args.table:
        return table_main(args)
    lab = ClusterLab(args.directors, actuator={"rate_limit": {"actions": 0}}, bulk=args.bulk if args.bulk_runs else 0)
    print(f"building the cluster lab (etcd + {args.directors} directors with their actuators) ...", flush=True)
    lab.build()
    names = [d.name for d in lab.directors]
    kernels = {d.name: NetlinkIPVS(d.netns) for d in lab.directors}
    polls = {d.name: ProcPoll(d.netns) for d in lab.directors}
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
                seen = wait_kernels(polls, weight, started)
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
        if args.bulk_runs:
            results.update(bulk_runs(lab, kernels, names, args.bulk, args.bulk_runs))
        lines = applied_lines(lab)
    finally:
        for kernel in kernels.values():
            kernel.close()
        for poll in polls.values():
            poll.close()
        client.close()
        lab.teardown()
        watcher.close()
    print_head(results["put"])
    n = len(names)
    print(row(f"quarantine -> weight 0 on all {n} directors", results["quarantine_all"]))
    print(row(f"restore -> weight back on all {n} directors", results["restore_all"]))
    print(row("request -> the record's change seen by a watch", results["record"]))
    print(row("API reply on the director that acted", origin_share))
    print(row("a watching director's share (watch event -> kernel)", results["apply"]))
    if results.get("bulk_quarantine_all"):
        print(row(f"bulk quarantine of {args.bulk} -> all at weight 0 on all {n}", results["bulk_quarantine_all"]))
        print(row(f"bulk restore of {args.bulk} -> all back on all {n}", results["bulk_restore_all"]))
        print(row("bulk: API reply on the director that acted", results["bulk_reply"]))
        print(row(f"bulk: a watching director's share ({args.bulk} holds)", results["bulk_apply"]))
    breakdown(lines, many=False)
    breakdown(lines, many=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cluster_converge_{len(names)}.json"
    doc = {"results": results, "per_director": per_director, "origin": origin_share, "applied": lines}
    out.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {out}")
    return 0


def table_main(args: argparse.Namespace) -> int:
    """``--table``: ``apply --cluster`` (the table written) -> every director's kernel changed."""
    from lab.cluster import web_service
    from lvsguard.cluster.table import TableStore
    from lvsguard.config.cluster import ClusterConfig
    from lvsguard.table.load import load_table

    lab = ClusterLab(args.directors, table_source="cluster")
    print(f"building the cluster lab (etcd + {args.directors} directors, table.source: cluster) ...", flush=True)
    lab.build()
    names = [d.name for d in lab.directors]
    kernels = {d.name: ProcPoll(d.netns) for d in lab.directors}
    client = EtcdClient(lab.etcd.endpoints, timeout=60)
    store = TableStore(client, ClusterConfig(store="etcd", endpoints=lab.etcd.endpoints, name="lab"))
    results: dict[str, list[float]] = {"put": [], "push": [], "table_all": [], "lag": []}

    def push(weight: int) -> float:
        """As ``apply --cluster`` does: read the table, write its changed chunk and the manifest (CAS)."""
        servers = {**REAL_SERVERS, TARGET: (REAL_SERVERS[TARGET][0], weight)}
        _settings, desired, problems = load_table({"services": [web_service(servers)]})
        assert not problems, problems
        started = time.monotonic()
        store.write(desired, lambda key: "web", base=store.read(), by="bench")
        results["push"].append(time.monotonic() - started)
        return started

    big: dict[str, float] = {}
    try:
        client.put("/bench/warm", "0")
        wait_kernels(kernels, REAL_SERVERS[TARGET][1], push(REAL_SERVERS[TARGET][1]))  # the first build
        for run in range(args.runs):
            started = time.monotonic()
            client.put("/bench/floor", str(run))
            results["put"].append(time.monotonic() - started)
            weight = 10 + run % 2  # a weight change each run: one real server edited in place
            seen = wait_kernels(kernels, weight, push(weight))
            results["table_all"].append(max(seen.values()))
            for name in names:
                value = lab.metric(name, "lvsguard_cluster_table_lag_seconds")
                if value is not None:
                    results["lag"].append(value)
            print(
                f"run {run + 1}/{args.runs}: put {results['put'][-1] * 1000:.0f} ms, "
                f"apply --cluster on all {results['table_all'][-1] * 1000:.0f} ms",
                flush=True,
            )
        if args.push_size:
            big = push_big(client, lab.etcd.endpoints, args.push_size)
    finally:
        for kernel in kernels.values():
            kernel.close()
        client.close()
        lab.teardown()
    print_head(results["put"])
    print(row("apply --cluster's push (read the table, write a chunk and the manifest)", results["push"]))
    print(row(f"apply --cluster -> weight changed on all {len(names)} directors", results["table_all"]))
    print(row("a director's lag (manifest written -> its kernel written)", results["lag"]))
    for what, seconds in big.items():
        print(f"| {what} | {seconds:.2f} s | | | 1 |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cluster_table_{len(names)}.json"
    out.write_text(json.dumps({"results": results, "push_size": big}, indent=1))
    print(f"\nwrote {out}")
    return 0


def push_big(client: EtcdClient, endpoints: tuple[str, ...], size: int) -> dict[str, float]:
    """A table of ``size`` real servers (services of 100) pushed to a cluster no director watches: seconds each.

    The first push (every chunk), the whole table read back (what a director
    starting with no cache fetches), and one weight changed (read, one chunk,
    the manifest).
    """
    from lvsguard.cluster.table import TableStore
    from lvsguard.config.cluster import ClusterConfig
    from lvsguard.model import Forward, ServiceKey
    from lvsguard.table.desired import DesiredTable, make_real_server, make_service

    def table(bump: int) -> DesiredTable:
        services = []
        for i in range(size // 100):
            vip = f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
            reals = [
                make_real_server(
                    RealServerKey(f"172.{16 + j // 256}.{i // 256 % 256}.{i % 256}", 8000 + j % 256),
                    Forward.MASQ,
                    1 + (i + j) % 10 + (1 if (i, j) == (bump, 0) else 0),
                )
                for j in range(100)
            ]
            services.append(make_service(ServiceKey("TCP", vip, 80), "wrr", real_servers=reals))
        return DesiredTable(tuple(services))

    store = TableStore(client, ClusterConfig(store="etcd", endpoints=endpoints, name="bench-big"))
    out: dict[str, float] = {}
    first = table(-1)
    started = time.monotonic()
    pushed = store.write(first, lambda key: "", base=store.read(), by="bench")
    out[f"push of {size} real servers ({len(pushed.record.manifest.chunks)} chunks, {pushed.written_bytes} bytes)"] = (
        time.monotonic() - started
    )
    started = time.monotonic()
    record = store.read()
    out[f"the {size} read back whole (a director without a cache)"] = time.monotonic() - started
    changed = table(size // 200)
    started = time.monotonic()
    again = store.write(changed, lambda key: "", base=record, by="bench")
    out[f"one weight changed in the {size}: apply --cluster's push ({again.written} chunk written)"] = (
        time.monotonic() - started
    )
    for what, seconds in out.items():
        print(f"{what}: {seconds:.2f} s", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
