"""The admin console (``/ui/``): login, CSRF, read-only mode and every action, through Flask's test client.

The kernel is ``tests/fakes.py``'s in-memory table; the actions run through
the real action layer, ledger and policy, so a refusal here is the policy's.
"""

from __future__ import annotations

import dataclasses
import html
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from lvsguard.actuator.auth import LoginLimiter
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import ActuatorSettings, Names, Quorum
from lvsguard.model import RealServerKey, ServiceKey
from tests.fakes import FakeClock, FakeKernel, fake_app, kernel_of, service
from tests.unit.test_actuator_api import OpenAPI, call, openapi  # noqa: F401 - a fixture: the document's validator
from tests.unit.test_actuator_probestate import Exporter, exporter, exposition  # noqa: F401 - a fixture: an HTTP exporter

ADMIN = "admin-secret-0123456789"
BOB = "bob-secret-012345678901"
WEB = ServiceKey.parse("TCP 192.0.2.10:80")
RS1 = RealServerKey.parse("10.0.1.1:80")
RS2 = RealServerKey.parse("10.0.1.2:80")
NAMES = Names(services={"web": WEB}, real_servers={WEB: {"rs1": RS1}})
PAGES = ("/ui/", "/ui/service?s=web", "/ui/ledger", "/ui/jobs", "/ui/login")


def make_app(tmp_path: Path, **overrides: Any) -> Flask:
    settings = ActuatorSettings(
        **{"tokens": {"alice": ADMIN, "bob": BOB}, "hold_down": 0.0, "names": NAMES, **overrides}
    )
    kernel = FakeKernel([service(str(WEB), *((f"10.0.1.{i}:80", 5) for i in range(1, 5)))])
    return fake_app(settings, kernel, str(tmp_path / "ledger.db"))


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def csrf_of(client: FlaskClient, path: str = "/ui/login") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert found is not None, f"{path} has no CSRF field"
    return found.group(1)


def login(client: FlaskClient, token: str = ADMIN) -> TestResponse:
    return client.post("/ui/login", data={"csrf": csrf_of(client), "token": token})


def flashes(response: TestResponse) -> list[str]:
    return [
        html.unescape(m)
        for m in re.findall(r'<p class="flash [^"]*"[^>]*>([^<]*)</p>', response.get_data(as_text=True))
    ]


def act(client: FlaskClient, action: str, *, confirmed: bool = True, **fields: str) -> TestResponse:
    """Post an action form as the service page does (with the session's CSRF token), following the redirect."""
    data = {"csrf": csrf_of(client), "action": action, "service": "web", **fields}
    if confirmed:
        data["confirmed"] = "yes"
    return client.post("/ui/action", data=data, follow_redirects=True)


# login, logout, session cookie


def test_login_sets_a_strict_httponly_cookie_and_shows_the_token_name(client: FlaskClient) -> None:
    r = login(client)
    assert r.status_code == 302 and r.headers["Location"] == "/ui/"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert ADMIN not in cookie
    page = client.get("/ui/").get_data(as_text=True)
    assert '<b id="user">alice</b>' in page and "Log out" in page


def test_the_cookie_is_secure_only_when_the_config_says_the_console_is_behind_https(tmp_path: Path) -> None:
    assert "Secure" not in login(make_app(tmp_path).test_client()).headers["Set-Cookie"]
    assert "; Secure" in login(make_app(tmp_path, secure_cookie=True).test_client()).headers["Set-Cookie"]


def test_wrong_token_is_refused_and_stays_logged_out(client: FlaskClient) -> None:
    r = login(client, "not-a-token-0123456789")
    assert r.status_code == 401
    assert flashes(r) == ["That token is not one of this actuator's tokens."]
    assert act(client, "quarantine", real_server="rs1").status_code == 401


def test_logout_ends_the_session(client: FlaskClient) -> None:
    login(client)
    r = client.post("/ui/logout", data={"csrf": csrf_of(client, "/ui/")}, follow_redirects=True)
    assert r.request.path == "/ui/login" and flashes(r) == ["Logged out."]
    assert 'id="user"' not in client.get("/ui/").get_data(as_text=True)
    r = act(client, "quarantine", real_server="rs1")
    assert r.status_code == 401 and "log in with an API token" in r.get_data(as_text=True)


def test_login_redirects_only_inside_the_console(client: FlaskClient) -> None:
    csrf = csrf_of(client)
    r = client.post("/ui/login", data={"csrf": csrf, "token": ADMIN, "next": "/ui/jobs"})
    assert r.headers["Location"] == "/ui/jobs"
    csrf = csrf_of(client)
    r = client.post("/ui/login", data={"csrf": csrf, "token": ADMIN, "next": "//evil.example/ui/"})
    assert r.headers["Location"] == "/ui/"


def test_secret_key_is_random_per_app(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = make_app(tmp_path / "a"), make_app(tmp_path / "b")
    assert len(one.config["SECRET_KEY"]) == 32 and one.config["SECRET_KEY"] != two.config["SECRET_KEY"]


def test_a_session_of_another_actuator_is_not_accepted(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = make_app(tmp_path / "a").test_client(), make_app(tmp_path / "b").test_client()
    login(first)
    cookie = first.get_cookie("lvsguard_ui", path="/ui")
    assert cookie is not None
    second.set_cookie("lvsguard_ui", cookie.value, path="/ui")
    assert 'id="user"' not in second.get("/ui/").get_data(as_text=True)


def test_a_session_ends_when_its_token_is_no_longer_configured(app: Flask, client: FlaskClient) -> None:
    login(client)
    settings = app.config["LVSGUARD_SETTINGS"]
    app.config["LVSGUARD_SETTINGS"] = dataclasses.replace(settings, tokens={"bob": BOB})  # as a SIGHUP reload does
    assert 'id="user"' not in client.get("/ui/").get_data(as_text=True)
    assert act(client, "quarantine", real_server="rs1").status_code == 401
    assert kernel_of(app).writes == []


# CSRF


@pytest.mark.parametrize("csrf", [None, "", "forged-token"])
def test_action_without_the_csrf_token_is_refused(app: Flask, client: FlaskClient, csrf: str | None) -> None:
    login(client)
    data = {"action": "quarantine", "service": "web", "real_server": "rs1", "confirmed": "yes"}
    if csrf is not None:
        data["csrf"] = csrf
    r = client.post("/ui/action", data=data)
    assert r.status_code == 403 and "CSRF token is missing or wrong" in r.get_data(as_text=True)
    assert kernel_of(app).weight(WEB, RS1) == 5 and kernel_of(app).writes == []


def test_login_and_logout_need_the_csrf_token(client: FlaskClient) -> None:
    assert client.post("/ui/login", data={"token": ADMIN}).status_code == 403
    login(client)
    assert client.post("/ui/logout", data={}).status_code == 403
    assert 'id="user"' in client.get("/ui/").get_data(as_text=True)


def test_csrf_token_of_another_session_is_refused(app: Flask, client: FlaskClient) -> None:
    other = app.test_client()
    foreign = csrf_of(other)
    login(client)
    r = client.post(
        "/ui/action",
        data={"csrf": foreign, "action": "quarantine", "service": "web", "real_server": "rs1", "confirmed": "yes"},
    )
    assert r.status_code == 403 and kernel_of(app).writes == []


# read-only mode


def test_read_only_open_shows_pages_without_actions(client: FlaskClient) -> None:
    for path in PAGES:
        assert client.get(path).status_code == 200, path
    page = client.get("/ui/service?s=web").get_data(as_text=True)
    assert 'action="/ui/action"' not in page and "log in</a> with an API token to act" in page
    assert client.get("/ui/live.json").get_json()["values"]["TCP 192.0.2.10:80|healthy"] == "4/4"


def test_read_only_closed_sends_to_the_login(tmp_path: Path) -> None:
    client = make_app(tmp_path, read_only_open=False).test_client()
    for path in PAGES[:-1]:
        r = client.get(path)
        assert r.status_code == 302 and r.headers["Location"].startswith("/ui/login?next="), path
    assert client.get("/ui/live.json").status_code == 401
    assert client.get("/ui/jobs.json").status_code == 401
    login(client)
    assert client.get("/ui/service?s=web").status_code == 200


# pages


def test_overview_shows_services_director_and_rates(app: Flask, client: FlaskClient) -> None:
    page = client.get("/ui/").get_data(as_text=True)
    assert "Cluster overview" in page and ">web</a>" in page and "<td>wrr</td>" in page
    assert "192.0.2.10" in page and '<dd id="role">unknown</dd>' in page
    assert 'data-live="TCP 192.0.2.10:80|healthy">4/4<' in page


def test_service_page_lists_real_servers_with_share(app: Flask, client: FlaskClient) -> None:
    kernel_of(app).set_connections(WEB, RS1, active=3, inactive=7)
    kernel_of(app).set_connections(WEB, RS2, active=1)
    page = client.get("/ui/service?s=TCP 192.0.2.10:80").get_data(as_text=True)
    assert 'data-live="TCP 192.0.2.10:80|10.0.1.1:80|active">3<' in page
    assert 'data-live="TCP 192.0.2.10:80|10.0.1.1:80|inactive">7<' in page
    assert 'data-live="TCP 192.0.2.10:80|10.0.1.1:80|share">75%<' in page
    assert 'data-live="TCP 192.0.2.10:80|10.0.1.2:80|share">25%<' in page
    assert '<canvas id="chart"' in page


def test_unknown_service_is_a_page_not_a_traceback(client: FlaskClient) -> None:
    r = client.get("/ui/service?s=nope")
    assert r.status_code == 404 and "no service 'nope' in the kernel table" in html.unescape(r.get_data(as_text=True))
    assert "Traceback" not in r.get_data(as_text=True)


def test_live_json_follows_the_kernel(app: Flask, client: FlaskClient) -> None:
    kernel_of(app).set_weight_by_hand(WEB, RS2, 9)
    data = client.get("/ui/live.json").get_json()
    assert data["values"]["TCP 192.0.2.10:80|10.0.1.2:80|weight"] == "9"
    assert set(data["chart"]["TCP 192.0.2.10:80"]) == {"rs1", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80"}
    page = client.get("/ui/service?s=web").get_data(as_text=True)
    assert f'data-layout="{data["layout"]}"' in page  # the script reloads the page when the layout changes
    kernel_of(app).delete_real_server(WEB, RS2)
    changed = client.get("/ui/live.json").get_json()["layout"]
    assert changed != data["layout"] and "10.0.1.2:80" not in changed and "TCP 192.0.2.10:80|10.0.1.3:80" in changed


def test_pages_carry_a_strict_content_security_policy(client: FlaskClient) -> None:
    r = client.get("/ui/")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"] and r.headers["Cache-Control"] == "no-store"
    assert "<script>" not in r.get_data(as_text=True)
    assert client.get("/ui/static/ui.js").status_code == 200
    assert client.get("/ui/static/ui.css").status_code == 200


# actions (each through the action layer, with a confirmation first)


def test_quarantine_asks_first_then_applies_and_audits_as_ui(app: Flask, client: FlaskClient) -> None:
    login(client)
    r = act(client, "quarantine", confirmed=False, real_server="rs1", reason="disk full")
    assert r.status_code == 200 and "Quarantine rs1 in web (weight 0 until you restore it)?" in r.get_data(as_text=True)
    assert kernel_of(app).weight(WEB, RS1) == 5
    r = act(client, "quarantine", real_server="rs1", reason="disk full")
    assert flashes(r) == ["Done: real server 10.0.1.1:80 of TCP 192.0.2.10:80: weight 5 -> 0 (original 5 recorded)"]
    assert kernel_of(app).weight(WEB, RS1) == 0
    page = r.get_data(as_text=True)
    assert "alice (ui, quarantine)" in page and "disk full" in page
    event = client.get("/api/v1/audit").get_json()["events"][0]
    assert (event["source"], event["actor"], event["action"], event["result"]) == (
        "ui",
        "alice",
        "quarantine",
        "applied",
    )


def test_restore_brings_back_the_original_weight(app: Flask, client: FlaskClient) -> None:
    login(client)
    act(client, "quarantine", real_server="rs1")
    r = act(client, "restore", real_server="rs1")
    assert kernel_of(app).weight(WEB, RS1) == 5
    assert flashes(r)[0].startswith("Done: ")


def test_a_manual_hold_from_the_cli_is_restored_from_the_console(app: Flask, client: FlaskClient) -> None:
    r = client.post(
        "/api/v1/quarantine",
        json={"service": "web", "real_server": "rs1"},
        headers={"Authorization": f"Bearer {ADMIN}", "X-Lvsguard-Client": "cli"},
    )
    assert r.status_code == 200 and kernel_of(app).weight(WEB, RS1) == 0
    login(client)
    act(client, "restore", real_server="rs1")
    assert kernel_of(app).weight(WEB, RS1) == 5


def test_quorum_refusal_is_shown_in_plain_words(tmp_path: Path) -> None:
    app = make_app(tmp_path, service_min_healthy={WEB: Quorum(4)})
    client = app.test_client()
    login(client)
    r = act(client, "quarantine", real_server="rs1")
    assert flashes(r) == ["Refused by the safety rules: refused: service web would have 3 healthy real servers, min 4"]
    assert kernel_of(app).weight(WEB, RS1) == 5
    assert client.get("/api/v1/ledger?active=true").get_json()["holds"] == []


def test_set_weight(app: Flask, client: FlaskClient) -> None:
    login(client)
    r = act(client, "weight", confirmed=False, real_server="10.0.1.3:80", weight="8")
    assert "Set the weight of 10.0.1.3:80 in web to 8?" in r.get_data(as_text=True)
    r = act(client, "weight", real_server="10.0.1.3:80", weight="8")
    assert kernel_of(app).weight(WEB, RealServerKey.parse("10.0.1.3:80")) == 8
    assert flashes(r) == ["Done: real server 10.0.1.3:80 of TCP 192.0.2.10:80: weight 5 -> 8"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"real_server": "rs1", "weight": "lots"}, "Not done: weight: weight must be a whole number"),
        ({"real_server": "rs1", "weight": "70000"}, "Not done: weight: must be 0..65535, got 70000"),
        ({"real_server": "not-an-address", "weight": "1"}, "Not done: real server: neither a real server name"),
        ({"real_server": "", "weight": "1"}, "Not done: real server: the real server is required"),
    ],
)
def test_bad_form_input_is_named_and_nothing_changes(
    app: Flask, client: FlaskClient, fields: dict[str, str], message: str
) -> None:
    login(client)
    for confirmed in (False, True):
        r = act(client, "weight", confirmed=confirmed, **fields)
        assert r.status_code == 200 and flashes(r)[0].startswith(message), flashes(r)
    assert kernel_of(app).writes == []


def test_add_validates_and_adds(app: Flask, client: FlaskClient) -> None:
    login(client)
    r = act(client, "add", confirmed=False, real_server="10.0.1.9:80", weight="3", forward="nat")
    assert "Add real server 10.0.1.9:80 in web with weight 3 by nat?" in r.get_data(as_text=True)
    r = act(client, "add", real_server="10.0.1.9:80", weight="3", forward="nat")
    assert flashes(r) == ["Done: real server 10.0.1.9:80 of TCP 192.0.2.10:80 added with weight 3 (Masq)"]
    assert kernel_of(app).weight(WEB, RealServerKey.parse("10.0.1.9:80")) == 3
    r = act(client, "add", real_server="10.0.1.8:80", weight="3", forward="carrier-pigeon")
    assert flashes(r)[0].startswith("Not done: forward: ")
    r = act(client, "add", real_server="10.0.1.9:80")
    assert flashes(r)[0].startswith("Nothing to do: ")


def test_remove(app: Flask, client: FlaskClient) -> None:
    login(client)
    r = act(client, "remove", confirmed=False, real_server="10.0.1.4:80")
    assert "Remove 10.0.1.4:80 in web from the kernel table now" in r.get_data(as_text=True)
    r = act(client, "remove", real_server="10.0.1.4:80")
    assert flashes(r)[0].startswith("Done: real server 10.0.1.4:80 of TCP 192.0.2.10:80 deleted")
    assert "10.0.1.4:80" not in client.get("/ui/live.json").get_json()["chart"]["TCP 192.0.2.10:80"]


def test_drain_shows_the_job_until_it_is_done(app: Flask, client: FlaskClient) -> None:
    login(client)
    kernel_of(app).set_connections(WEB, RS2, active=4)
    r = act(client, "drain", real_server="10.0.1.2:80", timeout="60")
    assert r.request.path == "/ui/jobs" and r.request.args["job"] == "1"
    assert flashes(r)[0].endswith("drain job 1")
    assert 'data-job="1|state">running<' in r.get_data(as_text=True)
    actions = app.extensions["lvsguard"].actions
    ledger = Ledger.open(app.config["LVSGUARD_LEDGER"])
    kernel_of(app).set_connections(WEB, RS2, active=1)
    assert actions.step_job(ledger, 1) is False
    job = client.get("/ui/jobs.json").get_json()["jobs"][0]
    assert (job["state"], job["progress"]) == ("running", 0.75)
    kernel_of(app).set_connections(WEB, RS2, active=0)
    assert actions.step_job(ledger, 1) is True
    assert client.get("/ui/jobs.json").get_json()["jobs"][0]["state"] == "done"
    assert 'data-job="1|state">done<' in client.get("/ui/jobs").get_data(as_text=True)


def test_drain_timeout_is_checked(app: Flask, client: FlaskClient) -> None:
    login(client)
    r = act(client, "drain", real_server="rs1", timeout="0")
    assert flashes(r)[0].startswith("Not done: timeout: must be 0 < timeout")
    assert kernel_of(app).writes == []


def test_unknown_action_is_refused(app: Flask, client: FlaskClient) -> None:
    login(client)
    r = act(client, "format-disk", real_server="rs1")
    assert flashes(r) == ["Not done: action: unknown action 'format-disk'"]


def test_kernel_failure_is_a_page_with_the_reason(app: Flask, client: FlaskClient) -> None:
    from lvsguard.errors import IPVSUnavailable

    kernel_of(app).fail_reads = IPVSUnavailable("ip_vs module not loaded")
    r = client.get("/ui/")
    assert r.status_code == 503 and "ip_vs module not loaded" in r.get_data(as_text=True)


# the ledger page


def test_ledger_page_filters_the_audit_trail(app: Flask, client: FlaskClient) -> None:
    login(client)
    act(client, "quarantine", real_server="rs1", reason="disk")
    act(client, "weight", real_server="10.0.1.3:80", weight="7")
    page = client.get("/ui/ledger?action=weight").get_data(as_text=True)
    rows = re.findall(r'<tr class="result-[a-z_]+"><td>\d+</td>.*?</tr>', page)
    assert len(rows) == 1 and "<td>weight</td>" in rows[0]
    page = client.get("/ui/ledger?action=quarantine&real_server=10.0.1.1").get_data(as_text=True)
    assert len(re.findall(r'<tr class="result-applied">', page)) == 1
    assert "No matching events." in client.get("/ui/ledger?actor=nobody").get_data(as_text=True)
    act(client, "restore", real_server="rs1")
    assert "No holds." in client.get("/ui/ledger?active=1").get_data(as_text=True)
    assert "<td>released</td>" in client.get("/ui/ledger").get_data(as_text=True)


# no token in any page


def test_no_token_is_rendered_into_any_page(app: Flask, client: FlaskClient) -> None:
    login(client)
    act(client, "quarantine", real_server="rs1", reason="x")
    act(client, "drain", real_server="10.0.1.2:80")
    bodies = [client.get(path).get_data(as_text=True) for path in (*PAGES, "/ui/live.json", "/ui/jobs.json")]
    bodies.append(act(client, "weight", confirmed=False, real_server="rs1", weight="2").get_data(as_text=True))
    bodies.append(login(client, "wrong-token-0123456789").get_data(as_text=True))
    for body in bodies:
        assert ADMIN not in body and BOB not in body
    assert "wrong-token-0123456789" not in bodies[-1]


# probe state and latency from the exporter (actuator.exporter_url)


def serve_probes(handler: type[Exporter]) -> None:
    """The exporter's probe report: rs1 healthy (two checks), rs2 unhealthy since a transition; rs3, rs4 unchecked."""
    handler.body = exposition(
        (WEB, RS1, "tcp", True, 0.0012, True, 0.0),
        (WEB, RS1, "http", True, 0.0034, True, 0.0),
        (WEB, RS2, "tcp", False, 0.25, False, 1_700_000_123.0),
    ).encode()


def test_service_page_shows_probe_state_and_latency_from_the_exporter(
    tmp_path: Path, exporter: tuple[str, type[Exporter]]
) -> None:
    url, handler = exporter
    serve_probes(handler)
    client = make_app(tmp_path, exporter_url=url).test_client()
    page = html.unescape(client.get("/ui/service?s=web").get_data(as_text=True))
    assert 'data-live="TCP 192.0.2.10:80|10.0.1.1:80|health" data-value="healthy" class="health">healthy<' in page
    assert 'data-live="TCP 192.0.2.10:80|10.0.1.1:80|latency">3.4 ms<' in page  # the slower of its two checks
    assert 'data-live="TCP 192.0.2.10:80|10.0.1.1:80|checks">http ok · tcp ok<' in page
    assert 'data-live="TCP 192.0.2.10:80|10.0.1.2:80|health" data-value="unhealthy" class="health">unhealthy<' in page
    assert 'data-live="TCP 192.0.2.10:80|10.0.1.2:80|checks">tcp failed, down since 22:15:23Z<' in page
    assert (
        'data-live="TCP 192.0.2.10:80|10.0.1.3:80|health" data-value="not checked" class="health">not checked<' in page
    )
    assert f"Health from the exporter's probes ({url})" in page
    values = client.get("/ui/live.json").get_json()["values"]
    assert values["TCP 192.0.2.10:80|healthy"] == "1/2 (+2 not checked)"  # rs1 of rs1, rs2; rs3, rs4 have no check
    assert values["TCP 192.0.2.10:80|10.0.1.2:80|latency"] == "250.0 ms"


def test_services_without_checks_are_not_shown_unhealthy(tmp_path: Path, exporter: tuple[str, type[Exporter]]) -> None:
    """A UDP and a fwmark service no check watches: "no checks" and "not checked", in the console and the status."""
    import argparse
    import io

    from lab.actuator import serving
    from lvsguard.actuator.client import status_from_api

    url, handler = exporter
    serve_probes(handler)  # checks of web only
    dns, mark = "UDP 192.0.2.10:53", "FWM 7"
    kernel = FakeKernel(
        [
            service(str(WEB), *((f"10.0.1.{i}:80", 5) for i in range(1, 5))),
            service(dns, *((f"10.0.1.{i}:53", 5) for i in range(1, 4))),
            service(mark, *((f"10.0.1.{i}:0", 5) for i in range(1, 4))),
        ]
    )
    settings = ActuatorSettings(tokens={"alice": ADMIN}, hold_down=0.0, names=NAMES, exporter_url=url)
    app = fake_app(settings, kernel, str(tmp_path / "ledger.db"))
    client = app.test_client()
    overview = client.get("/ui/").get_data(as_text=True)
    for key in (dns, mark):
        assert f'data-live="{key}|healthy">no checks<' in overview
        assert "0/3" not in overview
    page = html.unescape(client.get(f"/ui/service?s={dns}").get_data(as_text=True))
    assert page.count('data-value="not checked" class="health">not checked<') == 3
    with serving(app) as base:
        out = io.StringIO()
        status_from_api(argparse.Namespace(url=base, token_file=None, token_name=None), out)
    lines = out.getvalue().splitlines()
    assert f"{dns} (wrr)  healthy no checks, min 1" in lines
    assert f"{mark} (wrr)  healthy no checks, min 1" in lines
    assert "web TCP 192.0.2.10:80 (wrr)  healthy 1/2 (+2 not checked), min 1" in lines
    rows = [line.split() for line in lines if line.startswith("  10.0.1.")]
    assert [r[-2:] for r in rows if r[0].endswith(":53")] == [["not", "checked"]] * 3


def test_probe_state_is_unknown_when_the_exporter_does_not_answer(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/metrics"
    client = make_app(tmp_path, exporter_url=url).test_client()
    r = client.get("/ui/service?s=web")
    page = html.unescape(r.get_data(as_text=True))
    assert r.status_code == 200
    assert page.count('data-value="unknown" class="health">unknown<') == 4
    assert f"Health: unknown (the exporter at {url} did not answer: Connection refused)." in page


def test_without_exporter_url_the_page_says_where_health_would_come_from(client: FlaskClient) -> None:
    page = client.get("/ui/service?s=web").get_data(as_text=True)
    assert "Health: unknown (no actuator.exporter_url in the config to read the probes from)." in page


def test_api_services_carries_the_probe_state_and_matches_the_openapi_document(
    tmp_path: Path, exporter: tuple[str, type[Exporter]], openapi: OpenAPI
) -> None:
    url, handler = exporter
    serve_probes(handler)
    client = make_app(tmp_path, exporter_url=url).test_client()
    body = call(client, openapi, "get", "/api/v1/services").get_json()
    assert body["probes"]["state"] == "ok" and body["probes"]["source"] == url
    by_rs = {rs["real_server"]: rs["probe"] for rs in body["services"][0]["real_servers"]}
    assert by_rs["10.0.1.1:80"]["state"] == "healthy" and by_rs["10.0.1.1:80"]["latency_seconds"] == pytest.approx(
        0.0034
    )
    assert by_rs["10.0.1.2:80"] == {
        "state": "unhealthy",
        "latency_seconds": 0.25,
        "last_change": "2023-11-14T22:15:23Z",
        "checks": [
            {
                "check": "tcp",
                "healthy": False,
                "success": False,
                "latency_seconds": 0.25,
                "last_change": "2023-11-14T22:15:23Z",
            }
        ],
    }
    assert by_rs["10.0.1.3:80"] == {"state": "unchecked", "latency_seconds": None, "last_change": None, "checks": []}
    handler.status = 503  # the exporter fails: unknown, still a valid 200 reply
    (tmp_path / "down").mkdir()
    down = make_app(tmp_path / "down", exporter_url=url).test_client()  # a fresh app: no read cached
    body = call(down, openapi, "get", "/api/v1/services").get_json()
    assert body["probes"]["state"] == "unreachable" and "503" in body["probes"]["error"]
    assert {rs["probe"]["state"] for rs in body["services"][0]["real_servers"]} == {"unknown"}


# login attempts are limited per client address


def test_failed_logins_are_limited_per_address_then_429_with_retry_after(app: Flask, client: FlaskClient) -> None:
    clock = FakeClock()
    app.extensions["lvsguard_login"] = LoginLimiter(5, 60.0, clock=clock)
    for _ in range(5):
        assert login(client, "wrong-token-0123456789").status_code == 401
        clock.advance(1)
    r = login(client)  # the right token too: a blocked address learns nothing
    assert r.status_code == 429 and r.headers["Retry-After"] == "55"
    assert flashes(r) == ["Too many failed logins from 127.0.0.1 (at most 5 in 60 s). Try again in 55 s."]
    assert 'id="user"' not in client.get("/ui/").get_data(as_text=True)
    other = app.test_client()  # another address is not limited
    csrf = csrf_of(other)
    assert (
        other.post(
            "/ui/login", data={"csrf": csrf, "token": ADMIN}, environ_base={"REMOTE_ADDR": "192.0.2.99"}
        ).status_code
        == 302
    )
    clock.advance(55)
    assert login(client).status_code == 302


def test_successful_logins_are_not_counted_and_clear_the_failures(app: Flask, client: FlaskClient) -> None:
    app.extensions["lvsguard_login"] = LoginLimiter(5, 60.0, clock=FakeClock())
    for _ in range(4):
        login(client, "wrong-token-0123456789")
    for _ in range(10):
        assert login(client).status_code == 302
    for _ in range(4):
        assert login(client, "wrong-token-0123456789").status_code == 401
    assert login(client).status_code == 302


def test_login_limiter_forgets_the_stalest_addresses_beyond_its_bound() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(1, 60.0, clock=clock, max_clients=3)
    for i in range(5):
        limiter.failed(f"192.0.2.{i}")
        clock.advance(1)
    assert [limiter.retry_after(f"192.0.2.{i}") > 0 for i in range(5)] == [False, False, True, True, True]


# the session secret from the config (actuator.session_secret_file)


def test_a_configured_session_secret_keeps_sessions_across_a_restart(tmp_path: Path) -> None:
    secret = b"k" * 40
    for name in "abc":
        (tmp_path / name).mkdir()
    first = make_app(tmp_path / "a", session_secret=secret).test_client()
    login(first)
    cookie = first.get_cookie("lvsguard_ui", path="/ui")
    assert cookie is not None
    restarted = make_app(tmp_path / "b", session_secret=secret).test_client()  # a new process: a new random SECRET_KEY
    restarted.set_cookie("lvsguard_ui", cookie.value, path="/ui")
    assert '<b id="user">alice</b>' in restarted.get("/ui/").get_data(as_text=True)
    other = make_app(tmp_path / "c", session_secret=b"o" * 40).test_client()
    other.set_cookie("lvsguard_ui", cookie.value, path="/ui")
    assert 'id="user"' not in other.get("/ui/").get_data(as_text=True)


def test_a_reload_with_a_new_session_secret_ends_every_session(tmp_path: Path) -> None:
    app = make_app(tmp_path, session_secret=b"k" * 40)
    client = app.test_client()
    login(client)
    assert 'id="user"' in client.get("/ui/").get_data(as_text=True)
    app.config["LVSGUARD_SETTINGS"] = dataclasses.replace(app.config["LVSGUARD_SETTINGS"], session_secret=b"n" * 40)
    assert 'id="user"' not in client.get("/ui/").get_data(as_text=True)


# accessibility basics: every visible form field has a label


class Fields(HTMLParser):
    """Collects the form fields of a page that a person fills in, and what labels them."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.open_labels = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self.open_labels += 1
            if a.get("for"):
                self.label_for.add(str(a["for"]))
        elif tag in ("input", "select", "textarea") and a.get("type") not in ("hidden", "submit"):
            self.fields.append({**a, "_wrapped": "1" if self.open_labels else None})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.open_labels -= 1

    def unlabelled(self) -> list[str]:
        return [
            str(f.get("name"))
            for f in self.fields
            if not f["_wrapped"] and not f.get("aria-label") and f.get("id") not in self.label_for
        ]


def test_every_form_field_of_every_page_has_a_label(app: Flask, client: FlaskClient) -> None:
    login(client)
    act(client, "drain", real_server="rs1")  # a job, so the jobs page has its rows
    pages = [*PAGES[:-1], "/ui/ledger?source=ui", "/ui/login"]
    counted = 0
    for path in pages:
        parser = Fields()
        parser.feed(client.get(path).get_data(as_text=True))
        assert parser.unlabelled() == [], path
        counted += len(parser.fields)
    confirm = Fields()
    confirm.feed(
        client.post(
            "/ui/action",
            data={"csrf": csrf_of(client, "/ui/"), "action": "quarantine", "service": "web", "real_server": "rs1"},
        ).get_data(as_text=True)
    )
    assert confirm.unlabelled() == []
    assert counted >= 10  # the service page's weight, reason and add fields, the ledger filters
    client.post("/ui/logout", data={"csrf": csrf_of(client, "/ui/")})
    login_page = Fields()
    login_page.feed(client.get("/ui/login").get_data(as_text=True))
    assert [f["name"] for f in login_page.fields] == ["token"] and "autofocus" in login_page.fields[0]
