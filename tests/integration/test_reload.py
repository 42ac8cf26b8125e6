"""SIGHUP reloads a running ``lvsguard exporter``; a bad new config is refused and the old one kept.

Real processes: the exporter is started as an operator (or systemd) starts it
and signalled with ``kill -HUP``. On the host (no IPVS) the reload is seen in
its log and it keeps serving; in the lab VM (``kernel``) the new names and
allow-list are seen in ``/metrics``.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

WAIT = 30.0  # seconds: an upper bound for a slow machine, never a measured time


class Exporter:
    """``lvsguard exporter`` as a child process; its log lines are collected as they come."""

    def __init__(
        self,
        config: Path,
        *extra: str,
        wrap: list[str] = [],  # noqa: B006 - never mutated
        python: Path | None = None,
    ):
        """``wrap`` goes in front of the command (``setpriv ...`` to run it as another user); ``python`` runs an
        installed lvsguard instead of the checkout's."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if python is None:
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        self.proc = subprocess.Popen(
            [
                *wrap,
                str(python or sys.executable),
                "-m",
                "lvsguard.cli",
                "--log-level",
                "info",
                "exporter",
                "--config",
                str(config),
                "--listen",
                "127.0.0.1:0",
                *extra,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        started = self.wait_for(r"exporter_started url=(\S+)")
        self.url = started.group(1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first new log line matching ``pattern``; fails with the log when the process exits or it never comes."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"no log line like {pattern!r}; log so far:\n" + "\n".join(self.log))
            self.log.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=WAIT) as reply:
            assert reply.status == 200
            return reply.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


FIRST = """\
exporter:
  backend_labels: [proto, service, real_server]
services:
  - name: web
    service: TCP 192.0.2.10:80
"""

SECOND = """\
exporter:
  backend_labels: [proto, local_address, service]
  services: [web]
services:
  - name: web
    service: TCP 192.0.2.10:80
  - name: dns
    service: UDP 192.0.2.10:53
"""

BROKEN = """\
exporter:
  backend_labels: [proto, service]
  servics: [web]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "lvsguard.yaml"
    path.write_text(FIRST)
    return path


@pytest.fixture
def exporter(config: Path) -> Iterator[Exporter]:
    running = Exporter(config)
    try:
        yield running
    finally:
        running.stop()


def test_hup_applies_a_new_config(exporter: Exporter, config: Path) -> None:
    config.write_text(SECOND)
    exporter.hup()
    done = exporter.wait_for(r"reload_done .*")
    assert "backend_labels=local_address,proto,service" in done.group(0)  # in the exposition order
    assert "services=1" in done.group(0)
    assert "ipvs_up" in exporter.metrics()


def test_hup_with_a_bad_config_keeps_the_old_one(exporter: Exporter, config: Path) -> None:
    config.write_text(BROKEN)
    exporter.hup()
    failed = exporter.wait_for(r"reload_failed .*")
    assert f"{config}:3:3: exporter.servics: unknown key; did you mean 'services'?" in failed.group(0)
    assert "Traceback" not in "\n".join(exporter.log)
    assert "ipvs_up" in exporter.metrics()  # still serving
    config.write_text(SECOND)  # and a good config is still taken afterwards
    exporter.hup()
    assert "services=1" in exporter.wait_for(r"reload_done .*").group(0)


def test_hup_names_keys_that_need_a_restart(exporter: Exporter, config: Path) -> None:
    config.write_text(FIRST + "director:\n  netns: elsewhere\n")
    exporter.hup()
    warned = exporter.wait_for(r"reload_needs_restart .*")
    assert "keys=director.netns" in warned.group(0)
    exporter.wait_for(r"reload_done ")


def test_sigterm_after_reloads_exits_cleanly(exporter: Exporter, config: Path) -> None:
    config.write_text(SECOND)
    exporter.hup()
    exporter.wait_for(r"reload_done ")
    assert exporter.stop() == 0
    assert "Traceback" not in "\n".join(exporter.log)


# --- in the lab VM: the names and the allow-list change in /metrics ------------------


def lab_config(lab, names: dict[str, str], only: list[str] | None) -> str:
    services = []
    for svc in (lab.nat, lab.udp):
        rs = "\n".join(f'      - {{name: {names[svc.name]}-{node}, address: "{key}"}}' for key, node in svc.backends)
        services.append(f'  - name: {names[svc.name]}\n    service: "{svc.key}"\n    real_servers:\n{rs}\n')
    allow = f"exporter:\n  services: [{', '.join(only)}]\n" if only else ""
    return allow + "probes:\n  default_tcp: true\n" + "services:\n" + "".join(services)


def probe_lines(exporter: Exporter) -> int:
    """How many lvs_probe_success series the exporter serves, once its first checks have run."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        count = sum(line.startswith("lvs_probe_success{") for line in exporter.metrics().splitlines())
        if count:
            return count
        time.sleep(0.2)
    pytest.fail("no lvs_probe_success series: the default tcp probes did not run")


def service_names(metrics: str) -> set[str]:
    return set(re.findall(r'ipvs_backend_weight\{[^}]*service="([^"]*)"', metrics))


@pytest.mark.kernel
def test_hup_renames_and_filters_in_the_lab(lab, tmp_path: Path) -> None:
    config = tmp_path / "lvsguard.yaml"
    config.write_text(lab_config(lab, {"nat": "web", "udp": "dns"}, None))
    exporter = Exporter(config, "--netns", lab.director.netns)
    try:
        assert {"web", "dns"} <= service_names(exporter.metrics())
        probes = probe_lines(exporter)
        config.write_text(lab_config(lab, {"nat": "www", "udp": "resolver"}, ["www"]))
        exporter.hup()
        exporter.wait_for(r"reload_done ")
        after = exporter.metrics()
        assert service_names(after) == {"www"}
        assert probe_lines(exporter) == probes  # the health checks keep running through a reload
        assert 'real_server="www-rs1"' in after
        config.write_text("services:\n  - name: bad name\n    service: TCP 192.0.2.10:80\n")
        exporter.hup()
        exporter.wait_for(r"reload_failed .*services\[0\]\.name")
        assert service_names(exporter.metrics()) == {"www"}
        assert exporter.stop() == 0
    finally:
        exporter.stop()
