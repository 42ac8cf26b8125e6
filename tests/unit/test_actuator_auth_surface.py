"""Every mutating endpoint of the actuator, found from the app's own URL map, refuses a missing or wrong token; no secret reaches a log.

The routes are not listed by hand: a route added later is covered without
editing this file. Each POST route of ``/api/v1`` and ``/webhook`` is sent a
plausible body with no ``Authorization``, a wrong secret, the token's *name*
instead of its secret, another scheme, and the secret with one character
changed: all must be 401 with ``WWW-Authenticate`` and leave the table and
the ledger untouched. The console's POST routes (``/ui/...``) take no bearer
token (a session cookie and a CSRF token); without a session they must not act.
Every record logged meanwhile, by any logger, must hold neither the secret
nor a wrong secret that was tried.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from flask import Flask

from lvsguard.actuator.app import create_app
from lvsguard.actuator.settings import ActuatorSettings
from tests.fakes import FakeKernel, service

SECRET = "s3cret-of-the-ops-token-42"
WRONG = "wrong-secret-0123456789abc"
BODY = {
    "service": "TCP 192.0.2.10:80",
    "real_server": "10.0.1.1:80",
    "weight": 1,
    "version": "4",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "lvsguard_action": "quarantine",
                "remote_address": "10.0.1.1",
                "remote_port": "80",
                "local_address": "192.0.2.10",
                "local_port": "80",
                "proto": "TCP",
            },
            "fingerprint": "f1",
        }
    ],
}
BAD_HEADERS = {
    "no header": {},
    "wrong secret": {"Authorization": f"Bearer {WRONG}"},
    "the token's name": {"Authorization": "Bearer ops"},
    "name:secret": {"Authorization": f"Bearer ops:{SECRET}"},
    "basic scheme": {"Authorization": f"Basic {SECRET}"},
    "one character off": {"Authorization": f"Bearer {SECRET[:-1]}3"},
    "empty bearer": {"Authorization": "Bearer "},
}


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logged() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel([service("TCP 192.0.2.10:80", *((f"10.0.1.{i}:80", 5) for i in range(1, 4)))])


def make_app(kernel: FakeKernel, tmp_path_factory: pytest.TempPathFactory, *, read_only_open: bool = True) -> Flask:
    settings = ActuatorSettings(tokens={"ops": SECRET}, hold_down=0.0, read_only_open=read_only_open)
    return create_app(settings, kernel=kernel, ledger_path=str(tmp_path_factory.mktemp("auth") / "ledger.db"))


def routes(app: Flask, method: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        r.rule.replace("<int:job_id>", "1")
        for r in app.url_map.iter_rules()
        if method in (r.methods or ()) and r.rule.startswith(prefixes)
    )


def test_every_mutating_api_route_refuses_a_missing_or_wrong_token(
    kernel: FakeKernel, tmp_path_factory: pytest.TempPathFactory, logged: Everything
) -> None:
    app = make_app(kernel, tmp_path_factory)
    client = app.test_client()
    posts = routes(app, "POST", ("/api/", "/webhook/"))
    assert "/webhook/alertmanager" in posts and "/api/v1/quarantine" in posts and len(posts) >= 9
    for n, path in enumerate(posts):
        client_address = {"REMOTE_ADDR": f"198.51.100.{n + 1}"}  # one address per route: under the guessing limit
        for why, headers in BAD_HEADERS.items():
            r = client.post(path, json=BODY, headers=headers, environ_base=client_address)
            assert r.status_code == 401, (path, why, r.status_code, r.get_data(as_text=True))
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), (path, why)
    assert kernel.writes == []
    assert client.get("/api/v1/ledger").get_json()["holds"] == []  # nothing was held for a refused caller
    good = client.post(
        "/api/v1/weight",
        json={"service": "TCP 192.0.2.10:80", "real_server": "10.0.1.1:80", "weight": 3},
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    assert good.status_code == 200 and kernel.writes, good.get_data(
        as_text=True
    )  # the token itself works: the 401s above were about the token
    text = "\n".join(logged.lines)
    assert "token=ops" in text  # the name is logged, so the check below looks at real request lines
    assert SECRET not in text and WRONG not in text and SECRET[:-1] not in text


def test_protected_reads_refuse_too(kernel: FakeKernel, tmp_path_factory: pytest.TempPathFactory) -> None:
    app = make_app(kernel, tmp_path_factory, read_only_open=False)
    client = app.test_client()
    gets = [p for p in routes(app, "GET", ("/api/v1/",)) if not p.endswith("openapi.json")]
    assert "/api/v1/services" in gets and len(gets) >= 6
    for path in gets:
        for why, headers in BAD_HEADERS.items():
            assert client.get(path, headers=headers).status_code == 401, (path, why)
        assert client.get(path, headers={"Authorization": f"Bearer {SECRET}"}).status_code in (200, 404), path


def test_console_posts_without_a_session_do_not_act(
    kernel: FakeKernel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    app = make_app(kernel, tmp_path_factory)
    client = app.test_client()
    posts = [p for p in routes(app, "POST", ("/ui/",)) if p != "/ui/login"]
    assert "/ui/action" in posts
    for path in posts:
        for headers in ({}, {"Authorization": f"Bearer {SECRET}"}):  # a bearer token is no console session
            r = client.post(
                path,
                data={
                    "action": "quarantine",
                    "service": "TCP 192.0.2.10:80",
                    "real_server": "10.0.1.1:80",
                    "confirmed": "yes",
                },
                headers=headers,
            )
            assert r.status_code in (302, 303, 400, 401, 403), (path, r.status_code)
    assert kernel.writes == []
