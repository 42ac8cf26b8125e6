"""The import direction: the core imports neither application, the exporter does not import the actuator.

The core (``lvsguard/`` outside ``lvsguard/exporter/`` and ``lvsguard/actuator/``:
model, config, kernel access, CLI, agent) runs everywhere, the agent on real
servers where neither application's dependencies are installed; the exporter
runs where the actuator may not. What both sides share (the sections'
settings, default ports and paths, the SNMP base OID, the ledger's schema,
the errors) lives in the core.

The rule, read from the AST of every module: no module of the core imports
``lvsguard.exporter`` or ``lvsguard.actuator``, and no module of
``lvsguard/exporter/`` imports ``lvsguard.actuator``, wherever the import
stands: at module level, inside a function (a lazy import is still a
dependency), or under ``if TYPE_CHECKING:`` (a type from an application is a
dependency on it too). The one exception is ``lvsguard/cli.py``, the command
line that dispatches to the applications: it may import them, only inside the
functions that run them (``CROSSING`` names each import and its reason), so
that ``import lvsguard.cli`` and the commands that need no application stay
free of Flask, waitress and pysnmp (docs/development.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPORTER, ACTUATOR = "lvsguard.exporter", "lvsguard.actuator"

# Who may not import whom: (folder, folders left out of it) -> the packages it may not import.
FORBIDDEN = {
    ("lvsguard", ("lvsguard/exporter", "lvsguard/actuator")): (EXPORTER, ACTUATOR),
    ("lvsguard/exporter", ()): (ACTUATOR,),
}

# The imports that cross the line, all inside a function of the CLI: (file, imported module) -> why.
CROSSING = {
    ("lvsguard/cli.py", "lvsguard.exporter.main"): "the CLI starts the exporter (lvsguard exporter)",
    ("lvsguard/cli.py", "lvsguard.actuator.app"): "the CLI starts the actuator",
    ("lvsguard/cli.py", "lvsguard.actuator.auth"): "the CLI checks a token file (lvsguard actuator --check-tokens)",
    ("lvsguard/cli.py", "lvsguard.actuator.settings"): "the CLI reads the actuator's settings",
    ("lvsguard/cli.py", "lvsguard.actuator.client"): "the CLI's status --url reads the actuator's API",
    ("lvsguard/cli.py", "lvsguard.actuator.tableapply"): "the CLI's apply writes the table through the reconciler",
}


def imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """Every module ``tree`` imports, with whether the import runs when the module is imported.

    An import under ``if TYPE_CHECKING:`` counts as one at import time: it is a dependency all the same.
    """
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, at_import) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.extend((f"{child.module}.{alias.name}", at_import) for alias in child.names)
            visit(child, at_import and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, True)
    return found


def crossings() -> list[tuple[str, str, bool]]:
    """(file, imported module, at import time) for every import against the direction."""
    out = []
    for (folder, left_out), forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if any(rel.startswith(f"{other}/") for other in left_out):
                continue
            for module, at_import in imports(ast.parse(path.read_text(), rel)):
                if any(module == name or module.startswith(f"{name}.") for name in forbidden):
                    out.append((rel, module, at_import))
    return out


def listed(file: str, module: str) -> tuple[str, str] | None:
    """The CROSSING entry that allows importing ``module`` (or a name from it) in ``file``, if any."""
    for crossing in CROSSING:
        if crossing[0] == file and (module == crossing[1] or module.startswith(f"{crossing[1]}.")):
            return crossing
    return None


def test_the_core_and_the_exporter_import_no_application_at_import_time() -> None:
    assert [(f, m) for f, m, at_import in crossings() if at_import] == []


def test_only_the_cli_imports_an_application_and_only_inside_a_function() -> None:
    assert [(f, m) for f, m, _ in crossings() if listed(f, m) is None] == []


def test_every_listed_crossing_is_still_there() -> None:
    """A crossing that went away leaves the list, so that the list stays the truth."""
    assert sorted(set(CROSSING) - {listed(f, m) for f, m, _ in crossings()}) == []


def test_the_checker_sees_imports_in_functions_and_under_type_checking() -> None:
    tree = ast.parse(
        "import lvsguard.actuator.app\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from lvsguard.actuator.settings import X\n"
        "def f():\n    from lvsguard import exporter\n"
        "class C:\n    import lvsguard.actuator.jobs\n"
    )
    assert imports(tree) == [
        ("lvsguard.actuator.app", True),
        ("typing.TYPE_CHECKING", True),
        ("lvsguard.actuator.settings.X", True),
        ("lvsguard.exporter", False),
        ("lvsguard.actuator.jobs", True),
    ]
