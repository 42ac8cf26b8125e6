"""Prometheus, Alertmanager, node_exporter and the lvsguard exporter as processes beside the lab.

The end-to-end loop (lab.e2e_loop), its test and its benchmark run the real
monitoring stack on loopback: a Prometheus that scrapes the lab's exporter and
actuator and evaluates the bundled rules (alerts/lvsguard.rules.yml), and an
Alertmanager that runs a copy of the bundled example (alerts/alertmanager.yml)
in which only the actuator's address and token file are swapped. Routes,
group_wait, group_interval and inhibitions stay the file's own, so what is
measured is what an operator who drops the files in gets.

The dashboard and probe tests, the previews and the loop all start these
processes here, one way: in the caller's network namespace (the VM's root one,
where the actuator listens, or the host's), on a free loopback port, with their
data and logs in a work directory; an error quotes the end of the log. A test
that kills a process on purpose takes the ``Server`` (URL and process) from
``prometheus_server`` or ``alertmanager_server``.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.processes import stop
from lab.topology import LabError

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "lvsguard.rules.yml"
ALERTMANAGER_EXAMPLE = ROOT / "alerts" / "alertmanager.yml"
ACTUATOR_RECEIVER = "lvsguard-actuator"
READY_TIMEOUT = 60.0  # seconds for a process to answer /-/ready (start-up is slow under UML on a loaded machine)


class MonitoringError(LabError):
    """Prometheus or Alertmanager is missing, did not start, or answered something unexpected; the message says which."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary(names: Sequence[str], package: str) -> str:
    """The first of ``names`` on PATH; MonitoringError naming the Debian package otherwise."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise MonitoringError(f"{names[0]} is not installed (apt-get install {package})")


def get_json(url: str, timeout: float = 10.0) -> Any:
    """The JSON body of a GET (urllib's errors, an OSError, pass through)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def parse_time(text: str) -> float:
    """Epoch seconds of an RFC 3339 time as Prometheus (nanoseconds) and Alertmanager (milliseconds) write it."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        raise MonitoringError(f"not an RFC 3339 time: {text!r}")
    whole, fraction, zone = match.groups()
    stamp = datetime.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + float("0." + (fraction or "0"))


@dataclass(frozen=True)
class Server:
    """A process started here and the base URL it answers on."""

    url: str
    process: subprocess.Popen[bytes]


def _wait_ready(url: str, process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MonitoringError(f"{name} exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise MonitoringError(f"{url} not ready within {READY_TIMEOUT:.0f} s: {log.read_text()[-2000:]}")


@contextmanager
def running_process(argv: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (stderr to ``log``) until ``ready_url`` answers 200; stopped on the way out."""
    with open(log, "w") as err:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_ready(ready_url, process, argv[0], log)
        yield process
    finally:
        stop(process, timeout=15.0)


@contextmanager
def running_exporter(workdir: Path, config_yaml: Callable[[str], str]) -> Iterator[str]:
    """Run ``lvsguard exporter`` on a free loopback port; yields its ``host:port`` once /metrics answers.

    ``config_yaml`` gives the exporter's config for a listen address (the
    lab's ``lambda listen: lab.config_yaml(listen=listen)``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    (workdir / "lvsguard.yaml").write_text(config_yaml(address))
    argv = [str(Path(sys.executable).with_name("lvsguard")), "exporter", "--config", str(workdir / "lvsguard.yaml")]
    with running_process(argv, f"http://{address}/metrics", workdir / "exporter.log"):
        yield address


@contextmanager
def running_node_exporter(workdir: Path) -> Iterator[str]:
    """Run Debian's ``prometheus-node-exporter`` (load average only) on a free loopback port; yields its ``host:port``."""
    workdir.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    argv = [
        binary(["prometheus-node-exporter", "node_exporter"], "prometheus-node-exporter"),
        "--collector.disable-defaults",
        "--collector.loadavg",
        f"--web.listen-address={address}",
    ]
    with running_process(argv, f"http://{address}/metrics", workdir / "node-exporter.log"):
        yield address


def prometheus_config(
    jobs: Mapping[str, Sequence[str]],
    *,
    alertmanagers: Sequence[str] = (),
    rule_files: Sequence[Path] = (RULES,),
    scrape_interval: float = 1.0,
    evaluation_interval: float = 1.0,
) -> dict[str, Any]:
    """A Prometheus config: one static scrape job per name (``host:port`` targets), the rules, the Alertmanagers."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": f"{scrape_interval:g}s", "evaluation_interval": f"{evaluation_interval:g}s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]} for job, targets in jobs.items()
        ],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return config


@contextmanager
def running_prometheus(workdir: Path, config: Mapping[str, Any]) -> Iterator[str]:
    """Run Debian's ``prometheus`` with ``config`` on a free loopback port; yields its base URL."""
    with prometheus_server(workdir, config) as server:
        yield server.url


@contextmanager
def prometheus_server(workdir: Path, config: Mapping[str, Any]) -> Iterator[Server]:
    """``running_prometheus`` for a caller that needs the process too (to kill it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(dict(config)))
    port = free_port()
    argv = [
        binary(["prometheus"], "prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with running_process(argv, f"{url}/-/ready", workdir / "prometheus.log") as process:
        yield Server(url, process)


def alertmanager_config(
    webhook_urls: Sequence[str], token_file: Path, example: Path = ALERTMANAGER_EXAMPLE
) -> dict[str, Any]:
    """The bundled example with its actuator receiver pointed at ``webhook_urls`` (one per director) and ``token_file``.

    Every other setting of the receiver's first webhook entry (send_resolved,
    max_alerts, the bearer authorization) is kept for each URL; routes,
    timings and inhibitions are not touched.
    """
    config = yaml.safe_load(example.read_text())
    receivers = [r for r in config.get("receivers", []) if r.get("name") == ACTUATOR_RECEIVER]
    if not receivers or not receivers[0].get("webhook_configs"):
        raise MonitoringError(f"{example}: no receiver {ACTUATOR_RECEIVER!r} with webhook_configs")
    template = receivers[0]["webhook_configs"][0]
    webhooks = []
    for url in webhook_urls:
        webhook = copy.deepcopy(template)
        webhook["url"] = url
        webhook.setdefault("http_config", {}).setdefault("authorization", {})["credentials_file"] = str(token_file)
        webhooks.append(webhook)
    receivers[0]["webhook_configs"] = webhooks
    return dict(config)


def route_timings(config: Mapping[str, Any], action: str) -> dict[str, float]:
    """group_wait, group_interval and repeat_interval (seconds) of the route an alert with ``lvsguard_action=action`` takes."""
    root = config["route"]
    for route in root.get("routes", []):
        for matcher in route.get("matchers", []):
            match = re.fullmatch(r'\s*lvsguard_action\s*(=~|=)\s*"([^"]*)"\s*', matcher)
            if match and re.fullmatch(match.group(2) if match.group(1) == "=~" else re.escape(match.group(2)), action):
                return {
                    key: duration(str(route.get(key, root.get(key))))
                    for key in ("group_wait", "group_interval", "repeat_interval")
                }
    raise MonitoringError(f"no route of the Alertmanager config matches lvsguard_action={action!r}")


def duration(text: str) -> float:
    """Seconds of a Prometheus duration (``1s``, ``5m``, ``1h30m``, ``250ms``)."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise MonitoringError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def rule(name: str, rules: Path = RULES) -> dict[str, Any]:
    """The alerting rule ``name`` of a rules file."""
    for group in yaml.safe_load(rules.read_text())["groups"]:
        for item in group["rules"]:
            if item.get("alert") == name:
                return dict(item)
    raise MonitoringError(f"{rules}: no alerting rule {name!r}")


@contextmanager
def running_alertmanager(workdir: Path, config: Mapping[str, Any]) -> Iterator[str]:
    """Run Debian's ``prometheus-alertmanager`` with ``config`` on a free loopback port, no cluster; yields its base URL.

    ``--cluster.listen-address=`` turns the gossip cluster off: a lone
    clustered Alertmanager holds notifications back until its peers settle.
    """
    with alertmanager_server(workdir, config) as server:
        yield server.url


@contextmanager
def alertmanager_server(workdir: Path, config: Mapping[str, Any]) -> Iterator[Server]:
    """``running_alertmanager`` for a caller that needs the process too (to kill it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(dict(config)))
    port = free_port()
    argv = [
        binary(["prometheus-alertmanager", "alertmanager"], "prometheus-alertmanager"),
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with running_process(argv, f"{url}/-/ready", workdir / "alertmanager.log") as process:
        yield Server(url, process)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query (a vector or a matrix as a list)."""
    body = get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if body.get("status") != "success":
        raise MonitoringError(f"query {expr!r}: {body}")
    result = body["data"]["result"]
    return result if isinstance(result, list) else [result]


def prometheus_alerts(prometheus: str, alertname: str) -> list[dict[str, Any]]:
    """Prometheus' pending and firing alerts named ``alertname`` (labels, state, activeAt)."""
    return [
        a
        for a in get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
        if a["labels"].get("alertname") == alertname
    ]


def post_alerts(alertmanager: str, alerts: Sequence[Mapping[str, Any]]) -> None:
    """Alerts into Alertmanager's v2 API, as Prometheus posts them."""
    request = urllib.request.Request(
        f"{alertmanager}/api/v2/alerts",
        data=json.dumps(list(alerts)).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise MonitoringError(f"{alertmanager} answered {response.status} to {len(alerts)} alert(s)")


def alertmanager_alerts(alertmanager: str, alertname: str) -> list[dict[str, Any]]:
    """Alertmanager's unresolved alerts named ``alertname`` (labels, startsAt, updatedAt, status)."""
    matcher = urllib.parse.quote(f'alertname="{alertname}"')
    return list(get_json(f"{alertmanager}/api/v2/alerts?filter={matcher}"))
