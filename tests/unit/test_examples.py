"""The shipped example configs load, and they and docs/configuration.md keep up with the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lvsguard import config
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
    assert cfg.director.netns == "lvs-dir1"
    assert cfg.exporter.listen == "[::1]:9910" != DEFAULT_LISTEN
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
    assert set(schema.keys) - used == set(), f"examples/lvsguard.yaml does not show these keys of {where}"


@pytest.mark.parametrize(("where", "schema"), SCHEMAS.items(), ids=list(SCHEMAS))
def test_every_key_is_documented(where: str, schema: Schema) -> None:
    text = DOCS.read_text()
    missing = [key for key in schema.keys if f"`{where}.{key}`" not in text]
    assert missing == [], f"docs/configuration.md has no entry `{where}.KEY` for {missing}"


def test_every_section_is_documented() -> None:
    text = DOCS.read_text()
    assert [name for name in config.SECTIONS if f"## `{name}`" not in text] == []
