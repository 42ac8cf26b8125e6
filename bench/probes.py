"""CPU per probe: lvsguard's probe engine against prometheus-blackbox-exporter, same targets, one run.

Not a test: it prints figures. Runs on the host (loopback targets, no kernel):

    .venv/bin/python bench/probes.py [--probes 20000] [--scale 5000]

- a target process serves N ports on 127.0.0.1 (accept, answer a tiny HTTP
  response, close), used by both sides;
- lvsguard: a child process runs ``ProbeEngine`` with tcp (then http) checks
  on those ports at a short interval; CPU is that process's utime+stime over
  the probes it made (the engine's own loop, rise/fall and metrics included);
- blackbox_exporter: ``tcp_connect`` / ``http_2xx`` modules; the bench sends
  ``/probe`` requests (as Prometheus would, one per target per scrape) with 32
  in flight; CPU is the exporter process's utime+stime over the probes;
- scale: 5 000 tcp checks at a 1 s interval for 20 s in one process: CPU share
  of one core and the lateness percentiles of each check's start against its
  slot; once against the loopback targets, once against unanswered ones (a
  network namespace of its own whose SYNs iptables drops: every probe waits for
  its 0.5 s timeout). On loopback the kernel runs both ends of every handshake
  in the prober's thread (softirq, not booked as the process's CPU), so that
  run measures the machine's loopback as much as the engine; the unanswered
  run is the engine's own scheduling and system calls, the cost a director pays
  for remote real servers;
- ``--bigtable SERVICES`` (inside the lab VM only): scrape times of the
  exporter with the default checks on a SERVICES x 100 table against probes off.

Results go to bench/results/probes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.cpus import cpus_awake

TARGET_PORTS = 200
TICK = os.sysconf("SC_CLK_TCK")


# --- the target process ----------------------------------------------------------------


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
TARGET_PROCESSES = 2


def _targets(listeners: list[socket.socket]) -> None:
    """Serve the listening sockets until killed: accept, answer once anything arrives, close.

    A bare selector loop, not asyncio: the targets must take thousands of
    connections a second without being the bottleneck of either side.
    """
    sel = selectors.DefaultSelector()
    for lsock in listeners:
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ, None)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data is None:
                while True:
                    try:
                        conn, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, True)
                continue
            sel.unregister(sock)
            try:
                if sock.recv(4096):
                    sock.send(ANSWER)
            except OSError:
                pass  # a tcp probe's reset
            sock.close()


def start_targets(ports: int) -> tuple[list[int], list[int]]:
    """``ports`` listening ports on 127.0.0.1 served by TARGET_PROCESSES forked processes (SO_REUSEPORT); (pids, ports)."""
    listeners = []
    for _ in range(ports):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4096)
        listeners.append(s)
    pids = []
    for _ in range(TARGET_PROCESSES):
        pid = os.fork()
        if pid == 0:
            try:
                _targets(listeners)
            finally:
                os._exit(0)
        pids.append(pid)
    numbers = [s.getsockname()[1] for s in listeners]
    for s in listeners:
        s.close()
    return pids, numbers


def stop_targets(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# --- lvsguard's side (a child process) -----------------------------------------------------


def run_engine(
    kind: str, ports: list[int], per_port: int, interval: float, seconds: float, address: str, timeout: float
) -> dict[str, Any]:
    from lvsguard.exporter.probes.engine import CheckSpec, ProbeEngine
    from lvsguard.exporter.probes.http import HTTPChecker
    from lvsguard.exporter.probes.tcp import TCPChecker
    from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService

    checker = TCPChecker() if kind == "tcp" else HTTPChecker()
    specs = tuple(CheckSpec(f"{kind}{i}", checker, interval=interval, timeout=timeout) for i in range(per_port))
    servers = tuple(RealServer(RealServerKey(address, p, 4), 1, Forward.MASQ) for p in ports)
    table = Table((VirtualService(ServiceKey("TCP", "192.0.2.1", 80), "wrr", real_servers=servers),), source="bench")
    engine = ProbeEngine(lambda s, r: specs, keep_lateness=True)

    async def main() -> None:
        engine.sync(table)
        await asyncio.sleep(interval)  # the jittered first round
        engine.stats.lateness.clear()
        start_probes, start_cpu, start = engine.stats.probes, time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        result.update(
            probes=engine.stats.probes - start_probes,
            cpu=time.process_time() - start_cpu,
            wall=time.monotonic() - start,
        )
        failed = sum(1 for j in engine.jobs.values() if j.last is not None and not j.last.ok)
        result.update(failed_checks=failed, checks=len(engine.jobs))
        await engine.stop()

    result: dict[str, Any] = {}
    asyncio.run(main())
    late = sorted(engine.stats.lateness)
    for q in (50, 90, 99):
        result[f"lateness_p{q}"] = late[int(len(late) * q / 100)] if late else 0.0
    result["lateness_max"] = late[-1] if late else 0.0
    result["cpu_per_probe_ms"] = 1000 * result["cpu"] / max(result["probes"], 1)
    result["core_share"] = result["cpu"] / result["wall"]
    return result


def lvsguard(
    kind: str,
    ports: list[int],
    per_port: int,
    interval: float,
    seconds: float,
    *,
    address: str = "127.0.0.1",
    timeout: float = 1.0,
    unanswered: bool = False,
) -> dict[str, Any]:
    """The engine in a child process; ``unanswered``: in a network namespace of its own whose SYNs are dropped."""
    args = [
        sys.executable,
        __file__,
        "--engine",
        kind,
        json.dumps(ports),
        str(per_port),
        str(interval),
        str(seconds),
        address,
        str(timeout),
    ]
    if unanswered:
        script = f"ip link set lo up && iptables -A INPUT -p tcp --syn -d {address} -j DROP && exec {shlex.join(args)}"
        args = ["unshare", "-n", "sh", "-c", script]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- blackbox_exporter's side ----------------------------------------------------------------


BLACKBOX_CONFIG = """modules:
  tcp_connect: {prober: tcp, timeout: 2s}
  http_2xx: {prober: http, timeout: 2s, http: {preferred_ip_protocol: ip4}}
"""


def blackbox(kind: str, ports: list[int], probes: int) -> dict[str, Any]:
    exe = "prometheus-blackbox-exporter"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "blackbox.yml"
        cfg.write_text(BLACKBOX_CONFIG)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [exe, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            module = "tcp_connect" if kind == "tcp" else "http_2xx"

            def target(i: int) -> str:
                p = ports[i % len(ports)]
                return f"127.0.0.1:{p}" if kind == "tcp" else f"http://127.0.0.1:{p}/"

            async def fire(n: int) -> int:
                from lvsguard.exporter.probes import httpclient

                sem = asyncio.Semaphore(32)
                ok = 0

                async def one(i: int) -> None:
                    nonlocal ok
                    async with sem:
                        answer = await httpclient.request(
                            "127.0.0.1", port, path=f"/probe?module={module}&target={target(i)}"
                        )
                        ok += b"probe_success 1" in answer.body

                await asyncio.gather(*(one(i) for i in range(n)))
                return ok

            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            asyncio.run(fire(200))  # warm-up
            before, started = cpu_of(proc.pid), time.monotonic()
            ok = asyncio.run(fire(probes))
            cpu, wall = cpu_of(proc.pid) - before, time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(5)
    return {"probes": probes, "successful": ok, "cpu": cpu, "wall": wall, "cpu_per_probe_ms": 1000 * cpu / probes}


# --- the default checks on a big table (inside the lab VM) ---------------------------------------------


def bigtable_scrapes(services: int, per_service: int, scrapes: int, settle: float) -> dict[str, Any]:
    """Scrape times of the exporter on one big table with probes off, then with the default checks.

    Runs inside the lab VM (``lab/vm.sh --mem 1024 .venv/bin/python bench/probes.py --bigtable``). The real
    servers' addresses have no route in the table's namespace, so every default check fails at once:
    the engine spends all its budget, the heaviest load it can put on the scrapes.
    """
    from bench import scrape
    from lab import bigtable

    print(
        f"== {services * per_service} real servers ({services} services x {per_service}); default probes vs none",
        flush=True,
    )
    big = bigtable.build(services, per_service, netns=scrape.NETNS, progress=lambda m: print("  " + m, flush=True))
    out: dict[str, Any] = {"real_servers": big.real_server_count}
    try:
        for name, config in (
            ("probes off", "probes:\n  enabled: false\n"),
            ("default probes", "probes:\n  default_tcp: true\n"),
        ):
            path = Path(f"/tmp/lvsguard-bench-probes-{len(config)}.yaml")
            path.write_text(config or "exporter: {}\n")
            cmd = [
                sys.executable,
                "-m",
                "lvsguard.cli",
                "--log-level",
                "warning",
                "exporter",
                "--config",
                str(path),
                "--listen",
                f"127.0.0.1:{scrape.OURS_PORT}",
            ]
            url = f"http://127.0.0.1:{scrape.OURS_PORT}/metrics"
            log_path = ROOT / "bench" / "results" / f"probes-bigtable-{name.replace(' ', '-')}.log"
            log_path.parent.mkdir(exist_ok=True)
            with open(log_path, "w") as log_file:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", scrape.NETNS, *cmd], stdout=subprocess.DEVNULL, stderr=log_file
                )
            try:
                scrape.wait_ready(url.replace("/metrics", "/"), proc, name, timeout=300)
                time.sleep(settle)  # the engine has read the table, started its checks and spends its budget
                walls = []
                cpu0 = cpu_of(proc.pid)
                for i in range(scrapes):
                    wall, size = scrape.scrape_with_curl(url)
                    walls.append(wall)
                    print(f"  {name}: scrape {i + 1}/{scrapes} {wall:.2f} s, {size / 1e6:.1f} MB", flush=True)
                cpu = cpu_of(proc.pid) - cpu0
            finally:
                proc.terminate()
                proc.wait(20)
            logged = [line for line in log_path.read_text().splitlines() if "probe_default_interval" in line]
            out[name] = {"scrapes": walls, "median": statistics.median(walls), "cpu": cpu, "logged": logged}
            print(
                f"  {name}: median {statistics.median(walls):.2f} s over {scrapes} scrapes; {logged[0] if logged else ''}",
                flush=True,
            )
    finally:
        bigtable.destroy(scrape.NETNS)
    out["ratio"] = out["default probes"]["median"] / out["probes off"]["median"]
    print(f"default probes / probes off, median scrape: {out['ratio']:.2f}x", flush=True)
    return out


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--engine":
        kind, ports, per_port, interval, seconds, address, timeout = sys.argv[2:9]
        print(
            json.dumps(
                run_engine(
                    kind, json.loads(ports), int(per_port), float(interval), float(seconds), address, float(timeout)
                )
            )
        )
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=20000, help="probes per side and type")
    parser.add_argument("--scale", type=int, default=5000, help="checks at 1 s for the scale run (0: skip)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the scale run")
    parser.add_argument(
        "--bigtable",
        type=int,
        default=0,
        metavar="SERVICES",
        help="inside the lab VM: scrapes of a SERVICES x 100 table with default probes vs none (nothing else)",
    )
    parser.add_argument("--scrapes", type=int, default=3, help="scrapes per side of --bigtable")
    parser.add_argument(
        "--cpu-idle",
        action="store_true",
        help="let the host's CPUs sleep when idle (by default they are held awake, as lab/vm.sh does: lab/cpus.py)",
    )
    args = parser.parse_args()
    with cpus_awake(not args.cpu_idle) as held:
        print(f"host CPUs {'held awake (PM QoS 0 us)' if held else 'free to sleep when idle'}", flush=True)
        return run(args, held)


def run(args: argparse.Namespace, held: bool) -> int:
    """The runs main() asked for; ``held``: whether the host's CPUs are held awake (recorded with the results)."""
    if args.bigtable:
        result = bigtable_scrapes(args.bigtable, 100, args.scrapes, settle=40.0)
        out = ROOT / "bench" / "results" / "probes-bigtable.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    targets, ports = start_targets(TARGET_PORTS)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "target_ports": len(ports),
        "cpus": os.cpu_count(),
        "cpus_awake": held,
    }
    try:
        for kind in ("tcp", "http"):
            # lvsguard at ~1000 probes/s: 200 ports x 5 checks at 1 s, long enough for --probes probes
            seconds = max(5.0, args.probes / 1000)
            ours = lvsguard(kind, ports, 5, 1.0, seconds)
            theirs = blackbox(kind, ports, args.probes)
            results[kind] = {
                "lvsguard": ours,
                "blackbox_exporter": theirs,
                "ratio": theirs["cpu_per_probe_ms"] / max(ours["cpu_per_probe_ms"], 1e-9),
            }
            print(
                f"{kind}: lvsguard {ours['cpu_per_probe_ms']:.3f} ms CPU/probe ({ours['probes']} probes, {ours['failed_checks']} failing)"
                f" | blackbox_exporter {theirs['cpu_per_probe_ms']:.3f} ms CPU/probe ({theirs['successful']}/{theirs['probes']} ok)"
                f" | ratio {results[kind]['ratio']:.1f}x",
                flush=True,
            )
        if args.scale:
            per_port = max(1, args.scale // len(ports))
            runs = [
                ("loopback targets (answered)", {}),
                (
                    "unanswered targets (own netns, SYNs dropped, timeout 0.5 s)",
                    {"address": "127.0.0.2", "timeout": 0.5, "unanswered": True},
                ),
            ]
            if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("iptables"):
                runs = runs[:1]
                print("scale: the unanswered run needs root, unshare and iptables; skipped", flush=True)
            results["scale"] = []
            for what, options in runs:
                scale = lvsguard("tcp", ports, per_port, 1.0, args.seconds, **options)  # type: ignore[arg-type]
                results["scale"].append({"targets": what, "checks": per_port * len(ports), "interval": 1.0, **scale})
                print(
                    f"scale, {what}: {per_port * len(ports)} tcp checks at 1 s: {scale['core_share']:.2f} of one core,"
                    f" {scale['cpu_per_probe_ms']:.3f} ms CPU/probe, {scale['probes'] / scale['wall']:.0f} probes/s;"
                    f" lateness p50 {1000 * scale['lateness_p50']:.1f} ms, p90 {1000 * scale['lateness_p90']:.1f} ms,"
                    f" p99 {1000 * scale['lateness_p99']:.1f} ms, max {1000 * scale['lateness_max']:.1f} ms;"
                    f" {scale['failed_checks']} failing",
                    flush=True,
                )
    finally:
        stop_targets(targets)
    out = ROOT / "bench" / "results" / "probes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    sys.exit(main())
