"""The bundled rules and dashboards against a real Prometheus scraping the real exporter in the lab.

A real ``lvsguard exporter`` process reads the lab director's IPVS table; a
real Prometheus (Debian ``prometheus``) scrapes it every second and evaluates
alerts/lvsguard.rules.yml every second; clients send real HTTP traffic through
the VIPs. Then:

- every rule loads and evaluates without error;
- every dashboard query whose metrics the running components serve returns
  data, with Grafana's variables filled the way Grafana fills them (the
  ``service`` variable from its own query_result() query);
- alerts fire on real kernel state: a service whose real servers are all at
  weight 0, a VIP removed from the director, a sync daemon in the wrong role.

The real actuator (lab.actuator.running_actuator, on the director's table)
is scraped too, so that the panels of its metrics have data once it has
acted: the dashboard test quarantines a real server through its API, has a
quarantine refused and a webhook rejected, and then every query of every
panel must return data.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from lab import traffic
from lab.monitoring import (
    get_json,
    prometheus_config,
    query,
    running_exporter,
    running_prometheus,
)
from lab.panels import (
    RATE_WINDOW,
    actuator_has_acted,
    load_generator,
    metrics_of,
    running_lab_actuator,
    service_variable_value,
)
from lab.polling import poll as lab_poll
from lab.topology import Lab
from lvsguard.ipvs.addresses import local_addresses

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "lvsguard.rules.yml"
WAIT = 60.0  # seconds: guards against a hung process, not timing assertions
STALE = 15.0  # seconds a panel query may stay empty: a scrape slower than the 1 s interval fails and leaves every series stale until the next
ACTUATOR_TOKEN = "dashboards-test-token-0123456789"
T = TypeVar("T")


def poll(what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout: float = WAIT) -> T:
    return lab_poll(what, probe, done, timeout, interval=0.5)


PROBES = "probes:\n  default_tcp: true\npassive:\n  enabled: true\n"


@pytest.fixture(scope="module")
def exporter(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``lvsguard exporter`` process on the lab director's table, probing it; yields its host:port.

    Probes are opt-in: ``default_tcp`` makes the lvs_probe_* and lvs_backend_healthy series the
    dashboards and rules read; passive detection, the lvs_backend_handshake_failures_total and
    lvs_backend_passive_* series of the passive panels.
    """
    with running_exporter(
        tmp_path_factory.mktemp("exporter"), lambda listen: lab.config_yaml(listen=listen) + PROBES
    ) as address:
        yield address


@pytest.fixture(scope="module")
def actuator(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real actuator on the lab director's table (in this process: see lab/actuator.py); yields its base URL."""
    with running_lab_actuator(lab, str(tmp_path_factory.mktemp("actuator") / "ledger.db"), ACTUATOR_TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def prometheus(exporter: str, actuator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with the bundled rules, scraping the exporter and the actuator every second."""
    jobs = {"lvsguard-exporter": [exporter], "lvsguard-actuator": [actuator.removeprefix("http://")]}
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), prometheus_config(jobs, rule_files=[RULES])) as url:
        yield url


def firing_or_pending(prometheus: str, alertname: str) -> list[dict[str, str]]:
    alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    return [a["labels"] for a in alerts if a["labels"]["alertname"] == alertname]


@pytest.fixture(scope="module")
def traffic_history(lab: Lab, prometheus: str) -> None:
    """Real HTTP traffic through the NAT and DR VIPs for a few rate windows, scraped as it happens."""
    stop_at = time.monotonic() + 2.5 * float(RATE_WINDOW.rstrip("s"))
    while time.monotonic() < stop_at:
        traffic.http_get(lab, lab.nat.address, lab.nat.port, 6)
        traffic.http_get(lab, lab.dr.address, lab.dr.port, 3)
        time.sleep(0.5)
    poll(
        "the rate of new connections in Prometheus",
        lambda: query(prometheus, f"rate(ipvs_connections_total[{RATE_WINDOW}])"),
        lambda result: bool(result) and float(result[0]["value"][1]) > 0,
    )


def test_prometheus_evaluates_every_bundled_rule_without_error(prometheus: str) -> None:
    expected = sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])

    def rules() -> list[dict[str, Any]]:
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    loaded = poll(
        "every rule evaluated",
        rules,
        lambda found: len(found) == expected and all(r["health"] != "unknown" for r in found),
    )
    broken = {r["name"]: r.get("lastError") for r in loaded if r["health"] != "ok"}
    assert not broken, broken


GENERATOR = load_generator()


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for name, build in GENERATOR.DASHBOARDS.items():
        board = build()
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                out.append((f"{name}: {panel['title']} {t['refId']}", t["expr"]))
    return out


def returns_data(prometheus: str, expr: str) -> bool:
    """Whether ``expr`` returns data within ``STALE`` s (one failed scrape empties an instant query for a second)."""
    try:
        poll(f"data for {expr}", lambda: query(prometheus, expr), bool, timeout=STALE)
    except AssertionError:
        return False
    return True


def test_every_dashboard_query_returns_data(
    lab: Lab, exporter: str, actuator: str, prometheus: str, traffic_history: None, capsys: pytest.CaptureFixture[str]
) -> None:
    interface = local_addresses(lab.director.netns)[lab.director.server_ipv4]
    lab.ipvsadm("--start-daemon", "master", "--mcast-interface", interface, "--syncid", "9")
    try:
        with actuator_has_acted(lab, actuator, prometheus, ACTUATOR_TOKEN, "dashboards test"):
            poll("the sync daemon in Prometheus", lambda: query(prometheus, "ipvs_sync_daemon_up == 1"), bool)
            served = set(get_json(f"{prometheus}/api/v1/label/__name__/values")["data"])
            variables = {
                "${service:raw}": service_variable_value(GENERATOR, prometheus, exporter, lab.nat.name),
                "$director": exporter,
                "$__rate_interval": RATE_WINDOW,
            }
            empty, unservable, checked = [], [], 0
            for where, expr in dashboard_queries():
                missing = metrics_of(expr) - served
                if missing:
                    unservable.append(f"{where} (needs {', '.join(sorted(missing))})")
                    continue
                for variable, value in variables.items():
                    expr = expr.replace(variable, value)
                checked += 1
                if not returns_data(prometheus, expr):
                    empty.append(f"{where}: {expr}")
    finally:
        lab.ipvsadm("--stop-daemon", "master")
    with capsys.disabled():
        print(f"\ndashboard queries: {checked} of {len(dashboard_queries())} returned data from the lab")
    assert not unservable, "queries of metrics the lab does not serve:\n" + "\n".join(unservable)
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_service_down_fires_when_every_real_server_is_at_weight_0(lab: Lab, prometheus: str) -> None:
    nat = lab.nat
    service = {"local_address": nat.address, "local_port": str(nat.port)}
    assert not [a for a in firing_or_pending(prometheus, "LvsServiceDown") if service.items() <= a.items()]
    for node in nat.weights:
        lab.set_weight(nat, node, 0)
    try:
        alerts = poll(
            "LvsServiceDown for the nat service",
            lambda: [a for a in firing_or_pending(prometheus, "LvsServiceDown") if service.items() <= a.items()],
            bool,
        )
        assert alerts[0]["severity"] == "critical" and alerts[0]["service"] == nat.name
        others = {a["local_address"] for a in firing_or_pending(prometheus, "LvsServiceDown")} - {nat.address}
        assert lab.dr.address not in others
    finally:
        for node, weight in nat.weights.items():
            lab.set_weight(nat, node, weight)
    poll(
        "LvsServiceDown resolved after the weights came back",
        lambda: [a for a in firing_or_pending(prometheus, "LvsServiceDown") if service.items() <= a.items()],
        lambda alerts: not alerts,
    )


def address_with_prefix(netns: str, address: str) -> tuple[str, str]:
    """(``address/prefixlen``, interface) of an address of the namespace, from ``ip -json addr``."""
    listing = json.loads(
        subprocess.run(["ip", "-n", netns, "-json", "addr"], capture_output=True, text=True, check=True).stdout
    )
    for link in listing:
        for info in link.get("addr_info", []):
            if info["local"] == address:
                return f"{address}/{info['prefixlen']}", link["ifname"]
    raise AssertionError(f"{address} is on no interface of {netns}")


def test_vip_not_held_when_the_director_loses_its_address(lab: Lab, prometheus: str) -> None:
    vip = lab.dr.address
    cidr, interface = address_with_prefix(lab.director.netns, vip)
    assert not [a for a in firing_or_pending(prometheus, "LvsVipNotHeld") if a["vip"] == vip]
    subprocess.run(["ip", "-n", lab.director.netns, "addr", "del", cidr, "dev", interface], check=True)
    try:
        poll(
            "LvsVipNotHeld pending or firing",
            lambda: [a for a in firing_or_pending(prometheus, "LvsVipNotHeld") if a["vip"] == vip],
            bool,
        )
        assert query(prometheus, f'max by (vip) (lvs_director_vip_owned{{vip="{vip}"}})')[0]["value"][1] == "0"
    finally:
        subprocess.run(["ip", "-n", lab.director.netns, "addr", "add", cidr, "dev", interface], check=True)
    poll(
        "LvsVipNotHeld resolved",
        lambda: [a for a in firing_or_pending(prometheus, "LvsVipNotHeld") if a["vip"] == vip],
        lambda a: not a,
    )


def test_sync_daemon_in_the_wrong_role_on_the_director_holding_the_vips(lab: Lab, prometheus: str) -> None:
    interface = local_addresses(lab.director.netns)[lab.director.server_ipv4]
    assert not firing_or_pending(prometheus, "IpvsSyncDaemonWrongRole")
    lab.ipvsadm("--start-daemon", "backup", "--mcast-interface", interface, "--syncid", "9")
    try:
        alerts = poll("IpvsSyncDaemonWrongRole", lambda: firing_or_pending(prometheus, "IpvsSyncDaemonWrongRole"), bool)
        assert [a["expected_role"] for a in alerts] == ["master"]
    finally:
        lab.ipvsadm("--stop-daemon", "backup")
    poll(
        "IpvsSyncDaemonWrongRole resolved",
        lambda: firing_or_pending(prometheus, "IpvsSyncDaemonWrongRole"),
        lambda a: not a,
    )


def test_connection_share_follows_the_weights_under_wrr(lab: Lab, prometheus: str, traffic_history: None) -> None:
    """The imbalance recording rule on real traffic: wrr spreads new connections as weighted (ratio near 1)."""
    nat = lab.nat
    record = f'lvs_backend:connection_share_over_weight_share:rate10m{{local_address="{nat.address}",local_port="{nat.port}"}}'
    rows = poll(
        "the imbalance ratio of the nat service",
        lambda: query(prometheus, record),
        lambda r: len(r) == len(nat.weights),
    )
    ratios = {row["metric"]["real_server"]: float(row["value"][1]) for row in rows}
    assert all(0.5 < ratio < 2 for ratio in ratios.values()), ratios
    assert not [
        a for a in firing_or_pending(prometheus, "LvsConnectionImbalance") if a.get("local_address") == nat.address
    ]
