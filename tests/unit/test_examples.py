"""The shipped example configs load, and they and docs/configuration.md keep up with the schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvsguard import config, configdoc
from lvsguard.config import DEFAULT_LISTEN, Schema
from lvsguard.config.passive import PASSIVE
from lvsguard.model import RealServerKey, ServiceKey

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs" / "configuration.md"

# Where each schema's mappings sit in a config: "services[]" is every item of the list.
SCHEMAS: dict[str, Schema] = {
    "director": config.DIRECTOR,
    "exporter": config.EXPORTER,
    "services[]": config.SERVICE,
    "services[].real_servers[]": config.REAL_SERVER,
    "passive": PASSIVE,
    "cluster": config.CLUSTER,
}


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def test_there_are_examples() -> None:
    assert {p.name for p in example_files()} >= {"minimal.yaml", "lvsguard.yaml"}


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    cfg = config.load(path)
    assert cfg.file == str(path)
    assert cfg.services, f"{path.name} names no service"


def test_minimal_example_names_and_defaults() -> None:
    cfg = config.load(EXAMPLES / "minimal.yaml")
    web = ServiceKey.parse("TCP 192.0.2.10:80")
    assert cfg.service_name(web) == "web"
    assert [cfg.real_server_name(web, RealServerKey.parse(a)) for a in ("10.0.1.2:80", "10.0.1.3:80")] == [
        "web1",
        "web2",
    ]
    assert cfg.director == config.DirectorConfig()
    assert cfg.exporter == config.ExporterConfig()


def test_full_example_sets_what_it_says() -> None:
    cfg = config.load(EXAMPLES / "lvsguard.yaml")
    assert cfg.director.netns is None  # a real director's table: the namespace lvsguard runs in
    assert cfg.exporter.listen == "192.0.2.2:9910" != DEFAULT_LISTEN
    assert cfg.actuator is not None and cfg.actuator.read_only_open is False
    assert cfg.snmp is not None and cfg.snmp.trap_user is not None
    assert cfg.exporter.services == (
        ServiceKey.parse("TCP 192.0.2.10:80"),
        ServiceKey.parse("TCP 192.0.2.10:443"),
        ServiceKey.parse("UDP [2001:db8::10]:53"),
        ServiceKey.parse("FWM 1"),
    )
    assert [s.name for s in cfg.services] == ["web", "web-tls", "dns6", "marked", "mail"]
    assert cfg.real_server_name(ServiceKey.parse("FWM 1"), RealServerKey.parse("10.0.1.2:0")) == "web1"


def _mappings_at(data: Any, where: str) -> list[dict[str, Any]]:
    """The mappings at ``where`` ("services[].real_servers[]") in plain loaded YAML."""
    found = [data]
    for part in where.split("."):
        name, is_list = part.removesuffix("[]"), part.endswith("[]")
        found = [m[name] for m in found if isinstance(m, dict) and m.get(name) is not None]
        if is_list:
            found = [item for items in found for item in items]
    return found


@pytest.mark.parametrize(("where", "schema"), SCHEMAS.items(), ids=list(SCHEMAS))
def test_full_example_uses_every_key(where: str, schema: Schema) -> None:
    data = yaml.safe_load((EXAMPLES / "lvsguard.yaml").read_text())
    used = {key for mapping in _mappings_at(data, where) for key in mapping}
    commented = {p.rsplit(".", 1)[1] for p in COMMENTED if p.rsplit(".", 1)[0] == where}
    assert set(schema.keys) - used - commented == set(), f"examples/lvsguard.yaml does not show these keys of {where}"


COMMENTED = {"director.netns", "actuator.session_secret_file", "snmp.trap_community"}
"""Keys examples/lvsguard.yaml shows commented out: set, they would break a copy or contradict another key."""


def _present(data: Any, path: str) -> bool:
    """Whether the key at ``path`` (``probes.checks[].sni``) is set somewhere in plain loaded YAML."""
    found = [data]
    for part in path.split("."):
        name, is_list = part.removesuffix("[]"), part.endswith("[]")
        found = [m[name] for m in found if isinstance(m, dict) and name in m]
        if is_list:
            found = [item for items in found if isinstance(items, list) for item in items]
    return bool(found)


def test_full_example_sets_every_key_of_the_reference() -> None:
    """The example's "every key" claim against the schema: each row of docs/configuration-reference.md."""
    text = (EXAMPLES / "lvsguard.yaml").read_text()
    data = yaml.safe_load(text)
    paths = [row.path for name, key in config.SECTIONS.items() for row in configdoc.section_rows(name, key)]
    assert len(paths) > 100
    missing = [p for p in paths if not _present(data, p) and p not in COMMENTED]
    assert missing == [], f"examples/lvsguard.yaml does not set these keys: {missing}"
    for path in COMMENTED:
        assert not _present(data, path), f"{path} is set, not shown commented out"
        assert re.search(rf"^\s*# {path.rsplit('.', 1)[1]}: ", text, re.M), f"{path} is not shown commented out"


@pytest.mark.parametrize(("where", "schema"), SCHEMAS.items(), ids=list(SCHEMAS))
def test_every_key_is_documented(where: str, schema: Schema) -> None:
    text = DOCS.read_text()
    missing = [key for key in schema.keys if f"`{where}.{key}`" not in text]
    assert missing == [], f"docs/configuration.md has no entry `{where}.KEY` for {missing}"


def test_every_section_is_documented() -> None:
    text = DOCS.read_text()
    assert [name for name in config.SECTIONS if f"## `{name}`" not in text] == []
