"""The CLI commands against a real HTTP actuator (waitress on loopback, fake kernel)."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from lab.actuator import serving
from lvsguard.actuator.client import COMMANDS, ActuatorClient, ClientError, ProgressBar, status_from_api
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import ActuatorSettings, Names, Quorum
from lvsguard.model import RealServerKey, ServiceKey
from tests.fakes import FakeKernel, fake_app, kernel_of, service

TOKEN = "cli-secret-0123456789"
WEB = ServiceKey.parse("TCP 192.0.2.10:80")
RS1 = RealServerKey.parse("10.0.1.1:80")
NAMES = Names(services={"web": WEB}, real_servers={WEB: {"rs1": RS1}})


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    settings = ActuatorSettings(tokens={"alice": TOKEN}, hold_down=0.0, names=NAMES, min_healthy=Quorum(2))
    kernel = FakeKernel([service(str(WEB), ("10.0.1.1:80", 5), ("10.0.1.2:80", 5), ("10.0.1.3:80", 5))])
    app = fake_app(settings, kernel, str(tmp_path / "ledger.db"))
    with serving(app) as url:
        yield app, url


def cli(url: str, *argv: str, token_file: Path | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lvsguard")
    sub = parser.add_subparsers()
    for setup in COMMANDS.values():
        setup(sub)
    extra = ["--token-file", str(token_file)] if token_file else []
    return parser.parse_args([argv[0], *argv[1:], "--url", url, *extra])


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"alice:{TOKEN}\n")
    path.chmod(0o600)  # a token file others can read is refused
    return path


def test_quarantine_and_restore_from_the_cli(served: tuple[Flask, str], token_file: Path) -> None:
    app, url = served
    out = io.StringIO()
    args = cli(url, "quarantine", "web", "rs1", "--reason", "disk full", token_file=token_file)
    assert args.func(args, out) == 0
    assert out.getvalue() == "real server 10.0.1.1:80 of TCP 192.0.2.10:80: weight 5 -> 0 (original 5 recorded)\n"
    assert kernel_of(app).weight(WEB, RS1) == 0
    ledger_out = io.StringIO()
    args = cli(url, "ledger", "--active", token_file=token_file)
    args.func(args, ledger_out)
    assert "cli alice" in ledger_out.getvalue() and "disk full" in ledger_out.getvalue()
    args = cli(url, "restore", "web", "10.0.1.1:80", token_file=token_file)
    assert args.func(args, io.StringIO()) == 0
    assert kernel_of(app).weight(WEB, RS1) == 5


def test_refusal_reads_plainly(served: tuple[Flask, str], token_file: Path) -> None:
    _app, url = served
    first = cli(url, "quarantine", "web", "rs1", token_file=token_file)
    first.func(first, io.StringIO())
    second = cli(url, "quarantine", "web", "10.0.1.2:80", token_file=token_file)
    with pytest.raises(ClientError) as info:
        second.func(second, io.StringIO())
    assert str(info.value) == "refused: service web would have 1 healthy real server, min 2"
    assert info.value.status == 409


def test_several_real_servers_or_a_file_are_one_bulk_action(
    served: tuple[Flask, str], token_file: Path, tmp_path: Path
) -> None:
    app, url = served
    listed = tmp_path / "rack7"
    listed.write_text("# rack 7\nweb rs1\nTCP 192.0.2.10:80 10.0.1.2:80  # the second one\n\n")
    out = io.StringIO()
    args = cli(url, "quarantine", "--file", str(listed), token_file=token_file)
    assert args.func(args, out) == 1  # min 2 of 3: the second is refused, and named
    assert out.getvalue() == (
        "quarantine: 1 applied, 1 refused\n"
        "  TCP 192.0.2.10:80 10.0.1.2:80: refused: service web would have 1 healthy real server, min 2\n"
    )
    assert kernel_of(app).weight(WEB, RS1) == 0
    args = cli(url, "restore", "web", "rs1", "10.0.1.2:80", token_file=token_file)
    out = io.StringIO()
    assert args.func(args, out) == 0 and out.getvalue() == "restore: 1 applied, 1 noop\n"
    assert kernel_of(app).weight(WEB, RS1) == 5


def test_a_bad_file_of_targets_names_its_line(served: tuple[Flask, str], token_file: Path, tmp_path: Path) -> None:
    _app, url = served
    listed = tmp_path / "rack7"
    listed.write_text("web rs1\nrs2\n")
    args = cli(url, "quarantine", "--file", str(listed), token_file=token_file)
    with pytest.raises(ClientError, match=f"{listed}:2: expected 'SERVICE REAL_SERVER', got 'rs2'"):
        args.func(args, io.StringIO())
    args = cli(url, "quarantine", "web", token_file=token_file)
    with pytest.raises(ClientError, match="name a service and at least one of its real servers"):
        args.func(args, io.StringIO())


def test_bad_field_names_the_field(served: tuple[Flask, str]) -> None:
    """The actuator's 400 names the field (the CLI checks the range first: a client of its own sends it)."""
    client = ActuatorClient(served[1], TOKEN)
    with pytest.raises(ClientError, match="^weight: must be 0..65535, got 70000$"):
        client.post("/api/v1/weight", {"service": "web", "real_server": "rs1", "weight": 70000})


def test_drain_shows_progress_until_done(served: tuple[Flask, str], token_file: Path) -> None:
    app, url = served
    kernel = kernel_of(app)
    kernel.set_connections(WEB, RS1, active=4)
    ledger = Ledger.open(app.config["LVSGUARD_LEDGER"])
    remaining = iter([2, 0])

    def sleep(_seconds: float) -> None:  # the actuator's job thread, one step per poll
        kernel.set_connections(WEB, RS1, active=next(remaining))
        job = ledger.open_jobs()[0]
        app.extensions["lvsguard"].actions.step_job(ledger, job.id)

    out, bar = io.StringIO(), io.StringIO()
    args = cli(url, "drain", "web", "rs1", "--timeout", "60", "--delete", token_file=token_file)
    assert args.func(args, out, poll=0, sleep=sleep, progress=bar) == 0
    lines = bar.getvalue().splitlines()
    assert lines == [
        "[..............................]   0% waiting for 4 active connections",
        "[###############...............]  50% 2 active connections left",
        "[##############################] 100% real server 10.0.1.1:80 of TCP 192.0.2.10:80 drained and deleted",
    ]
    assert out.getvalue().splitlines()[-1].startswith("drain job 1: done")
    assert kernel.read_service(WEB).real_server(RS1) is None


def test_status_from_the_api(served: tuple[Flask, str], token_file: Path) -> None:
    _app, url = served
    args = cli(url, "quarantine", "web", "rs1", token_file=token_file)
    args.func(args, io.StringIO())
    out = io.StringIO()
    status_from_api(argparse.Namespace(url=url, token_file=None, token_name=None), out)
    text = out.getvalue()
    assert text.splitlines()[0] == "web TCP 192.0.2.10:80 (wrr)  healthy 2/3, min 2"
    assert "out (cli alice)" in text


def test_unreachable_actuator_and_wrong_token(tmp_path: Path, served: tuple[Flask, str]) -> None:
    args = cli("http://127.0.0.1:1", "ledger")
    with pytest.raises(ClientError, match=r"^cannot reach the actuator at http://127.0.0.1:1: "):
        args.func(args, io.StringIO())
    bad = tmp_path / "bad"
    bad.write_text("x:wrong-token-0123456789\n")
    bad.chmod(0o600)
    args = cli(served[1], "remove", "web", "rs1", token_file=bad)
    with pytest.raises(ClientError, match="^missing or wrong bearer token"):
        args.func(args, io.StringIO())


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out: Any = Tty()
    bar = ProgressBar(out)
    bar.show(0.5, "two left")
    bar.show(0.5, "two left")
    bar.show(1.0, "done")
    bar.done()
    assert (
        out.getvalue()
        == "\r[###############...............]  50% two left\r[##############################] 100% done    \n"
    )
