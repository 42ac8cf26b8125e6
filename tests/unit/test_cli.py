"""The command line: help everywhere, plain errors, no traceback without --debug."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsguard import __version__
from lvsguard.cli import DIRECTOR_IMPORTS, build_parser, main

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
    "keepalived",
    "doctor",
    "paths",
]
CLIENT_COMMANDS = ["quarantine", "restore", "drain", "weight", "add", "remove", "ledger", "failover", "status"]


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


def test_lab_test_passes_options_to_pytest() -> None:
    from lab import run

    cmd = run.command(["test", "-k", "netlink", "-x"])
    assert cmd is not None and cmd[-3:] == ["-k", "netlink", "-x"]


def test_the_lab_is_not_a_command_of_the_installed_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """The lab needs a checkout (lab/vm.sh): ``python lab/run.py`` runs it, the installed CLI does not offer it."""
    assert "    lab " not in build_parser().format_help()
    with pytest.raises(SystemExit) as info:
        main(["lab", "demo"])
    assert info.value.code == 2
    assert "invalid choice: 'lab'" in capsys.readouterr().err


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, deeper in _subparsers(sub):
                    yield f"{name} {inner}", deeper


def test_every_option_has_help() -> None:
    missing = [
        f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
        for name, sub in _subparsers(build_parser())
        for action in sub._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def test_agent_help_shows_the_reply_as_sent(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["agent", "--help"])
    out = capsys.readouterr().out
    assert "'up NN%'" in out and "%%" not in out


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_every_client_command_takes_its_url_from_lvsguard_url(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVSGUARD_URL", "http://director2:9911")
    argv = {"weight": ["web", "rs1", "5"], "ledger": [], "failover": [], "status": []}.get(command, ["web", "rs1"])
    assert build_parser().parse_args([command, *argv]).url == "http://director2:9911"


def test_status_reads_the_local_kernel_without_lvsguard_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LVSGUARD_URL", raising=False)
    assert build_parser().parse_args(["status"]).url is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["weight", "web", "rs1", "70000"], "argument weight: weight must be 0..65535, got 70000"),
        (["weight", "web", "rs1", "-1"], "argument weight: weight must be 0..65535, got -1"),
        (["weight", "web", "rs1", "ten"], "argument weight: weight must be an integer, got 'ten'"),
        (["add", "web", "rs4", "--weight", "65536"], "argument --weight: weight must be 0..65535, got 65536"),
        (
            ["add", "web", "rs4", "--upper-threshold", str(2**32)],
            f"argument --upper-threshold: threshold must be 0..{2**32 - 1}, got {2**32}",
        ),
    ],
    ids=["weight-too-big", "weight-negative", "weight-not-a-number", "add-weight-too-big", "threshold-too-big"],
)
def test_out_of_range_numbers_are_refused_before_anything_is_sent(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The URL points nowhere: a request would be a 'cannot reach' error (exit 1), a usage error is exit 2."""
    with pytest.raises(SystemExit) as info:
        main([*argv, "--url", "http://127.0.0.1:9"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


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


# A process without the director extra's packages: each import of one fails as on a bare install.
WITHOUT_DIRECTOR = (
    "import sys\n"
    "from lvsguard import cli\n"
    "for name in cli.DIRECTOR_IMPORTS:\n"
    "    sys.modules[name] = None\n"
    "cli.build_parser()\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("argv", [["exporter"], ["actuator"], ["status"], ["keepalived", "snippet"], ["doctor"]])
def test_without_the_director_extra_a_director_command_names_it(argv: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_DIRECTOR, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr.startswith(f"lvsguard: lvsguard {' '.join(argv)} needs the director's packages (no module ")
    assert proc.stderr.endswith(": pip install 'lvsguard[director]'\n") and len(proc.stderr.splitlines()) == 1


def test_without_the_director_extra_the_agent_and_every_help_work(tmp_path: Path) -> None:
    for argv in (["agent", "--help"], ["--help"], ["drain", "--help"], ["agent", "--drain", "--drain-file", "d"]):
        proc = subprocess.run(
            [sys.executable, "-c", WITHOUT_DIRECTOR, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        assert (proc.returncode, proc.stderr) == (0, ""), argv
    assert (tmp_path / "d").exists()


def test_the_director_imports_name_every_library_lvsguard_imports() -> None:
    """Each module outside the standard library that lvsguard's code imports is one the hint covers."""
    root = Path(__file__).resolve().parents[2] / "lvsguard"
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    outside = found - set(sys.stdlib_module_names) - {"lvsguard", "__future__", "_typeshed"}  # _typeshed: for mypy only
    assert sorted(outside - DIRECTOR_IMPORTS) == []


@pytest.mark.parametrize(
    "section, flag, expected",
    [
        ("", [], "127.0.0.1:9911"),
        ("  listen: 127.0.0.1:19911\n", [], "127.0.0.1:19911"),
        ("  listen: 127.0.0.1:19911\n", ["--listen", "[::1]:9"], "[::1]:9"),
    ],
    ids=["default", "config-actuator-listen", "flag-wins"],
)
def test_actuator_listens_where_the_config_says_unless_the_flag_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, flag: list[str], expected: str
) -> None:
    """``actuator.listen`` is documented as the actuator's address (``--listen`` wins); it was read by nobody."""
    from lvsguard.actuator import app

    served: dict[str, object] = {}
    monkeypatch.setattr(app, "serve", lambda settings, **kwargs: served.update(kwargs))
    monkeypatch.setenv("LVSGUARD_TOKEN", "am:7f3a9c2e41b8d056")
    cfg = tmp_path / "lvsguard.yaml"
    cfg.write_text("actuator:\n" + (section or "  dry_run: false\n"))
    assert main(["actuator", "--config", str(cfg), *flag]) == 0
    assert served["listen"] == expected


def test_paths_in_a_checkout_are_the_repositorys_folders(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    assert main(["paths"]) == 0
    printed = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert printed == {
        "systemd": str(root / "packaging/systemd"),
        "sysusers": str(root / "packaging/sysusers.d"),
        "examples": str(root / "examples"),
        "alerts": str(root / "alerts"),
        "dashboards": str(root / "dashboards"),
        "mib": str(root / "lvsguard/exporter/snmp/mibs"),
    }
