"""The import direction: the core imports neither application, the exporter does not import the actuator.

``lvsguard/`` (model, config, kernel access, CLI, agent) runs everywhere, the
agent on real servers where neither application is installed; the exporter
runs where the actuator may not. What both sides share (the sections'
settings, default ports and paths, the SNMP base OID, the ledger's schema,
the errors) lives in the core.

The rule, read from the AST of every module: no module of ``lvsguard/``
imports ``exporter`` or ``actuator``, and no module of ``exporter/`` imports
``actuator``, wherever the import stands: at module level, inside a function
(a lazy import is still a dependency), or under ``if TYPE_CHECKING:`` (a type
from an application is a dependency on it too). The one exception is
``lvsguard/cli.py``, the command line that dispatches to the applications: it
may import them, only inside the functions that run them (``CROSSING`` names
each import and its reason), so that ``import lvsguard.cli`` and the commands
that need no application stay free of Flask, waitress and pysnmp
(docs/development.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Who may not import whom.
FORBIDDEN = {"lvsguard": ("exporter", "actuator"), "exporter": ("actuator",)}

# The imports that cross the line, all inside a function of the CLI: (file, imported module) -> why.
CROSSING = {
    ("lvsguard/cli.py", "exporter"): "the CLI starts the exporter (lvsguard exporter)",
    ("lvsguard/cli.py", "actuator"): "the CLI starts the actuator and is its API client",
    ("lvsguard/cli.py", "actuator.client"): "the CLI's status --url reads the actuator's API",
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
                found.append((child.module, at_import))
            visit(child, at_import and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, True)
    return found


def crossings() -> list[tuple[str, str, bool]]:
    """(file, imported module, at import time) for every import against the direction."""
    out = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for module, at_import in imports(ast.parse(path.read_text(), rel)):
                if module.split(".")[0] in forbidden:
                    out.append((rel, module, at_import))
    return out


def test_the_core_and_the_exporter_import_no_application_at_import_time() -> None:
    assert [(f, m) for f, m, at_import in crossings() if at_import] == []


def test_only_the_cli_imports_an_application_and_only_inside_a_function() -> None:
    assert [(f, m) for f, m, _ in crossings() if (f, m) not in CROSSING] == []


def test_every_listed_crossing_is_still_there() -> None:
    """A crossing that went away leaves the list, so that the list stays the truth."""
    assert sorted(set(CROSSING) - {(f, m) for f, m, _ in crossings()}) == []


def test_the_checker_sees_imports_in_functions_and_under_type_checking() -> None:
    tree = ast.parse(
        "import actuator.app\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from actuator.settings import X\n"
        "def f():\n    from exporter import main\n"
        "class C:\n    import actuator.jobs\n"
    )
    assert imports(tree) == [
        ("actuator.app", True),
        ("typing", True),
        ("actuator.settings", True),
        ("exporter", False),
        ("actuator.jobs", True),
    ]
