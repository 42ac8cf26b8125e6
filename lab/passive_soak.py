"""Passive detection over a long run of clients' own failures and a SYN flood: no real server may be taken out.

One run on a built ``Lab``, for the kernel test
(tests/integration/test_passive_soak_kernel.py) and the benchmark
(``bench/passive.py --false-positives``). A real actuator (in this process,
on loopback) owns the weights; two real ``lvsguard exporter`` processes
publish to it, each with tcp checks of the NAT and DR services of both
families (``nat``, ``dr``, ``nat6``, ``dr6``; every 5 s) and passive
detection from one source: ``table`` (the connection table, NAT and DR, the
default rule) and ``conntrack`` (events, NAT only, judging on a single
refusal: ``min_failures: 1, min_passes: 1, chance: 0.05``, as the kill
benchmark does). Conntrack is on in the director (``lab.conntrack``).

For ``seconds``, through the four VIPs: clients making HTTP requests, clients
that reset each connection right after the handshake, clients that abandon
their handshake (NAT), all with Poisson arrivals, and a SYN flood from a
spoofed range of each family (``lab.synflood``) that the real servers answer
into nowhere: the director routes both ranges out (``synflood.routed``), as
a director's default routes do.
Every second the director's weights are read; at the end the actuator's
audit log and the exporters' metrics and logs. What the detectors counted as
failed handshakes is reported too: the flood and the resets are seen, and
judged to be the clients' doing.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from lab import conntrack, synflood
from lab.actuator import running_actuator
from lab.topology import Lab, LabService
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.netns import entered

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "passive-soak-token-0123456789abcdef"
SOURCES = {
    "table": "{enabled: true, handshake_timeout: 2s}",
    "conntrack": "{enabled: true, source: conntrack, handshake_timeout: 2s, min_failures: 1, min_passes: 1,"
    " chance: 0.05}",
}
SERVICES = ("nat", "dr", "nat6", "dr6")
# (service, mode, new connections a second): what the lab VM's one CPU carries beside the two exporters
CLIENTS = tuple(
    (f"{kind}{family}", mode, rate)
    for family in ("", "6")
    for kind, mode, rate in (
        ("nat", "request", 12.0),
        ("nat", "reset", 6.0),
        ("nat", "abandon", 3.0),
        ("dr", "request", 6.0),
        ("dr", "reset", 3.0),
    )
)
FLOOD = 60.0  # spoofed SYNs a second, a quarter to each VIP


class SoakError(RuntimeError):
    """A part of the run did not start."""


@dataclass
class Arrivals:
    """Poisson arrivals of one kind of client in a thread: ``request`` (HTTP GET), ``reset`` or ``abandon``."""

    lab: Lab
    service: LabService
    mode: str
    rate: float
    done: int = 0
    failed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _one(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.service.address else socket.AF_INET)
        try:
            if self.mode == "abandon":  # closed before the SYN-ACK comes back
                sock.setblocking(False)
                try:
                    sock.connect((self.service.address, self.service.port))
                except BlockingIOError:
                    pass
                return
            sock.settimeout(2.0)
            sock.connect((self.service.address, self.service.port))
            if self.mode == "reset":  # a RST right after the handshake
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            sock.sendall(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
            while sock.recv(4096):
                pass
        except OSError:
            self.failed += 1
        finally:
            sock.close()
            self.done += 1

    def _run(self) -> None:
        rng = random.Random(f"{self.service.name}-{self.mode}")
        with entered(self.lab.client.netns):
            next_at = time.monotonic()
            while not self._stop.is_set():
                self._one()
                next_at += rng.expovariate(self.rate)
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"soak-{self.service.name}-{self.mode}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


class Flood:
    """Spoofed SYNs at ``rate`` a second, to each service in turn (10 at a time), in batches every 0.1 s."""

    def __init__(self, lab: Lab, services: list[LabService], rate: float) -> None:
        self.lab, self.services, self.rate, self.sent = lab, services, rate, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-flood", daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.1):
            due = int(self.rate * (time.monotonic() - t0)) - self.sent
            if due > 0:
                service = self.services[(self.sent // 10) % len(self.services)]
                self.sent += synflood.syn_flood(self.lab.client.netns, service.address, service.port, self.sent, due)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class ExporterProcess:
    """``lvsguard exporter`` as a child process logging to a file; its URL once it serves."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lvsguard.cli", "--log-level", "info", "exporter", "--config", str(config)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while (found := re.search(r"exporter_started url=(\S+)", self.text())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SoakError(f"the exporter did not start: {self.text()[-2000:]}")
            time.sleep(0.2)
        self.url = found.group(1)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return bytes(r.read()).decode()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@dataclass
class SoakResult:
    seconds: float
    clients: list[tuple[str, str, int, int]]  # service, mode, connections made, failed
    syns: int  # spoofed SYNs sent
    weight_changes: list[str]  # every weight seen off its first value
    quarantines: list[str]  # the actuator's audit events that took a real server out
    verdicts: dict[str, int]  # per source: lvs_backend_passive_verdicts_total, summed
    counted: dict[str, dict[str, dict[str, int]]]  # per source and service name: failed handshakes counted, by reason
    log_verdicts: dict[str, int]  # per source: passive_verdict lines in the exporter's log
    paused: dict[str, int]  # per source: passive_paused lines in the exporter's log
    verdict_lines: list[str] = field(default_factory=list)  # the first verdicts logged, of both sources

    def clean(self) -> bool:
        return not self.weight_changes and not self.quarantines and not any(self.verdicts.values())

    def report(self) -> str:
        lines = [f"{self.seconds:.0f} s, {self.syns} spoofed SYNs"]
        lines += [f"  {s} {mode}: {n} connections, {f} failed" for s, mode, n, f in self.clients]
        for source in SOURCES:
            reasons = (
                "; ".join(
                    f"{service} " + ", ".join(f"{n} {r}" for r, n in sorted(by_reason.items()))
                    for service, by_reason in sorted(self.counted[source].items())
                )
                or "none"
            )
            lines.append(
                f"  {source}: {self.verdicts[source]} verdicts ({self.log_verdicts[source]} logged),"
                f" failed handshakes counted: {reasons}; paused {self.paused[source]} times"
            )
        lines.append(f"  weight changes: {len(self.weight_changes)}, quarantines: {len(self.quarantines)}")
        lines += [f"    {w}" for w in self.weight_changes[:10]] + [f"    {q}" for q in self.quarantines[:10]]
        lines += [f"    {v}" for v in self.verdict_lines[:20]]
        return "\n".join(lines)


def _weights(reader: NetlinkIPVS, lab: Lab, services: list[LabService]) -> dict[str, int]:
    table = reader.read()
    out = {}
    for service in services:
        found = table.service(service.key)
        for name in service.weights:
            rs = found.real_server(service.real_server(name)) if found is not None else None
            out[f"{service.name} {name}"] = rs.weight if rs is not None else -1
    return out


def _sums(text: str) -> tuple[int, dict[str, dict[str, int]]]:
    """(passive verdicts, failed handshakes by service name and reason, the non-zero ones) from an exporter's metrics."""
    verdicts, counted = 0.0, dict[str, Counter[str]]()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "lvs_backend_passive_verdicts_total":
                verdicts += sample.value
            elif sample.name == "lvs_backend_handshake_failures_total" and sample.value:
                by_reason = counted.setdefault(sample.labels.get("service", ""), Counter())
                by_reason[sample.labels.get("reason", "")] += int(sample.value)
    return int(verdicts), {service: dict(c) for service, c in counted.items()}


def run(lab: Lab, seconds: float, workdir: Path, log: bool = True) -> SoakResult:
    """The run: ``seconds`` of traffic and flood with both detectors and the actuator; what happened."""
    services = [lab.services[name] for name in SERVICES]
    token = workdir / "soak-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    settings = ActuatorSettings(tokens={"probes": TOKEN}, hold_down=0.0, job_poll_interval=0.2)
    ledger = str(workdir / "soak-ledger.db")
    changes: list[str] = []
    with ExitStack() as stack:
        conntrack.track(lab.director.netns)
        stack.callback(conntrack.untrack, lab.director.netns)
        stack.enter_context(synflood.routed(lab.director.netns))  # the SYN-ACKs leave, as from a real director
        reader = NetlinkIPVS(lab.director.netns)
        stack.callback(reader.close)
        first = _weights(reader, lab, services)
        url = stack.enter_context(running_actuator(settings, lab.director.netns, ledger))
        exporters = {}
        for source, passive in SOURCES.items():
            config = workdir / f"soak-{source}.yaml"
            config.write_text(
                lab.config_yaml(listen="127.0.0.1:0")
                + "probes:\n  checks:\n"
                + "".join(
                    f"    - {{type: tcp, service: {s.name}, interval: 5s, timeout: 1s, rise: 2, fall: 3}}\n"
                    for s in services
                )
                + f"  publish: {{url: '{url}', token_file: '{token}'}}\n"
                + f"passive: {passive}\n"
            )
            exporters[source] = ExporterProcess(config, workdir / f"soak-exporter-{source}.log")
            stack.callback(exporters[source].stop)
        time.sleep(2 * 5.0)  # the checks' first results, the detectors' baselines
        clients = [Arrivals(lab, lab.services[name], mode, rate) for name, mode, rate in CLIENTS]
        flood = Flood(lab, services, FLOOD)
        for c in clients:
            c.start()
            stack.callback(c.stop)
        flood.start()
        stack.callback(flood.stop)
        t0 = time.monotonic()
        next_report = t0 + 60
        while (now := time.monotonic()) - t0 < seconds:
            seen = _weights(reader, lab, services)
            changes += [f"{now - t0:.0f} s: {k} {first[k]} -> {w}" for k, w in seen.items() if w != first[k]]
            if log and now >= next_report:
                next_report += 60
                made = sum(c.done for c in clients)
                print(f"soak: {now - t0:.0f} s, {made} connections, {flood.sent} SYNs, {len(changes)} weight changes")
            time.sleep(1.0)
        elapsed = time.monotonic() - t0
        flood.stop()
        for c in clients:
            c.stop()
        time.sleep(3.0)  # the last handshakes time out and are judged
        sums = {source: _sums(e.metrics()) for source, e in exporters.items()}
        texts = {source: e.text() for source, e in exporters.items()}
    opened = Ledger.open(ledger)
    try:
        quarantines = [
            f"{e.source} {e.action} {e.service} {e.real_server} {e.result}: {e.reason}"
            for e in reversed(opened.audit_events(limit=100_000))
            if e.action == "quarantine"
        ]
    finally:
        opened.close()
    return SoakResult(
        seconds=elapsed,
        clients=[(c.service.name, c.mode, c.done, c.failed) for c in clients],
        syns=flood.sent,
        weight_changes=changes,
        quarantines=quarantines,
        verdicts={s: v for s, (v, _) in sums.items()},
        counted={s: c for s, (_, c) in sums.items()},
        log_verdicts={s: t.count(" passive_verdict ") for s, t in texts.items()},
        paused={s: t.count(" passive_paused ") for s, t in texts.items()},
        verdict_lines=[
            f"{s}: {line}" for s, t in texts.items() for line in t.splitlines() if " passive_verdict " in line
        ][:40],
    )
