"""Who may read the actuator: open on loopback, a token elsewhere, unless ``actuator.read_only_open`` says otherwise.

Real actuators over waitress, bound as ``lvsguard actuator`` binds them
(``actuator.app.serve`` records the listen address the same way), on
0.0.0.0 (a non-loopback bind, reached here through 127.0.0.1) and on
127.0.0.1; the failover's peer check goes from one real actuator to another.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from lab.actuator import serving
from lvsguard import config
from lvsguard.actuator import auth
from lvsguard.actuator.app import create_app
from lvsguard.actuator.settings import ActuatorSettings
from tests.fakes import FakeKernel, service

TOKEN = "read-access-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(tmp_path: Path, name: str, listen_host: str, **overrides: Any) -> Flask:
    settings = ActuatorSettings(**{"tokens": {"ops": TOKEN}, "hold_down": 0.0, **overrides})
    kernel = FakeKernel([service("TCP 192.0.2.10:80", ("10.0.1.2:80", 1), ("10.0.1.3:80", 1))])
    app = create_app(settings, kernel=kernel, ledger_path=str(tmp_path / f"{name}.db"))
    app.config[auth.LISTEN_HOST] = listen_host  # as serve() records it
    return app


@contextmanager
def served(app: Flask, host: str) -> Iterator[str]:
    with serving(app, host=host) as url:
        yield url


def get(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def landing(url: str) -> str:
    """Where a browser lands on ``url``, redirects followed."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.url)


def test_the_default_is_absent_in_the_config_and_the_settings() -> None:
    assert ActuatorSettings().read_only_open is None
    assert config.loads("actuator: {}\n", "x.yaml").actuator.read_only_open is None
    assert config.loads("actuator:\n  read_only_open: true\n", "x.yaml").actuator.read_only_open is True


def test_a_non_loopback_bind_needs_a_token_for_reads(tmp_path: Path) -> None:
    with served(make_app(tmp_path, "a", "0.0.0.0"), "0.0.0.0") as url:
        assert get(url + "/api/v1/services") == 401
        assert get(url + "/api/v1/ledger") == 401
        assert get(url + "/metrics") == 401
        assert get(url + "/api/v1/services", AUTH) == 200
        assert landing(url + "/ui/").startswith(url + "/ui/login")  # the console asks for a login first


def test_a_loopback_bind_reads_without_a_token(tmp_path: Path) -> None:
    with served(make_app(tmp_path, "a", "127.0.0.1"), "127.0.0.1") as url:
        assert get(url + "/api/v1/services") == 200
        assert landing(url + "/ui/") == url + "/ui/"


@pytest.mark.parametrize(("setting", "host", "status"), [(True, "0.0.0.0", 200), (False, "127.0.0.1", 401)])
def test_the_config_overrides_the_bind(tmp_path: Path, setting: bool, host: str, status: int) -> None:
    with served(make_app(tmp_path, "a", host, read_only_open=setting), host) as url:
        assert get(url + "/api/v1/services") == status


def test_the_peer_check_works_between_directors_bound_beyond_loopback(tmp_path: Path) -> None:
    role = tmp_path / "peer.role"
    role.write_text("BACKUP\n")
    peer = make_app(tmp_path, "peer", "0.0.0.0", role_file=str(role))
    with served(peer, "0.0.0.0") as peer_url:
        assert get(peer_url + "/api/v1/director") == 401  # reads need a token there
        track = tmp_path / "failover"
        track.write_text("0\n")
        local = make_app(tmp_path, "local", "0.0.0.0", failover_track_file=str(track), failover_peer_url=peer_url)
        applied = local.test_client().post("/api/v1/failover", json={"reason": "upgrade"}, headers=AUTH)
        assert applied.status_code == 200, applied.get_json()
        assert track.read_text() == "1\n"


def test_a_peer_with_another_token_is_refused_with_the_fix(tmp_path: Path) -> None:
    role = tmp_path / "peer.role"
    role.write_text("BACKUP\n")
    peer = make_app(tmp_path, "peer", "0.0.0.0", role_file=str(role), tokens={"ops": "another-token-0123456789"})
    with served(peer, "0.0.0.0") as peer_url:
        track = tmp_path / "failover"
        track.write_text("0\n")
        local = make_app(tmp_path, "local", "0.0.0.0", failover_track_file=str(track), failover_peer_url=peer_url)
        refused = local.test_client().post("/api/v1/failover", json={"reason": "upgrade"}, headers=AUTH)
        assert refused.status_code == 409
        message = refused.get_json()["message"]
        assert "HTTP 401" in message and "same token" in message and "read_only_open: true" in message
        assert track.read_text() == "0\n"
