"""serve() refusals, the listen address, and the job runner's threads over the fake kernel."""

from __future__ import annotations

import os
import pwd
import re
import stat
import time
from pathlib import Path

import pytest

from lvsguard.actuator.app import create_app, ledger_directory, parse_listen, serve
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.errors import LvsguardError
from lvsguard.model import RealServerKey, ServiceKey
from tests.fakes import FakeKernel, service

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
RS1 = RealServerKey.parse("10.0.1.1:80")


def test_serve_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(LvsguardError, match="no token: set LVSGUARD_TOKEN or --token-file"):
        serve(ActuatorSettings(), ledger_path=str(tmp_path / "l.db"))


def test_serve_names_a_missing_ledger_directory_and_the_command(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "state"
    user = pwd.getpwuid(os.geteuid()).pw_name
    expected = (
        f"ledger {missing}/l.db: directory {missing} does not exist, nor {tmp_path}/no:"
        f" create it with: install -d -m 0750 -o {user} {missing}"
    )
    with pytest.raises(LvsguardError, match=re.escape(expected)):
        serve(ActuatorSettings(tokens={"a": "x" * 16}), ledger_path=str(missing / "l.db"))
    assert not missing.parent.exists()


def test_the_ledger_directory_is_created_when_only_it_is_missing(tmp_path: Path) -> None:
    state = tmp_path / "lib" / "lvsguard"
    state.parent.mkdir()
    old = os.umask(0o022)
    try:
        assert ledger_directory(str(state / "actuator.db")) == str(state)
    finally:
        os.umask(old)
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o750
    assert state.stat().st_uid == os.geteuid()
    assert ledger_directory(str(state / "actuator.db")) == str(state)  # there already: left as it is
    Ledger.open(str(state / "actuator.db")).close()  # and the ledger opens in it


def test_a_ledger_directory_that_cannot_be_created_says_the_command(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root may create a directory anywhere but in /proc
        where = Path("/proc/lvsguard-test")
    else:
        (tmp_path / "lib").mkdir(mode=0o555)
        where = tmp_path / "lib" / "lvsguard"
    with pytest.raises(LvsguardError, match=r"cannot create it \(.+\): create it with: install -d -m 0750 -o "):
        ledger_directory(str(where / "actuator.db"))
    assert not where.exists()


@pytest.mark.parametrize(
    "text, expected",
    [("127.0.0.1:9911", ("127.0.0.1", 9911)), ("[::1]:9911", ("::1", 9911)), (":9911", ("0.0.0.0", 9911))],
    ids=["ipv4", "ipv6", "any"],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9911", "host:", "host:99999"], ids=["no-host", "no-port", "port-too-big"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_listen(text)


def test_runner_resumes_open_jobs_and_runs_new_ones_in_threads(tmp_path: Path) -> None:
    kernel = FakeKernel([service(str(WEB), ("10.0.1.1:80", 5), ("10.0.1.2:80", 5))])
    settings = ActuatorSettings(tokens={"a": "x" * 16}, hold_down=0.0, job_poll_interval=0.01)
    app = create_app(settings, kernel=kernel, ledger_path=str(tmp_path / "l.db"))
    kernel.set_connections(WEB, RS1, active=2)
    r = app.test_client().post(
        "/api/v1/drain",
        json={"service": str(WEB), "real_server": str(RS1)},
        headers={"Authorization": "Bearer " + "x" * 16},
    )
    job_id = r.get_json()["job_id"]
    runner = app.extensions["lvsguard"].runner
    assert runner.queued == [job_id]  # nothing runs before begin()
    runner.begin()
    try:
        kernel.set_connections(WEB, RS1, active=0)
        ledger = Ledger.open(app.config["LVSGUARD_LEDGER"])
        deadline = time.monotonic() + 10
        while ledger.job(job_id).state == "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ledger.job(job_id).state == "done"
    finally:
        runner.stop()
