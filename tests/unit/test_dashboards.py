"""The Grafana dashboards: committed JSON is the generator's output, well formed, and every query parses.

PromQL is parsed by Prometheus's own parser: each query, with the Grafana
variables replaced by sample values, becomes a recording rule in a temporary
rule file that ``promtool check rules`` must accept.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
VARIABLE_SAMPLES = {
    "${service:raw}": 'local_address="192.0.2.10",local_port="80",proto="TCP",service="web"',
    "$director": "dir1:9910|dir2:9910",
    "$__rate_interval": "1m",
}
VARIABLE_FUNCTIONS = re.compile(r"^(label_values|query_result)\((.*)\)$", re.S)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lvsguard_dashboard_generator", DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()
NAMES = sorted(GENERATOR.DASHBOARDS)


def committed(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text())


def panels(name: str) -> list[dict[str, Any]]:
    return committed(name)["panels"]


def queries(name: str) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(name):
        for t in panel.get("targets", []):
            yield f"{name}: panel {panel['title']!r} target {t['refId']}", t["expr"]
    for variable in committed(name)["templating"]["list"]:
        if variable["type"] == "query":
            call = VARIABLE_FUNCTIONS.match(variable["query"])
            assert call, f"{name}: variable {variable['name']}: {variable['query']!r}"
            expr = call.group(2).rsplit(",", 1)[0] if call.group(1) == "label_values" else call.group(2)
            yield f"{name}: variable {variable['name']}", expr


def substitute(expr: str) -> str:
    for variable, value in VARIABLE_SAMPLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


@pytest.mark.parametrize("name", NAMES)
def test_committed_json_is_what_the_generator_makes(name: str) -> None:
    assert (DASHBOARDS / name).read_text() == GENERATOR.render(GENERATOR.DASHBOARDS[name]), (
        f"dashboards/{name} is stale: run python dashboards/generate.py"
    )


def test_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in NAMES:
        (tmp_path / name).write_text((DASHBOARDS / name).read_text())
    assert GENERATOR.main(["--check", "--out", str(tmp_path)]) == 0
    stale = NAMES[0]
    (tmp_path / stale).write_text((tmp_path / stale).read_text().replace('"version": 1', '"version": 2'))
    assert GENERATOR.main(["--check", "--out", str(tmp_path)]) == 1
    assert stale in capsys.readouterr().err


def test_dashboard_uids_are_unique_and_fixed() -> None:
    uids = [committed(name)["uid"] for name in NAMES]
    assert len(set(uids)) == len(uids)
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids), uids


@pytest.mark.parametrize("name", NAMES)
def test_panel_ids_unique_and_grid_positions_valid(name: str) -> None:
    ids = [panel["id"] for panel in panels(name)]
    assert len(ids) == len(set(ids)), ids
    boxes = []
    for panel in panels(name):
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"}, panel["title"]
        assert all(isinstance(grid[key], int) for key in grid), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the grid"
        boxes.append((panel["title"], grid))
    for (title_a, a), (title_b, b) in itertools.combinations(boxes, 2):
        overlap = (
            a["x"] < b["x"] + b["w"]
            and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"]
            and b["y"] < a["y"] + a["h"]
        )
        assert not overlap, f"{name}: {title_a!r} overlaps {title_b!r}"


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_queries_the_datasource_variable(name: str) -> None:
    variable = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(name):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == variable, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(refs), panel["title"]
        for t in panel["targets"]:
            assert t["expr"].strip(), f"{panel['title']} {t['refId']}: empty expr"
            assert t["datasource"] == variable, f"{panel['title']} {t['refId']}"
    templating = committed(name)["templating"]["list"]
    assert templating[0]["type"] == "datasource" and templating[0]["query"] == "prometheus"
    for var in templating[1:]:
        assert var["datasource"] == variable, var["name"]


@pytest.mark.parametrize("name", NAMES)
def test_no_fixed_datasource_uid_anywhere(name: str) -> None:
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    uids = {ds.get("uid") for ds in walk(committed(name))}
    assert uids <= {"${datasource}", "-- Grafana --"}, uids


@pytest.mark.parametrize("name", NAMES)
def test_visual_panels_have_units_and_descriptions(name: str) -> None:
    for panel in panels(name):
        if panel["type"] == "row":
            continue
        assert panel["description"].strip(), panel["title"]
        if panel["type"] in ("timeseries", "stat"):
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        if panel["type"] == "timeseries":
            legends = [t["legendFormat"] for t in panel["targets"]]
            assert all(legend and legend != "__auto" for legend in legends), f"{panel['title']}: set a legend"


def test_service_dashboard_has_director_and_service_variables() -> None:
    names = [v["name"] for v in committed("lvsguard-service.json")["templating"]["list"]]
    assert names == ["datasource", "director", "service"]


def test_service_variable_value_is_a_label_matcher_list() -> None:
    """Grafana's query_result() lines look like {a="1",b="2"} 1 1700000000000; the regex keeps the matchers."""
    service = next(v for v in committed("lvsguard-service.json")["templating"]["list"] if v["name"] == "service")
    pattern = re.compile(service["regex"].strip("/").replace("(?<value>", "(?P<value>"))
    line = '{local_address="192.0.2.10",local_port="80",proto="TCP",service="web"} 1 1700000000000'
    assert pattern.search(line).group("value") == 'local_address="192.0.2.10",local_port="80",proto="TCP",service="web"'


@pytest.mark.parametrize("name", NAMES)
def test_queries_name_only_known_metrics(name: str) -> None:
    identifier = re.compile(r"\b((?:ipvs|lvs|lvsguard)_[a-z0-9_]+|up)\b(?!\s*(?:=|!=|=~|!~))")
    for where, expr in queries(name):
        without_strings = re.sub(r'"[^"]*"', '""', expr)
        without_groupings = re.sub(
            r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_strings
        )
        unknown = set(identifier.findall(without_groupings)) - GENERATOR.METRICS
        assert not unknown, f"{where}: unknown metrics {sorted(unknown)}"


def test_exporter_metrics_of_the_contract_exist_in_the_exporter() -> None:
    collector = pytest.importorskip("lvsguard.exporter.collector")
    exported = {metric.name for metric in collector.ALL_METRICS}
    ours = {name for name in GENERATOR.METRICS if name.startswith("ipvs_") or name in exported}
    assert ours <= exported, sorted(ours - exported)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    rules = []
    where_of = {}
    for name in NAMES:
        for where, expr in queries(name):
            record = f"dashboard_query_{len(rules)}"
            rules.append({"record": record, "expr": substitute(expr)})
            where_of[record] = where
    assert len(rules) > 50
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promql_check_catches_a_broken_query(tmp_path: Path) -> None:
    """The parser check is real: an unbalanced query fails it."""
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "x", "expr": "sum(rate(up[1m])"}]}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_provisioning_points_at_a_file_provider() -> None:
    provider = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    datasource = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources.example.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
