"""The admin API: auth on every mutating call, statuses by outcome, and replies that conform to the OpenAPI document."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from lvsguard.actuator.auth import TokenFileError, load_tokens, parse_tokens, token_name
from lvsguard.actuator.openapi import BODIES, BULK, document
from lvsguard.actuator.settings import ActuatorSettings, Names, Quorum
from lvsguard.model import RealServerKey, ServiceKey
from tests.fakes import FakeKernel, am_alert, am_payload, fake_app, kernel_of, service

ADMIN = "admin-secret-0123456789"
AM = "am-secret-01234567890"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
WEB = ServiceKey.parse("TCP 192.0.2.10:80")
NAMES = Names(services={"web": WEB}, real_servers={WEB: {"rs1": RealServerKey.parse("10.0.1.1:80")}})
MUTATING = sorted({**BODIES, **BULK})


def make_app(tmp_path: Path, **overrides: Any) -> Flask:
    settings = ActuatorSettings(
        **{"tokens": {"alice": ADMIN, "alertmanager": AM}, "hold_down": 0.0, "names": NAMES, **overrides}
    )
    kernel = FakeKernel([service(str(WEB), *((f"10.0.1.{i}:80", 5) for i in range(1, 5)))])
    return fake_app(settings, kernel, str(tmp_path / "ledger.db"))


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class OpenAPI:
    """Validates a reply against the document's schema for (path, method, status)."""

    def __init__(self, doc: dict[str, Any], jsonschema: Any):
        self.doc = doc
        self.jsonschema = jsonschema
        self.schemas = {name: _json_schema(s) for name, s in doc["components"]["schemas"].items()}

    def check(self, path: str, method: str, status: int, body: Any) -> None:
        template = self._template(path)
        responses = self.doc["paths"][template][method]["responses"]
        assert str(status) in responses, f"{method.upper()} {template}: status {status} is not documented"
        schema = _json_schema(responses[str(status)]["content"]["application/json"]["schema"])
        resolver_schema = {**schema, "$defs": self.schemas}
        checker = self.jsonschema.FormatChecker()

        @checker.checks("date-time")
        def _rfc3339(value: object) -> bool:
            return (
                not isinstance(value, str)
                or re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value) is not None
            )

        self.jsonschema.Draft202012Validator(resolver_schema, format_checker=checker).validate(body)

    def _template(self, path: str) -> str:
        path = path.split("?")[0]
        if path.startswith("/api/v1"):
            path = path[len("/api/v1") :]
        for template in self.doc["paths"]:
            pattern = re.sub(r"\{[^}]+\}", r"[^/]+", template)
            if re.fullmatch(pattern, path):
                return template
        raise AssertionError(f"{path} is not in the OpenAPI document")


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema 2020-12 (nullable, local $refs)."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
    if "$ref" in out:
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/$defs/")
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    return out


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    jsonschema = pytest.importorskip("jsonschema")
    doc = document()
    jsonschema.Draft202012Validator.check_schema(_json_schema({"$defs": doc["components"]["schemas"]}))
    return OpenAPI(doc, jsonschema)


def call(
    client: FlaskClient,
    openapi: OpenAPI,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """Make a request and check the reply against the document."""
    r = client.open(path, method=method.upper(), json=body, headers=headers or {})
    openapi.check(path, method, r.status_code, r.get_json())
    return r


# auth


@pytest.mark.parametrize("path", [*MUTATING, "/webhook"], ids=lambda p: p.strip("/"))
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": "Bearer "},
    ],
    ids=["no-token", "wrong-token", "wrong-scheme", "empty-token"],
)
def test_every_mutating_endpoint_needs_a_token(
    app: Flask, client: FlaskClient, path: str, headers: dict[str, str]
) -> None:
    url = "/webhook/alertmanager" if path == "/webhook" else f"/api/v1{path}"
    body = (
        am_payload(am_alert("a", lvsguard_action="quarantine"))
        if path == "/webhook"
        else {
            "service": "web",
            "real_server": "rs1",
            "weight": 0,
            "targets": [{"service": "web", "real_server": "rs1"}],
        }
    )
    r = client.post(url, json=body, headers=headers)
    assert r.status_code == 401 and r.get_json()["error"].startswith("missing or wrong bearer token")
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="lvsguard"'
    assert kernel_of(app).writes == []


def test_no_configured_token_means_no_mutating_call(tmp_path: Path) -> None:
    client = make_app(tmp_path, tokens={}).test_client()
    r = client.post("/api/v1/quarantine", json={"service": "web", "real_server": "rs1"}, headers=AUTH)
    assert r.status_code == 401 and "no token configured" in r.get_json()["error"]


def test_read_only_endpoints_are_open_or_protected_by_config(tmp_path: Path) -> None:
    assert make_app(tmp_path).test_client().get("/api/v1/services").status_code == 200
    closed = make_app(tmp_path, read_only_open=False).test_client()
    assert closed.get("/api/v1/services").status_code == 401
    assert closed.get("/api/v1/services", headers=AUTH).status_code == 200


def test_token_names_and_files(tmp_path: Path) -> None:
    tokens = parse_tokens("# comment\nalice: a1b2c3d4e5f6g7h8i9\n\nb2c3d4e5f6g7h8i9j0\n", "t.txt")
    assert tokens == {"alice": "a1b2c3d4e5f6g7h8i9", "token4": "b2c3d4e5f6g7h8i9j0"}
    assert token_name(tokens, "Bearer b2c3d4e5f6g7h8i9j0") == "token4"
    assert token_name(tokens, "bearer a1b2c3d4e5f6g7h8i9") == "alice"
    assert token_name(tokens, "Bearer a1b2c3d4e5f6g7h8") is None
    path = tmp_path / "tokens"
    path.write_text("am: c3d4e5f6g7h8i9j0k1\n")
    path.chmod(0o600)  # a token file others can read is refused
    assert load_tokens({"LVSGUARD_TOKEN": "d4e5f6g7h8i9j0k1l2"}, str(path)) == {
        "am": "c3d4e5f6g7h8i9j0k1",
        "env": "d4e5f6g7h8i9j0k1l2",
    }


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "short",
            "t.txt:1: token 'token1' must be at least 16 characters without spaces, got 5"
            " (make one with: head -c 24 /dev/urandom | base64)",
        ),
        ("a b: x9y8z7w6v5u4t3s2r1", "t.txt:1: token name 'a b' must be"),
        ("a: x9y8z7w6v5u4t3s2r1\na: y8z7w6v5u4t3s2r1q0", "t.txt:2: token name 'a' appears twice"),
        ("am: aaaaaaaaaaaaaaaaaaaaaaaa", "t.txt:1: token 'am' uses 1 different characters; at least 5 are needed"),
        ("am: abcdabcdabcdabcdabcd", "t.txt:1: token 'am' uses 4 different characters; at least 5 are needed"),
    ],
    ids=["too-short", "bad-name", "duplicate", "one-character-repeated", "short-pattern-repeated"],
)
def test_token_file_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(TokenFileError, match=re.escape(message)):
        parse_tokens(text, "t.txt")


def test_a_weak_lvsguard_token_is_refused() -> None:
    with pytest.raises(TokenFileError, match=re.escape("LVSGUARD_TOKEN uses 1 different characters")):
        load_tokens({"LVSGUARD_TOKEN": "0" * 32}, None)


def test_a_random_hex_token_is_accepted() -> None:
    assert load_tokens({"LVSGUARD_TOKEN": "3f9a0c71e2b84d56"}, None) == {"env": "3f9a0c71e2b84d56"}


def test_missing_token_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match=re.escape(f"{tmp_path}/none: cannot read the token file")):
        load_tokens({}, str(tmp_path / "none"))


# behaviour, each reply checked against the document


def test_quarantine_restore_round_trip(app: Flask, client: FlaskClient, openapi: OpenAPI) -> None:
    r = call(
        client, openapi, "post", "/api/v1/quarantine", {"service": "web", "real_server": "rs1", "reason": "disk"}, AUTH
    )
    assert (r.status_code, r.get_json()["result"], r.get_json()["weight"]) == (200, "applied", 0)
    services = call(client, openapi, "get", "/api/v1/services").get_json()
    rs1 = services["services"][0]["real_servers"][0]
    assert (rs1["name"], rs1["state"], rs1["original_weight"], rs1["holds"][0]["reason"]) == ("rs1", "out", 5, "disk")
    r = call(
        client, openapi, "post", "/api/v1/restore", {"service": "TCP 192.0.2.10:80", "real_server": "10.0.1.1:80"}, AUTH
    )
    assert r.get_json()["weight"] == 5
    ledger = call(client, openapi, "get", "/api/v1/ledger").get_json()
    assert [h["state"] for h in ledger["holds"]] == ["released"] and ledger["backends"] == []
    events = call(client, openapi, "get", "/api/v1/audit?limit=10").get_json()["events"]
    assert [(e["action"], e["actor"], e["source"]) for e in events] == [
        ("restore", "alice", "api"),
        ("quarantine", "alice", "api"),
    ]


def test_a_bulk_quarantine_is_one_batch_of_kernel_writes(app: Flask, client: FlaskClient, openapi: OpenAPI) -> None:
    kernel = kernel_of(app)
    batches: list[int] = []
    edit_many = kernel.edit_real_servers

    def counted(service: ServiceKey, servers: Any) -> int:
        batches.append(n := edit_many(service, servers))
        return n

    kernel.edit_real_servers = counted  # type: ignore[method-assign]
    targets = [
        {"service": "web", "real_server": "rs1"},
        *({"service": "web", "real_server": f"10.0.1.{i}:80"} for i in (2, 3)),
    ]
    r = call(client, openapi, "post", "/api/v1/bulk/quarantine", {"targets": targets, "reason": "rack"}, AUTH)
    body = r.get_json()
    assert (r.status_code, body["counts"]) == (200, {"applied": 3})
    assert [o["real_server"] for o in body["results"]] == ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]
    assert batches == [3]  # one pipelined write of the service's three real servers
    assert [kernel.weight(WEB, RealServerKey.parse(f"10.0.1.{i}:80")) for i in range(1, 5)] == [0, 0, 0, 5]
    r = call(client, openapi, "post", "/api/v1/bulk/restore", {"targets": targets}, AUTH)
    assert (r.status_code, r.get_json()["counts"], batches) == (200, {"applied": 3}, [3, 3])


def test_a_bulk_quarantine_applies_what_the_rules_allow_and_names_the_rest(
    client: FlaskClient, openapi: OpenAPI
) -> None:
    targets = [{"service": "web", "real_server": f"10.0.1.{i}:80"} for i in range(1, 6)]  # .5 is not in the table
    r = call(client, openapi, "post", "/api/v1/bulk/quarantine", {"targets": targets}, AUTH)
    body = r.get_json()
    assert r.status_code == 207
    assert [o["result"] for o in body["results"]] == ["applied", "applied", "applied", "refused", "not_found"]
    assert body["counts"] == {"applied": 3, "refused": 1, "not_found": 1}
    assert body["error"].startswith("2 of 5 not done; targets[3]: refused: service web would have 0 healthy")


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({}, "targets", "required field is missing"),
        ({"targets": []}, "targets", "must list 1..10000 real servers, got 0"),
        ({"targets": "web rs1"}, "targets", "must be a list"),
        ({"targets": [{"service": "web", "real_server": "rs1"}, "rs2"]}, "targets[1]", "must be an object"),
        (
            {"targets": [{"service": "web", "real_server": "rs1"}, {"service": "web", "real_server": "nope"}]},
            "targets[1].real_server",
            "neither a real server name",
        ),
        ({"targets": [{"real_server": "rs1"}]}, "targets[0].service", "required field is missing"),
    ],
)
def test_a_bad_bulk_body_is_refused_whole_naming_the_item(
    app: Flask, client: FlaskClient, openapi: OpenAPI, body: dict[str, Any], path: str, message: str
) -> None:
    r = call(client, openapi, "post", "/api/v1/bulk/quarantine", body, AUTH)
    assert r.status_code == 400 and r.get_json()["path"] == path and message in r.get_json()["error"], r.get_json()
    assert kernel_of(app).writes == []


def test_cli_header_is_recorded_as_the_source(client: FlaskClient, openapi: OpenAPI) -> None:
    call(
        client,
        openapi,
        "post",
        "/api/v1/quarantine",
        {"service": "web", "real_server": "rs1"},
        {**AUTH, "X-Lvsguard-Client": "cli"},
    )
    hold = call(client, openapi, "get", "/api/v1/ledger?active=true").get_json()["holds"][0]
    assert (hold["source"], hold["holder"], hold["kind"]) == ("cli", "alice", "manual")


def test_refusal_is_409_with_the_plain_message(tmp_path: Path, openapi: OpenAPI) -> None:
    client = make_app(tmp_path, min_healthy=Quorum(4)).test_client()
    r = call(client, openapi, "post", "/api/v1/quarantine", {"service": "web", "real_server": "rs1"}, AUTH)
    assert r.status_code == 409
    assert r.get_json()["error"] == "refused: service web would have 3 healthy real servers, min 4"


def test_hold_down_is_429_with_retry_after(tmp_path: Path, openapi: OpenAPI) -> None:
    client = make_app(tmp_path, hold_down=30.0).test_client()
    call(client, openapi, "post", "/api/v1/quarantine", {"service": "web", "real_server": "rs1"}, AUTH)
    r = call(client, openapi, "post", "/api/v1/restore", {"service": "web", "real_server": "rs1"}, AUTH)
    assert r.status_code == 429 and r.get_json()["reason"] == "hold_down" and 25 <= int(r.headers["Retry-After"]) <= 30
    forced = call(
        client, openapi, "post", "/api/v1/restore", {"service": "web", "real_server": "rs1", "force": True}, AUTH
    )
    assert forced.status_code == 200 and forced.get_json()["weight"] == 5


def test_drain_is_a_job_visible_with_progress(app: Flask, client: FlaskClient, openapi: OpenAPI) -> None:
    kernel = kernel_of(app)
    kernel.set_connections(WEB, RealServerKey.parse("10.0.1.2:80"), active=4)
    r = call(
        client,
        openapi,
        "post",
        "/api/v1/drain",
        {"service": "web", "real_server": "10.0.1.2:80", "timeout": 60, "delete": True},
        AUTH,
    )
    assert r.status_code == 202
    job_id = r.get_json()["job_id"]
    kernel.set_connections(WEB, RealServerKey.parse("10.0.1.2:80"), active=1)
    actions = app.extensions["lvsguard"].actions
    from lvsguard.actuator.ledger import Ledger

    ledger = Ledger.open(app.config["LVSGUARD_LEDGER"])
    assert actions.step_job(ledger, job_id) is False
    job = call(client, openapi, "get", f"/api/v1/jobs/{job_id}").get_json()
    assert (job["state"], job["progress"], job["message"]) == ("running", 0.75, "1 active connections left")
    kernel.set_connections(WEB, RealServerKey.parse("10.0.1.2:80"), active=0)
    assert actions.step_job(ledger, job_id) is True
    assert call(client, openapi, "get", "/api/v1/jobs?state=done").get_json()["jobs"][0]["id"] == job_id
    assert [
        rs["real_server"]
        for rs in call(client, openapi, "get", "/api/v1/services").get_json()["services"][0]["real_servers"]
    ] == ["10.0.1.1:80", "10.0.1.3:80", "10.0.1.4:80"]


def test_weight_add_remove(client: FlaskClient, openapi: OpenAPI) -> None:
    r = call(client, openapi, "post", "/api/v1/weight", {"service": "web", "real_server": "rs1", "weight": 9}, AUTH)
    assert r.get_json()["weight"] == 9
    r = call(
        client,
        openapi,
        "post",
        "/api/v1/add",
        {"service": "web", "real_server": "10.0.1.9:80", "weight": 2, "forward": "nat"},
        AUTH,
    )
    assert r.get_json()["result"] == "applied"
    assert (
        call(client, openapi, "post", "/api/v1/add", {"service": "web", "real_server": "10.0.1.9:80"}, AUTH).get_json()[
            "result"
        ]
        == "noop"
    )
    r = call(client, openapi, "post", "/api/v1/remove", {"service": "web", "real_server": "10.0.1.9:80"}, AUTH)
    assert r.get_json()["result"] == "applied"
    r = call(client, openapi, "post", "/api/v1/remove", {"service": "web", "real_server": "10.0.1.9:80"}, AUTH)
    assert r.status_code == 404


@pytest.mark.parametrize(
    "path, body, where, message",
    [
        ("/api/v1/quarantine", {"real_server": "rs1"}, "service", "required field is missing"),
        ("/api/v1/quarantine", {"service": "nope", "real_server": "rs1"}, "service", "neither a service name"),
        ("/api/v1/quarantine", {"service": "web", "real_server": "x:y"}, "real_server", "neither a real server name"),
        ("/api/v1/quarantine", {"service": "web", "real_server": 7}, "real_server", "must be a string"),
        (
            "/api/v1/weight",
            {"service": "web", "real_server": "rs1", "weight": 70000},
            "weight",
            "must be 0..65535, got 70000",
        ),
        (
            "/api/v1/weight",
            {"service": "web", "real_server": "rs1", "weight": True},
            "weight",
            "must be an integer, got a boolean",
        ),
        ("/api/v1/drain", {"service": "web", "real_server": "rs1", "timeout": -1}, "timeout", "must be 0 < timeout"),
        (
            "/api/v1/add",
            {"service": "web", "real_server": "10.0.1.9:80", "forward": "carrier-pigeon"},
            "forward",
            "unknown forwarding",
        ),
        ("/api/v1/restore", [1, 2], "", "the body must be a JSON object"),
    ],
    ids=[
        "no-service",
        "unknown-service",
        "bad-real-server",
        "real-server-not-string",
        "weight-too-big",
        "weight-bool",
        "negative-timeout",
        "bad-forward",
        "body-not-object",
    ],
)
def test_bad_requests_are_400_naming_the_field(
    client: FlaskClient, openapi: OpenAPI, path: str, body: Any, where: str, message: str
) -> None:
    r = call(client, openapi, "post", path, body, AUTH)
    assert r.status_code == 400
    assert r.get_json()["path"] == where and message in r.get_json()["error"]


def test_unknown_job_and_bad_query(client: FlaskClient, openapi: OpenAPI) -> None:
    assert call(client, openapi, "get", "/api/v1/jobs/99").status_code == 404
    assert call(client, openapi, "get", "/api/v1/audit?limit=0").get_json()["path"] == "limit"
    assert call(client, openapi, "get", "/api/v1/jobs?state=maybe").status_code == 400


def test_director_and_document(client: FlaskClient, openapi: OpenAPI, tmp_path: Path) -> None:
    body = call(client, openapi, "get", "/api/v1/director").get_json()
    assert body["role"] == "unknown" and body["sync_daemons"] == []
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.0") and set(doc["paths"]) >= {
        "/quarantine",
        "/services",
        "/webhook/alertmanager",
    }


def test_webhook_replies_conform(client: FlaskClient, openapi: OpenAPI) -> None:
    alerts = [
        am_alert("a", lvsguard_action="quarantine"),
        am_alert("b", lvsguard_action="drain", real_server="10.9.9.9:80"),
        am_alert("c"),
        am_alert("d", lvsguard_action="quarantine", status="resolved"),
    ]
    r = call(client, openapi, "post", "/webhook/alertmanager", am_payload(*alerts), {"Authorization": f"Bearer {AM}"})
    assert [x["result"] for x in r.get_json()["results"]] == ["applied", "not_found", "ignored", "noop"]
    assert (
        call(
            client, openapi, "post", "/webhook/alertmanager", {"version": "4"}, {"Authorization": f"Bearer {AM}"}
        ).status_code
        == 400
    )


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    assert client.get("/api/v1/nothing").get_json()["error"]
    r = client.get("/api/v1/quarantine")
    assert r.status_code == 405 and r.get_json()["error"]
