"""The bundled Prometheus rules and Alertmanager example: lint, unit tests, runbooks.

``promtool`` (Debian ``prometheus``) and ``amtool`` (Debian
``prometheus-alertmanager``) do the real checking; these tests run them and
fail when they fail. On a development box without them the tests skip; under CI
(``CI`` set) a missing tool is a failure, because CI installs both.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "lvsguard.rules.yml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*_test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
ALERTMANAGER = ROOT / "alerts" / "alertmanager.yml"

SEVERITIES = {"critical", "warning"}
ACTIONS = {"quarantine", "drain", "restore", "failover"}  # docs/actuator.md; "none" is never put on a rule
ANNOTATIONS = ("summary", "description", "runbook_url")


def tool(name: str, package: str) -> str:
    """The path of a Debian-packaged CLI; skip without it on a dev box, fail under CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def load_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def recordings() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "record" in rule]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub gives the headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_promtool_check_rules_passes() -> None:
    result = run([tool("promtool", "prometheus"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no alerts/tests/*_test.yml"
    result = run([tool("promtool", "prometheus"), "test", "rules", *map(str, RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_promtool_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests compare labels and annotations: a changed expectation must fail."""
    source = ROOT / "alerts" / "tests" / "components_test.yml"
    broken = source.read_text().replace("severity: critical", "severity: warning", 1)
    assert broken != source.read_text()
    (tmp_path / "lvsguard.rules.yml").write_text(RULES.read_text())
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / source.name).write_text(broken)
    result = run([tool("promtool", "prometheus"), "test", "rules", str(tmp_path / "tests" / source.name)])
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    for key in ANNOTATIONS:
        assert rule.get("annotations", {}).get(key, "").strip(), f"{rule['alert']}: annotation {key} is empty"
    action = rule["labels"].get("lvsguard_action")
    assert action is None or action in ACTIONS, f"{rule['alert']}: lvsguard_action {action!r}"


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_runbook_section_exists(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    path, _, anchor = url.partition("#")
    assert path == "docs/runbooks.md", url
    assert anchor == rule["alert"].lower(), url
    assert anchor in github_anchors(RUNBOOKS.read_text()), f"docs/runbooks.md has no section #{anchor}"


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)), names


def test_alerts_the_actuator_acts_on_fire_without_delay() -> None:
    """The loop's budget is scrape + rule interval + group_wait: no `for` on action alerts."""
    acting = [rule for rule in alerts() if "lvsguard_action" in rule["labels"]]
    assert acting, "no rule carries lvsguard_action"
    for rule in acting:
        assert rule.get("for", "0s") in ("0s", "0m"), rule["alert"]


def rule_test_cases() -> list[dict[str, Any]]:
    return [case for path in RULE_TESTS for case in yaml.safe_load(path.read_text())["tests"]]


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_is_shown_firing_and_not_firing(rule: dict[str, Any]) -> None:
    firing, quiet = False, False
    for case in rule_test_cases():
        for check in case.get("alert_rule_test", []):
            if check["alertname"] == rule["alert"]:
                firing |= bool(check.get("exp_alerts"))
                quiet |= not check.get("exp_alerts")
    assert firing, f"no promtool test shows {rule['alert']} firing"
    assert quiet, f"no promtool test shows {rule['alert']} not firing"


@pytest.mark.parametrize("rule", recordings(), ids=lambda rule: rule["record"])
def test_every_recording_rule_has_an_expression_test(rule: dict[str, Any]) -> None:
    tested = [
        check
        for case in rule_test_cases()
        for check in case.get("promql_expr_test", [])
        if rule["record"] in check["expr"] and check.get("exp_samples")
    ]
    assert tested, f"no promql_expr_test checks {rule['record']}"


def test_amtool_check_config_passes() -> None:
    result = run([tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        pytest.param(
            ["alertname=LvsRealServerDown", "lvsguard_action=quarantine", "severity=warning"],
            "lvsguard-actuator,operators",
            id="quarantine-to-actuator-and-people",
        ),
        pytest.param(
            ["alertname=Anything", "lvsguard_action=failover", "severity=critical"],
            "lvsguard-actuator,operators",
            id="failover-to-actuator-and-people",
        ),
        pytest.param(["alertname=LvsVipNotHeld", "severity=critical"], "operators", id="no-action-to-people-only"),
        pytest.param(
            ["alertname=LvsRealServerDown", "lvsguard_action=none", "severity=warning"],
            "operators",
            id="action-none-to-people-only",
        ),
    ],
)
def test_amtool_routes(labels: list[str], receivers: str) -> None:
    argv = [tool("amtool", "prometheus-alertmanager"), "config", "routes", "test", f"--config.file={ALERTMANAGER}"]
    result = run([*argv, f"--verify.receivers={receivers}", *labels])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_amtool_routes_verification_can_fail() -> None:
    """--verify.receivers is what the routing tests rely on: a wrong expectation exits non-zero."""
    argv = [tool("amtool", "prometheus-alertmanager"), "config", "routes", "test", f"--config.file={ALERTMANAGER}"]
    result = run([*argv, "--verify.receivers=lvsguard-actuator", "alertname=LvsVipNotHeld"])
    assert result.returncode != 0


def alertmanager_config() -> dict[str, Any]:
    return yaml.safe_load(ALERTMANAGER.read_text())


def test_actuator_receiver_uses_bearer_token_file_and_sends_resolved() -> None:
    receiver = next(r for r in alertmanager_config()["receivers"] if r["name"] == "lvsguard-actuator")
    for webhook in receiver["webhook_configs"]:
        assert webhook["url"].endswith("/webhook/alertmanager")
        assert webhook["send_resolved"] is True
        authorization = webhook["http_config"]["authorization"]
        assert authorization["type"] == "Bearer"
        assert authorization["credentials_file"], "the token comes from a file, never inline"
        assert "credentials" not in authorization


def test_inhibitions_name_existing_alerts() -> None:
    names = {rule["alert"] for rule in alerts()}
    for inhibit in alertmanager_config()["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            value = re.fullmatch(r'alertname(=~?)"?([^"]*)"?', matcher)
            assert value, matcher
            assert set(value.group(2).split("|")) <= names, matcher


def known_metrics() -> set[str]:
    """The exporter's and actuator's metric contract, as the dashboards generator lists it."""
    spec = importlib.util.spec_from_file_location("lvsguard_dashboard_generator", ROOT / "dashboards" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(module.METRICS)


@pytest.mark.parametrize("rule", load_rules(), ids=lambda rule: rule.get("alert") or rule["record"])
def test_rule_names_only_known_metrics(rule: dict[str, Any]) -> None:
    identifier = re.compile(r"\b((?:ipvs|lvs|lvsguard)_[a-z0-9_:]+|up)\b(?!\s*(?:=|!=|=~|!~))")
    expr = re.sub(r'"[^"]*"', '""', rule["expr"])
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    known = known_metrics() | {r["record"] for r in recordings()}
    unknown = set(identifier.findall(expr)) - known
    assert not unknown, f"unknown metrics {sorted(unknown)}"


SCRAPE_DOCS = [ROOT / "README.md", ROOT / "docs" / "dashboards.md"]


def scrape_jobs(markdown: Path) -> dict[str, list[str]]:
    """The job names and targets of every ```yaml block with ``scrape_configs`` in ``markdown``."""
    jobs: dict[str, list[str]] = {}
    for block in re.findall(r"^```ya?ml\n(.*?)^```", markdown.read_text(), re.M | re.S):
        document = yaml.safe_load(block)
        for job in (document or {}).get("scrape_configs", []) if isinstance(document, dict) else []:
            targets = [t for static in job.get("static_configs", []) for t in static.get("targets", [])]
            jobs[job["job_name"]] = targets
    return jobs


def scrape_problems(doc: Path) -> list[str]:
    """How the doc's scrape config differs from what the rules watch (job names) and the ports the jobs need."""
    in_rules = set(re.findall(r'\bjob="([^"]+)"', RULES.read_text()))
    jobs = scrape_jobs(doc)
    problems = []
    if set(jobs) != in_rules:
        problems.append(f"{doc.name} scrapes jobs {sorted(jobs)}, the rules watch {sorted(in_rules)}")
    for job, port in (("lvsguard-exporter", "9910"), ("lvsguard-actuator", "9911")):
        ports = {t.rsplit(":", 1)[1] for t in jobs.get(job, [])}
        if ports and ports != {port}:
            problems.append(f"{doc.name}: job {job} scrapes ports {sorted(ports)}, not {port}")
    return problems


def test_the_rules_watch_the_exporter_and_the_actuator() -> None:
    assert set(re.findall(r'\bjob="([^"]+)"', RULES.read_text())) == {"lvsguard-exporter", "lvsguard-actuator"}


@pytest.mark.parametrize("doc", SCRAPE_DOCS, ids=lambda p: p.name)
def test_the_documented_scrape_jobs_are_the_rules_job_names(doc: Path) -> None:
    """A user who copies the doc's scrape config gets the jobs the rules' up{job=...} alerts watch."""
    assert scrape_problems(doc) == []


def test_a_scrape_job_the_rules_do_not_watch_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(
        'text\n\n```yaml\nscrape_configs:\n  - job_name: lvsguard\n    static_configs:\n      - targets: ["d1:9910"]\n```\n'
    )
    assert scrape_problems(doc) == [
        "README.md scrapes jobs ['lvsguard'], the rules watch ['lvsguard-actuator', 'lvsguard-exporter']"
    ]
