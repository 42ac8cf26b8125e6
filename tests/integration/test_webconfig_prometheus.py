"""A real Prometheus scrapes the exporter and the actuator over TLS with basic auth (host side).

Debian's ``prometheus`` scrapes, every second:

- a real ``lvsguard exporter`` process started with ``--web.config.file``
  (without a kernel IPVS table it serves ``ipvs_up 0``, which is enough to be
  scraped: the table itself is the kernel tests' business);
- the actuator's real Flask app over waitress with the same web config, in
  this process on the fake kernel (``lvsguard actuator`` needs netlink IPVS
  to start; TLS and basic auth live in ``actuator.limits.create_server`` and
  the app, which are exactly what serves here);

with a CA made in the test. ``up`` must be 1 for both with the right password,
and 0 with a wrong one, the target's error saying 401. Both serve ``process_*``.

In the lab VM (``-m kernel``) both run as the units run them, ``lvsguard
exporter`` and ``lvsguard actuator`` processes on the lab director's table,
and Prometheus reads the kernel table through TLS.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from lab.actuator import serving
from lab.monitoring import free_port, get_json, prometheus_server, query
from lab.polling import poll
from lab.processes import stop
from lab.topology import Lab
from lvsguard import webconfig
from lvsguard.actuator.app import create_app
from lvsguard.actuator.settings import ActuatorSettings
from tests import tlsfiles
from tests.fakes import FakeKernel, service

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus")

PASSWORD = "prometheus-scrape-password"
TOKEN = "actuator-token-0123456789abcdef"
WAIT = 60.0  # seconds: guards against a hung process, not a timing assertion


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("webconfig")


@pytest.fixture(scope="module")
def tls(workdir: Path) -> tlsfiles.TLSFiles:
    return tlsfiles.make(workdir)


@pytest.fixture(scope="module")
def web_file(workdir: Path, tls: tlsfiles.TLSFiles) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    path = workdir / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {tls.cert.name}\n  key_file: {tls.key.name}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    return path


def status_of(url: str, tls: tlsfiles.TLSFiles) -> int:
    """The HTTP status of a GET without credentials (401 once it serves); 0 while nothing answers."""
    context = ssl.create_default_context(cafile=str(tls.ca))
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@contextmanager
def lvsguard(
    argv: list[str], address: str, tls: tlsfiles.TLSFiles, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``lvsguard ARGV``; yields the process once ``address`` answers over TLS (401: basic auth closes every path)."""
    command = [str(Path(sys.executable).with_name("lvsguard")), *argv]
    with open(log, "w") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:

        def answer() -> int:
            assert process.poll() is None, log.read_text()
            return status_of(f"https://{address}/metrics", tls)

        poll(f"lvsguard {argv[0]} answers over TLS", answer, lambda status: status == 401, WAIT)
        yield process
    finally:
        stop(process, timeout=15.0)


@pytest.fixture(scope="module")
def exporter(workdir: Path, web_file: Path, tls: tlsfiles.TLSFiles) -> Iterator[str]:
    """``lvsguard exporter --web.config.file`` (no kernel table here: ``ipvs_up 0``); yields host:port."""
    address = f"127.0.0.1:{free_port()}"
    argv = ["exporter", "--listen", address, "--web.config.file", str(web_file)]
    with lvsguard(argv, address, tls, workdir / "exporter.log"):
        yield address


@pytest.fixture(scope="module")
def actuator(workdir: Path, web_file: Path) -> Iterator[str]:
    """The actuator's app over waitress with the web config's TLS; yields host:port."""
    web = webconfig.load(web_file)
    kernel = FakeKernel([service("TCP 192.0.2.10:80", ("10.0.1.1:80", 5))])
    settings = ActuatorSettings(tokens={"ops": TOKEN})
    app = create_app(settings, kernel=kernel, ledger_path=str(workdir / "ledger.db"), web=web)
    with serving(app, tls=web.tls) as url:
        yield url.removeprefix("https://")


def job(name: str, target: str, ca: Path, password: str) -> dict[str, Any]:
    return {
        "job_name": name,
        "scheme": "https",
        "tls_config": {"ca_file": str(ca)},
        "basic_auth": {"username": "prometheus", "password": password},
        "static_configs": [{"targets": [target]}],
    }


def scrape_config(tls: tlsfiles.TLSFiles, exporter: str, actuator: str) -> dict[str, Any]:
    """Both services with the password, and both again with a wrong one."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            job("lvsguard-exporter", exporter, tls.ca, PASSWORD),
            job("lvsguard-actuator", actuator, tls.ca, PASSWORD),
            job("wrong-password-exporter", exporter, tls.ca, "not-the-password"),
            job("wrong-password-actuator", actuator, tls.ca, "not-the-password"),
        ],
    }


@pytest.fixture(scope="module")
def prometheus(workdir: Path, tls: tlsfiles.TLSFiles, exporter: str, actuator: str) -> Iterator[str]:
    with prometheus_server(workdir / "prometheus", scrape_config(tls, exporter, actuator)) as server:
        yield server.url


def up(prometheus: str) -> dict[str, float]:
    return {r["metric"]["job"]: float(r["value"][1]) for r in query(prometheus, "up")}


def both_up(prometheus: str) -> dict[str, float]:
    poll("every target scraped once", lambda: up(prometheus), lambda found: len(found) == 4, WAIT)
    return poll(
        "both services up",
        lambda: up(prometheus),
        lambda found: found.get("lvsguard-exporter") == 1 and found.get("lvsguard-actuator") == 1,
        WAIT,
    )


def test_prometheus_scrapes_both_over_tls_with_basic_auth(prometheus: str) -> None:
    seen = both_up(prometheus)
    assert seen["wrong-password-exporter"] == 0 and seen["wrong-password-actuator"] == 0


def test_a_wrong_password_is_a_401_and_the_target_down(prometheus: str) -> None:
    def targets() -> dict[str, dict[str, Any]]:
        body = get_json(f"{prometheus}/api/v1/targets")
        return {t["labels"]["job"]: t for t in body["data"]["activeTargets"]}

    found = poll(
        "the wrong-password targets scraped",
        targets,
        lambda found: all(
            found.get(j, {}).get("health") == "down" for j in ("wrong-password-exporter", "wrong-password-actuator")
        ),
        WAIT,
    )
    for name in ("wrong-password-exporter", "wrong-password-actuator"):
        assert "401" in found[name]["lastError"], found[name]
    for name in ("lvsguard-exporter", "lvsguard-actuator"):
        assert found[name]["health"] == "up" and found[name]["scrapeUrl"].startswith("https://")


def test_both_serve_process_metrics_to_prometheus(prometheus: str) -> None:
    def jobs() -> set[str]:
        return {r["metric"]["job"] for r in query(prometheus, "process_resident_memory_bytes > 0")}

    found = poll("process_* of both", jobs, lambda found: {"lvsguard-exporter", "lvsguard-actuator"} <= found, WAIT)
    assert not found & {"wrong-password-exporter", "wrong-password-actuator"}


@pytest.mark.kernel
def test_prometheus_scrapes_both_processes_on_the_lab_director(
    lab: Lab, workdir: Path, web_file: Path, tls: tlsfiles.TLSFiles
) -> None:
    """Both as the units run them: ``lvsguard exporter`` and ``lvsguard actuator`` processes on the director's table."""
    netns = lab.director.netns
    exporter_address, actuator_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    web = ["--netns", netns, "--web.config.file", str(web_file)]
    env = {**os.environ, "LVSGUARD_TOKEN": TOKEN}
    ledger = workdir / "kernel-ledger.db"
    with (
        lvsguard(["exporter", "--listen", exporter_address, *web], exporter_address, tls, workdir / "exp-k.log"),
        lvsguard(
            ["actuator", "--listen", actuator_address, "--ledger", str(ledger), *web],
            actuator_address,
            tls,
            workdir / "act-k.log",
            env,
        ),
        prometheus_server(
            workdir / "prometheus-kernel", scrape_config(tls, exporter_address, actuator_address)
        ) as server,
    ):
        seen = both_up(server.url)
        assert seen["wrong-password-exporter"] == 0 and seen["wrong-password-actuator"] == 0
        table = poll(
            "the kernel table through TLS",
            lambda: query(server.url, 'ipvs_up{job="lvsguard-exporter"} == 1 and on() count(ipvs_backend_weight) > 0'),
            bool,
            WAIT,
        )
        assert table


def test_sighup_gives_the_exporter_process_new_users(workdir: Path, tls: tlsfiles.TLSFiles) -> None:
    """``systemctl reload``: the exporter reads its web config again (the wiring of the signal, on a real process)."""
    path = workdir / "reloaded-web.yml"
    first = bcrypt.hashpw(b"first-password", bcrypt.gensalt(4)).decode()
    tls_lines = f"tls_server_config:\n  cert_file: {tls.cert}\n  key_file: {tls.key}\n"
    path.write_text(f"{tls_lines}basic_auth_users:\n  prometheus: '{first}'\n")
    address = f"127.0.0.1:{free_port()}"
    argv = ["exporter", "--listen", address, "--web.config.file", str(path)]
    context = ssl.create_default_context(cafile=str(tls.ca))

    def status(password: str) -> int:
        token = base64.b64encode(f"prometheus:{password}".encode()).decode()
        request = urllib.request.Request(f"https://{address}/metrics", headers={"Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    with lvsguard(argv, address, tls, workdir / "reloaded.log") as process:
        assert status("first-password") == 200
        second = bcrypt.hashpw(b"second-password", bcrypt.gensalt(4)).decode()
        path.write_text(f"{tls_lines}basic_auth_users:\n  prometheus: '{second}'\n")
        process.send_signal(signal.SIGHUP)
        poll("the new password", lambda: status("second-password"), lambda code: code == 200, WAIT)
        assert status("first-password") == 401
