"""docs/configuration-reference.md is what ``lvsguard.configdoc`` generates from the schema, and covers every key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvsguard import configdoc
from lvsguard.config import Key, Schema, integer, text
from lvsguard.configdoc import ConfigDocError, render, schema_rows, type_of

ROOT = Path(__file__).resolve().parents[2]


def documented() -> dict[str, str]:
    """Key path -> type column of the committed reference."""
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", configdoc.REFERENCE.read_text(), re.MULTILINE)
    return dict(rows)


def test_the_committed_reference_is_what_the_schema_generates() -> None:
    assert configdoc.REFERENCE.read_text() == render(), (
        "docs/configuration-reference.md is stale: run python -m lvsguard.configdoc --write"
    )


def key_paths(value: Any, path: str, types: dict[str, str]) -> list[str]:
    """Key paths used in a YAML value; the keys of a free mapping (quorum's service names, match's labels) are values."""
    if isinstance(value, dict):
        if path and types.get(path, "").startswith("mapping of"):
            return []
        found = []
        for key, inner in value.items():
            child = f"{path}.{key}" if path else str(key)
            found += [child, *key_paths(inner, child, types)]
        return found
    if isinstance(value, list):
        return [p for item in value for p in key_paths(item, f"{path}[]", types)]
    return []


@pytest.mark.parametrize("example", ["lvsguard.yaml", "minimal.yaml"])
def test_every_key_of_the_examples_is_in_the_reference(example: str) -> None:
    types = documented()
    paths = key_paths(yaml.safe_load((ROOT / "examples" / example).read_text()), "", types)
    sections = [p for p in paths if "." not in p and "[" not in p]
    assert sections, f"examples/{example} uses no section"
    missing = sorted(set(paths) - set(types) - set(sections))
    assert missing == []


def test_every_row_has_a_type_a_default_and_a_meaning() -> None:
    rows = re.findall(r"^\| `([^`]+)` \|(.*)\|$", configdoc.REFERENCE.read_text(), re.MULTILINE)
    assert len(rows) > 80
    for path, rest in rows:
        cells = [c.strip() for c in rest.split(" | ")]
        assert all(cells), f"{path}: an empty cell in {cells}"


def test_the_reference_names_types_from_the_parsers() -> None:
    types = documented()
    assert types["probes.checks[].rise"] == "integer 1..100"
    assert types["exporter.ipvs_source"] == "one of `auto`, `netlink`, `procfs`"
    assert types["services[].real_servers"] == "list of mappings"


def test_a_key_without_a_meaning_is_refused() -> None:
    from lvsguard.config import DirectorConfig

    schema = Schema(DirectorConfig, {"netns": Key(text, doc="described"), "keepalived_fifo": Key(text)})
    with pytest.raises(ConfigDocError, match=r"director.keepalived_fifo has no meaning"):
        list(schema_rows(schema, "director"))


def test_a_parser_the_reference_cannot_name_is_refused() -> None:
    def odd(node: Any, path: str, ctx: Any) -> int:
        return 0

    assert type_of(integer(1, 9)) == "integer 1..9"
    with pytest.raises(ConfigDocError, match="no type name for parser"):
        type_of(odd)


def test_check_mode_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "configuration-reference.md"
    stale.write_text(render().replace("| `probes.checks[].rise`", "| `probes.checks[].rize`"))
    monkeypatch.setattr(configdoc, "REFERENCE", stale)
    assert configdoc.main(["--check"]) == 1
    assert configdoc.main(["--write"]) == 0
    assert configdoc.main(["--check"]) == 0
