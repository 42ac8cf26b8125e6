"""The admin console in a real browser against the real kernel, with real traffic.

Headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium) runs inside the lab VM next to an actuator whose netlink socket is in
the lab's director namespace. One browser for the whole module: under UML the
first page takes about a minute, later ones a few seconds. The VM needs about
2 GiB for Chromium (``lab/vm.sh --mem 2048``).

A real exporter runs beside it (``exporter.main.start_probes`` and the
exporter's HTTP server, from a config as ``lvsguard exporter`` reads it) with
tcp checks of the NAT service's real servers, plus a check of rs3 on a port
where nothing listens; the actuator reads the probe state from its
``/probes.json`` beside its ``/metrics`` (``actuator.exporter_url``).

Screenshots go to ``$LVSGUARD_UI_SCREENSHOTS`` when set (``docs/screenshots``
is made that way), else to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lab import traffic
from lab.actuator import running_actuator
from lab.topology import Lab, LabService
from lvsguard import config
from lvsguard.actuator.probestate import fetch_report, parse_probe_report, report_url
from lvsguard.actuator.settings import ActuatorSettings, Names, Quorum
from lvsguard.actuator.targets import Target
from lvsguard.exporter.main import start_probes
from lvsguard.exporter.probes.metrics import no_report
from lvsguard.exporter.server import ExporterServer, run
from lvsguard.exporter.source import ExporterReader

MIN_MEMORY_KIB = 1_800_000  # Chromium's tab crashes in the lab VM's default 512 MiB


def memory_kib() -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(
        memory_kib() < MIN_MEMORY_KIB,
        reason="Chromium needs about 2 GiB: run this module in "
        "lab/vm.sh --mem 2048 (make test does, in a VM of its own)",
    ),
]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra (pip install -e '.[test]')")
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

TOKEN = "ui-kernel-test-token-0123456789"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
WAIT = 120.0  # seconds; Chromium under UML is slow, and counters lag up to 2 s
CLOSED_PORT = 9  # nothing listens there on the lab's real servers: a check of it fails at once


@contextmanager
def exporter(lab: Lab) -> Iterator[str]:
    """The exporter with its probes, as ``lvsguard exporter`` runs them, for the lab's director; yields its /metrics URL."""
    nat = lab.nat
    cfg = config.loads(
        f"""\
probes:
  default_tcp: false
  refresh: 1s
  checks:
    - {{type: tcp, service: "{nat.key}", interval: 1s, timeout: 1s}}
    - {{type: tcp, name: admin, service: "{nat.key}", real_server: "{nat.real_server("rs3")}", port: {CLOSED_PORT},
       interval: 1s, timeout: 1s, fall: 1}}
""",
        "ui-test.yaml",
    )
    netns = lab.director.netns
    probes = start_probes(cfg, netns)
    started = threading.Event()
    box: list[ExporterServer] = []

    def ready(server: ExporterServer) -> None:
        box.append(server)
        started.set()

    thread = threading.Thread(
        target=run,
        args=(lambda: ExporterReader(netns, "auto"), "127.0.0.1:0"),
        kwargs={
            "ready": ready,
            "names": cfg,
            "probes": probes.engine.metrics if probes else None,
            "probe_report": probes.engine.metrics.report if probes else no_report,
        },
        daemon=True,
    )
    thread.start()
    try:
        assert started.wait(30), "the exporter did not start"
        yield box[0].url + "/metrics"
    finally:
        if box:
            box[0].shutdown()
        thread.join(10)
        if probes is not None:
            probes.stop()


def exporter_health(url: str, lab: Lab) -> dict[str, str]:
    """Each NAT real server's health as the exporter itself says it (read straight, not through the actuator)."""
    raw = parse_probe_report(fetch_report(report_url(url), 30.0))
    nat = lab.nat
    out = {}
    for name in nat.weights:
        checks = [r for (target, _check), r in raw.items() if target == Target(nat.key, nat.real_server(name))]
        out[name] = "unhealthy" if any(r.healthy is False for r in checks) else "healthy" if checks else "unchecked"
    return out


@contextmanager
def actuator(lab: Lab, tmp: Path, exporter_url: str) -> Iterator[str]:
    """An actuator (job threads on) for the lab's director, quorum 2 on the NAT service; yields its URL."""
    nat = lab.nat
    names = Names(
        services={"nat": nat.key}, real_servers={nat.key: {name: nat.real_server(name) for name in nat.weights}}
    )
    role = tmp / "role"
    role.write_text("MASTER\n")
    settings = ActuatorSettings(
        tokens={"operator": TOKEN},
        hold_down=0.0,
        job_poll_interval=0.2,
        names=names,
        service_min_healthy={nat.key: Quorum(2)},
        role_file=str(role),
        exporter_url=exporter_url,
    )
    with running_actuator(settings, lab.director.netns, str(tmp / "ledger.db")) as url:
        yield url


@contextmanager
def chromium() -> Iterator[Any]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver (make setup does)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lvsguard-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(240)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def background_traffic(lab: Lab, service: LabService) -> Iterator[None]:
    """New connections to ``service`` all the time (so connections/s is not 0) until the block ends."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            traffic.http_get(lab, service.address, service.port, 5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


class Console:
    """The browser on the console, with the few moves an operator makes."""

    def __init__(self, driver: Any, url: str, shots: Path):
        self.d = driver
        self.url = url
        self.shots = shots

    def go(self, path: str) -> None:
        self.d.get(self.url + path)

    def until(self, check: Callable[[], Any], what: str) -> Any:
        return WebDriverWait(self.d, WAIT, poll_frequency=0.5).until(lambda _d: check(), message=f"waiting for {what}")

    def text(self, css: str) -> str:
        return str(self.d.find_element(By.CSS_SELECTOR, css).text)

    def live(self, key: str) -> str:
        return self.text(f'[data-live="{key}"]')

    def flashes(self) -> list[str]:
        return [e.text for e in self.d.find_elements(By.CSS_SELECTOR, "p.flash")]

    def row_action(self, real_server: str, action: str, **fields: str) -> str:
        """Press ``action`` in the real server's row, then confirm; returns the confirmation's question."""
        row = self.d.find_element(By.ID, f"rs-{real_server}")
        form = row.find_element(By.XPATH, f".//form[input[@name='action' and @value='{action}']]")
        for name, value in fields.items():
            box = form.find_element(By.NAME, name)
            box.clear()
            box.send_keys(value)
        form.find_element(By.TAG_NAME, "button").click()
        question = self.until(lambda: self.d.find_elements(By.ID, "question"), "the confirmation")[0].text
        self.d.find_element(By.ID, "confirm").click()
        self.until(lambda: not self.d.find_elements(By.ID, "question"), "the outcome")
        return str(question)

    def shot(self, name: str) -> None:
        self.d.save_screenshot(str(self.shots / f"{name}.png"))


def weight(lab: Lab, service: LabService, name: str) -> int:
    svc = lab.read_table().service(service.key)
    assert svc is not None, f"{service.key} is gone from the kernel table"
    rs = svc.real_server(service.real_server(name))
    assert rs is not None, f"{name} is gone from {service.key}"
    return rs.weight


def active(lab: Lab, service: LabService, name: str) -> int:
    svc = lab.read_table().service(service.key)
    rs = svc.real_server(service.real_server(name)) if svc else None
    assert rs is not None
    return rs.active_connections


def test_console_in_a_browser(lab: Lab, tmp_path: Path) -> None:
    nat = lab.nat
    key = str(nat.key)
    rs = {name: str(nat.real_server(name)) for name in nat.weights}
    shots = Path(os.environ.get("LVSGUARD_UI_SCREENSHOTS", "") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with exporter(lab) as metrics, actuator(lab, tmp_path, metrics) as url, chromium() as driver:
            ui = Console(driver, url, shots)

            # log in with the keyboard (the token field has the focus)
            ui.go("/ui/login")
            ui.shot("login")
            driver.switch_to.active_element.send_keys(TOKEN + Keys.ENTER)
            ui.until(lambda: driver.find_elements(By.ID, "user"), "the overview after the login")
            assert ui.text("#user") == "operator" and ui.text("#role") == "master"
            assert TOKEN not in driver.page_source

            # the overview follows the kernel: rates come from real traffic
            with background_traffic(lab, nat):
                ui.until(lambda: ui.live(f"{key}|cps") not in ("", "0"), "connections/s of the NAT service")
                # health counts the checked real servers: rs3's admin check fails; udp and fwmark have no check
                ui.until(lambda: ui.live(f"{key}|healthy") == "2/3", "nat 2/3 healthy: rs3's admin check fails")
                for other in (lab.udp, lab.fwmark):
                    assert ui.live(f"{other.key}|healthy") == "no checks", other.key
                ui.shot("overview")

                # the service page: the counters the kernel shows, and the chart drawn from them
                with traffic.hold_connections(lab, nat.address, nat.port, 6) as held:
                    assert held["rs1"] > 0, f"no held connection reached rs1: {held}"
                    ui.go(f"/ui/service?s={key}")
                    for name in rs:
                        ui.until(
                            lambda n=name: ui.live(f"{key}|{rs[n]}|active") == str(active(lab, nat, n)),
                            f"the page's active connections of {name} to match the kernel's",
                        )
                    assert int(ui.live(f"{key}|{rs['rs1']}|active")) >= held["rs1"]
                    ui.until(
                        lambda: len(driver.find_elements(By.CSS_SELECTOR, "#legend li")) == 3, "the chart's legend"
                    )

                    # probe state and latency: from the exporter's real checks, as the exporter itself reports them
                    ui.until(lambda: ui.live(f"{key}|{rs['rs3']}|health") == "unhealthy", "rs3's failing admin check")
                    assert exporter_health(metrics, lab) == {"rs1": "healthy", "rs2": "healthy", "rs3": "unhealthy"}
                    for name in (
                        "rs1",
                        "rs2",
                    ):  # a check may time out now and then under UML: wait for a time when all agree
                        ui.until(
                            lambda n=name: (
                                (ui.live(f"{key}|{rs[n]}|health"), ui.live(f"{key}|{rs[n]}|checks"))
                                == ("healthy", "tcp ok")
                            ),
                            f"{name} healthy, its last check ok",
                        )
                        assert ui.live(f"{key}|{rs[name]}|latency").endswith(("µs", "ms", " s"))
                    assert ui.live(f"{key}|{rs['rs3']}|checks").startswith("admin failed, down since ")
                    assert ui.text("#probes").startswith(f"Health from the exporter's probes ({metrics})")
                    body = driver.find_element(By.TAG_NAME, "body")
                    body.send_keys(Keys.TAB)
                    assert driver.switch_to.active_element.text == "Skip to content"
                    ui.shot("service")
                    driver.switch_to.active_element.send_keys(Keys.ENTER)  # past the header, to the page's first field
                    driver.switch_to.active_element.send_keys(Keys.TAB)
                    field = str(driver.switch_to.active_element.get_attribute("id"))
                    assert field.startswith("w-"), field  # a real server's weight field, with its label:
                    label = driver.find_element(By.CSS_SELECTOR, f'label[for="{field}"]').get_attribute("textContent")
                    assert str(label).startswith("weight of "), label

                    # drain rs1: the job waits for the held connections, then finishes
                    question = ui.row_action(rs["rs1"], "drain")
                    assert question.startswith(f"Drain {rs['rs1']} in {key}: weight 0")
                    assert weight(lab, nat, "rs1") == 0
                    job = ui.text('[data-job$="|state"]')
                    assert job == "running", job
                    ui.until(
                        lambda: ui.text('[data-job$="|message"]').endswith("active connections left"), "a drain step"
                    )
                    ui.shot("jobs")
                ui.until(lambda: ui.text('[data-job$="|state"]') == "done", "the drain to finish in the page")
                assert driver.find_element(By.CSS_SELECTOR, "progress").get_attribute("value") == "1"
                assert weight(lab, nat, "rs1") == 0

                # restore rs1, quarantine rs2, then the quorum refuses rs3
                ui.go(f"/ui/service?s={key}")
                ui.row_action(rs["rs1"], "restore")
                assert weight(lab, nat, "rs1") == nat.weights["rs1"]
                ui.row_action(rs["rs2"], "quarantine", reason="disk full")
                assert weight(lab, nat, "rs2") == 0
                assert "operator (ui, quarantine)" in ui.text(f'[data-live="{key}|{rs["rs2"]}|holders"]')
                ui.row_action(rs["rs3"], "quarantine")
                assert ui.flashes() == [
                    "Refused by the safety rules: refused: service nat would have 1 healthy real server, min 2"
                ]
                assert weight(lab, nat, "rs3") == nat.weights["rs3"]
                ui.shot("refused")

            # a POST without the CSRF token, from the logged-in browser itself, is refused
            status = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "fetch('/ui/action', {method: 'POST', credentials: 'same-origin', body: new URLSearchParams("
                "{action: 'remove', service: arguments[0], real_server: arguments[1], confirmed: 'yes'})})"
                ".then(r => done(r.status), e => done(String(e)));",
                key,
                rs["rs3"],
            )
            assert status == 403
            assert weight(lab, nat, "rs3") == nat.weights["rs3"]

            ui.go("/ui/ledger?source=ui")
            assert {e.text for e in driver.find_elements(By.CSS_SELECTOR, "#audit td:nth-child(4)")} == {"operator"}
            ui.shot("ledger")

            ui.go(f"/ui/service?s={key}")
            ui.row_action(rs["rs2"], "restore")
            assert weight(lab, nat, "rs2") == nat.weights["rs2"]
            assert TOKEN not in driver.page_source

            # log out: read-only again, no action forms
            driver.find_element(By.XPATH, "//header//button[text()='Log out']").click()
            ui.until(lambda: "Logged out." in ui.flashes(), "the logout")
            ui.go(f"/ui/service?s={key}")
            assert not driver.find_elements(By.CSS_SELECTOR, 'form[action="/ui/action"]')
            assert not driver.find_elements(By.ID, "user")
    finally:
        if {n: weight(lab, nat, n) for n in nat.weights} != nat.weights:
            lab.reset_services()
