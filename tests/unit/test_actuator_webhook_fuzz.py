"""Property-based: thousands of generated webhook bodies, never a 5xx, never a traceback."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from lvsguard.actuator.app import create_app
from lvsguard.actuator.settings import ActuatorSettings
from tests.fakes import FakeKernel, am_alert, am_payload, service

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

TOKEN = "am-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    kernel = FakeKernel([service("TCP 192.0.2.10:80", *((f"10.0.1.{i}:80", 5) for i in range(1, 5)))])
    settings = ActuatorSettings(tokens={"alertmanager": TOKEN}, hold_down=0.0)
    app: Flask = create_app(settings, kernel=kernel, ledger_path=str(tmp_path_factory.mktemp("fuzz") / "ledger.db"))
    return app.test_client()


def quarantine_alert(fingerprint: str, rs: str = "10.0.1.1:80") -> dict[str, Any]:
    return am_alert(fingerprint, real_server=rs, lvsguard_action="quarantine")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _near_valid() -> st.SearchStrategy[Any]:
    """Valid payloads with one field replaced by arbitrary JSON, or deleted: the interesting edge."""
    base = am_payload(quarantine_alert("a"), quarantine_alert("b", "10.0.1.2:80"))
    paths = [
        ["version"],
        ["status"],
        ["alerts"],
        ["receiver"],
        ["groupLabels"],
        ["truncatedAlerts"],
        ["alerts", 0],
        ["alerts", 1, "labels"],
        ["alerts", 1, "labels", "remote_port"],
        ["alerts", 0, "fingerprint"],
        ["alerts", 0, "status"],
        ["alerts", 1, "annotations"],
        ["alerts", 0, "labels", "lvsguard_action"],
        ["alerts", 0, "labels", "proto"],
        ["alerts", 1, "endsAt"],
    ]

    def build(path: list[Any], value: Any, delete: bool) -> Any:
        payload = copy.deepcopy(base)
        node = payload
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return payload

    return st.builds(build, st.sampled_from(paths), JSON, st.booleans())


@hsettings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(body=st.one_of(JSON, _near_valid()))
def test_generated_payloads_never_get_a_5xx_or_a_traceback(client: FlaskClient, body: Any) -> None:
    r = client.post(
        "/webhook/alertmanager", data=json.dumps(body), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code in (200, 400), r.get_data(as_text=True)
    reply = r.get_json()
    assert isinstance(reply, dict)
    if r.status_code == 400:
        assert set(reply) == {"error", "path"} and reply["error"]
    assert "Traceback" not in r.get_data(as_text=True)


API_PATHS = [
    "/api/v1/quarantine",
    "/api/v1/restore",
    "/api/v1/drain",
    "/api/v1/weight",
    "/api/v1/add",
    "/api/v1/remove",
    "/api/v1/failover",
    "/api/v1/failover/release",
]
FIELDS = st.sampled_from(
    [
        "service",
        "real_server",
        "weight",
        "timeout",
        "delete",
        "force",
        "all_holders",
        "forward",
        "reason",
        "upper_threshold",
        "lower_threshold",
    ]
)
VALUES = st.one_of(
    JSON, st.sampled_from(["TCP 192.0.2.10:80", "10.0.1.1:80", "10.0.1.9:80", "FWM 1", "nat", "UDP [::1]:53"])
)


@hsettings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(path=st.sampled_from(API_PATHS), body=st.one_of(JSON, st.dictionaries(FIELDS, VALUES, max_size=6)))
def test_generated_api_bodies_never_get_a_5xx(client: FlaskClient, path: str, body: Any) -> None:
    r = client.post(path, data=json.dumps(body), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code < 500, r.get_data(as_text=True)
    reply = r.get_json()
    assert isinstance(reply, dict)
    if r.status_code >= 400:
        assert reply["error"]
