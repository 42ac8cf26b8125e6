"""The prometheus check against a real Prometheus scraping a real node_exporter (host-side, no kernel).

node_exporter plays the real server's agent: Prometheus scrapes it every
second, and the check's PromQL (with ``{address}`` and ``{port}`` of the
target) turns what Prometheus knows about it into a weight percentage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from lab.monitoring import prometheus_config, query, running_node_exporter, running_prometheus
from lab.polling import poll
from lvsguard.exporter.probes.prometheus import PrometheusChecker
from lvsguard.exporter.probes.result import ProbeResult, Target

WAIT = 60.0


def scraped(prometheus: str, target: str) -> None:
    """Wait until Prometheus has scraped ``target`` (``host:port``) successfully."""
    poll(f"Prometheus scraping {target}", lambda: query(prometheus, f'up{{instance="{target}"}} == 1'), bool, WAIT, 0.5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(Prometheus URL, node_exporter port) once Prometheus has scraped node_exporter."""
    tmp = tmp_path_factory.mktemp("prom")
    with (
        running_node_exporter(tmp) as node,
        running_prometheus(tmp, prometheus_config({"node": [node]}, rule_files=())) as url,
    ):
        scraped(url, node)
        yield url, int(node.rsplit(":", 1)[1])


def check(url: str, query: str, target: Target) -> ProbeResult:
    return asyncio.run(PrometheusChecker(url, query).check(target))


def test_a_query_about_the_target_becomes_its_weight_percentage(stack: tuple[str, int]) -> None:
    url, node_port = stack
    result = check(url, 'up{instance="{address}:{port}"} * 50', Target("127.0.0.1", node_port))
    assert (result.ok, result.weight_percent) == (True, 50.0), result
    load = check(
        url, 'clamp(100 * (1 - node_load1{instance="{address}:{port}"} / 64), 0, 100)', Target("127.0.0.1", node_port)
    )
    assert load.ok and 0 <= (load.weight_percent or -1) <= 100, load


def test_no_sample_and_a_bad_query_fail(stack: tuple[str, int]) -> None:
    url, node_port = stack
    missing = check(url, 'up{instance="{address}:{port}"}', Target("10.0.1.99", node_port))
    assert (missing.ok, missing.error) == (False, "ValueError") and "0 samples" in missing.message
    bad = check(url, "up{", Target("127.0.0.1", node_port))
    assert (bad.ok, bad.error) == (False, "UnexpectedStatus") and "400" in bad.message
