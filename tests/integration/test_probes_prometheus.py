"""The prometheus check against a real Prometheus scraping a real node_exporter (host-side, no kernel).

node_exporter plays the real server's agent: Prometheus scrapes it every
second, and the check's PromQL (with ``{address}`` and ``{port}`` of the
target) turns what Prometheus knows about it into a weight percentage.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from exporter.probes.prometheus import PrometheusChecker
from exporter.probes.result import ProbeResult, Target

WAIT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(Prometheus URL, node_exporter port) once Prometheus has scraped node_exporter."""
    prometheus, node = shutil.which("prometheus"), shutil.which("prometheus-node-exporter")
    if prometheus is None or node is None:
        pytest.fail("needs Debian prometheus and prometheus-node-exporter (make setup installs them)")
    tmp = tmp_path_factory.mktemp("prom")
    node_port, prom_port = free_port(), free_port()
    exporter = spawn([node, "--collector.disable-defaults", "--collector.loadavg", f"--web.listen-address=127.0.0.1:{node_port}"], tmp / "node.log")
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{node_port}"]}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = spawn([prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"], tmp / "prometheus.log")  # fmt: skip
    url = f"http://127.0.0.1:{prom_port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if get_json(f"{url}/api/v1/query?query=" + urllib.parse.quote(f'up{{instance="127.0.0.1:{node_port}"}} == 1'))["data"]["result"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus did not scrape node_exporter within {WAIT} s: {(tmp / 'prometheus.log').read_text()[-1500:]}")
            time.sleep(0.5)
        yield url, node_port
    finally:
        stop(server)
        stop(exporter)


def check(url: str, query: str, target: Target) -> ProbeResult:
    return asyncio.run(PrometheusChecker(url, query).check(target))


def test_a_query_about_the_target_becomes_its_weight_percentage(stack: tuple[str, int]) -> None:
    url, node_port = stack
    result = check(url, 'up{instance="{address}:{port}"} * 50', Target("127.0.0.1", node_port))
    assert (result.ok, result.weight_percent) == (True, 50.0), result
    load = check(url, 'clamp(100 * (1 - node_load1{instance="{address}:{port}"} / 64), 0, 100)', Target("127.0.0.1", node_port))
    assert load.ok and 0 <= (load.weight_percent or -1) <= 100, load


def test_no_sample_and_a_bad_query_fail(stack: tuple[str, int]) -> None:
    url, node_port = stack
    missing = check(url, 'up{instance="{address}:{port}"}', Target("10.0.1.99", node_port))
    assert (missing.ok, missing.error) == (False, "ValueError") and "0 samples" in missing.message
    bad = check(url, "up{", Target("127.0.0.1", node_port))
    assert (bad.ok, bad.error) == (False, "UnexpectedStatus") and "400" in bad.message
