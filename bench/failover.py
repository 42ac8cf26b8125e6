"""Failover benchmark: from a failover request to the VIP answering on the backup, and what sync buys.

Runs inside the lab VM (``bench/run.py`` starts it there; by hand:
``lab/vm.sh --mem 1024 .venv/bin/python bench/failover.py``). It builds the
two-director lab (``lab.ha.HALab``: keepalived VRRPv3 with ``advert_int 0.1``,
the IPVS sync daemon through ``lvs_sync_daemon``) and starts ``lvsguard
actuator`` (and the exporter) as real processes for both directors. Then, in
the same run, alternating:

1. **Through the actuator**: ``POST /api/v1/failover`` to dir1's actuator (it
   asks dir2's actuator that it is a healthy backup, records the request in its
   ledger, writes 1 to keepalived's track file), ``--runs`` times.
2. **keepalived alone**: the benchmark writes 1 to the same track file itself,
   the path keepalived offers without lvsguard (track_file weight 0 -> FAULT).

For each, from the moment the request is sent (or the file written): *VIPs
moved* = dir2 holds every VRRP address and dir1 none (netlink, polled every
2 ms), *VIP answers* = the first HTTP request from the client through the NAT
VIP that is answered (retried every 5 ms, 50 ms timeout each: a SYN that
reaches the old director after it gave the VIP up is dropped, and a client's
own retry would come 1 s later; the short timeout times the directors, not
TCP's retry timer). Between runs dir1 takes the VIPs
back (release, preemption) and the client is served through it again.

3. **Connections that survive**: ``--held`` long-lived connections each
   through NAT and DR, then a failover, then each is closed from the client;
   one that the real server closes in turn (FIN, not reset) survived. With the
   sync daemon, then with keepalived restarted without ``lvs_sync_daemon``.

Not a test: the figures depend on the machine (keep other VMs quiet).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.ha import HALab, open_held, served_again, survivors, synced_connections  # noqa: E402
from lab.topology import in_lab_vm  # noqa: E402

TOKEN = "bench-failover-token-0123456789"


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


ATTEMPT = 0.05  # seconds one client request may take while waiting for the VIP to answer


def one_failover(lab: HALab, request: Callable[[], None], release: Callable[[], None]) -> tuple[float, float]:
    """Seconds from ``request()`` being called to the VIPs on dir2 alone, and to the client served through the VIP."""
    started = time.monotonic()
    request()
    lab.wait_for_vip_owner("dir2", poll=0.002)
    moved = time.monotonic() - started
    answered = served_again(lab, lab.nat, started, attempt=ATTEMPT)
    release()
    lab.wait_for_vip_owner("dir1")
    served_again(lab, lab.nat, time.monotonic())
    time.sleep(0.3)  # let the sync daemons settle into their new roles
    return moved, answered


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def held_survival(lab: HALab, n: int, *, sync: bool) -> dict[str, int]:
    """Open ``n`` long-lived connections each through NAT and DR, fail dir1 over, count the survivors per service."""
    held = {service.name: open_held(lab, service, n) for service in (lab.nat, lab.dr)}
    try:
        deadline = time.monotonic() + (10.0 if sync else 2.5)  # 2.5 s: more than the master's sync flush interval
        while time.monotonic() < deadline:
            if sync and all(synced_connections(lab, "dir2", socks) == n for socks in held.values()):
                break
            time.sleep(0.05)
        lab.track_file("dir1").write_text("1\n")
        lab.wait_for_vip_owner("dir2")
        served_again(lab, lab.nat, time.monotonic())
        alive = {name: survivors(socks) for name, socks in held.items()}
    finally:
        for socks in held.values():
            for sock in socks:
                sock.close()
    lab.track_file("dir1").write_text("0\n")
    lab.wait_for_vip_owner("dir1")
    served_again(lab, lab.nat, time.monotonic())
    return alive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="failovers per path (default 10)")
    parser.add_argument("--held", type=int, default=20, help="long-lived connections per service (default 20)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if not in_lab_vm():
        print("bench/failover.py builds namespaces and keepalived: run it inside lab/vm.sh (make bench)", file=sys.stderr)
        return 2
    lab = HALab(preempt=True, lvsguard_token=TOKEN)  # the lvsguard processes start before keepalived
    results: dict[str, Any] = {"runs": args.runs, "held": args.held, "advert_int": 0.1}
    try:
        lab.build(progress=lambda message: print(f"  {message}", flush=True))
        actuator = lab.lvsguard["dir1"].actuator_url
        track = lab.track_file("dir1")

        def api_request() -> None:
            status, body = post(f"{actuator}/api/v1/failover", {"reason": "bench"})
            if status != 200:
                raise SystemExit(f"bench: the actuator refused the failover: {status} {body}")

        def api_release() -> None:
            post(f"{actuator}/api/v1/failover/release", {})

        paths = {"actuator": (api_request, api_release),
                 "track_file": (lambda: track.write_text("1\n"), lambda: track.write_text("0\n"))}  # fmt: skip
        timings: dict[str, dict[str, list[float]]] = {name: {"moved": [], "answered": []} for name in paths}
        one_failover(lab, *paths["track_file"])  # warm-up: ARP caches, the actuator's first requests
        one_failover(lab, *paths["actuator"])
        for run in range(args.runs):
            for name, (request, release) in paths.items():
                moved, answered = one_failover(lab, request, release)
                timings[name]["moved"].append(moved)
                timings[name]["answered"].append(answered)
            print(f"  run {run + 1}/{args.runs}: " + ", ".join(
                f"{name} {timings[name]['moved'][-1] * 1000:.0f}/{timings[name]['answered'][-1] * 1000:.0f} ms"
                for name in paths), flush=True)  # fmt: skip
        results["failover"] = {name: {what: summary(values) for what, values in t.items()} | {"samples": t}
                               for name, t in timings.items()}  # fmt: skip
        with_sync = held_survival(lab, args.held, sync=True)
        lab.restart_keepalived(preempt=True, sync=False)
        served_again(lab, lab.nat, time.monotonic())
        without_sync = held_survival(lab, args.held, sync=False)
        results["survival"] = {"with_sync": with_sync, "without_sync": without_sync}
    finally:
        lab.teardown()

    f = results["failover"]
    print("\n| path | VIPs on the backup: median (min-max) | VIP answers: median (min-max) |")
    print("|---|---:|---:|")
    for name, label in (("actuator", "POST /api/v1/failover"), ("track_file", "track file written directly (keepalived alone)")):
        cells = [f"{f[name][what]['median'] * 1000:.0f} ms ({f[name][what]['min'] * 1000:.0f}-{f[name][what]['max'] * 1000:.0f})"
                 for what in ("moved", "answered")]  # fmt: skip
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    ratio = f["actuator"]["answered"]["median"] / f["track_file"]["answered"]["median"]
    print(f"\nactuator / keepalived alone (median, VIP answers): {ratio:.2f}x over {args.runs} runs each")
    total = 2 * args.held
    for label, alive in (("with sync", with_sync), ("without sync", without_sync)):
        share = sum(alive.values()) / total
        print(f"long-lived connections surviving a failover {label}: {sum(alive.values())}/{total} ({share:.0%}; {alive})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
