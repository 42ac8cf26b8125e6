"""The monitoring loop end to end in the lab, every part real, each hop timed.

A real server's HTTP service dies; the exporter's probe sees it; Prometheus
scrapes the exporter and evaluates the bundled rules (alerts/lvsguard.rules.yml);
``LvsRealServerDown`` fires; Alertmanager, running a copy of the bundled
alerts/alertmanager.yml, delivers it to the actuator's webhook; the actuator
sets the real server's weight to 0 in the kernel over netlink. The service
starts again, and the same path in reverse restores the weight.

The fast path is off: the exporter's probes publish nothing (no
``probes.publish``), only their metrics, so the loop runs through Prometheus and
Alertmanager as it does for an operator who uses the bundled rules.

The loop runs on a service of its own (``TCP 192.0.2.10:81`` -> the real
servers' port 8081) whose HTTP service is one ``lab.servers`` process per real
server, so that one real server's service can be killed (SIGKILL) and started
again without touching the lab's other services. Used by
tests/integration/test_e2e_loop_kernel.py and bench/e2e_loop.py.

Where a component stamps a hop itself, that time is used (the exporter's
``lvs_backend_health_last_change_timestamp_seconds``, the sample's time in
Prometheus' TSDB, Prometheus' ``activeAt``, Alertmanager's ``updatedAt``, the
actuator's audit time); the others are polled every ~20 ms (the kernel's weight,
and the resolved alert leaving Prometheus and Alertmanager).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from lab import monitoring
from lab.actuator import running_actuator
from lab.topology import ROOT, VIP_NAT, Lab
from lvsguard.actuator.settings import ActuatorSettings, RateLimit
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, VirtualService

SERVICE_NAME = "e2e"
SERVICE_PORT = 81  # on the NAT VIP; the lab's own services use 80, 443 and 53
BACKEND_PORT = 8081
ALERT = "LvsRealServerDown"
SCRAPE_INTERVAL = 1.0  # seconds, Prometheus' scrape of the exporter and the actuator
EVALUATION_INTERVAL = 1.0  # seconds, Prometheus' rule evaluation
PROBE = {"type": "http", "service": SERVICE_NAME, "interval": "250ms", "timeout": "250ms", "rise": 2, "fall": 2}
PROBE_DETECTION = 0.5  # seconds: fall 2 x interval 0.25 s (a killed service answers with a reset at once)
TOKEN = "e2e-loop-token-0123456789abcdef"
WAIT = 90.0  # seconds: a guard against a hung component, not a timing assertion
POLL = 0.02  # seconds between two reads of what the loop waits for
START_TIMEOUT = 60.0  # seconds for a real server's HTTP service (a Python process under UML) to listen

T = TypeVar("T")


class LoopError(RuntimeError):
    """A part of the loop did not start or did not do its step in time; the message says which and what was seen."""


def wait(what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise LoopError(f"{what}: still {value!r} after {timeout:.0f} s")
        time.sleep(POLL)


class HTTPService:
    """One real server's own HTTP service on ``BACKEND_PORT``: a ``lab.servers`` process serving only its namespace."""

    def __init__(self, name: str, netns: str) -> None:
        self.name = name
        self.netns = netns
        self.process: subprocess.Popen[str] | None = None
        self._log = tempfile.TemporaryFile()

    def spawn(self) -> None:
        """Start the process (it listens once ``ready`` returns)."""
        spec = {"servers": [[self.name, self.netns]], "tcp": [BACKEND_PORT], "tcp6": [], "udp": []}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lab.servers"],
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()

    def ready(self) -> float:
        """Wait for the ``ready`` line; the time (epoch seconds) the service listens."""
        process = self.process
        assert process is not None and process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline().strip() if readable else ""
        if line != "ready":
            self._log.seek(0)
            raise LoopError(
                f"the HTTP service of {self.name} did not start: {self._log.read().decode(errors='replace')[-500:]}"
            )
        return time.time()

    def start(self) -> float:
        self.spawn()
        return self.ready()

    def kill(self) -> float:
        """SIGKILL the service; the time (epoch seconds) it is gone and its port answers with a reset."""
        process, self.process = self.process, None
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        gone = time.time()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        return gone

    def close(self) -> None:
        if self.process is not None:
            self.kill()
        self._log.close()


@dataclass(frozen=True)
class Bounds:
    """What the loop may take, from the configuration of each hop (seconds).

    Way in: the probe's failure shows in the next scrape (<= one scrape
    interval), the rule sees it at its next evaluation (<= one evaluation
    interval), then waits its ``for``; a rule with a ``for`` goes from pending to
    firing at the first evaluation at or after ``activeAt + for``, so it can take
    up to one more evaluation interval; Alertmanager sends a new group after
    ``group_wait``; the last second is the probe's detection (``PROBE_DETECTION``),
    the webhook and the netlink write. The rule has no ``for`` (the probe's
    rise/fall debounces), so both ``for`` terms are 0 here; they are read from
    the rules file, so the bound follows the rule if one is added.

    Way back: the same, but a resolved alert of a group that already notified
    goes out at the group's next ``group_interval`` tick, not after group_wait.
    """

    scrape: float
    evaluation: float
    rule_for: float
    group_wait: float
    group_interval: float

    @property
    def for_tolerance(self) -> float:
        return self.evaluation if self.rule_for > 0 else 0.0

    @property
    def way_in(self) -> float:
        return self.scrape + self.evaluation + self.rule_for + self.for_tolerance + self.group_wait + 1.0

    @property
    def way_back(self) -> float:
        return self.scrape + self.evaluation + self.group_interval + 1.0

    def describe(self) -> str:
        return (
            f"scrape {self.scrape:g} + evaluation {self.evaluation:g} + for {self.rule_for:g}"
            f" (+{self.for_tolerance:g} for the for clause) + group_wait {self.group_wait:g} + 1 = {self.way_in:g} s in;"
            f" scrape + evaluation + group_interval {self.group_interval:g} + 1 = {self.way_back:g} s back"
        )


@dataclass(frozen=True)
class Hops:
    """One direction of the loop: each hop's time after the start event, in seconds, in order."""

    start: str
    hops: tuple[tuple[str, float], ...]

    @classmethod
    def since(cls, start: str, at: float, events: list[tuple[str, float]]) -> Hops:
        """Hops from epoch times, in the order they happened (the actuator audits right after its netlink write,
        so the kernel can show the weight a few ms before the audit row exists)."""
        return cls(start, tuple(sorted(((name, t - at) for name, t in events), key=lambda hop: hop[1])))

    @property
    def total(self) -> float:
        """Seconds from the start event to the last hop."""
        return self.hops[-1][1]

    def table(self) -> str:
        lines = [f"  {self.start} at 0.000"]
        previous = 0.0
        for name, at in self.hops:
            lines.append(f"  -> {name:<44} {at:7.3f} s  ({at - previous:+.3f})")
            previous = at
        return "\n".join(lines)


class Loop:
    """The e2e service, its HTTP services, the exporter, actuator, Alertmanager and Prometheus; ``run()`` once per loop."""

    def __init__(self, lab: Lab, workdir: Path, victim: str = "rs1") -> None:
        self.lab = lab
        self.workdir = workdir
        self.victim = lab.node(victim)
        self.key = ServiceKey("TCP", VIP_NAT, SERVICE_PORT)
        self.weights = {rs.name: len(lab.real_servers) - i for i, rs in enumerate(lab.real_servers)}
        self.services = {rs.name: HTTPService(rs.name, rs.netns) for rs in lab.real_servers}
        self.victim_key = RealServerKey(self.victim.ipv4, BACKEND_PORT)
        self.selector = (
            f'local_address="{VIP_NAT}",local_port="{SERVICE_PORT}",'
            f'remote_address="{self.victim.ipv4}",remote_port="{BACKEND_PORT}"'
        )
        am_config = monitoring.alertmanager_config(["http://placeholder/"], workdir / "token")
        timings = monitoring.route_timings(am_config, "quarantine")
        rule_for = monitoring.duration(str(monitoring.rule(ALERT).get("for", "0s")))
        self.bounds = Bounds(
            SCRAPE_INTERVAL, EVALUATION_INTERVAL, rule_for, timings["group_wait"], timings["group_interval"]
        )
        self.stack = ExitStack()
        self.exporter = self.actuator = self.alertmanager = self.prometheus = ""
        self.kernel: NetlinkIPVS | None = None

    # --- set-up -------------------------------------------------------------------------

    def __enter__(self) -> Loop:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for service in self.services.values():  # Python's start-up overlaps the rest
            service.spawn()
            self.stack.callback(service.close)
        self.kernel = NetlinkIPVS(self.lab.director.netns)
        self.stack.callback(self.kernel.close)
        real_servers = tuple(
            RealServer(RealServerKey(self.lab.node(n).ipv4, BACKEND_PORT), w, Forward.MASQ)
            for n, w in self.weights.items()
        )
        self.kernel.add_service(VirtualService(self.key, "wrr"))
        self.stack.callback(self._delete_service)
        self.kernel.add_real_servers(self.key, real_servers)
        self.exporter = self._start_exporter()
        token_file = self.workdir / "lvsguard.token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)  # lvsguard refuses a token file others can read
        settings = ActuatorSettings(
            tokens={"alertmanager": TOKEN},
            hold_down=0.0,  # the loop restores and quarantines the same real server within seconds, on purpose
            rate_limit=RateLimit(actions=0),
        )
        self.actuator = self.stack.enter_context(
            running_actuator(settings, self.lab.director.netns, str(self.workdir / "actuator.db"))
        )
        webhook = f"{self.actuator}/webhook/alertmanager"
        self.alertmanager = self.stack.enter_context(
            monitoring.running_alertmanager(
                self.workdir / "alertmanager", monitoring.alertmanager_config([webhook], token_file)
            )
        )
        config = monitoring.prometheus_config(
            {"lvsguard-exporter": [self.exporter], "lvsguard-actuator": [self.actuator.removeprefix("http://")]},
            alertmanagers=[self.alertmanager.removeprefix("http://")],
            scrape_interval=SCRAPE_INTERVAL,
            evaluation_interval=EVALUATION_INTERVAL,
        )
        self.prometheus = self.stack.enter_context(monitoring.running_prometheus(self.workdir / "prometheus", config))
        for service in self.services.values():
            service.ready()
        selector = f'local_address="{VIP_NAT}",local_port="{SERVICE_PORT}"'
        wait(
            "every e2e real server healthy in Prometheus",
            lambda: monitoring.query(self.prometheus, f"lvs_backend_healthy{{{selector}}} == 1"),
            lambda rows: len(rows) == len(self.services),
        )

    def _delete_service(self) -> None:
        assert self.kernel is not None
        self.kernel.delete_service(self.key)

    def _start_exporter(self) -> str:
        """The exporter as a process, with the loop's service and an http check that publishes nothing (fast path off)."""

        def config_yaml(listen: str) -> str:
            config = yaml.safe_load(self.lab.config_yaml(listen=listen))
            config["services"].append(
                {
                    "name": SERVICE_NAME,
                    "service": str(self.key),
                    "real_servers": [
                        {"name": n, "address": f"{self.lab.node(n).ipv4}:{BACKEND_PORT}"} for n in self.weights
                    ],
                }
            )
            config["probes"] = {"default_tcp": False, "refresh": "1s", "checks": [PROBE]}
            return yaml.safe_dump(config)

        return self.stack.enter_context(monitoring.running_exporter(self.workdir, config_yaml))

    # --- one loop -----------------------------------------------------------------------

    def weight(self) -> int:
        assert self.kernel is not None
        rs = self.kernel.read_service(self.key).real_server(self.victim_key)
        assert rs is not None, f"{self.victim_key} is gone from {self.key}"
        return rs.weight

    def run(self, while_out: Callable[[], None] = lambda: None) -> tuple[Hops, Hops]:
        """Kill the victim's service, wait for weight 0, start it, wait for its weight; the hops of both ways.

        ``while_out`` is called while the victim is quarantined (after every
        hop of the way in is read), e.g. to send client traffic through the VIP.
        """
        weight = self.weights[self.victim.name]
        wait(f"{self.victim.name} at weight {weight} before the loop", self.weight, lambda w: w == weight)
        wait(
            f"no {ALERT} for {self.victim.name} in Alertmanager before the loop", self._in_alertmanager, lambda a: not a
        )
        audit_mark = self._last_audit_id()
        killed = self.services[self.victim.name].kill()
        wait(f"{self.victim.name} at weight 0 in the kernel", self.weight, lambda w: w == 0)
        quarantined = time.time()
        [firing] = wait(
            f"{ALERT} firing in Prometheus", self._in_prometheus, lambda a: len(a) == 1 and a[0]["state"] == "firing"
        )
        [delivered] = wait(f"{ALERT} in Alertmanager", self._in_alertmanager, lambda a: len(a) == 1)
        way_in = Hops.since(
            "service killed (SIGKILL)",
            killed,
            [
                ("probe down in the exporter's /metrics", self._health_changed()),
                ("scraped by Prometheus", self._scraped(0, killed)),
                (f"{ALERT} firing in Prometheus", monitoring.parse_time(firing["activeAt"])),
                ("Alertmanager has the alert", monitoring.parse_time(delivered["updatedAt"])),
                ("actuator applied the webhook (audit)", self._audited("quarantine", audit_mark)),
                ("weight 0 in the kernel (netlink)", quarantined),
            ],
        )
        while_out()
        audit_mark = self._last_audit_id()
        started = self.services[self.victim.name].start()
        seen: dict[str, float] = {}
        observers: dict[str, Callable[[], bool]] = {
            "resolved in Prometheus": lambda: not self._in_prometheus(),
            "resolved in Alertmanager": lambda: not self._in_alertmanager(),
            f"weight {weight} back in the kernel (netlink)": lambda: self.weight() == weight,
        }
        deadline = time.monotonic() + WAIT
        while len(seen) < len(observers):
            for name, observed in observers.items():
                if name not in seen and observed():
                    seen[name] = time.time()
            if time.monotonic() > deadline:
                raise LoopError(f"the way back: only {sorted(seen)} within {WAIT:.0f} s")
            time.sleep(POLL)
        back = [
            ("probe up in the exporter's /metrics", self._health_changed()),
            ("scraped by Prometheus", self._scraped(1, started)),
            ("actuator applied the webhook (audit)", self._audited("restore", audit_mark)),
            *seen.items(),
        ]
        way_back = Hops.since("service listening again", started, back)
        return way_in, way_back

    def failed_scrapes(self, window: str = "10m") -> int:
        """Scrapes of the exporter that failed in the last ``window`` (a failed scrape makes every series stale)."""
        rows = monitoring.query(
            self.prometheus,
            f'sum(count_over_time(up{{job="lvsguard-exporter"}}[{window}])'
            f' - sum_over_time(up{{job="lvsguard-exporter"}}[{window}]))',
        )
        return int(float(rows[0]["value"][1])) if rows else 0

    def _in_prometheus(self) -> list[dict[str, Any]]:
        return [a for a in monitoring.prometheus_alerts(self.prometheus, ALERT) if self._is_victim(a["labels"])]

    def _in_alertmanager(self) -> list[dict[str, Any]]:
        return [a for a in monitoring.alertmanager_alerts(self.alertmanager, ALERT) if self._is_victim(a["labels"])]

    def _is_victim(self, labels: dict[str, str]) -> bool:
        return (labels.get("local_port"), labels.get("remote_address")) == (str(SERVICE_PORT), self.victim.ipv4)

    def _health_changed(self) -> float:
        """The exporter's own time of the victim's last health transition."""
        with urllib.request.urlopen(f"http://{self.exporter}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "lvs_backend_health_last_change_timestamp_seconds" and self._is_victim(sample.labels):
                    return float(sample.value)
        raise LoopError(f"the exporter serves no health transition time for {self.victim_key} of {self.key}")

    def _scraped(self, value: int, after: float) -> float:
        """The time of the first scrape after ``after`` that stored ``lvs_backend_healthy == value`` for the victim."""
        rows = monitoring.query(self.prometheus, f"lvs_backend_healthy{{{self.selector}}}[2m]")
        times = [float(t) for row in rows for t, v in row["values"] if float(t) >= after and float(v) == value]
        if not times:
            raise LoopError(f"Prometheus stored no lvs_backend_healthy {value} for {self.victim_key} after the event")
        return min(times)

    def _last_audit_id(self) -> int:
        events = monitoring.get_json(f"{self.actuator}/api/v1/audit?limit=1")["events"]
        return int(events[0]["id"]) if events else 0

    def _audited(self, action: str, after: int) -> float:
        """The audit time of the actuator's ``action`` on the victim from Alertmanager's webhook."""
        events = monitoring.get_json(f"{self.actuator}/api/v1/audit?limit=100&after={after}")["events"]
        times = [
            monitoring.parse_time(e["at"])
            for e in events
            if (e["source"], e["action"], e["real_server"], e["result"])
            == ("alertmanager", action, str(self.victim_key), "applied")
        ]
        if not times:
            raise LoopError(
                f"the actuator's audit has no applied {action} of {self.victim_key} from Alertmanager: {events}"
            )
        return min(times)
