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

import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, TypeVar

import pytest
import yaml

from actuator.settings import ActuatorSettings, Names, Quorum
from lab.actuator import running_actuator
from lab.polling import poll as lab_poll
from lab import traffic
from lab.topology import Lab
from lvsguard.ipvs.addresses import local_addresses

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "lvsguard.rules.yml"
WAIT = 60.0  # seconds: guards against a hung process, not timing assertions
ACTUATOR_TOKEN = "dashboards-test-token-0123456789"
RATE_WINDOW = "15s"  # $__rate_interval at a 1 s scrape interval, with room for UML's slowness
METRIC = re.compile(r"\b((?:ipvs|lvs|lvsguard)_[a-z0-9_]+|up)\b(?!\s*(?:=|!=|=~|!~))")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout: float = WAIT) -> T:
    return lab_poll(what, probe, done, timeout, interval=0.5)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not ready within {WAIT} s: {log.read_text()[-2000:]}")


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def exporter(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``lvsguard exporter`` process on the lab director's table; yields its host:port."""
    tmp = tmp_path_factory.mktemp("exporter")
    address = f"127.0.0.1:{free_port()}"
    (tmp / "lvsguard.yaml").write_text(lab.config_yaml(listen=address))
    lvsguard = Path(sys.executable).with_name("lvsguard")
    process = spawn([str(lvsguard), "exporter", "--config", str(tmp / "lvsguard.yaml")], tmp / "exporter.log")
    try:
        wait_http(f"http://{address}/metrics", process, tmp / "exporter.log")
        yield address
    finally:
        stop(process)


@pytest.fixture(scope="module")
def actuator(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real actuator on the lab director's table (in this process: see lab/actuator.py); yields its base URL."""
    every_dr_server = Quorum(len(lab.dr.weights))  # so that the dashboard test has a quarantine refused, without side effects
    names = Names(  # the names of the exporter's config, as an operator gives both the same file
        services={s.name: s.key for s in lab.services.values()},
        real_servers={s.key: {node: key for key, node in s.backends} for s in lab.services.values()},
    )
    settings = ActuatorSettings(tokens={"test": ACTUATOR_TOKEN}, hold_down=0.0, names=names,
                                service_min_healthy={lab.dr.key: every_dr_server})
    ledger = tmp_path_factory.mktemp("actuator") / "ledger.db"
    with running_actuator(settings, lab.director.netns, str(ledger)) as url:
        yield url


@pytest.fixture(scope="module")
def prometheus(exporter: str, actuator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with the bundled rules, scraping the exporter and the actuator every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Prometheus is not installed (apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "lvsguard-exporter", "static_configs": [{"targets": [exporter]}]},
            {"job_name": "lvsguard-actuator", "static_configs": [{"targets": [actuator.removeprefix("http://")]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        binary,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    process = spawn(argv, tmp / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", process, tmp / "prometheus.log")
        yield url
    finally:
        stop(process)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    body = get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", f"{expr}: {body}"
    result = body["data"]["result"]
    return result if isinstance(result, list) else [result]


def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    """POST JSON with the actuator's token; (status, JSON reply), errors included."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {ACTUATOR_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def actuator_has_acted(lab: Lab, actuator: str, prometheus: str) -> Iterator[None]:
    """A quarantine applied (held inside the block), one refused and one webhook rejected, all scraped by Prometheus.

    The series of the actuator's panels exist only after such events; the
    block waits until Prometheus holds two samples of each, what increase()
    over ``$__rate_interval`` needs.
    """
    nat = lab.nat
    target = {"service": str(nat.key), "real_server": str(nat.real_server("rs3")), "reason": "dashboards test"}
    status, reply = post(f"{actuator}/api/v1/quarantine", target)
    assert status < 300 and reply["result"] == "applied", reply
    try:
        quorum = {"service": str(lab.dr.key), "real_server": str(lab.dr.real_server("rs1")), "reason": "dashboards test"}
        status, reply = post(f"{actuator}/api/v1/quarantine", quorum)
        assert reply["result"] == "refused" and status >= 400, reply
        status, reply = post(f"{actuator}/webhook/alertmanager", {"version": "4"})
        assert status == 400, reply
        for series in ("lvsguard_quarantined", "lvsguard_refusals_total", 'lvsguard_webhook_requests_total{status!~"2.."}'):
            expr = f"count_over_time({series}[{RATE_WINDOW}]) >= 2"
            poll(f"two samples of {series} in Prometheus", lambda expr=expr: query(prometheus, expr), bool)
        yield
    finally:
        status, reply = post(f"{actuator}/api/v1/restore", target)
        assert status < 300, reply


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
    poll("the rate of new connections in Prometheus", lambda: query(prometheus, f"rate(ipvs_connections_total[{RATE_WINDOW}])"),
         lambda result: bool(result) and float(result[0]["value"][1]) > 0)


def test_prometheus_evaluates_every_bundled_rule_without_error(prometheus: str) -> None:
    expected = sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])

    def rules() -> list[dict[str, Any]]:
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    loaded = poll("every rule evaluated", rules, lambda found: len(found) == expected and all(r["health"] != "unknown" for r in found))
    broken = {r["name"]: r.get("lastError") for r in loaded if r["health"] != "ok"}
    assert not broken, broken


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lvsguard_dashboard_generator", ROOT / "dashboards" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()


def metrics_of(expr: str) -> set[str]:
    """Metric names in a query (label values and grouping labels left out)."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return set(METRIC.findall(expr))


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for name, build in GENERATOR.DASHBOARDS.items():
        board = build()
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                out.append((f"{name}: {panel['title']} {t['refId']}", t["expr"]))
    return out


def service_variable_value(prometheus: str, exporter: str, service_name: str) -> str:
    """What Grafana puts in ``$service`` for the lab service: its query_result() line, through the regex."""
    inner = re.fullmatch(r"query_result\((.*)\)", GENERATOR.SERVICE["query"], re.S)
    assert inner
    rows = query(prometheus, inner.group(1).replace("$director", exporter))
    lines = ["{" + ",".join(f'{k}="{v}"' for k, v in row["metric"].items()) + "}" for row in rows]
    regex = re.compile(GENERATOR.SERVICE["regex"].strip("/").replace("(?<value>", "(?P<value>"))
    values = [m.group("value") for m in map(regex.search, lines) if m]
    chosen = [v for v in values if f'service="{service_name}"' in v]
    assert len(chosen) == 1, values
    return chosen[0]


def test_every_dashboard_query_returns_data(
    lab: Lab, exporter: str, actuator: str, prometheus: str, traffic_history: None, capsys: pytest.CaptureFixture[str]
) -> None:
    interface = local_addresses(lab.director.netns)[lab.director.server_ipv4]
    lab.ipvsadm("--start-daemon", "master", "--mcast-interface", interface, "--syncid", "9")
    try:
        with actuator_has_acted(lab, actuator, prometheus):
            poll("the sync daemon in Prometheus", lambda: query(prometheus, "ipvs_sync_daemon_up == 1"), bool)
            served = set(get_json(f"{prometheus}/api/v1/label/__name__/values")["data"])
            variables = {
                "${service:raw}": service_variable_value(prometheus, exporter, lab.nat.name),
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
                if not query(prometheus, expr):
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
    listing = json.loads(subprocess.run(["ip", "-n", netns, "-json", "addr"], capture_output=True, text=True, check=True).stdout)
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
        poll("LvsVipNotHeld pending or firing", lambda: [a for a in firing_or_pending(prometheus, "LvsVipNotHeld") if a["vip"] == vip], bool)
        assert query(prometheus, f'max by (vip) (lvs_director_vip_owned{{vip="{vip}"}})')[0]["value"][1] == "0"
    finally:
        subprocess.run(["ip", "-n", lab.director.netns, "addr", "add", cidr, "dev", interface], check=True)
    poll("LvsVipNotHeld resolved", lambda: [a for a in firing_or_pending(prometheus, "LvsVipNotHeld") if a["vip"] == vip], lambda a: not a)


def test_sync_daemon_in_the_wrong_role_on_the_director_holding_the_vips(lab: Lab, prometheus: str) -> None:
    interface = local_addresses(lab.director.netns)[lab.director.server_ipv4]
    assert not firing_or_pending(prometheus, "IpvsSyncDaemonWrongRole")
    lab.ipvsadm("--start-daemon", "backup", "--mcast-interface", interface, "--syncid", "9")
    try:
        alerts = poll("IpvsSyncDaemonWrongRole", lambda: firing_or_pending(prometheus, "IpvsSyncDaemonWrongRole"), bool)
        assert [a["expected_role"] for a in alerts] == ["master"]
    finally:
        lab.ipvsadm("--stop-daemon", "backup")
    poll("IpvsSyncDaemonWrongRole resolved", lambda: firing_or_pending(prometheus, "IpvsSyncDaemonWrongRole"), lambda a: not a)


def test_connection_share_follows_the_weights_under_wrr(lab: Lab, prometheus: str, traffic_history: None) -> None:
    """The imbalance recording rule on real traffic: wrr spreads new connections as weighted (ratio near 1)."""
    nat = lab.nat
    record = f'lvs_backend:connection_share_over_weight_share:rate10m{{local_address="{nat.address}",local_port="{nat.port}"}}'
    rows = poll("the imbalance ratio of the nat service", lambda: query(prometheus, record), lambda r: len(r) == len(nat.weights))
    ratios = {row["metric"]["real_server"]: float(row["value"][1]) for row in rows}
    assert all(0.5 < ratio < 2 for ratio in ratios.values()), ratios
    assert not [a for a in firing_or_pending(prometheus, "LvsConnectionImbalance") if a.get("local_address") == nat.address]
