"""The command line: help everywhere, plain errors, no traceback without --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lvsguard import __version__
from lvsguard.cli import build_parser, main

COMMANDS = [
    "exporter",
    "actuator",
    "status",
    "quarantine",
    "restore",
    "drain",
    "weight",
    "add",
    "remove",
    "ledger",
    "failover",
    "config",
    "lab",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lvsguard {command}")


def test_top_level_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for command in COMMANDS:
        assert f"    {command} " in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"lvsguard {__version__}"


def test_config_check_reports_problems_plainly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "lvsguard.yaml"
    bad.write_text("exporter:\n  listn: 127.0.0.1:9910\n")
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err == f"lvsguard: {bad}:2:3: exporter.listn: unknown key; did you mean 'listen'?\n"


def test_config_check_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "lvsguard.yaml"
    assert main(["config", "check", str(example)]) == 0
    assert capsys.readouterr().out.startswith(f"{example}: ok")


def test_actuator_refuses_to_start_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LVSGUARD_TOKEN", raising=False)
    assert main(["actuator"]) == 1
    assert "no token" in capsys.readouterr().err


def test_lab_test_passes_options_to_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr("lvsguard.cli._run_lab", lambda argv: seen.append(argv) or 0)
    assert main(["lab", "test", "-k", "netlink", "-x"]) == 0
    assert seen == [["test", "-k", "netlink", "-x"]]


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["status", "--bogus"])
    assert info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_no_traceback_reaches_the_user(tmp_path: Path) -> None:
    """A real process: a missing config file is one line on stderr and exit 1."""
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "lvsguard.cli", "config", "check", str(missing)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("lvsguard: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
