"""Schemathesis over the actuator's own OpenAPI document: every endpoint, schema-valid and schema-invalid requests.

The app is the real one (``create_app``) on a real SQLite ledger; only the
kernel is the in-memory table of ``tests/fakes.py`` (the kernel writes are
tested in the VM). Each case is one operation of ``/api/v1/openapi.json``,
drawn at random, with a request schemathesis builds from that operation's
schema (``positive``) or deliberately breaks (``negative``), sent with the
token. Every reply must be: no 5xx, a status the document lists for that
operation, the content type and body schema it declares, no traceback in the
body or the actuator's log. Secured operations are also sent without a token
and with a wrong one (schemathesis's ``ignored_auth``): both must be 401.

The suite runs ``LVSGUARD_FUZZ_EXAMPLES`` cases (a few hundred); ``bench/fuzz.py``
runs 10 000 and prints ``CASES``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the REST fuzz test needs the schemathesis package")
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks as st_checks
from schemathesis.generation import GenerationMode

from lvsguard.actuator.app import create_app
from lvsguard.actuator.openapi import document
from lvsguard.actuator.settings import ActuatorSettings
from tests.fakes import FakeKernel, service

TOKEN = "schemathesis-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = int(os.environ.get("LVSGUARD_FUZZ_EXAMPLES", "250"))
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
    st_checks.ignored_auth,
]
"""Not ``positive_data_acceptance``: the document types ``service`` as a string, and a string that names no service is rightly a 400."""
OPERATIONS = sorted(
    (path, method) for path, item in document()["paths"].items() for method in item if method != "servers"
)
CASES: Counter[str] = Counter()
"""Cases run per surface in this process (bench/fuzz.py prints them)."""
PER_OPERATION: Counter[str] = Counter()


class _Errors(logging.Handler):
    """Every ERROR record of the actuator (``handle_error`` logs a 500's traceback there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    kernel = FakeKernel(
        [
            service("TCP 192.0.2.10:80", *((f"10.0.1.{i}:80", 5) for i in range(1, 5))),
            service("UDP [2001:db8::10]:53", ("[2001:db8::1]:53", 1), ("[2001:db8::2]:53", 1)),
        ]
    )
    settings_ = ActuatorSettings(tokens={"ops": TOKEN}, hold_down=0.0, drain_timeout=0.5, job_poll_interval=0.05)
    return create_app(settings_, kernel=kernel, ledger_path=str(tmp_path_factory.mktemp("schemathesis") / "ledger.db"))


@pytest.fixture(scope="module")
def schema(app: Flask) -> Any:
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


@pytest.fixture(scope="module")
def errors() -> Any:
    handler = _Errors()
    logger = logging.getLogger("lvsguard.actuator")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _has_inputs(operation: Any) -> bool:
    """Whether a request to ``operation`` can break its schema (an operation without inputs has no negative case)."""
    return bool(operation.body or operation.path_parameters or operation.query or operation.headers)


def test_every_rest_endpoint_of_the_app_is_in_the_document(app: Flask) -> None:
    """So that fuzzing the document's operations is fuzzing every endpoint (the console under /ui/ has its own tests)."""
    routes = sorted(
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule).removeprefix("/api/v1"), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/api/v1/", "/webhook/"))
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    )
    assert routes == OPERATIONS
    assert ("/jobs/{job_id}", "get") in routes and ("/webhook/alertmanager", "post") in routes


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_requests_conform_to_the_document(schema: Any, errors: _Errors, data: st.DataObject) -> None:
    path, method = data.draw(st.sampled_from(OPERATIONS), label="operation")
    operation = schema[path][method]
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if _has_inputs(operation) else [GenerationMode.POSITIVE]
    mode = data.draw(st.sampled_from(modes), label="mode")
    case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
    base_url = "http://localhost" + (operation.base_url or "").rstrip("/")  # the webhook's own `servers` entry is "/"
    before = len(errors.records)
    response = case.call(base_url=base_url, headers=AUTH)
    CASES["rest"] += 1
    PER_OPERATION[f"{method.upper()} {path} {mode.value}"] += 1
    case.validate_response(response, checks=CHECKS, headers=AUTH, transport_kwargs={"base_url": base_url})
    assert "Traceback" not in response.text
    assert errors.records[before:] == [], [r.getMessage() for r in errors.records[before:]]
