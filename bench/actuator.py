"""Actuator benchmark: Alertmanager webhook -> weight in the kernel, at a steady rate and in one big payload.

Runs inside the lab VM (``bench/run.py`` starts it there; by hand:
``lab/vm.sh --mem 1024 .venv/bin/python bench/actuator.py``). For each service
size it builds one service (``lab.bigtable``: 1 service x N real servers, no
traffic) in a namespace, starts the real actuator (``lvsguard actuator``: its
own process, waitress, netlink into that namespace, a fresh SQLite ledger) and
measures:

1. **Steady rate.** ``--rate`` webhook requests per second for ``--seconds``
   seconds, open loop (each request has its due time; a late client counts
   against the actuator, so queueing shows up in the figures), one alert per
   request with its own fingerprint: every second request quarantines a real
   server, the others resolve the alert fired ``LAG`` requests earlier, so
   each request is a kernel write (weight -> 0 or back). Latency is measured
   from the request's due time to the HTTP reply: the actuator writes the
   kernel *before* it replies (quarantine and restore are synchronous), so the
   reply time is the webhook -> kernel time. The warm-up checks that claim: for
   its requests the kernel is read right after each reply and must already
   show the new weight.
2. **One payload of ``--alerts`` alerts** (distinct real servers of the
   biggest service, firing), then the same alerts resolved: wall time of each
   POST, and the kernel read afterwards must show every weight changed.

3. **The floor**: the same one-at-a-time and steady runs, same client, against
   a Flask app on waitress (8 threads, as the actuator) that only checks the
   token, parses the payload and answers the same shape (``--serve-floor``).
   In this VM every system call is expensive, so what any Flask app on
   waitress costs here is the baseline the actuator's figures are read
   against (``--no-floor`` skips it).

The settings make every request a write: ``hold_down: 0``, no rate limit,
``min_healthy: 0``. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import bigtable
from lab.processes import stop
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import RealServerKey, ServiceKey

NETNS = "lvs-bench-act"
PORT = 9911
TOKEN = "bench-token-0123456789abcdef"
CLIENTS = 4  # keep-alive connections of the load client (one thread)
WARMUP = 20  # requests, sequential, each checked in the kernel
SEQUENTIAL = 100  # quarantine/resolve pairs sent one request at a time
CONFIG = """\
actuator:
  hold_down: 0
  rate_limit: {actions: 0, per: 60s}
  min_healthy: 0
  retry_interval: 5s
"""


@dataclass
class SteadyResult:
    real_servers: int
    rate: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    late_ms_p99: float  # how late the client sent (should be ~0: otherwise the client limited the rate)
    achieved_rate: float  # requests answered per second over the run
    results: dict[str, int]
    kernel_checked: int
    one_by_one_p50_ms: float = 0.0  # one client, one request at a time: the actuator's own time, no queueing
    one_by_one_p99_ms: float = 0.0
    cpu_ms_per_request: float = 0.0  # the actuator process's CPU (user + system) per request, one at a time


@dataclass
class PayloadResult:
    real_servers: int
    alerts: int
    firing_s: float
    resolved_s: float
    applied: int
    restored: int
    cpu_ms_per_alert: float = 0.0  # the actuator process's CPU per alert over both payloads


def alert(fingerprint: str, service: ServiceKey, rs: RealServerKey, status: str) -> dict[str, Any]:
    """One alert as Alertmanager 0.25+ sends it, labelled like the exporter's ``ipvs_backend_*`` series."""
    return {
        "status": status,
        "labels": {
            "alertname": "IPVSBackendDown",
            "proto": service.protocol,
            "local_address": service.address,
            "local_port": str(service.port),
            "remote_address": rs.address,
            "remote_port": str(rs.port),
            "lvsguard_action": "quarantine",
        },
        "annotations": {"summary": f"{rs} does not answer"},
        "startsAt": "2026-11-25T21:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-25T21:05:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }


def payload(alerts: list[dict[str, Any]]) -> bytes:
    firing = any(a["status"] == "firing" for a in alerts)
    return json.dumps(
        {
            "version": "4",
            "groupKey": "{}:{}",
            "truncatedAlerts": 0,
            "status": "firing" if firing else "resolved",
            "receiver": "lvsguard",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": alerts,
        }
    ).encode()


class Client:
    """One keep-alive connection to the actuator's webhook; requests are built up front (a light client)."""

    def __init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", PORT), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    @staticmethod
    def request(body: bytes) -> bytes:
        head = (
            f"POST /webhook/alertmanager HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def send(self, request: bytes) -> dict[str, Any]:
        """Send a built request, wait for its reply."""
        self.sock.sendall(request)
        while (reply := self._reply()) is None:
            self.buf += self._recv()
        return reply

    def poll(self) -> dict[str, Any] | None:
        """Read what has arrived (the socket is readable); the reply once it is complete."""
        self.buf += self._recv()
        return self._reply()

    def _reply(self) -> dict[str, Any] | None:
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return None
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        if len(rest) < length:
            return None
        data, self.buf = rest[:length], rest[length:]
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise SystemExit(f"bench: webhook answered {status}: {data[:300]!r}")
        reply: dict[str, Any] = json.loads(data)
        return reply

    def post(self, body: bytes) -> dict[str, Any]:
        return self.send(self.request(body))

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise SystemExit("bench: the actuator closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def start_actuator(workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / "lvsguard.yaml"
    config.write_text(CONFIG)
    with open(workdir / "actuator.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lvsguard.cli",
                "actuator",
                "--config",
                str(config),
                "--netns",
                NETNS,
                "--listen",
                f"127.0.0.1:{PORT}",
                "--ledger",
                str(workdir / "ledger.db"),
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "LVSGUARD_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)},
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"bench: the actuator exited with {proc.returncode}:\n{(workdir / 'actuator.log').read_text()}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=2)
            conn.request("GET", "/api/v1/jobs")
            conn.getresponse().read()
            conn.close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("bench: the actuator did not listen within 60 s")


def serve_floor(port: int) -> None:
    """The floor: the same webhook on Flask and waitress (8 threads), parsed and answered, and nothing else.

    No ledger, no kernel, no rules, no logs: what any Flask app served by
    waitress costs in this VM for the same requests and the same client. The
    actuator's figures minus these are what lvsguard itself adds.
    """
    import hmac

    import waitress
    from flask import Flask, request

    app = Flask("floor")
    expected = f"Bearer {TOKEN}".encode()

    @app.post("/webhook/alertmanager")
    def webhook() -> tuple[dict[str, Any], int]:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            return {"error": "unauthorized"}, 401
        body = json.loads(request.get_data(cache=False))
        results = [
            {"fingerprint": a["fingerprint"], "status": a["status"], "result": "applied"} for a in body["alerts"]
        ]
        return {"status": "ok", "receiver": body["receiver"], "groupKey": body["groupKey"], "results": results}, 200

    waitress.serve(app, host="127.0.0.1", port=port, threads=8, ident="floor", _quiet=True)


def start_floor() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve-floor", str(PORT)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("bench: the floor app did not listen within 30 s")


def run_floor(service: ServiceKey, servers: list[RealServerKey], args: argparse.Namespace) -> SteadyResult:
    """The same one-at-a-time and steady runs against the floor app."""
    proc = start_floor()
    client = Client()
    try:
        for i in range(WARMUP):
            client.post(payload([alert(f"warm{i}", service, servers[0], "firing")]))
        cpu0 = cpu_seconds(proc.pid)
        p50, p99 = one_by_one(client, service, servers, SEQUENTIAL)
        cpu = (cpu_seconds(proc.pid) - cpu0) * 1000 / (2 * SEQUENTIAL)
        result = steady(service, servers, args.rate, args.seconds, 0)
        result.one_by_one_p50_ms, result.one_by_one_p99_ms, result.cpu_ms_per_request = p50, p99, cpu
        print(
            f"  floor (Flask + waitress, parse and answer only): one at a time p50 {p50:.1f} ms, p99 {p99:.1f} ms;"
            f" steady {result.rate:g}/s: p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.1f} ms,"
            f" {result.achieved_rate:.0f} answered/s",
            flush=True,
        )
        return result
    finally:
        client.close()
        stop(proc)


def weights(kernel: NetlinkIPVS, service: ServiceKey) -> dict[RealServerKey, int]:
    return {rs.key: rs.weight for rs in kernel.read_service(service).real_servers}


def warm_up(client: Client, kernel: NetlinkIPVS, service: ServiceKey, servers: list[RealServerKey]) -> int:
    """Sequential quarantine/resolve pairs; after each reply the kernel must already show the weight."""
    original = weights(kernel, service)
    checked = 0
    for i in range(WARMUP // 2):
        rs = servers[i % len(servers)]
        for status in ("firing", "resolved"):
            reply = client.post(payload([alert(f"warm{i}", service, rs, status)]))
            expected = 0 if status == "firing" else original[rs]
            seen = weights(kernel, service)[rs]
            if seen != expected or reply["results"][0]["result"] != "applied":
                raise SystemExit(
                    f"bench: after the reply to {status} warm{i}, the kernel shows weight {seen} for {rs} "
                    f"(expected {expected}; reply {reply['results'][0]})"
                )
            checked += 1
    return checked


def one_by_one(client: Client, service: ServiceKey, servers: list[RealServerKey], pairs: int) -> tuple[float, float]:
    """Closed loop, one request at a time (quarantine, then resolve): p50 and p99 in ms."""
    ms = []
    for i in range(pairs):
        rs = servers[i % max(1, len(servers) - 1)]
        for status in ("firing", "resolved"):
            request = Client.request(payload([alert(f"seq{i}", service, rs, status)]))
            t0 = time.monotonic()
            client.send(request)
            ms.append((time.monotonic() - t0) * 1000)
    return percentile(ms, 50), percentile(ms, 99)


def steady(
    service: ServiceKey, servers: list[RealServerKey], rate: float, seconds: float, checked: int
) -> SteadyResult:
    """Open-loop load: request j is due at j / rate; even j fire, odd j resolve the alert fired ``lag`` pairs ago.

    One client thread with ``CLIENTS`` keep-alive connections and a selector:
    threads would cost the VM's one CPU more than the actuator does. A request
    goes out on a free connection at its due time, or as soon as one is free.
    A resolve waits for its alert's firing reply, so that every request is a
    kernel write even when the actuator falls behind.
    """
    total = int(rate * seconds)
    usable = servers[: max(2, len(servers) - 1)]
    lag = max(0, min(len(usable) // 2, 50) - 1)
    fired: set[int] = set()
    latencies: list[float] = []
    late: list[float] = []
    results: dict[str, int] = {}

    def body(j: int) -> bytes:
        k = j // 2
        if j % 2 == 0 or k - lag < 0:  # before the first resolve: a repeat of the firing alert (noop)
            return payload([alert(f"fp{k}", service, usable[k % len(usable)], "firing")])
        old = k - lag
        return payload([alert(f"fp{old}", service, usable[old % len(usable)], "resolved")])

    built = [Client.request(body(j)) for j in range(total)]
    clients = [Client() for _ in range(CLIENTS)]
    selector = selectors.DefaultSelector()
    free = list(clients)
    busy: dict[Client, tuple[int, float, float]] = {}  # client -> (request, due, sent)
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    start = time.monotonic() + 0.2
    j = 0
    try:
        while j < total or busy:
            now = time.monotonic()
            blocked = False
            while j < total and free and start + j / rate <= now:
                if j % 2 == 1 and j // 2 - lag >= 0 and j // 2 - lag not in fired:
                    blocked = True  # its firing is still out: wait for a reply
                    break
                client = free.pop()
                client.sock.sendall(built[j])
                busy[client] = (j, start + j / rate, time.monotonic())
                j += 1
            ready = j < total and free and not blocked
            timeout = max(0.0, start + j / rate - time.monotonic()) if ready else None
            for key, _mask in selector.select(timeout):
                client = key.data
                reply = client.poll()
                if reply is None:
                    continue
                done = time.monotonic()
                index, due, sent = busy.pop(client)
                free.append(client)
                if index % 2 == 0:
                    fired.add(index // 2)
                latencies.append(done - due)
                late.append(max(0.0, sent - due))
                for r in reply["results"]:
                    results[r["result"]] = results.get(r["result"], 0) + 1
    finally:
        selector.close()
        for client in clients:
            client.close()
    elapsed = time.monotonic() - start
    ms = [x * 1000 for x in latencies]
    return SteadyResult(
        len(servers),
        rate,
        total,
        percentile(ms, 50),
        percentile(ms, 90),
        percentile(ms, 99),
        max(ms),
        percentile([x * 1000 for x in late], 99),
        total / elapsed,
        dict(sorted(results.items())),
        checked,
    )


def big_payload(
    client: Client, kernel: NetlinkIPVS, service: ServiceKey, servers: list[RealServerKey], count: int
) -> PayloadResult:
    """One payload of ``count`` firing alerts on distinct real servers, then the same alerts resolved."""
    chosen = servers[:count]
    if len(chosen) < count:
        raise SystemExit(f"bench: --alerts {count} needs a service of at least {count} real servers")
    original = weights(kernel, service)
    fired = payload([alert(f"big{i}", service, rs, "firing") for i, rs in enumerate(chosen)])
    t0 = time.monotonic()
    reply = client.post(fired)
    firing_s = time.monotonic() - t0
    applied = sum(1 for r in reply["results"] if r["result"] == "applied")
    now = weights(kernel, service)
    out = sum(1 for rs in chosen if now[rs] == 0)
    if out != count:
        raise SystemExit(
            f"bench: after the {count}-alert payload, {out} real servers are at weight 0 (expected {count})"
        )
    resolved = payload([alert(f"big{i}", service, rs, "resolved") for i, rs in enumerate(chosen)])
    t0 = time.monotonic()
    reply = client.post(resolved)
    resolved_s = time.monotonic() - t0
    now = weights(kernel, service)
    restored = sum(1 for rs in chosen if now[rs] == original[rs])
    if restored != count:
        raise SystemExit(f"bench: after resolving, {restored} real servers have their weight back (expected {count})")
    return PayloadResult(len(servers), count, firing_s, resolved_s, applied, restored)


def run_size(
    per_service: int, args: argparse.Namespace
) -> tuple[SteadyResult, PayloadResult | None, SteadyResult | None]:
    print(f"== 1 service x {per_service} real servers", flush=True)
    big = bigtable.build(1, per_service, netns=NETNS)
    service = big.services[0].key
    servers = [rs.key for rs in big.services[0].real_servers]
    try:
        with tempfile.TemporaryDirectory(prefix="lvsguard-bench-") as tmp:
            proc = start_actuator(Path(tmp))
            kernel = NetlinkIPVS(NETNS)
            client = Client()
            try:
                checked = warm_up(client, kernel, service, servers)
                print(
                    f"  warm-up: {checked} replies checked in the kernel (the weight was there at reply time)",
                    flush=True,
                )
                cpu0 = cpu_seconds(proc.pid)
                p50, p99 = one_by_one(client, service, servers, SEQUENTIAL)
                cpu = (cpu_seconds(proc.pid) - cpu0) * 1000 / (2 * SEQUENTIAL)
                print(
                    f"  one at a time ({2 * SEQUENTIAL} requests): p50 {p50:.1f} ms, p99 {p99:.1f} ms; actuator CPU {cpu:.2f} ms"
                    f" per request (room for {1000 / cpu:.0f} requests/s on one CPU)",
                    flush=True,
                )
                result = steady(service, servers, args.rate, args.seconds, checked)
                result.one_by_one_p50_ms, result.one_by_one_p99_ms, result.cpu_ms_per_request = p50, p99, cpu
                print(
                    f"  steady {result.rate:g}/s x {args.seconds:g} s: p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms,"
                    f" max {result.max_ms:.1f} ms, {result.achieved_rate:.0f} answered/s; results {result.results}",
                    flush=True,
                )
                final = weights(kernel, service)
                expected = {rs.key: rs.weight for rs in big.services[0].real_servers}
                stuck = [str(k) for k, w in final.items() if w != expected[k]]
                held = len(stuck)
                if held > max(1, min(len(servers) // 2, 50)):
                    raise SystemExit(f"bench: {held} real servers are still out after the run: {stuck[:5]}")
                pay = None
                if per_service >= args.alerts:
                    client.post(
                        payload([alert(f"fp{k}", service, servers[0], "resolved") for k in range(result.requests)])
                    )
                    cpu0 = cpu_seconds(proc.pid)
                    pay = big_payload(client, kernel, service, servers, args.alerts)
                    pay.cpu_ms_per_alert = (cpu_seconds(proc.pid) - cpu0) * 1000 / (2 * pay.alerts)
                    print(
                        f"  {pay.alerts} alerts in one payload: firing {pay.firing_s:.3f} s, resolved {pay.resolved_s:.3f} s;"
                        f" actuator CPU {pay.cpu_ms_per_alert:.3f} ms per alert",
                        flush=True,
                    )
            finally:
                client.close()
                kernel.close()
                stop(proc)
        floor = run_floor(service, servers, args) if args.floor else None
    finally:
        bigtable.destroy(NETNS)
    return result, pay, floor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,1000", help="real servers of the service, one run per size")
    parser.add_argument("--rate", type=float, default=100.0, help="webhook requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each steady run")
    parser.add_argument("--alerts", type=int, default=1000, help="alerts in the one big payload (run on sizes >= this)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor (the same requests to a Flask app on waitress that only parses and answers)",
    )
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    if os.environ.get("IPVS_VM_GUEST") != "1":
        print(
            "bench/actuator.py: run it inside the lab VM: lab/vm.sh --mem 1024 .venv/bin/python bench/actuator.py",
            file=sys.stderr,
        )
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"load average in the VM at start: {os.getloadavg()[0]:.2f} (the host's is not visible here; see bench/README.md)"
    )
    steady_results, payloads, floors = [], [], []
    for size in sizes:
        s, p, f = run_size(size, args)
        steady_results.append(s)
        if p is not None:
            payloads.append(p)
        if f is not None:
            floors.append(f)
        args.floor = False  # once is enough: the floor has no table
    print()
    print(
        "| real servers in the service | requests | answered/s | p50 | p90 | p99 | max | results | one at a time: p50 | p99 | CPU / request |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for s in steady_results:
        results = ", ".join(f"{k} {v}" for k, v in s.results.items())
        print(
            f"| {s.real_servers:,} | {s.requests} at {s.rate:g}/s | {s.achieved_rate:.0f} | {s.p50_ms:.1f} ms | {s.p90_ms:.1f} ms | "
            f"{s.p99_ms:.1f} ms | {s.max_ms:.1f} ms | {results} | {s.one_by_one_p50_ms:.1f} ms | "
            f"{s.one_by_one_p99_ms:.1f} ms | {s.cpu_ms_per_request:.2f} ms |"
        )
    for s in floors:
        results = ", ".join(f"{k} {v}" for k, v in s.results.items())
        print(
            f"| floor: Flask + waitress only | {s.requests} at {s.rate:g}/s | {s.achieved_rate:.0f} | {s.p50_ms:.1f} ms | "
            f"{s.p90_ms:.1f} ms | {s.p99_ms:.1f} ms | {s.max_ms:.1f} ms | {results} | {s.one_by_one_p50_ms:.1f} ms | "
            f"{s.one_by_one_p99_ms:.1f} ms | {s.cpu_ms_per_request:.2f} ms |"
        )
    if payloads:
        print()
        print(
            "| real servers in the service | alerts in one payload | firing (quarantine) | resolved (restore) | CPU / alert |"
        )
        print("|---:|---:|---:|---:|---:|")
        for p in payloads:
            print(
                f"| {p.real_servers:,} | {p.alerts:,} | {p.firing_s:.3f} s | {p.resolved_s:.3f} s | {p.cpu_ms_per_alert:.3f} ms |"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "steady": [asdict(s) for s in steady_results],
                    "payload": [asdict(p) for p in payloads],
                    "floor": [asdict(f) for f in floors],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
