"""A real server dies (SIGKILL) -> weight 0 in the kernel: lvsguard's fast path vs keepalived's own checker.

Runs inside the lab VM (``bench/run.py`` starts it there; by hand:
``lab/vm.sh .venv/bin/python bench/keepalived_checker.py --kills 5``). On the
lab, a service of its own (``TCP 192.0.2.10:82`` -> every real server's port
8081, one ``lab.servers`` process per real server, as lab.e2e_loop) carries a
client load of ``--rate`` new connections a second through the VIP from the
client's namespace. Each kill SIGKILLs rs1's process (its port then answers
with a reset), polls the kernel every ~5 ms until rs1's weight is 0, keeps the
load on for a moment, starts the process again and polls until the weight is
back. The wait before each kill is 1 s plus a random part of one check
interval (``--seed``): a server dies at any point of a checker's cycle. A
fixed wait would kill at the same phase every time, one fixed by the
previous restore (which comes right after a successful check), and so
measure one point of the cycle instead of the spread: in runs with a fixed
1 s wait lvsguard's probes met the kill 0.06-0.08 s after it nearly every
time. Two checkers (three with ``--checkers``), one after the other, at each setting:

- keepalived's checker (Debian ``keepalived -C``): ``virtual_server`` with a
  ``TCP_CHECK`` per real server and ``inhibit_on_failure`` (weight 0 instead
  of removal); keepalived creates the service itself;
- lvsguard: a real ``lvsguard exporter`` process with one ``tcp`` check per
  real server and ``probes.publish`` to a real ``lvsguard actuator`` process
  (the fast path), which writes the weight over netlink;

at the common setting (``delay_loop 1, connect_timeout 1, retry 1``; lvsguard
``interval 1s, timeout 1s, fall 2``) and the fast one (``delay_loop 0.1,
connect_timeout 0.1, retry 0``; lvsguard ``interval 100ms, timeout 100ms,
fall 1``). Both bring a real server back on its first success (lvsguard
``rise 1``).

Reported per checker and setting: median and max time from the kill to
weight 0, failed client requests per kill (and how many of them started
after the weight was 0), split by how they failed: cut (connected, then
reset or closed before a full answer: in progress when the process died, no
checker can save those), refused (the connect got a RST: sent to the dead
real server) and timed out (no answer within the client's 1 s), CPU of the checker's processes (utime+stime over a
quiet stretch with the checks running: keepalived's processes; the exporter
and the actuator processes, the actuator being the part that writes the weight)
and the restore time (the process listens again -> weight back).

Not a test: the figures depend on the machine; compare only numbers of one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import conntrack
from lab.e2e_loop import BACKEND_PORT, HTTPService
from lab.processes import stop
from lab.topology import VIP_NAT, Lab
from lvsguard.errors import LvsguardError
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.netns import entered
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, VirtualService

SERVICE_PORT = 82  # on the NAT VIP: the lab uses 80, 443, 53 and the e2e loop 81
KEEPALIVED = "/usr/sbin/keepalived"
TOKEN = "bench-keepalived-token-0123456789ab"
POLL = 0.005  # seconds between two reads of the victim's weight
WAIT = 30.0  # seconds: a guard against a hung part, not a measurement
CPU_WINDOW = 10.0  # seconds of checks without kills over which CPU is measured
CLK_TCK = os.sysconf("SC_CLK_TCK")
# How a client request ended. CUT: connected, then reset or closed before a full answer (the request in
# progress when the process died: no checker can save it); REFUSED: the connect got a RST (a connection
# sent to the dead real server); TIMEOUT: no answer within the client's 1 s; OTHER: another connect error.
OK, CUT, REFUSED, TIMEOUT, OTHER = "ok", "cut", "refused", "timeout", "other"
FAILURES = (CUT, REFUSED, TIMEOUT, OTHER)


@dataclass(frozen=True)
class Setting:
    name: str
    delay_loop: float  # keepalived; lvsguard's interval
    connect_timeout: float  # keepalived; lvsguard's timeout
    retry: int  # keepalived; lvsguard's fall is retry + 1

    @property
    def fall(self) -> int:
        return self.retry + 1


SETTINGS = (Setting("slow", 5.0, 1.0, 1), Setting("common", 1.0, 1.0, 1), Setting("fast", 0.1, 0.1, 0))
WARMUP = 3.0
"""Seconds of client load before the first kill: the passive rule counts a peer once it has one handshake
timeout (2 s here) of history, so a kill in the load's first seconds measured its cold start, not a kill."""
SETTING_INTERVAL = {s.name: f"{s.delay_loop:g} s" for s in SETTINGS}
PASSIVE = "lvsguard+passive"  # lvsguard with passive detection from conntrack events beside its checks
PASSIVE_CONFIG = (  # a fixed 2 s hold-down: kills seconds apart would double it each time (a flapping server)
    "passive: {enabled: true, source: conntrack, handshake_timeout: 2s, min_failures: 1, min_passes: 1,"
    " chance: 0.05, holddown_min: 2s, holddown_max: 2s}\n"
)


@dataclass
class Kill:
    to_zero: float  # seconds from the kill to weight 0
    restore: float  # seconds from listening again to the weight back
    failed: int  # client requests that failed between the kill and the weight back
    failed_after_zero: int  # of them, those started after the weight was 0
    how: dict[str, int]  # of them, how many ended in each of FAILURES
    judged: float | None = None  # lvsguard: seconds from the kill to the exporter's transition (probe and fall)
    audited: float | None = None  # lvsguard: seconds from the kill to the actuator's first ledger record of it
    post: tuple[float, float] | None = (
        None  # lvsguard: the exporter's publisher, ms queued and ms for the POST (its log)
    )


@dataclass
class Result:
    checker: str
    setting: str
    kills: list[Kill] = field(default_factory=list)
    cpu_percent: float = 0.0
    rate: float = 0.0  # new client connections a second made during the kills
    asked: float = 0.0  # new client connections a second asked for

    def summary(self) -> dict[str, float]:
        zero = [k.to_zero for k in self.kills]
        parts = {}
        if all(k.judged is not None and k.audited is not None for k in self.kills):
            parts = {
                "judged_median_s": statistics.median(k.judged or 0.0 for k in self.kills),
                "judged_max_s": max(k.judged or 0.0 for k in self.kills),
                "judged_to_actuator_median_s": statistics.median(
                    (k.audited or 0.0) - (k.judged or 0.0) for k in self.kills
                ),
                "judged_to_actuator_max_s": max((k.audited or 0.0) - (k.judged or 0.0) for k in self.kills),
                "actuator_to_zero_median_s": statistics.median(k.to_zero - (k.audited or 0.0) for k in self.kills),
                "actuator_to_zero_max_s": max(k.to_zero - (k.audited or 0.0) for k in self.kills),
            }
        return {
            "median_to_zero_s": statistics.median(zero),
            "max_to_zero_s": max(zero),
            "failed_per_kill_median": statistics.median(k.failed for k in self.kills),
            "failed_per_kill_max": max(k.failed for k in self.kills),
            "failed_after_zero_total": sum(k.failed_after_zero for k in self.kills),
            **{f"{how}_per_kill_median": statistics.median(k.how[how] for k in self.kills) for how in FAILURES},
            **{f"{how}_per_kill_max": max(k.how[how] for k in self.kills) for how in FAILURES},
            "restore_median_s": statistics.median(k.restore for k in self.kills),
            "restore_max_s": max(k.restore for k in self.kills),
            "cpu_percent": self.cpu_percent,
            "rate": self.rate,
            "asked_rate": self.asked,
            **parts,
        }


class BenchError(RuntimeError):
    """A part of the bench did not start or did not reach the state it waits for."""


# --- client load ---------------------------------------------------------------------------


class Load:
    """``rate`` new connections a second to the VIP from the client's namespace; each one GET, its outcome kept.

    One thread per 50 connections a second: a thread waits for each answer.
    """

    PER_THREAD = 50.0

    def __init__(self, netns: str, address: str, port: int, rate: float):
        threads = max(1, math.ceil(rate / self.PER_THREAD))
        self.netns, self.address, self.port, self.interval = netns, address, port, threads / rate
        self.outcomes: list[tuple[float, str]] = []  # (start time, OK or how the request failed)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"client-load-{i}", daemon=True) for i in range(threads)
        ]
        self.started = 0.0

    def __enter__(self) -> Load:
        self.started = time.time()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def rate(self) -> float:
        """New connections a second made so far."""
        return len(self.outcomes) / max(1e-9, time.time() - self.started)

    def _run(self) -> None:
        with entered(self.netns):
            slot = time.monotonic()
            while not self._stop.is_set():
                started = time.time()
                self.outcomes.append((started, self._one()))
                slot += self.interval
                delay = slot - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    slot = time.monotonic()

    def _one(self) -> str:
        """One request: ``OK`` or how it failed (``CUT``, ``REFUSED``, ``TIMEOUT``, ``OTHER``)."""
        connected = False
        try:
            with socket.create_connection((self.address, self.port), timeout=1.0) as sock:
                connected = True
                sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                return OK if data.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"] else CUT
        except TimeoutError:
            return TIMEOUT
        except ConnectionRefusedError:
            return CUT if connected else REFUSED
        except OSError:
            return CUT if connected else OTHER

    def failures(self, since: float, until: float) -> list[tuple[float, str]]:
        """(start time, how it failed) of the requests started in [since, until) that failed."""
        return [(t, how) for t, how in list(self.outcomes) if since <= t < until and how != OK]


# --- the two checkers ------------------------------------------------------------------------


def keepalived_config(key: ServiceKey, servers: list[RealServer], setting: Setting) -> str:
    """A checker-only keepalived.conf: one virtual_server, TCP_CHECK with inhibit_on_failure per real server."""
    lines = [
        "global_defs {",
        "    router_id lvsguard_bench",
        "}",
        f"virtual_server {key.address} {key.port} {{",
        f"    delay_loop {setting.delay_loop:g}",
        "    lb_algo wrr",
        "    lb_kind NAT",
        "    protocol TCP",
    ]
    for rs in servers:
        lines += [
            f"    real_server {rs.key.address} {rs.key.port} {{",
            f"        weight {rs.weight}",
            "        inhibit_on_failure",
            "        TCP_CHECK {",
            f"            connect_timeout {setting.connect_timeout:g}",
            f"            retry {setting.retry}",
            f"            delay_before_retry {setting.delay_loop:g}",
            "        }",
            "    }",
        ]
    return "\n".join(lines + ["}"]) + "\n"


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (keepalived forks its checker; ip netns exec execs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


@contextmanager
def keepalived(
    lab: Lab, key: ServiceKey, servers: list[RealServer], setting: Setting, workdir: Path
) -> Iterator[list[int]]:
    """keepalived's checker for the bench service; yields the pids of its processes."""
    conf = workdir / f"keepalived-{setting.name}.conf"
    conf.write_text(keepalived_config(key, servers, setting))
    log = open(workdir / f"keepalived-{setting.name}.log", "ab")
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.director.netns,
            KEEPALIVED,
            "-n",
            "-l",
            "-D",
            "-C",
            "-f",
            str(conf),
            "-p",
            str(workdir / "k.pid"),
            "-c",
            str(workdir / "k-checkers.pid"),
            "-r",
            str(workdir / "k-vrrp.pid"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield [proc.pid]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Lvsguard:
    """The running lvsguard side: the exporter's and the actuator's pids, their URLs and the actuator's ledger."""

    pids: list[int]
    metrics_url: str
    ledger: Path
    exporter_log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def lvsguard(
    lab: Lab,
    kernel: NetlinkIPVS,
    key: ServiceKey,
    servers: list[RealServer],
    setting: Setting,
    workdir: Path,
    passive: bool = False,
) -> Iterator[Lvsguard]:
    """The bench service in the kernel, a real ``lvsguard actuator`` process, and an ``lvsguard exporter`` whose tcp checks publish to it.

    Both are processes of their own, as in production: an actuator in the
    bench's process would share its interpreter lock with the client load and
    the 5 ms weight poll, which slows its answer to the exporter.
    """
    with ExitStack() as stack:
        if weight_of(kernel, key, servers[0].key) is not None:  # left by a checker before
            kernel.delete_service(key)
        kernel.add_service(VirtualService(key, "wrr"))
        stack.callback(kernel.delete_service, key)
        kernel.add_real_servers(key, servers)
        token = workdir / "token"
        token.write_text(TOKEN + "\n")
        tokens = workdir / "tokens"
        tokens.write_text(f"probes:{TOKEN}\n")
        token.chmod(0o600)  # lvsguard refuses a token file others can read
        tokens.chmod(0o600)
        listen, actuator_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        url = f"http://{actuator_listen}"
        name = setting.name + ("-passive" if passive else "")
        ledger = workdir / f"actuator-{name}.db"
        config = workdir / f"lvsguard-{name}.yaml"
        config.write_text(
            f'director:\n  netns: {lab.director.netns}\nexporter:\n  listen: "{listen}"\n'
            f"actuator:\n  hold_down: 0\n  job_poll_interval: 0.2\n  rate_limit: {{actions: 0}}\n"
            f"probes:\n  default_tcp: false\n  refresh: 1s\n"
            f'  publish: {{mode: actuator, url: "{url}", token_file: "{token}"}}\n'
            f'  checks:\n    - {{type: tcp, service: "{key}", interval: {setting.delay_loop * 1000:g}ms,'
            f" timeout: {setting.connect_timeout * 1000:g}ms, fall: {setting.fall}, rise: 1}}\n"
            + (PASSIVE_CONFIG if passive else "")
        )
        commands = {
            "actuator": [
                "actuator",
                "--config",
                str(config),
                "--listen",
                actuator_listen,
                "--token-file",
                str(tokens),
                "--ledger",
                str(ledger),
            ],
            "exporter": ["exporter", "--config", str(config)],
        }
        pids = []
        for what, argv in commands.items():
            log = open(workdir / f"{what}-{name}.log", "ab")
            stack.callback(log.close)
            proc = subprocess.Popen(
                [sys.executable, "-m", "lvsguard.cli", *argv],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(stop, proc)
            pids.append(proc.pid)
            if what == "actuator":
                until(
                    lambda p=proc: answers(f"{url}/metrics") != b"" or p.poll() is not None, "the actuator", timeout=120
                )
                if proc.poll() is not None:
                    raise BenchError(
                        f"lvsguard actuator exited: {(workdir / f'actuator-{name}.log').read_text()[-2000:]}"
                    )
        until(
            lambda: b"lvs_backend_healthy" in answers(f"http://{listen}/metrics"),
            "the exporter's first probes",
            timeout=120,
        )
        yield Lvsguard(pids, f"http://{listen}/metrics", ledger, workdir / f"exporter-{name}.log")


def judged_at(metrics: bytes, victim: RealServerKey) -> float:
    """The exporter's time of the victim's last health transition (``lvs_backend_health_last_change_timestamp_seconds``)."""
    for line in metrics.decode().splitlines():
        if (
            line.startswith("lvs_backend_health_last_change_timestamp_seconds{")
            and f'"{victim.address}"' in line
            and f'"{victim.port}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    raise BenchError(f"no lvs_backend_health_last_change_timestamp_seconds for {victim} in the exporter's metrics")


def last_post(log: Path, victim: RealServerKey) -> tuple[float, float] | None:
    """(queued_ms, post_ms) of the exporter's last ``probe_published`` line about the victim, None when it has none."""
    found = None
    for line in log.read_text(errors="replace").splitlines():
        if " probe_published " in line and f"real_server={victim}" in line and "queued_ms=" in line:
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            found = (float(fields["queued_ms"]), float(fields["post_ms"]))
    return found


def audited_at(ledger: Path, victim: RealServerKey, since: float) -> float:
    """When the actuator recorded its first decision about the victim after ``since`` (its audit log).

    Polled: the weight can be 0 in the kernel a moment before the audit row is committed. A passive
    verdict can come before ``since`` (the kill's time is taken once the process is reaped, and its port
    refuses before that): the first quarantine from 1 s before ``since`` on.
    """
    deadline = time.monotonic() + 5.0
    while True:
        conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(
                "SELECT MIN(at) FROM audit WHERE real_server = ? AND action = 'quarantine' AND at >= ?",
                (str(victim), since - 1.0),
            ).fetchone()
        finally:
            conn.close()
        if row is not None and row[0] is not None:
            return float(row[0])
        if time.monotonic() > deadline:
            raise BenchError(f"the actuator's ledger {ledger} has no audit row for {victim} since the kill")
        time.sleep(POLL)


def answers(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bytes(r.read())
    except OSError:
        return b""


def until(done: object, what: str, timeout: float = WAIT, poll: float = POLL) -> float:
    """Poll ``done()`` until true; the time (epoch seconds) it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return time.time()
        time.sleep(poll)
    raise BenchError(f"waited {timeout:.0f} s for {what}")


# --- the run -------------------------------------------------------------------------------------


def weight_of(kernel: NetlinkIPVS, key: ServiceKey, rs: RealServerKey) -> int | None:
    try:
        found = kernel.read_service(key).real_server(rs)
    except LvsguardError:
        return None
    return found.weight if found is not None else None


def measure(
    checker: str,
    setting: Setting,
    lab: Lab,
    kernel: NetlinkIPVS,
    services: dict[str, HTTPService],
    kills: int,
    rate: float,
    workdir: Path,
    seed: int = 0,
) -> Result:
    key = ServiceKey("TCP", VIP_NAT, SERVICE_PORT)
    servers = [RealServer(RealServerKey(lab.node(n).ipv4, BACKEND_PORT), 3, Forward.MASQ) for n in services]
    victim, full = servers[0].key, servers[0].weight
    result = Result(checker, setting.name, asked=rate)
    rng = random.Random(seed)  # the same kill phases for both checkers of a run
    running = (
        keepalived(lab, key, servers, setting, workdir)
        if checker == "keepalived"
        else lvsguard(lab, kernel, key, servers, setting, workdir, passive=checker == PASSIVE)
    )
    with running as started:
        pids = started.pids if isinstance(started, Lvsguard) else started
        until(
            lambda: all(weight_of(kernel, key, rs.key) == full for rs in servers),
            f"{checker}'s service at full weight",
            timeout=60,
        )
        time.sleep(2 * setting.delay_loop)
        tree = [p for pid in pids for p in process_tree(pid)]
        cpu0, t0 = cpu_seconds(tree), time.monotonic()
        time.sleep(CPU_WINDOW)
        result.cpu_percent = 100 * (cpu_seconds(tree) - cpu0) / (time.monotonic() - t0)
        with Load(lab.client.netns, VIP_NAT, SERVICE_PORT, rate) as load:
            time.sleep(WARMUP)  # clients' history on every real server before the first kill, as in production
            for i in range(kills):
                time.sleep(1.0 + rng.uniform(0.0, setting.delay_loop))  # any phase of the checker's cycle
                killed = services["rs1"].kill()
                zero = until(
                    lambda: weight_of(kernel, key, victim) == 0,
                    f"{checker} ({setting.name}): weight 0 after kill {i + 1}",
                )
                judged = audited = None
                if isinstance(started, Lvsguard):  # the exporter's transition time, read before the restore replaces it
                    audited = audited_at(started.ledger, victim, killed) - killed
                    if checker != PASSIVE:  # a passive verdict is no health transition: its post is the audit
                        judged = judged_at(answers(started.metrics_url), victim) - killed
                time.sleep(max(1.0, 2 * setting.delay_loop))  # requests now go to the others only
                post = last_post(started.exporter_log, victim) if isinstance(started, Lvsguard) else None
                listening = services["rs1"].start()
                back = until(
                    lambda: weight_of(kernel, key, victim) == full,
                    f"{checker} ({setting.name}): weight back after kill {i + 1}",
                )
                failed = load.failures(
                    killed - 1.0, back
                )  # a request started up to 1 s before the kill may fail with it
                kill = Kill(
                    zero - killed,
                    back - listening,
                    len(failed),
                    sum(1 for t, _ in failed if t >= zero),
                    {how: sum(1 for _, h in failed if h == how) for how in FAILURES},
                    judged,
                    audited,
                    post,
                )
                parts = (
                    f" (judged {judged:.3f} s, actuator {audited:.3f} s"
                    if judged is not None and audited is not None
                    else ""
                )
                parts += (
                    f"{', ' if parts else ' ('}publisher queued {post[0]:g} ms, POST {post[1]:g} ms)"
                    if post is not None
                    else (")" if parts else "")
                )
                result.kills.append(kill)
                print(
                    f"  {checker} {setting.name} kill {i + 1}: weight 0 after {zero - killed:.3f} s{parts}, back {back - listening:.3f} s"
                    f" after listening, {len(failed)} failed requests"
                    f" ({', '.join(f'{n} {how}' for how, n in kill.how.items() if n)})",
                    flush=True,
                )
            result.rate = load.rate()
    return result


def report(results: list[Result]) -> str:
    """The table: failed requests per kill in all, then by how they failed (cut at the kill, refused, timed out)."""
    lines = [
        "| checker | setting | client rate (asked) | kill -> weight 0 (median / max) | failed requests / kill (median / max)"
        " | cut at the kill | refused | timed out | failed after weight 0 | CPU | restore (median / max) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r.summary()
        how = " | ".join(f"{s[f'{h}_per_kill_median']:g} / {s[f'{h}_per_kill_max']:g}" for h in (CUT, REFUSED, TIMEOUT))
        other = f" (+{s['other_per_kill_max']:g} other)" if s["other_per_kill_max"] else ""
        lines.append(
            f"| {r.checker} | {r.setting} ({SETTING_INTERVAL[r.setting]}) | {s['rate']:.0f}/s ({r.asked:g}/s)"
            f" | {s['median_to_zero_s']:.3f} / {s['max_to_zero_s']:.3f} s"
            f" | {s['failed_per_kill_median']:g} / {s['failed_per_kill_max']:g}{other} | {how}"
            f" | {s['failed_after_zero_total']:g} | {s['cpu_percent']:.1f} % | {s['restore_median_s']:.3f} / {s['restore_max_s']:.3f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="kills per checker and setting")
    parser.add_argument("--rate", type=float, default=40.0, help="new client connections a second through the VIP")
    parser.add_argument("--settings", default="common,fast", help="of slow (5 s), common (1 s), fast (0.1 s)")
    parser.add_argument(
        "--checkers", default="keepalived,lvsguard", help=f"of keepalived, lvsguard, {PASSIVE} (conntrack on for all)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the random wait before each kill")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "keepalived_checker.json"))
    args = parser.parse_args(argv)
    chosen = [s for s in SETTINGS if s.name in args.settings.split(",")]
    plan = [
        (checker, setting)
        for setting in chosen
        for checker in args.checkers.split(",")
        if not (checker == PASSIVE and setting.name == "fast")
    ]
    try:
        results = run(plan, [args.rate], args.kills, args.seed, args.json)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print()
    print(report(results))
    return 0


def run(plan: list[tuple[str, Setting]], rates: list[float], kills: int, seed: int, json_path: str) -> list[Result]:
    """Each (checker, setting) of ``plan`` at each of ``rates`` (new connections a second), in one lab.

    Conntrack is on for every checker when the plan has lvsguard+passive: its
    cost is then the same for all.
    """
    if not os.path.exists(KEEPALIVED) and any(checker == "keepalived" for checker, _ in plan):
        raise BenchError(f"{KEEPALIVED} is not installed (Debian package keepalived)")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="lvsguard-kc-") as tmp, Lab() as lab, ExitStack() as stack:
        workdir = Path(tmp)
        services = {rs.name: HTTPService(rs.name, rs.netns) for rs in lab.real_servers}
        for service in services.values():
            service.spawn()
            stack.callback(service.close)
        for service in services.values():
            service.ready()
        kernel = NetlinkIPVS(lab.director.netns)
        stack.callback(kernel.close)
        if any(checker == PASSIVE for checker, _ in plan):
            conntrack.track(lab.director.netns)
        for rate in rates:
            for checker, setting in plan:
                print(f"== {checker}, {setting.name} setting, {rate:g} new connections/s", flush=True)
                results.append(measure(checker, setting, lab, kernel, services, kills, rate, workdir, seed))
                save(results, json_path)
                print(report(results[-1:]).splitlines()[-1], flush=True)
    return results


def save(results: list[Result], path: str) -> None:
    """The results so far as JSON: written after each checker, so a run cut short keeps what it measured."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(
        json.dumps(
            [
                {"checker": r.checker, "setting": r.setting, **r.summary(), "kills": [asdict(k) for k in r.kills]}
                for r in results
            ],
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
