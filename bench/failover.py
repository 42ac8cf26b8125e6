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

For each, from the moment the request is sent (or the file written):

- *track file replaced*: the actuator's rename onto the track file, seen through
  inotify as keepalived sees it (the actuator's own share; nothing for the
  direct write);
- *VIPs moved*: dir2 holds every VRRP address and dir1 none (netlink, polled
  every 2 ms);
- *VIP answers*: requests through the NAT VIP, started once the VIPs are seen
  moved (an earlier one would be answered by dir1, which still held them), with
  one of two clients (``--client``):

  - ``overlapping`` (the default): an HTTP request through the NAT VIP is
    started every 5 ms on a non-blocking socket, whether or not the earlier
    ones have finished; the figure is the earliest-started attempt that was
    answered (its start, and when its answer arrived). Each attempt has
    0.5 s, less than TCP's first SYN retransmission (1 s), so an attempt whose
    SYN reached the old director and was dropped does not count: answered
    only by the retransmission, it would time TCP's timer;
  - ``sequential`` (the earlier measure): one request at a time, 50 ms each,
    5 ms apart. A SYN that the old director drops holds the client for its
    whole 50 ms, during which the VIP may already answer: it times the
    client as much as the failover.

Between runs dir1 takes the VIPs back (release, preemption) and the client is
served through it again.

3. **Connections that survive**: ``--held`` long-lived connections each
   through NAT and DR, then a failover, then each is closed from the client;
   one that the real server closes in turn (FIN, not reset) survived. With the
   sync daemon, then with keepalived restarted without ``lvs_sync_daemon``.

Not a test: the figures depend on the machine (keep other VMs quiet).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import selectors
import socket
import statistics
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.ha import HALab, open_held, served_again, survivors, synced_connections
from lab.topology import LabService, in_lab_vm
from lvsguard.ipvs.netns import entered

TOKEN = "bench-failover-token-0123456789"


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


ATTEMPT = 0.05  # seconds one request of the sequential client may take while waiting for the VIP to answer
EVERY = 0.005  # seconds between two attempts, for both clients
LIMIT = 0.5  # seconds an attempt of the overlapping client may take: below TCP's first SYN retransmission (1 s)


IN_MOVED_TO = 0x80  # <sys/inotify.h>: the actuator's write ends in a rename onto the track file


class TrackFileWatch:
    """When the track file was last replaced (inotify on its directory), to time the actuator's own share.

    keepalived watches the same file with inotify: from the request to this
    moment is the actuator's time; from it to the VIPs moving is keepalived's.
    """

    def __init__(self, path: Path) -> None:
        self.name = path.name.encode()
        self.times: list[float] = []
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, str(path.parent).encode(), IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path.parent}")
        threading.Thread(target=self._run, name="track-file-watch", daemon=True).start()

    def _run(self) -> None:
        while True:
            data = os.read(self.fd, 4096)
            now = time.monotonic()
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, size = struct.unpack_from("iIII", data, offset)
                if data[offset + 16 : offset + 16 + size].rstrip(b"\0") == self.name:
                    self.times.append(now)
                offset += 16 + size

    def written_since(self, since: float) -> float | None:
        """Seconds from ``since`` to the first replacement after it; None if there was none (a direct write)."""
        return next((t - since for t in self.times if t >= since), None)


class Attempt:
    """One HTTP request through the VIP on a non-blocking socket: connect, send, read to the server's close."""

    def __init__(self, service: LabService, now: float) -> None:
        self.started = now
        self.sock = socket.socket(socket.AF_INET6 if ":" in service.address else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.connected = False
        self.data = b""
        code = self.sock.connect_ex((service.address, service.port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, errno.errorcode.get(code, str(code)))

    def step(self, events: int) -> bool | None:
        """Advance on a selector event: True answered (200), False failed, None not done yet."""
        if not self.connected:
            if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return False
            self.connected = True
            self.sock.send(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
            return None
        if not events & selectors.EVENT_READ:
            return None
        chunk = self.sock.recv(65536)
        if chunk:
            self.data += chunk
            return None
        return self.data.startswith(b"HTTP/1.0 200") and b"\r\n\r\n" in self.data


def first_answer(lab: HALab, service: LabService, since: float, timeout: float = 15.0) -> tuple[float, float, int, int]:
    """Start a request through ``service`` every ``EVERY`` s, without waiting for earlier ones, until one is answered.

    Returns, in seconds from ``since`` (monotonic), the start and the answer of
    the earliest-started attempt that was answered, then how many attempts
    started before it were dropped (no answer in ``LIMIT``) and how many failed
    at once (refused, unreachable). Each attempt has ``LIMIT``
    seconds: one whose SYN went to the old director and was dropped would be
    answered only by TCP's retransmission after 1 s, and then it is the TCP
    timer that is measured; it counts as failed. After the first answer, the
    attempts started before it are waited for (each up to ``LIMIT``), since one
    of them may still be answered.
    """
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, Attempt] = {}
    best: Attempt | None = None
    answered_at = 0.0
    dropped: list[float] = []  # start times of the attempts that had no answer in LIMIT
    failed: list[float] = []  # ... and of those that failed at once
    deadline = time.monotonic() + timeout
    next_start = time.monotonic()
    try:
        with entered(lab.client.netns):
            while True:
                now = time.monotonic()
                if best is None and now >= next_start:
                    try:
                        attempt = Attempt(service, now)
                    except OSError:
                        failed.append(now)  # unreachable at once (the old director's ICMP)
                    else:
                        pending[attempt.sock] = attempt
                        selector.register(attempt.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
                    next_start = now + EVERY
                if best is not None and not any(a.started < best.started for a in pending.values()):
                    return (
                        best.started - since,
                        answered_at - since,
                        sum(t < best.started for t in dropped),
                        sum(t < best.started for t in failed),
                    )
                if best is None and now > deadline:
                    raise SystemExit(
                        f"bench: no request through {service.address}:{service.port} answered in {timeout:g} s"
                    )
                wait = max(0.0, next_start - now) if best is None else LIMIT
                for key, events in selector.select(wait):
                    attempt = pending[key.fileobj]  # type: ignore[index]
                    try:
                        done = attempt.step(events)
                    except OSError:
                        done = False
                    if done is None:
                        if attempt.connected:
                            selector.modify(attempt.sock, selectors.EVENT_READ)
                        continue
                    selector.unregister(attempt.sock)
                    attempt.sock.close()
                    del pending[attempt.sock]
                    if not done:
                        failed.append(attempt.started)
                    elif best is None or attempt.started < best.started:
                        best, answered_at = attempt, time.monotonic()
                now = time.monotonic()
                for attempt in [a for a in pending.values() if now - a.started > LIMIT]:
                    dropped.append(attempt.started)
                    selector.unregister(attempt.sock)
                    attempt.sock.close()
                    del pending[attempt.sock]
    finally:
        for attempt in pending.values():
            attempt.sock.close()
        selector.close()


def one_failover(
    lab: HALab, request: Callable[[], None], release: Callable[[], None], client: str, watch: TrackFileWatch
) -> tuple[float, float, float, float]:
    """Seconds from ``request()`` being called to the VIPs on dir2 alone, and to the client served through the VIP.

    ``client`` ``overlapping``: :func:`first_answer` (start of the answered
    attempt, its answer); ``sequential``: one request at a time, ``ATTEMPT`` s
    each, ``EVERY`` s apart (the earlier measure; start and answer are the
    same figure, the end of the answered request). Both start once the VIPs are
    seen on dir2.
    """
    started = time.monotonic()
    request()
    lab.wait_for_vip_owner("dir2", poll=0.002)
    moved = time.monotonic() - started
    written = watch.written_since(started)
    if client == "overlapping":
        attempt_start, answered, dropped, failed = first_answer(lab, lab.nat, started)
        print(f"    {client}: attempts before the answered one: {dropped} dropped, {failed} failed at once", flush=True)
    else:
        attempt_start = answered = served_again(lab, lab.nat, started, attempt=ATTEMPT)
    release()
    lab.wait_for_vip_owner("dir1")
    served_again(lab, lab.nat, time.monotonic())
    time.sleep(0.3)  # let the sync daemons settle into their new roles
    return 0.0 if written is None else written, moved, attempt_start, answered


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
    parser.add_argument(
        "--client",
        choices=("overlapping", "sequential", "both"),
        default="overlapping",
        help="how the client waits for the VIP (both: alternate, per run and path)",
    )
    parser.add_argument("--no-survival", action="store_true", help="skip the long-lived connections part")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if not in_lab_vm():
        print(
            "bench/failover.py builds namespaces and keepalived: run it inside lab/vm.sh (make bench)", file=sys.stderr
        )
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

        paths = {
            "actuator": (api_request, api_release),
            "track_file": (lambda: track.write_text("1\n"), lambda: track.write_text("0\n")),
        }
        clients = ("overlapping", "sequential") if args.client == "both" else (args.client,)
        runs = [(name, client) for name in paths for client in clients]
        measures = ("written", "moved", "attempt_start", "answered")
        timings: dict[str, dict[str, list[float]]] = {
            f"{name}/{client}": {what: [] for what in measures} for name, client in runs
        }
        watch = TrackFileWatch(track)
        one_failover(
            lab, *paths["track_file"], "sequential", watch
        )  # warm-up: ARP caches, the actuator's first requests
        one_failover(lab, *paths["actuator"], "sequential", watch)
        for run in range(args.runs):
            for name, client in runs:
                t = timings[f"{name}/{client}"]
                for what, value in zip(measures, one_failover(lab, *paths[name], client, watch)):
                    t[what].append(value)
            print(
                f"  run {run + 1}/{args.runs} (moved/answered ms): "
                + ", ".join(
                    f"{key} {t['moved'][-1] * 1000:.0f}/{t['answered'][-1] * 1000:.0f}" for key, t in timings.items()
                ),
                flush=True,
            )
        results["failover"] = {
            key: {what: summary(values) for what, values in t.items()} | {"samples": t} for key, t in timings.items()
        }
        if not args.no_survival:
            with_sync = held_survival(lab, args.held, sync=True)
            lab.restart_keepalived(preempt=True, sync=False)
            served_again(lab, lab.nat, time.monotonic())
            without_sync = held_survival(lab, args.held, sync=False)
            results["survival"] = {"with_sync": with_sync, "without_sync": without_sync}
    finally:
        lab.teardown()

    f = results["failover"]
    labels = {"actuator": "POST /api/v1/failover", "track_file": "track file written directly (keepalived alone)"}
    print("\n| path | client | track file replaced | VIPs on the backup | answered attempt started | VIP answers |")
    print("|---|---|---:|---:|---:|---:|")
    for key in f:
        name, client = key.split("/")
        cells = [
            f"{f[key][what]['median'] * 1000:.1f} ms ({f[key][what]['min'] * 1000:.1f}-{f[key][what]['max'] * 1000:.1f})"
            if what == "written"
            else f"{f[key][what]['median'] * 1000:.0f} ms ({f[key][what]['min'] * 1000:.0f}-{f[key][what]['max'] * 1000:.0f})"
            for what in measures
        ]
        if name == "track_file":
            cells[0] = "(written directly)"
        print(f"| {labels[name]} | {client} | " + " | ".join(cells) + " |")
    print("(median (min-max) from the request; sequential: one request at a time, its start column is its end)")
    for client in clients:
        ratio = f[f"actuator/{client}"]["answered"]["median"] / f[f"track_file/{client}"]["answered"]["median"]
        print(
            f"actuator / keepalived alone (median, VIP answers, {client} client): {ratio:.2f}x over {args.runs} runs each"
        )
    total = 2 * args.held
    for label, alive in results.get("survival", {}).items():
        share = sum(alive.values()) / total
        print(
            f"long-lived connections surviving a failover {label.replace('_', ' ')}: {sum(alive.values())}/{total} ({share:.0%}; {alive})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
