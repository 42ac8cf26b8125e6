"""The Alertmanager webhook: strict validation with field paths, one result per alert, holds by fingerprint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import ActuatorSettings, Names, RateLimit, Rule
from lvsguard.actuator.webhook import PayloadError, parse_payload
from lvsguard.errors import IPVSUnavailable
from lvsguard.model import RealServerKey, ServiceKey
from tests.fakes import FakeKernel, am_alert, am_payload, fake_app, kernel_of, service

TOKEN = "am-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEB = ServiceKey.parse("TCP 192.0.2.10:80")


def quarantine_alert(fingerprint: str, rs: str = "10.0.1.1:80", **kw: str) -> dict[str, Any]:
    return am_alert(fingerprint, real_server=rs, lvsguard_action="quarantine", **kw)


def make_app(tmp_path: Path, kernel: FakeKernel | None = None, **overrides: Any) -> Flask:
    settings = ActuatorSettings(**{"tokens": {"alertmanager": TOKEN}, "hold_down": 0.0, **overrides})
    kernel = kernel or FakeKernel([service(str(WEB), *((f"10.0.1.{i}:80", 5) for i in range(1, 5)))])
    return fake_app(settings, kernel, str(tmp_path / "ledger.db"))


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def weight(app: Flask, rs: str) -> int:
    return kernel_of(app).weight(WEB, RealServerKey.parse(rs))


def post(client: FlaskClient, payload: Any) -> Any:
    return client.post("/webhook/alertmanager", json=payload, headers=AUTH)


# validation


def mutate(path: list[Any], value: Any) -> dict[str, Any]:
    """A valid payload with the value at ``path`` replaced (``...`` deletes it)."""
    payload = am_payload(quarantine_alert("a"), quarantine_alert("b"), quarantine_alert("c"), quarantine_alert("d"))
    node: Any = payload
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return payload


@pytest.mark.parametrize(
    "path, value, where, message",
    [
        (["version"], "3", "version", 'only version "4" is understood, got "3"'),
        (["version"], 4, "version", 'only version "4" is understood, got 4'),
        (["alerts"], ..., "alerts", "required field is missing"),
        (["alerts"], {}, "alerts", "must be an array, got an object"),
        (["status"], "pending", "status", "must be one of firing, resolved, got 'pending'"),
        (["receiver"], ..., "receiver", "required field is missing"),
        (["groupLabels"], [], "groupLabels", "must be an object of strings, got an array"),
        (["commonAnnotations", "summary"], 3, "commonAnnotations", "value of 'summary' must be a string, got a number"),
        (["truncatedAlerts"], -1, "truncatedAlerts", "must be an integer >= 0, got -1"),
        (["alerts", 3, "labels"], None, "alerts[3].labels", "must be an object of strings, got null"),
        (["alerts", 3, "labels", "bad-name"], "x", "alerts[3].labels", "'bad-name' is not a label name"),
        (["alerts", 1, "fingerprint"], ..., "alerts[1].fingerprint", "required field is missing"),
        (["alerts", 1, "fingerprint"], "", "alerts[1].fingerprint", "'' is not valid here"),
        (["alerts", 2, "startsAt"], "yesterday", "alerts[2].startsAt", "'yesterday' is not valid here"),
        (["alerts", 0, "status"], True, "alerts[0].status", "must be a string, got a boolean"),
        (["alerts", 0], "alert", "alerts[0]", "must be an object, got a string"),
    ],
    ids=[
        "old-version",
        "numeric-version",
        "no-alerts",
        "alerts-not-array",
        "bad-status",
        "no-receiver",
        "group-labels-array",
        "annotation-number",
        "negative-truncated",
        "labels-null",
        "bad-label-name",
        "no-fingerprint",
        "empty-fingerprint",
        "bad-time",
        "status-bool",
        "alert-not-object",
    ],
)
def test_invalid_payload_is_400_naming_the_field(
    client: FlaskClient, path: list[Any], value: Any, where: str, message: str
) -> None:
    r = post(client, mutate(path, value))
    assert r.status_code == 400
    assert r.get_json() == {"error": message, "path": where}


def test_body_that_is_not_json(client: FlaskClient) -> None:
    r = client.post("/webhook/alertmanager", data=b"\xff{", headers=AUTH)
    assert r.status_code == 400 and r.get_json()["error"].startswith("the body is not JSON")


def test_unknown_extra_fields_are_ignored() -> None:
    payload = am_payload(quarantine_alert("a"))
    payload["futureField"] = {"x": 1}
    payload["alerts"][0]["silencedBy"] = []  # type: ignore[index]
    assert parse_payload(payload).alerts[0].fingerprint == "a"


def test_parse_error_message_carries_the_path() -> None:
    with pytest.raises(PayloadError) as info:
        parse_payload(mutate(["alerts", 2, "labels"], 7))
    assert str(info.value) == "alerts[2].labels: must be an object of strings, got a number"


# actions


def test_firing_quarantines_and_resolved_restores(app: Flask, client: FlaskClient) -> None:
    r = post(client, am_payload(quarantine_alert("fp1")))
    assert r.status_code == 200
    [result] = r.get_json()["results"]
    assert (result["fingerprint"], result["result"], result["weight"]) == ("fp1", "applied", 0)
    assert weight(app, "10.0.1.1:80") == 0
    r = post(client, am_payload(quarantine_alert("fp1") | {"status": "resolved"}))
    assert r.get_json()["results"][0]["result"] == "applied"
    assert weight(app, "10.0.1.1:80") == 5


def test_repeats_from_two_alertmanagers_are_idempotent(app: Flask, client: FlaskClient) -> None:
    payload = am_payload(quarantine_alert("fp1"))
    results = [post(client, payload).get_json()["results"][0]["result"] for _ in range(3)]
    assert results == ["applied", "noop", "noop"]
    assert [w for w in kernel_of(app).writes if w[0] == "edit_real_server"] == [
        ("edit_real_server", str(WEB), "10.0.1.1:80", 0)
    ]


def test_two_fingerprints_hold_one_real_server(app: Flask, client: FlaskClient) -> None:
    post(client, am_payload(quarantine_alert("fp1"), quarantine_alert("fp2", alertname="HighErrorRate")))
    post(client, am_payload(quarantine_alert("fp1") | {"status": "resolved"}))
    assert weight(app, "10.0.1.1:80") == 0
    post(client, am_payload(quarantine_alert("fp2", alertname="HighErrorRate") | {"status": "resolved"}))
    assert weight(app, "10.0.1.1:80") == 5


def test_manual_quarantine_survives_a_resolved_alert(app: Flask, client: FlaskClient) -> None:
    post(client, am_payload(quarantine_alert("fp1")))
    r = client.post("/api/v1/quarantine", json={"service": str(WEB), "real_server": "10.0.1.1:80"}, headers=AUTH)
    assert r.get_json()["result"] == "recorded"
    post(client, am_payload(quarantine_alert("fp1") | {"status": "resolved"}))
    assert weight(app, "10.0.1.1:80") == 0


def test_unknown_target_is_recorded_and_answered_not_a_batch_error(app: Flask, client: FlaskClient) -> None:
    r = post(
        client,
        am_payload(
            quarantine_alert("ghost", "10.9.9.9:80"),
            quarantine_alert("fp2", "10.0.1.2:80"),
            am_alert("nolabels", lvsguard_action="quarantine")
            | {"labels": {"alertname": "X", "lvsguard_action": "drain"}},
        ),
    )
    assert r.status_code == 200
    results = {x["fingerprint"]: x for x in r.get_json()["results"]}
    assert results["ghost"]["result"] == "not_found"
    assert results["fp2"]["result"] == "applied" and weight(app, "10.0.1.2:80") == 0
    assert results["nolabels"]["result"] == "invalid_target"
    assert "no service in the labels" in results["nolabels"]["message"]
    with app.app_context():
        ledger = Ledger.open(app.config["LVSGUARD_LEDGER"])
        assert {e.result for e in ledger.audit_events()} == {"not_found", "invalid_target", "applied"}


def test_alert_without_an_action_is_ignored_without_touching_anything(app: Flask, client: FlaskClient) -> None:
    r = post(client, am_payload(am_alert("plain")))
    assert r.get_json()["results"][0]["result"] == "ignored"
    r = post(client, am_payload(am_alert("odd", lvsguard_action="reboot")))
    assert "lvsguard_action='reboot'" in r.get_json()["results"][0]["message"]
    assert kernel_of(app).writes == []


def test_rules_choose_the_action_and_drain_runs_as_a_job(tmp_path: Path) -> None:
    app = make_app(tmp_path, rules=(Rule("drain", match=(("alertname", "Maintenance"),), drain_timeout=60),))
    kernel_of(app).set_connections(WEB, RealServerKey.parse("10.0.1.3:80"), active=3)
    r = post(app.test_client(), am_payload(am_alert("m1", real_server="10.0.1.3:80", alertname="Maintenance")))
    result = r.get_json()["results"][0]
    assert (result["action"], result["result"]) == ("drain", "applied") and result["job_id"] is not None
    job = app.test_client().get(f"/api/v1/jobs/{result['job_id']}").get_json()
    assert (job["kind"], job["state"], job["params"]["timeout"]) == ("drain", "running", 60)


def test_resolved_releases_what_the_fingerprint_holds_even_after_a_rule_change(tmp_path: Path) -> None:
    first = make_app(tmp_path, rules=(Rule("quarantine", match=(("alertname", "IPVSBackendDown"),)),))
    post(first.test_client(), am_payload(am_alert("fp1")))
    second = make_app(tmp_path, kernel=kernel_of(first))  # restarted with no rules at all
    post(second.test_client(), am_payload(am_alert("fp1", status="resolved")))
    assert weight(second, "10.0.1.1:80") == 5


def test_restore_action_lifts_alert_holds_only(app: Flask, client: FlaskClient) -> None:
    post(client, am_payload(quarantine_alert("down1"), quarantine_alert("down2", "10.0.1.2:80")))
    client.post("/api/v1/quarantine", json={"service": str(WEB), "real_server": "10.0.1.2:80"}, headers=AUTH)
    post(
        client,
        am_payload(
            am_alert("up1", lvsguard_action="restore"),
            am_alert("up2", real_server="10.0.1.2:80", lvsguard_action="restore"),
        ),
    )
    assert (weight(app, "10.0.1.1:80"), weight(app, "10.0.1.2:80")) == (5, 0)


def test_large_batch_reads_the_table_once(tmp_path: Path) -> None:
    kernel = FakeKernel([service(str(WEB), *((f"10.0.{i // 250}.{i % 250 + 1}:80", 1) for i in range(1000)))])
    app = make_app(tmp_path, kernel=kernel, rate_limit=RateLimit(0, 1))
    calls = {"read": 0, "read_service": 0}
    for name in calls:
        original = getattr(kernel, name)

        def counted(*a: Any, _o: Any = original, _n: str = name) -> Any:
            calls[_n] += 1
            return _o(*a)

        setattr(kernel, name, counted)
    alerts = [quarantine_alert(f"f{i}", f"10.0.{i // 250}.{i % 250 + 1}:80") for i in range(999)]
    r = post(app.test_client(), am_payload(*alerts))
    results = [x["result"] for x in r.get_json()["results"]]
    assert results.count("applied") == 999 and calls == {"read": 1, "read_service": 0}
    one_left = [rs for rs in kernel.read_service(WEB).real_servers if rs.weight > 0]
    assert len(one_left) == 1


def test_kernel_out_of_reach_is_503_so_alertmanager_retries(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    kernel_of(app).fail_reads = IPVSUnavailable("IPVS is not available in this kernel")
    r = post(app.test_client(), am_payload(quarantine_alert("fp1")))
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert "IPVS is not available" in r.get_json()["error"]


def test_webhook_needs_the_token(client: FlaskClient) -> None:
    r = client.post(
        "/webhook/alertmanager", json=am_payload(quarantine_alert("fp1")), headers={"Authorization": "Bearer wrong"}
    )
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_count_webhook_replies_and_actions(client: FlaskClient) -> None:
    post(client, am_payload(quarantine_alert("fp1")))
    post(client, {"version": "4"})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'lvsguard_webhook_requests_total{status="200"} 1.0' in text
    assert 'lvsguard_webhook_requests_total{status="400"} 1.0' in text
    assert 'lvsguard_actions_total{action="quarantine",result="applied",source="alertmanager"} 1.0' in text
    assert 'lvsguard_quarantined{local_address="192.0.2.10",local_mark="",local_port="80",proto="TCP",' in text


def test_the_series_of_first_actions_exist_at_zero_before_anything_happens(client: FlaskClient) -> None:
    """increase() sees the very first quarantine, refusal or failed webhook only if the series was there at 0 before."""
    text = client.get("/metrics").get_data(as_text=True)
    for series in (
        'lvsguard_actions_total{action="quarantine",result="applied",source="alertmanager"} 0.0',
        'lvsguard_actions_total{action="restore",result="error",source="api"} 0.0',
        'lvsguard_refusals_total{action="quarantine",reason="quorum"} 0.0',
        'lvsguard_webhook_requests_total{status="400"} 0.0',
    ):
        assert series in text


def test_names_from_the_config_resolve_and_label_the_metrics(tmp_path: Path) -> None:
    names = Names(services={"web": WEB}, real_servers={WEB: {"rs2": RealServerKey.parse("10.0.1.2:80")}})
    app = make_app(tmp_path, names=names)
    alert = am_alert("n1", lvsguard_action="quarantine") | {
        "labels": {"alertname": "X", "service": "web", "real_server": "rs2", "lvsguard_action": "quarantine"}
    }
    assert post(app.test_client(), am_payload(alert)).get_json()["results"][0]["result"] == "applied"
    assert 'real_server="rs2"' in app.test_client().get("/metrics").get_data(as_text=True)


def test_token_never_reaches_the_log(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    post(client, am_payload(quarantine_alert("fp1")))
    client.post("/webhook/alertmanager", json={}, headers={"Authorization": "Bearer guessed-wrong-token"})
    assert "token=alertmanager" in caplog.text
    assert TOKEN not in caplog.text and "guessed-wrong-token" not in caplog.text


def test_failover_alerts_drive_the_track_file(tmp_path: Path) -> None:
    track = tmp_path / "failover"
    app = make_app(tmp_path, failover_track_file=str(track))
    client = app.test_client()
    alerts = [
        am_alert(fp, lvsguard_action="failover", alertname=name)
        for fp, name in (("f1", "VipNotHeld"), ("f2", "SyncDown"))
    ]
    results = post(client, am_payload(*alerts)).get_json()["results"]
    assert [r["result"] for r in results] == ["applied", "recorded"] and track.read_text() == "1\n"
    assert post(client, am_payload(*alerts)).get_json()["results"][0]["result"] == "noop"  # a repeat
    assert post(client, am_payload(alerts[0] | {"status": "resolved"})).get_json()["results"][0]["result"] == "recorded"
    assert track.read_text() == "1\n"
    manual = client.post("/api/v1/failover", json={"reason": "kernel upgrade"}, headers=AUTH)
    assert manual.get_json()["result"] == "recorded"
    post(client, am_payload(alerts[1] | {"status": "resolved"}))
    assert track.read_text() == "1\n"  # the operator's request outlives the alerts
    director = client.get("/api/v1/director").get_json()["failover"]
    assert director["requested"] is True and [h["reason"] for h in director["holders"]] == ["kernel upgrade"]
    released = client.post("/api/v1/failover/release", json={}, headers=AUTH).get_json()
    assert released["result"] == "applied" and track.read_text() == "0\n"
    assert "lvsguard_failover_requested_total 1.0" in client.get("/metrics").get_data(as_text=True)


def test_failover_without_a_track_file_is_refused(client: FlaskClient) -> None:
    r = client.post("/api/v1/failover", json={}, headers=AUTH)
    assert r.status_code == 409 and "actuator.failover_track_file" in r.get_json()["error"]


def test_track_file_follows_the_ledger_after_a_restart(tmp_path: Path) -> None:
    track = tmp_path / "failover"
    app = make_app(tmp_path, failover_track_file=str(track))
    post(app.test_client(), am_payload(am_alert("f1", lvsguard_action="failover")))
    track.write_text("0\n")  # lost, e.g. /run was a tmpfs and the host rebooted
    restarted = make_app(tmp_path, kernel=kernel_of(app), failover_track_file=str(track))
    outcomes = restarted.extensions["lvsguard"].actions.reconcile(Ledger.open(restarted.config["LVSGUARD_LEDGER"]))
    assert [o.result for o in outcomes] == ["applied"] and track.read_text() == "1\n"


def test_kernel_refusing_a_batch_write_is_answered_per_alert_and_undone(app: Flask, client: FlaskClient) -> None:
    from lvsguard.errors import InvalidRequest

    kernel_of(app).fail_writes = InvalidRequest("invalid argument")
    results = post(client, am_payload(quarantine_alert("fp1"), quarantine_alert("fp2", "10.0.1.2:80"))).get_json()[
        "results"
    ]
    assert [r["result"] for r in results] == ["error", "error"]
    assert results[0]["message"].endswith("not applied, invalid argument")
    ledger = Ledger.open(app.config["LVSGUARD_LEDGER"])
    assert ledger.backends() == [] and len(ledger.active_holds()) == 2  # the alerts still ask; a retry applies them
    assert [e.result for e in ledger.audit_events()] == ["error", "error"]
    kernel_of(app).fail_writes = None
    assert [o.result for o in app.extensions["lvsguard"].actions.retry_pending(ledger)] == ["applied", "applied"]
    assert weight(app, "10.0.1.1:80") == weight(app, "10.0.1.2:80") == 0


def test_fire_and_resolve_in_one_batch_ends_where_it_started(app: Flask, client: FlaskClient) -> None:
    results = post(
        client, am_payload(quarantine_alert("fp1"), quarantine_alert("fp1") | {"status": "resolved"})
    ).get_json()["results"]
    assert [r["result"] for r in results] == ["applied", "applied"]
    assert weight(app, "10.0.1.1:80") == 5
    assert [w[3] for w in kernel_of(app).writes] == [5]  # a batch sends each real server's last state once
    ledger = Ledger.open(app.config["LVSGUARD_LEDGER"])
    assert ledger.backends() == [] and ledger.active_holds() == []


def test_a_failed_batch_write_is_an_error_in_every_outcome_it_undoes_the_others_too(
    app: Flask, client: FlaskClient
) -> None:
    from lvsguard.errors import InvalidRequest

    post(client, am_payload(quarantine_alert("fp1"), quarantine_alert("fp1", "10.0.1.2:80")))  # one alert, two holds
    kernel_of(app).fail_writes = InvalidRequest("invalid argument")
    [result] = post(client, am_payload(quarantine_alert("fp1") | {"status": "resolved"})).get_json()["results"]
    assert [result["result"], *(o["result"] for o in result["others"])] == ["error", "error"]
    assert result["others"][0]["message"].endswith("not applied, invalid argument")
    assert weight(app, "10.0.1.1:80") == weight(app, "10.0.1.2:80") == 0
