"""ruff and mypy as part of the unit tests, so ``make test`` fails on a lint finding or a new type error.

ruff must be clean: formatted (``ruff format``) and no finding (``ruff check``).
mypy still reports errors the code had before it was checked; ``MYPY_KNOWN``
counts them per file, and a test fails when a file has more, or a file not in
it has any. Fixing errors needs no change here; lower the count when you do
(docs/development.md).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Errors per file that mypy reported when it became part of the tests.
MYPY_KNOWN = {
    "actuator/actions.py": 4,
    "actuator/failover.py": 1,
    "actuator/ledger.py": 2,
    "actuator/openapi.py": 1,
    "exporter/main.py": 2,
    "exporter/probes/engine.py": 3,
    "exporter/probes/icmp.py": 5,
    "exporter/probes/plan.py": 1,
    "exporter/snmp/feeds.py": 1,
}


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (make venv installs it)")
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_format_leaves_every_file_unchanged() -> None:
    result = run(tool("ruff"), "format", "--check", ".")
    assert result.returncode == 0, f"run: ruff format .\n{result.stdout}{result.stderr}"


def test_ruff_check_finds_nothing() -> None:
    result = run(tool("ruff"), "check", ".")
    assert result.returncode == 0, f"run: ruff check .\n{result.stdout}{result.stderr}"


def test_mypy_reports_no_new_error() -> None:
    result = run(tool("mypy"), "lvsguard", "exporter", "actuator", "--ignore-missing-imports")
    errors = [line for line in result.stdout.splitlines() if re.match(r"[^:]+:\d+: error:", line)]
    if result.returncode not in (0, 1) or (result.returncode == 1 and not errors):
        pytest.fail(f"mypy did not run: {result.stdout}{result.stderr}")
    counts = collections.Counter(line.split(":", 1)[0] for line in errors)
    new = {f: n for f, n in counts.items() if n > MYPY_KNOWN.get(f, 0)}
    assert new == {}, "new mypy errors (known counts in MYPY_KNOWN):\n" + "\n".join(
        line for line in errors if line.split(":", 1)[0] in new
    )
