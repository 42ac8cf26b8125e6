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
  of one core and the p99 lateness of each check's start against its slot.

Results go to bench/results/probes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_PORTS = 200
TICK = os.sysconf("SC_CLK_TCK")


# --- the target process ----------------------------------------------------------------


async def _targets(ports: int) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(1024)
            if data:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(answer, "127.0.0.1", 0, backlog=1024) for _ in range(ports)]
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    await asyncio.Event().wait()


def start_targets(ports: int) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve-targets", str(ports)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# --- lvsguard's side (a child process) -----------------------------------------------------


def run_engine(kind: str, ports: list[int], per_port: int, interval: float, seconds: float) -> dict[str, Any]:
    from exporter.probes.engine import CheckSpec, ProbeEngine
    from exporter.probes.http import HTTPChecker
    from exporter.probes.tcp import TCPChecker
    from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService

    checker = TCPChecker() if kind == "tcp" else HTTPChecker()
    specs = tuple(CheckSpec(f"{kind}{i}", checker, interval=interval, timeout=min(interval, 1.0)) for i in range(per_port))
    servers = tuple(RealServer(RealServerKey("127.0.0.1", p, 4), 1, Forward.MASQ) for p in ports)
    table = Table((VirtualService(ServiceKey("TCP", "192.0.2.1", 80), "wrr", real_servers=servers),), source="bench")
    engine = ProbeEngine(lambda s, r: specs, keep_lateness=True)

    async def main() -> None:
        engine.sync(table)
        await asyncio.sleep(interval)  # the jittered first round
        engine.stats.lateness.clear()
        start_probes, start_cpu, start = engine.stats.probes, time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        result.update(probes=engine.stats.probes - start_probes, cpu=time.process_time() - start_cpu, wall=time.monotonic() - start)
        failed = sum(1 for j in engine.jobs.values() if j.last is not None and not j.last.ok)
        result.update(failed_checks=failed, checks=len(engine.jobs))
        await engine.stop()

    result: dict[str, Any] = {}
    asyncio.run(main())
    late = sorted(engine.stats.lateness)
    result["lateness_p99"] = late[int(len(late) * 0.99)] if late else 0.0
    result["lateness_max"] = late[-1] if late else 0.0
    result["cpu_per_probe_ms"] = 1000 * result["cpu"] / max(result["probes"], 1)
    result["core_share"] = result["cpu"] / result["wall"]
    return result


def lvsguard(kind: str, ports: list[int], per_port: int, interval: float, seconds: float) -> dict[str, Any]:
    args = [sys.executable, __file__, "--engine", kind, json.dumps(ports), str(per_port), str(interval), str(seconds)]
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
        proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            module = "tcp_connect" if kind == "tcp" else "http_2xx"

            def target(i: int) -> str:
                p = ports[i % len(ports)]
                return f"127.0.0.1:{p}" if kind == "tcp" else f"http://127.0.0.1:{p}/"

            async def fire(n: int) -> int:
                from exporter.probes import httpclient

                sem = asyncio.Semaphore(32)
                ok = 0

                async def one(i: int) -> None:
                    nonlocal ok
                    async with sem:
                        answer = await httpclient.request("127.0.0.1", port, path=f"/probe?module={module}&target={target(i)}")
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


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-targets":
        asyncio.run(_targets(int(sys.argv[2])))
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "--engine":
        kind, ports, per_port, interval, seconds = sys.argv[2:7]
        print(json.dumps(run_engine(kind, json.loads(ports), int(per_port), float(interval), float(seconds))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=20000, help="probes per side and type")
    parser.add_argument("--scale", type=int, default=5000, help="checks at 1 s for the scale run (0: skip)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the scale run")
    args = parser.parse_args()
    targets, ports = start_targets(TARGET_PORTS)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "target_ports": len(ports), "cpus": os.cpu_count()}
    try:
        for kind in ("tcp", "http"):
            # lvsguard at ~1000 probes/s: 200 ports x 5 checks at 1 s, long enough for --probes probes
            seconds = max(5.0, args.probes / 1000)
            ours = lvsguard(kind, ports, 5, 1.0, seconds)
            theirs = blackbox(kind, ports, args.probes)
            results[kind] = {"lvsguard": ours, "blackbox_exporter": theirs,
                             "ratio": theirs["cpu_per_probe_ms"] / max(ours["cpu_per_probe_ms"], 1e-9)}  # fmt: skip
            print(f"{kind}: lvsguard {ours['cpu_per_probe_ms']:.3f} ms CPU/probe ({ours['probes']} probes, {ours['failed_checks']} failing)"
                  f" | blackbox_exporter {theirs['cpu_per_probe_ms']:.3f} ms CPU/probe ({theirs['successful']}/{theirs['probes']} ok)"
                  f" | ratio {results[kind]['ratio']:.1f}x", flush=True)
        if args.scale:
            per_port = max(1, args.scale // len(ports))
            scale = lvsguard("tcp", ports, per_port, 1.0, args.seconds)
            results["scale"] = {"checks": per_port * len(ports), "interval": 1.0, **scale}
            print(f"scale: {per_port * len(ports)} tcp checks at 1 s: {scale['core_share']:.2f} of one core,"
                  f" p99 lateness {1000 * scale['lateness_p99']:.1f} ms (max {1000 * scale['lateness_max']:.1f} ms),"
                  f" {scale['probes'] / scale['wall']:.0f} probes/s, {scale['failed_checks']} failing", flush=True)
    finally:
        targets.terminate()
        targets.wait(5)
    out = ROOT / "bench" / "results" / "probes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    sys.exit(main())
