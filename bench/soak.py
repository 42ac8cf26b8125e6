"""Soak run in the lab VM: traffic, probes, scrapes and actuator churn; memory and file descriptors over time.

    lab/vm.sh --mem 1024 .venv/bin/python bench/soak.py [--minutes 10]

Builds the lab, starts ``lvsguard exporter`` (``probes.default_tcp: true``: a tcp
check on every real server) and ``lvsguard actuator`` as real processes for
the lab's director, then for ``--minutes`` keeps sending HTTP requests
through the NAT service, scraping ``/metrics`` of both, and quarantining and
restoring real servers through the API. Every ``--every`` seconds it samples
each process's resident memory (VmRSS) and open file descriptors. It prints
the first sample after the warm-up, the last one and the difference, and
writes every sample to bench/results/soak.json. It fails (exit 1) when a
process died or answered 5xx; flatness is for the reader to judge from the
figures, not a threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import traffic
from lab.topology import Lab, in_lab_vm

RESULTS = ROOT / "bench" / "results"
TOKEN = "soak-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open file descriptors) of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def call(url: str, path: str, body: dict[str, object] | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url + path, data=data, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_listening(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"soak: {proc.args[3]} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"soak: {url} never answered")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between two samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the first sample that counts")
    args = parser.parse_args(argv)
    if not in_lab_vm():
        raise SystemExit("soak: run it inside the lab VM: lab/vm.sh --mem 1024 .venv/bin/python bench/soak.py")
    lab = Lab()
    lab.build()
    state = Path(tempfile.mkdtemp(prefix="lvsguard-soak-"))
    exporter_url, actuator_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "LVSGUARD_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "lvsguard.cli", "--log-level", "warning"]
    logs = {
        name: (state / f"{name}.log").open("wb") for name in ("exporter", "actuator")
    }  # refusals are expected: kept out of the report
    exporter_config = state / "exporter.yaml"
    exporter_config.write_text("probes:\n  default_tcp: true\n")  # probes are opt-in
    procs = {
        "exporter": subprocess.Popen(
            [*cli, "exporter", "--config", str(exporter_config), "--netns", lab.director.netns]
            + ["--listen", exporter_url[7:]],
            env=env,
            stderr=logs["exporter"],
        ),
        "actuator": subprocess.Popen(
            [
                *cli,
                "actuator",
                "--netns",
                lab.director.netns,
                "--listen",
                actuator_url[7:],
                "--ledger",
                str(state / "actuator.db"),
            ],
            env=env,
            stderr=logs["actuator"],
        ),
    }
    stop = threading.Event()
    counts = {"requests": 0, "scrapes": 0, "actions": 0, "errors_5xx": 0}
    try:
        wait_listening(exporter_url + "/metrics", procs["exporter"])
        wait_listening(actuator_url + "/api/v1/services", procs["actuator"])
        nat = lab.nat

        def load() -> None:
            while not stop.is_set():
                counts["requests"] += sum(traffic.http_get(lab, nat.address, nat.port, 20).values())

        def scrape() -> None:
            while not stop.wait(1.0):
                for url in (exporter_url + "/metrics", actuator_url + "/metrics"):
                    with urllib.request.urlopen(url, timeout=30) as reply:
                        reply.read()
                    counts["scrapes"] += 1

        def churn() -> None:
            rng = random.Random(1)
            while not stop.wait(0.5):
                name = rng.choice(["rs1", "rs2", "rs3"])
                op = rng.choice(["quarantine", "restore", "weight"])
                body: dict[str, object] = {
                    "service": str(nat.key),
                    "real_server": str(nat.real_server(name)),
                    "force": True,
                }
                if op == "weight":
                    body["weight"] = rng.randint(1, 5)
                status = call(actuator_url, f"/api/v1/{op}", body)
                counts["actions"] += 1
                counts["errors_5xx"] += status >= 500

        threads = [threading.Thread(target=f, daemon=True) for f in (load, scrape, churn)]
        for t in threads:
            t.start()
        samples: list[dict[str, object]] = []
        started = time.monotonic()
        end = started + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(args.every)
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"soak: the {name} died (exit {proc.returncode})")
                rss, fds = sample(proc.pid)
                samples.append({"t": round(time.monotonic() - started, 1), "process": name, "rss_kib": rss, "fds": fds})
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        lab.teardown()
    print(
        f"\nsoak: {args.minutes:g} min, {counts['requests']} HTTP requests through the NAT service, {counts['scrapes']} scrapes, "
        f"{counts['actions']} actuator actions, {counts['errors_5xx']} 5xx\n"
    )
    print(
        "| process | RSS after warm-up (MiB) | RSS at the end (MiB) | FDs after warm-up | FDs at the end |\n|---|---:|---:|---:|---:|"
    )
    for name in procs:
        mine = [s for s in samples if s["process"] == name and float(s["t"]) >= args.warmup]  # type: ignore[arg-type]
        if not mine:
            continue
        first, last = mine[0], mine[-1]
        print(
            f"| {name} | {int(first['rss_kib']) / 1024:.1f} | {int(last['rss_kib']) / 1024:.1f} | {first['fds']} | {last['fds']} |"
        )  # type: ignore[call-overload]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(
        json.dumps({"minutes": args.minutes, "counts": counts, "samples": samples}, indent=2)
    )
    return 1 if counts["errors_5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
