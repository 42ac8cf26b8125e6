"""SIGHUP reloads the actuator's config and tokens; the ledger, the holds and the kernel state stay.

On the host: the app over the fake kernel, reloaded through the same
function the CLI hands to ``serve`` (config file + token file). In the lab
VM (``kernel``): a real ``lvsguard actuator`` process, a real quarantine,
``kill -HUP``, and the real kernel's weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from lvsguard.actuator import reload as reloading
from lvsguard.actuator.app import create_app
from lvsguard.cli import _actuator_settings
from lvsguard.model import RealServerKey, ServiceKey
from tests.fakes import FakeKernel, service

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
RS1 = RealServerKey.parse("10.0.1.1:80")
OLD_TOKEN = "old-secret-0123456789"
NEW_TOKEN = "new-secret-0123456789"

CONFIG = """\
services:
  - name: {name}
    service: TCP 192.0.2.10:80
    real_servers:
      - {{name: rs1, address: "10.0.1.1:80"}}
      - {{name: rs2, address: "10.0.1.2:80"}}
      - {{name: rs3, address: "10.0.1.3:80"}}
actuator:
  ledger: {ledger}
  hold_down: 0s
  dry_run: {dry_run}
"""


def write(tmp: Path, *, name: str = "web", dry_run: str = "false", token: str = OLD_TOKEN) -> argparse.Namespace:
    (tmp / "lvsguard.yaml").write_text(CONFIG.format(name=name, ledger=tmp / "actuator.db", dry_run=dry_run))
    (tmp / "tokens").write_text(f"ops:{token}\n")
    (tmp / "tokens").chmod(0o600)  # a token file others can read is refused
    return argparse.Namespace(config=tmp / "lvsguard.yaml", token_file=str(tmp / "tokens"))


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Flask, FakeKernel, argparse.Namespace]:
    monkeypatch.delenv("LVSGUARD_TOKEN", raising=False)
    args = write(tmp_path)
    kernel = FakeKernel([service(str(WEB), ("10.0.1.1:80", 5), ("10.0.1.2:80", 5), ("10.0.1.3:80", 5))])
    app = create_app(_actuator_settings(args), kernel=kernel)
    return app, kernel, args


def post(app: Flask, path: str, token: str, **body: Any) -> tuple[int, dict[str, Any]]:
    r = app.test_client().post(f"/api/v1/{path}", json=body, headers={"Authorization": f"Bearer {token}"})
    return r.status_code, r.get_json()


def weights(kernel: FakeKernel) -> dict[str, int]:
    return {str(rs.key): rs.weight for rs in kernel.read().services[0].real_servers}


def test_reload_swaps_tokens_names_and_rules_and_keeps_the_holds(
    setup: tuple[Flask, FakeKernel, argparse.Namespace],
) -> None:
    app, kernel, args = setup
    assert post(app, "quarantine", OLD_TOKEN, service="web", real_server="rs1")[0] == 200
    policy = app.extensions["lvsguard"].actions.policy
    write(args.config.parent, name="www", dry_run="true", token=NEW_TOKEN)

    assert reloading.reload(app, lambda: _actuator_settings(args))

    assert post(app, "quarantine", OLD_TOKEN, service="www", real_server="rs2")[0] == 401
    status, body = post(app, "quarantine", NEW_TOKEN, service="www", real_server="rs2")
    assert (status, body["result"]) == (200, "dry_run")  # the new rules apply
    assert weights(kernel) == {"10.0.1.1:80": 0, "10.0.1.2:80": 5, "10.0.1.3:80": 5}  # the hold made before stays
    ledger = app.test_client().get("/api/v1/ledger?active=true").get_json()
    assert [(h["real_server"], h["state"]) for h in ledger["holds"]] == [("10.0.1.1:80", "active")]
    services = app.test_client().get("/api/v1/services").get_json()["services"]
    assert services[0]["name"] == "www"
    assert app.extensions["lvsguard"].actions.policy is policy  # the rate-limit window and clocks carry over


def test_a_bad_config_is_refused_with_its_line_and_the_old_one_kept(
    setup: tuple[Flask, FakeKernel, argparse.Namespace], caplog: pytest.LogCaptureFixture
) -> None:
    app, kernel, args = setup
    args.config.write_text("actuator:\n  hold_down: soon\n")
    with caplog.at_level(logging.ERROR, "actuator"):
        assert not reloading.reload(app, lambda: _actuator_settings(args))
    assert f"{args.config}:2:14: actuator.hold_down:" in caplog.text
    assert "reload_failed" in caplog.text
    assert post(app, "quarantine", OLD_TOKEN, service="web", real_server="rs1")[0] == 200
    assert weights(kernel)["10.0.1.1:80"] == 0


def test_a_token_file_left_empty_is_refused(
    setup: tuple[Flask, FakeKernel, argparse.Namespace], caplog: pytest.LogCaptureFixture
) -> None:
    app, _, args = setup
    Path(args.token_file).write_text("")
    with caplog.at_level(logging.ERROR, "actuator"):
        assert not reloading.reload(app, lambda: _actuator_settings(args))
    assert "no token" in caplog.text
    assert OLD_TOKEN not in caplog.text
    assert post(app, "quarantine", OLD_TOKEN, service="web", real_server="rs1")[0] == 200


def test_a_new_ledger_path_needs_a_restart(
    setup: tuple[Flask, FakeKernel, argparse.Namespace], caplog: pytest.LogCaptureFixture
) -> None:
    app, _, args = setup
    ledger_before = app.config["LVSGUARD_SETTINGS"].ledger_path
    args.config.write_text(args.config.read_text().replace("actuator.db", "other.db"))
    with caplog.at_level(logging.INFO, "actuator"):
        assert reloading.reload(app, lambda: _actuator_settings(args))
    assert "reload_needs_restart keys=actuator.ledger" in caplog.text
    assert app.config["LVSGUARD_SETTINGS"].ledger_path == ledger_before


# --- a real actuator process in the lab VM ----------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, token: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url + path, data=data, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_until(check, what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} never happened; actuator log:\n{log.read_text()}")


LAB_CONFIG = """\
services:
  - name: {name}
    service: "{service}"
    real_servers:
{real_servers}
actuator:
  hold_down: 0s
"""


@pytest.mark.kernel
def test_hup_in_the_lab_keeps_the_quarantine_and_takes_the_new_token(lab, tmp_path: Path) -> None:
    nat = lab.nat
    rs = "\n".join(f'      - {{name: {node}, address: "{key}"}}' for key, node in nat.backends)
    config, tokens, log = tmp_path / "lvsguard.yaml", tmp_path / "tokens", tmp_path / "actuator.log"
    config.write_text(LAB_CONFIG.format(name="web", service=nat.key, real_servers=rs))
    tokens.write_text(f"ops:{OLD_TOKEN}\n")
    tokens.chmod(0o600)  # a token file others can read is refused
    url = f"http://127.0.0.1:{free_port()}"

    def view() -> dict[str, Any]:
        return next(s for s in call(url, NEW_TOKEN, "/api/v1/services")[1]["services"] if s["service"] == str(nat.key))

    env = {k: v for k, v in os.environ.items() if k != "LVSGUARD_TOKEN"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lvsguard.cli",
                "actuator",
                "--netns",
                lab.director.netns,
                "--config",
                str(config),
                "--token-file",
                str(tokens),
                "--ledger",
                str(tmp_path / "actuator.db"),
                "--listen",
                url.removeprefix("http://"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_until(lambda: call(url, OLD_TOKEN, "/api/v1/services")[0] == 200, "the actuator answering", log)
        assert call(url, OLD_TOKEN, "/api/v1/quarantine", {"service": "web", "real_server": "rs1"})[0] == 200

        config.write_text(LAB_CONFIG.format(name="www", service=nat.key, real_servers=rs))
        tokens.write_text(f"ops:{NEW_TOKEN}\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: view()["name"] == "www", "the reload", log)
        assert call(url, OLD_TOKEN, "/api/v1/quarantine", {"service": "www", "real_server": "rs2"})[0] == 401
        servers = {r["real_server"]: r for r in view()["real_servers"]}
        assert servers[str(nat.real_server("rs1"))]["weight"] == 0  # the quarantine made before the reload

        config.write_text("services: [oops\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload_failed" in log.read_text(), "the refused reload", log)
        assert f"{config}:" in log.read_text()
        status, body = call(url, NEW_TOKEN, "/api/v1/restore", {"service": "www", "real_server": "rs1"})
        assert (status, body["result"]) == (200, "applied")
        assert proc.poll() is None
        assert "Traceback" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
