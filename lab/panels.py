"""What every dashboard panel needs from the lab, for the dashboard query test and the previews.

The panels of the actuator's metrics have series only once the actuator has
acted: an applied quarantine, a refused one, a rejected webhook. The test
(tests/integration/test_alerts_prometheus.py) and the previews
(dashboards/previews.py) run the same real actuator on the lab director's
table and make it act the same way, here; they also read the dashboards the
same way (the panels' queries, the metric names in a query, Grafana's
``$service`` variable).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from lab import monitoring
from lab.actuator import running_actuator
from lab.polling import poll
from lab.topology import ROOT, Lab
from lvsguard.actuator.settings import ActuatorSettings, Names, Quorum

GENERATOR_PATH = ROOT / "dashboards" / "generate.py"
RATE_WINDOW = "15s"  # $__rate_interval at a 1 s scrape interval, with room for UML's slowness
WAIT = 60.0  # seconds: guards against a hung process, not a timing assertion
METRIC = re.compile(r"\b((?:ipvs|lvs|lvsguard)_[a-z0-9_]+|up)\b(?!\s*(?:=|!=|=~|!~))")
ACTED_SERIES = ("lvsguard_quarantined", "lvsguard_refusals_total", 'lvsguard_webhook_requests_total{status!~"2.."}')


def load_generator() -> ModuleType:
    """dashboards/generate.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("lvsguard_dashboard_generator", GENERATOR_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metrics_of(expr: str) -> set[str]:
    """Metric names in a query (label values and grouping labels left out)."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return set(METRIC.findall(expr))


def service_variable_values(generator: ModuleType, prometheus: str, director: str, service_name: str) -> list[str]:
    """What Grafana offers in ``$service`` for the lab service ``service_name``: its query_result() lines, through the regex.

    One value when all is well; none while a failed scrape leaves the
    exporter's series stale, so a caller polls for exactly one.
    """
    inner = re.fullmatch(r"query_result\((.*)\)", generator.SERVICE["query"], re.S)
    if inner is None:
        raise monitoring.MonitoringError(
            f"the service variable's query is not a query_result(): {generator.SERVICE['query']}"
        )
    rows = monitoring.query(prometheus, inner.group(1).replace("$director", director))
    lines = ["{" + ",".join(f'{k}="{v}"' for k, v in row["metric"].items()) + "}" for row in rows]
    regex = re.compile(generator.SERVICE["regex"].strip("/").replace("(?<value>", "(?P<value>"))
    return [v for v in (m.group("value") for m in map(regex.search, lines) if m) if f'service="{service_name}"' in v]


def service_variable_value(generator: ModuleType, prometheus: str, director: str, service_name: str) -> str:
    """The one value of ``$service`` for ``service_name`` (AssertionError naming what was found after ``WAIT`` s)."""
    values = poll(
        f"one $service value for {service_name!r}",
        lambda: service_variable_values(generator, prometheus, director, service_name),
        lambda v: len(v) == 1,
        WAIT,
        0.5,
    )
    return values[0]


@contextmanager
def running_lab_actuator(lab: Lab, ledger_path: str, token: str) -> Iterator[str]:
    """The real actuator on the lab director's table, with the exporter's names; yields its base URL.

    Its quorum for the DR service is every real server, so that a quarantine
    there is refused without side effects.
    """
    names = Names(  # the names of the exporter's config, as an operator gives both the same file
        services={s.name: s.key for s in lab.services.values()},
        real_servers={s.key: {node: key for key, node in s.backends} for s in lab.services.values()},
    )
    settings = ActuatorSettings(
        tokens={"lab": token}, hold_down=0.0, names=names, service_min_healthy={lab.dr.key: Quorum(len(lab.dr.weights))}
    )
    with running_actuator(settings, lab.director.netns, ledger_path) as url:
        yield url


def post(url: str, body: Any, token: str) -> tuple[int, dict[str, Any]]:
    """POST JSON with the actuator's token; (status, JSON reply), errors included."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def actuator_has_acted(lab: Lab, actuator: str, prometheus: str, token: str, reason: str) -> Iterator[None]:
    """rs3 of the NAT service quarantined (held inside the block), a quarantine refused and a webhook rejected, all scraped.

    The series of the actuator's panels exist only after such events; the
    block starts once Prometheus holds two samples of each in the rate window,
    what increase() over ``$__rate_interval`` needs. AssertionError if the
    actuator answers otherwise.
    """
    target = {"service": str(lab.nat.key), "real_server": str(lab.nat.real_server("rs3")), "reason": reason}
    status, reply = post(f"{actuator}/api/v1/quarantine", target, token)
    if not (status < 300 and reply.get("result") == "applied"):
        raise AssertionError(f"quarantine of rs3 not applied: {status} {reply}")
    try:
        quorum = {"service": str(lab.dr.key), "real_server": str(lab.dr.real_server("rs1")), "reason": reason}
        status, reply = post(f"{actuator}/api/v1/quarantine", quorum, token)
        if not (reply.get("result") == "refused" and status >= 400):
            raise AssertionError(f"quarantine against the DR quorum not refused: {status} {reply}")
        status, reply = post(f"{actuator}/webhook/alertmanager", {"version": "4"}, token)
        if status != 400:
            raise AssertionError(f"a webhook without alerts not rejected with 400: {status} {reply}")
        for series in ACTED_SERIES:
            expr = f"count_over_time({series}[{RATE_WINDOW}]) >= 2"
            poll(
                f"two samples of {series} in Prometheus",
                functools.partial(monitoring.query, prometheus, expr),
                bool,
                WAIT,
                0.5,
            )
        yield
    finally:
        status, reply = post(f"{actuator}/api/v1/restore", target, token)
        if status >= 300:
            raise AssertionError(f"restore of rs3 failed: {status} {reply}")
