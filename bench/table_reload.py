"""One real server changed by a reload: lvsguard's actuator vs keepalived, on the lab VM's kernel.

Runs inside the lab VM (``lab/vm.sh --mem 1536 .venv/bin/python bench/table_reload.py``).
Two measurements, side by side in one run:

1. Reload to kernel: a table of S services x 10 real servers (the tables of
   ``bench/table_build.py``: NAT, ``wrr``) built by the daemon from its config
   in a fresh network namespace; then one real server's weight changed in the
   config file and the daemon sent SIGHUP (keepalived: ``--check``, real servers
   without checkers; lvsguard: ``lvsguard actuator`` with ``table.manage``,
   ``prune: exact``). Timed from the signal until the kernel shows the new
   weight, read with lvsguard's netlink reader every 2 ms. lvsguard's time
   includes loading and checking the whole config again.

2. Failed requests during a reload: the lab's NAT service (3 real servers)
   owned by the daemon, HTTP clients opening new connections at ``--rate`` a
   second (each a GET on a new TCP connection, 2 s timeout) for ``--seconds``,
   and a reload half-way that changes one service (one real server's weight).
   Counted: requests answered, failed, and the rate reached.

Not a test: compare only numbers of one run.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.table_build import ipvsadm_rules, keepalived_conf, rip, vip
from lab import traffic
from lab.topology import Lab
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import RealServerKey, ServiceKey
from lvsguard.table.importers import ipvsadm as ipvsadm_importer
from lvsguard.table.importers import render
from lvsguard.table.load import service_mapping

KEEPALIVED = "/usr/sbin/keepalived"
NETNS = "lvsg-bench-reload"
TOKEN = "bench-reload-0123456789"
CHANGED = 42


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_netns() -> None:
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)


def wait(check: Callable[[], bool], seconds: float, what: str, every: float = 0.05) -> float:
    """Seconds until ``check()``; RuntimeError after ``seconds``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            if check():
                return time.perf_counter() - t0
        except (OSError, ValueError):
            pass
        time.sleep(every)
    raise RuntimeError(f"{what}: not within {seconds:.0f} s")


def weight_of(ipvs: NetlinkIPVS, service: ServiceKey, rs: RealServerKey) -> int:
    return next(r.weight for r in ipvs.read_service(service).real_servers if r.key == rs)


class Keepalived:
    """keepalived's checker on ``conf``, in ``netns``, in the foreground; SIGHUP reloads it."""

    def __init__(self, netns: str, conf: str, tmp: Path):
        self.netns, self.path, self.tmp = netns, tmp / "keepalived.conf", tmp
        self.path.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.netns, KEEPALIVED, "--check", "--dont-fork", "-f", str(self.path)]
        argv += ["-p", f"{self.tmp}/k.pid", "-c", f"{self.tmp}/c.pid", "-r", f"{self.tmp}/v.pid"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def reload(self, conf: str) -> None:
        self.path.write_text(conf)
        self.hup()

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


class Actuator:
    """``lvsguard actuator`` on ``doc`` (a config mapping), in ``netns``; SIGHUP reloads it."""

    def __init__(self, netns: str, doc: dict[str, Any], tmp: Path):
        self.netns, self.tmp, self.path = netns, tmp, tmp / "lvsguard.yaml"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.write(doc)
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, doc: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def start(self, within: float) -> None:
        argv = [sys.executable, "-m", "lvsguard.cli", "actuator", "--netns", self.netns, "--config", str(self.path)]
        argv += ["--ledger", str(self.tmp / "actuator.db"), "--listen", self.url.removeprefix("http://")]
        with open(self.tmp / "actuator.log", "ab") as log:
            env = {**os.environ, "LVSGUARD_TOKEN": TOKEN}
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait(self.answers, within, "the actuator answering", every=0.1)

    def answers(self) -> bool:
        """The API answers (after the start's apply). Not ``/services``: 56 MB of JSON at 100 000 real servers."""
        req = urllib.request.Request(self.url + "/api/v1/jobs?limit=1", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as reply:
            return bool(reply.status == 200)

    def reload(self, doc: dict[str, Any]) -> None:
        self.write(doc)
        self.hup()

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def table_doc(services: int, reals: int, first_weight: int | None = None) -> dict[str, Any]:
    """The lvsguard config of bench/table_build.py's table (``table.manage``, ``prune: exact``)."""
    doc: dict[str, Any] = yaml.safe_load(render(ipvsadm_importer.parse(ipvsadm_rules(services, reals), "rules")))
    doc["table"]["prune"] = "exact"
    doc["actuator"] = {"hold_down": "0s"}
    if first_weight is not None:
        doc["services"][0]["real_servers"][0]["weight"] = first_weight
    return doc


def reload_latency(services: int, reals: int, daemon: str, build_timeout: float) -> tuple[float, float]:
    """(seconds to build the table, seconds from SIGHUP to the changed weight in the kernel)."""
    fresh_netns()
    key, first = ServiceKey("TCP", vip(0), 80), RealServerKey(rip(0, 0), 80)
    want = services * (reals + 1)
    with tempfile.TemporaryDirectory(prefix="lvsg-bench-") as tmp, NetlinkIPVS(NETNS) as ipvs:
        runner: Keepalived | Actuator
        if daemon == "keepalived":
            runner = Keepalived(NETNS, keepalived_conf(services, reals), Path(tmp))
            t0 = time.perf_counter()
            runner.start()
        else:
            runner = Actuator(NETNS, table_doc(services, reals), Path(tmp))
            t0 = time.perf_counter()
            runner.start(build_timeout)
        try:
            wait(lambda: len(ipvs.read().services) + ipvs.read().real_server_count >= want, build_timeout, "the build")
            built = time.perf_counter() - t0
            if isinstance(runner, Keepalived):
                runner.path.write_text(keepalived_conf(services, reals).replace("weight 1\n", f"weight {CHANGED}\n", 1))
            else:
                runner.write(table_doc(services, reals, CHANGED))
            t0 = time.perf_counter()  # from the signal: the daemon may have the change before this process runs again
            runner.hup()
            wait(lambda: weight_of(ipvs, key, first) == CHANGED, build_timeout, "the reload", every=0.002)
            return built, time.perf_counter() - t0
        finally:
            runner.stop()


class Load:
    """New connections at ``rate`` a second through ``address:port`` from the lab's client, counted."""

    def __init__(self, lab: Lab, address: str, port: int, rate: float):
        self.lab, self.address, self.port, self.rate = lab, address, port, rate
        self.answered = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def one(self) -> None:
        try:
            traffic.http_get(self.lab, self.address, self.port, 1, timeout=2.0)
            with self.lock:
                self.answered += 1
        except Exception as exc:  # every failure is the finding
            with self.lock:
                self.failures.append(repr(exc))

    def run(self, seconds: float, at: float, change: Callable[[], None]) -> float:
        """Send for ``seconds``, calling ``change`` after ``at`` seconds; returns the rate reached."""
        pool = ThreadPoolExecutor(max_workers=32)
        t0 = time.perf_counter()
        sent, changed = 0, False
        while (now := time.perf_counter() - t0) < seconds:
            if not changed and now >= at:
                change()
                changed = True
            while sent < now * self.rate:
                pool.submit(self.one)
                sent += 1
            time.sleep(0.002)
        pool.shutdown(wait=True)
        return (self.answered + len(self.failures)) / (time.perf_counter() - t0)


def reload_under_load(lab: Lab, daemon: str, rate: float, seconds: float) -> tuple[int, int, float, str]:
    """(answered, failed, rate reached, first failure) across a reload that changes the NAT service."""
    nat = lab.nat
    with NetlinkIPVS(lab.director.netns) as ipvs:
        svc = ipvs.read_service(nat.key)
        rs2 = nat.real_server("rs2")
        weight = weight_of(ipvs, nat.key, rs2)
        mapping = service_mapping(svc, "web", {key: node for key, node in nat.backends})
        with tempfile.TemporaryDirectory(prefix="lvsg-bench-") as tmp:
            runner: Keepalived | Actuator
            if daemon == "keepalived":
                ipvs.delete_service(nat.key)  # keepalived builds it from its own file
                runner = Keepalived(lab.director.netns, nat_keepalived(mapping, weight), Path(tmp))
                runner.start()
                wait(lambda: nat.key in {s.key for s in ipvs.read().services}, 30, "keepalived's service")
                wait(lambda: len(ipvs.read_service(nat.key).real_servers) == len(svc.real_servers), 30, "its servers")
            else:
                doc = {"table": {"manage": True, "prune": "owned"}, "services": [mapping], "actuator": {}}
                runner = Actuator(lab.director.netns, doc, Path(tmp))
                runner.start(60)
            load = Load(lab, nat.address, nat.port, rate)
            try:
                traffic.http_get(lab, nat.address, nat.port, 3)  # flowing before the clock starts
                if isinstance(runner, Keepalived):
                    reached = load.run(seconds, seconds / 2, lambda: runner.reload(nat_keepalived(mapping, weight + 4)))
                else:
                    changed = {**mapping, "real_servers": [dict(r) for r in mapping["real_servers"]]}
                    for r in changed["real_servers"]:
                        if r["name"] == "rs2":
                            r["weight"] = weight + 4
                    new = {**doc, "services": [changed]}
                    reached = load.run(seconds, seconds / 2, lambda: runner.reload(new))
                wait(lambda: weight_of(ipvs, nat.key, rs2) == weight + 4, 30, "the change in the kernel")
            finally:
                runner.stop()
                lab.reset_services()
    first = load.failures[0] if load.failures else ""
    return load.answered, len(load.failures), reached, first


def nat_keepalived(mapping: dict[str, Any], rs2_weight: int) -> str:
    """The lab's NAT service as a keepalived virtual_server (no checkers: every real server up)."""
    address, port = mapping["service"].split()[1].rsplit(":", 1)
    lines = [f"virtual_server {address} {port} {{", f"    lb_algo {mapping['scheduler']}", "    lb_kind NAT"]
    lines.append("    protocol TCP")
    for r in mapping["real_servers"]:
        host, rport = r["address"].rsplit(":", 1)
        weight = rs2_weight if r["name"] == "rs2" else r.get("weight", 1)
        lines.append(f"    real_server {host} {rport} {{\n        weight {weight}\n    }}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="services (x 10 real servers) per table, comma-separated")
    parser.add_argument("--rate", type=float, default=200.0, help="new connections a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--build-timeout", type=float, default=300.0)
    parser.add_argument("--skip-keepalived", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args(argv)
    daemons = ["lvsguard"] + ([] if args.skip_keepalived or not os.access(KEEPALIVED, os.X_OK) else ["keepalived"])
    for services in (int(s) for s in args.sizes.split(",")):
        for daemon in daemons:
            built, seconds = reload_latency(services, 10, daemon, args.build_timeout)
            print(
                f"{services * 10:>6} real servers  {daemon:<10} built {built:6.2f} s; "
                f"one weight changed, SIGHUP to kernel {seconds * 1000:8.1f} ms",
                flush=True,
            )
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    if args.skip_load:
        return 0
    lab = Lab(real_servers=3)
    lab.build()
    try:
        for daemon in daemons:
            answered, failed, reached, first = reload_under_load(lab, daemon, args.rate, args.seconds)
            print(
                f"reload under load  {daemon:<10} {answered} answered, {failed} failed "
                f"({reached:.0f} new connections/s reached){'; first: ' + first if first else ''}",
                flush=True,
            )
    finally:
        lab.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
