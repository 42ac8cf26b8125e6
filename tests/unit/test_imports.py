"""The import direction: the core imports neither application, the exporter does not import the actuator.

``lvsguard/`` (model, config, kernel access, CLI, agent) runs everywhere, the
agent on real servers where neither application is installed; the exporter
runs where the actuator may not. So no module of ``lvsguard/`` imports
``exporter`` or ``actuator``, and no module of ``exporter/`` imports
``actuator``. Imports under ``if TYPE_CHECKING:`` are types only and do not
count. A few imports inside functions still cross the line, each for a reason
named in ``CROSSING``; a new one fails here (docs/development.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Who may not import whom.
FORBIDDEN = {"lvsguard": ("exporter", "actuator"), "exporter": ("actuator",)}

# Imports inside a function that cross the line today: (file, imported module) -> why.
CROSSING = {
    ("lvsguard/cli.py", "exporter"): "the CLI starts the exporter (lvsguard exporter)",
    ("lvsguard/cli.py", "actuator"): "the CLI starts the actuator and is its API client",
    ("lvsguard/cli.py", "actuator.client"): "the CLI's status --url reads the actuator's API",
    ("lvsguard/config/actuator.py", "actuator.settings"): "the actuator validates its own config section",
    ("lvsguard/config/snmp.py", "exporter.snmp.settings"): "the SNMP agent validates its own config section",
    ("lvsguard/configdoc.py", "actuator.app"): "the reference documents the actuator's default listen address",
    ("lvsguard/configdoc.py", "actuator.settings"): "the reference documents the actuator's section",
    ("lvsguard/configdoc.py", "exporter.snmp.layout"): "the reference documents the SNMP agent's default OID",
    ("lvsguard/configdoc.py", "exporter.snmp.settings"): "the reference documents the SNMP agent's section",
    ("exporter/main.py", "actuator.settings"): "the SNMP agent reads the actuator's ledger path and quorums",
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """Every module ``tree`` imports, with whether the import runs when the module is imported."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit_one(orelse, at_import)
                continue
            visit_one(child, at_import)

    def visit_one(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, at_import) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, at_import))
        inner = at_import and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        visit(node, inner)

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


def test_every_import_against_the_direction_inside_a_function_has_a_reason() -> None:
    assert [(f, m) for f, m, _ in crossings() if (f, m) not in CROSSING] == []


def test_the_checker_sees_imports_in_functions_and_skips_type_checking() -> None:
    tree = ast.parse(
        "import actuator.app\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from actuator.settings import X\n"
        "def f():\n    from exporter import main\n"
        "class C:\n    import actuator.jobs\n"
    )
    assert imports(tree) == [("actuator.app", True), ("typing", True), ("exporter", False), ("actuator.jobs", True)]
