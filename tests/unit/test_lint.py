"""ruff and mypy as part of the unit tests, so ``make test`` fails on a lint finding or a type error.

ruff must be clean: formatted (``ruff format``) and no finding (``ruff check``).
mypy must report nothing on the files ``[tool.mypy]`` in pyproject.toml names
(the core strict, the applications and the lab at mypy's default level), and
its configuration has no section that matches no module. A ``type: ignore``
in the code mypy checks says why: in a comment after it, or on the line above.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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


def test_mypy_reports_no_error() -> None:
    result = run(tool("mypy"))
    if result.returncode not in (0, 1) or (result.returncode == 1 and ": error:" not in result.stdout):
        pytest.fail(f"mypy did not run: {result.stdout}{result.stderr}")
    assert result.returncode == 0, f"run: mypy\n{result.stdout}"
    assert "unused section" not in result.stdout, f"pyproject.toml [tool.mypy]:\n{result.stdout}"


IGNORE = re.compile(r"#\s*type:\s*ignore(\[[^\]]*\])?(?P<rest>.*)")


def test_every_type_ignore_says_why() -> None:
    bare = []
    for folder in ("lvsguard", "lab"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            for i, line in enumerate(lines):
                found = IGNORE.search(line)
                if found is None or found["rest"].strip().startswith("#"):
                    continue
                if i > 0 and lines[i - 1].strip().startswith("#"):
                    continue
                bare.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    assert bare == [], "type: ignore without a reason (add `# why` after it):\n" + "\n".join(bare)
