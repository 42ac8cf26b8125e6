"""The configuration reference (docs/configuration-reference.md), generated from the config schema.

    python -m lvsguard.configdoc           # print the reference
    python -m lvsguard.configdoc --write   # write docs/configuration-reference.md
    python -m lvsguard.configdoc --check   # exit 1 when the committed file differs

Every key comes from where the loader validates it, so the reference cannot
drift from what a config may say: the ``Schema`` tables of every section in
``lvsguard.config`` (their ``Key.doc``, the parser for the type, the
dataclass for the default). A key without a meaning,
or a parser this module cannot name, is a ``ConfigDocError``: the test
(tests/unit/test_configdoc.py) fails until it is described.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from math import inf
from pathlib import Path
from typing import Any

from lvsguard import config
from lvsguard.config import CHECK_COMMON, CHECK_KEYS, CHECK_REQUIRED, SECTIONS, Key, Parser, Schema
from lvsguard.errors import ConfigDocError
from lvsguard.labels import BACKEND_LABELS
from lvsguard.oid import format_oid

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration-reference.md"

PARSER_TYPES: Mapping[str, str] = {
    "text": "string",
    "name": "name (1-63 letters, digits, `_ . -`)",
    "service_key": "service (`TCP 192.0.2.10:80`, `FWM 1`)",
    "real_server_key": "`ADDRESS:PORT`",
    "netns": "netns name or absolute path",
    "absolute_path": "absolute path",
    "listen": "`HOST:PORT`",
    "backend_labels": "list of label names, or one comma-separated string",
    "service_refs": "list of service names or services",
    "service_ref": "service name or service",
    "_real_server_ref": "real server name or `ADDRESS:PORT`",
    "duration": "duration (`500ms`, `1.5s`, `2m` or seconds)",
    "boolean": "boolean",
    "regex": "regular expression",
    "http_url": "`http://` or `https://` URL",
    "statuses": "list of integers 100..599",
    "md5_hex": "MD5 as 32 hex digits",
    "command": "list of strings, or one string split as a shell would",
    "check_entry": "check",
    "file_path": "path",
    "secret_file": "path",
    "host_name": "host name",
    "quorum": 'count, fraction 0..1 or percentage (`"50%"`)',
    "quorums": "mapping of service name (or `TCP 192.0.2.10:80`) to `min_healthy`",
    "labels": "mapping of label names to strings",
    "label_patterns": "mapping of label names to regular expressions",
    "endpoint": "`ADDRESS:PORT`",
    "community": "string",
    "user_name": "string",
    "pass_phrase": "string, at least 8 characters",
    "oid": "OID",
    "engine_id": "hexadecimal string, 5..32 octets",
    "positive_number": "number (seconds, > 0)",
    "fraction": "number 0..1",
    "handshake_timeout": "duration below 60 s",
    "scheduler_name": "scheduler name (`rr`, `wlc`, `mh`...)",
    "scheduler_flag_list": "list of flag names",
    "persistence_spec": "seconds, or a mapping (`timeout`, `netmask`, `engine`)",
    "forward_method": "`masq`, `route` or `tunnel`",
    "weight_value": "integer 0..65535",
    "threshold": "integer 0..4294967295",
    "tunnel_spec": "mapping of `type`, `port`, `checksum`",
    "key_prefix": "etcd key prefix (`/lvsguard/`)",
}
"""How each parser of lvsguard/config/ is named in the reference (keyed by function name)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One key of the reference."""

    path: str  # services[].real_servers[].name
    type: str
    default: str  # "required", "required for dns", or the value when absent
    doc: str
    applies: str = ""  # probes.checks[] only: the check types that take the key


def type_of(parse: Parser) -> str:
    """The reference's name for what ``parse`` accepts; factories (``integer(1, 100)``) are read from their closure."""
    factory = parse.__qualname__.split(".")[0]
    bound = inspect.getclosurevars(parse).nonlocals
    if factory == "integer":
        return f"integer {bound['low']}..{bound['high']}"
    if factory == "choice":
        return "one of " + ", ".join(f"`{v}`" for v in bound["values"])
    if factory == "section":
        return "mapping"
    if factory == "records":
        return "list of mappings"
    if factory == "list_of":
        inner = type_of(bound["parser"])
        return f"list of {inner}" if inner.startswith("`") else f"list of {inner}s"
    if factory == "duration_range":
        most, zero = bound["most"], bound["zero"]
        if (most, zero) == (86400.0, False):
            return "duration (`500ms`, `1.5s`, `2m` or seconds)"
        return (
            "duration" + (", 0 or more" if zero else ", more than 0") + (f", at most {most:g} s" if most != inf else "")
        )
    if factory == "named_services":
        return type_of(bound["parser"])
    if parse.__name__ in PARSER_TYPES:
        return PARSER_TYPES[parse.__name__]
    raise ConfigDocError(f"lvsguard.configdoc: no type name for parser {parse.__qualname__!r} (add it to PARSER_TYPES)")


def shown(value: Any, kind: str = "") -> str:
    """A default as it would be written in the file (of type ``kind``: a duration gets its unit, a mapping braces)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and kind.startswith("duration"):
        return f"`{value:g}s`"
    if kind.startswith("mapping of") and not value:
        return "`{}`"
    if value is None or value == b"":
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{json.dumps(value)}`" if value == "" or value != value.strip() or "\n" in value else f"`{value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, (tuple, list, frozenset)) or (isinstance(value, Mapping) and not value):
        return "`[]`" if not value else "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _defaults(build: Callable[..., Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(build):  # type: ignore[arg-type]  # every Schema builds a dataclass
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _nested(parse: Parser) -> tuple[Schema, str] | None:
    """The schema inside ``section(S)``, ``records(S)`` or ``list_of(check_entry)``, with the path suffix it adds."""
    factory = parse.__qualname__.split(".")[0]
    bound = inspect.getclosurevars(parse).nonlocals
    if factory == "named_services":
        return _nested(bound["parser"])
    if factory == "section":
        return bound["schema"], ""
    if factory == "records":
        return bound["schema"], "[]"
    if factory == "list_of" and bound["parser"] is config.check_entry:
        return config.CHECK, "[]"
    return None


def schema_rows(schema: Schema, prefix: str) -> Iterator[Row]:
    """The rows of one ``Schema`` and of the schemas nested in it, in schema order."""
    defaults = {key: value for key, value in _defaults(schema.build).items()}
    defaults.update((key, defaults[name]) for key, name in schema.fields.items() if name in defaults)
    checks = schema is config.CHECK
    for key_name, key in schema.keys.items():
        path = f"{prefix}.{key_name}"
        if not key.doc:
            raise ConfigDocError(f"lvsguard.configdoc: {path} has no meaning (give its Key a doc=...)")
        nested = _nested(key.parse)
        applies = ""
        kind = type_of(key.parse)
        types = (
            list(CHECK_KEYS) if key_name in CHECK_COMMON else [t for t, keys in CHECK_KEYS.items() if key_name in keys]
        )
        required_for = [t for t, keys in CHECK_REQUIRED.items() if key_name in keys] if checks else []
        if key.required or (required_for and set(types) <= set(required_for)):
            default = "required"
        elif required_for:
            default = f"required for {', '.join(required_for)}; else {_default(key_name, defaults, kind)}"
        elif nested is not None and type(defaults.get(key_name)) is nested[0].build:
            default = "see the keys below"  # a section that is always there, with defaults of its own
        else:
            default = _default(key_name, defaults, kind)
        if checks:
            applies = "all" if key_name in CHECK_COMMON else ", ".join(types)
        yield Row(path, kind, default, key.doc, applies)
        if nested is not None:
            yield from schema_rows(nested[0], path + nested[1])


def _default(key_name: str, defaults: Mapping[str, Any], kind: str) -> str:
    if key_name not in defaults:
        raise ConfigDocError(f"lvsguard.configdoc: key {key_name!r} has no default in its dataclass")
    value = defaults[key_name]
    if key_name == "backend_labels":
        return "all eight: " + ", ".join(f"`{label}`" for label in BACKEND_LABELS)
    if key_name == "read_only_open":
        return "by the listen address: `true` on loopback, else `false`"
    if key_name == "base_oid":
        return shown(format_oid(value))
    return shown(value, kind)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Row]) -> list[str]:
    with_applies = any(r.applies for r in rows)
    head = "| key | type | default | check types | meaning |" if with_applies else "| key | type | default | meaning |"
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for r in rows:
        cells = [f"`{r.path}`", r.type, r.default, *([r.applies] if with_applies else []), r.doc]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return lines


INTRO = """\
# Configuration reference

<!-- Generated by `python -m lvsguard.configdoc --write` from the config schema
(lvsguard/config/); do not edit by hand.
tests/unit/test_configdoc.py fails when this file differs from the schema. -->

Every key of the config file, generated from the schema the loader validates
with, so it cannot drift. [configuration.md](configuration.md) explains how a
file is checked, with examples; `lvsguard config check FILE` validates a file
without starting anything. A key path such as `services[].real_servers[].name`
is the `name` of every item of every service's `real_servers` list. An absent
key, or one given with no value, takes its default. Durations are seconds or
a number with a unit (`500ms`, `30s`, `5m`).
"""


def render() -> str:
    """The whole reference, as Markdown."""
    out = [INTRO]
    for section_name, key in SECTIONS.items():
        out.append(f"## `{section_name}`\n")
        out.append(f"{_section_doc(section_name, key)}\n")
        rows = section_rows(section_name, key)
        if section_name == "probes":
            checks = [r for r in rows if r.path.startswith("probes.checks[].")]
            out += table([r for r in rows if r not in checks]) + ["", "### `probes.checks[]`\n"] + table(checks)
        else:
            out += table(rows)
        out.append("")
    return "\n".join(out)


def section_rows(section_name: str, key: Key) -> list[Row]:
    """The rows of one top-level section, its nested keys included (``probes.checks[].sni``)."""
    nested = _nested(key.parse)
    if nested is None:
        raise ConfigDocError(f"lvsguard.configdoc: section {section_name!r} has no schema the reference can walk")
    return list(schema_rows(nested[0], section_name + nested[1]))


def _section_doc(section_name: str, key: Key) -> str:
    if not key.doc:
        raise ConfigDocError(f"lvsguard.configdoc: section {section_name!r} has no meaning (give its Key a doc=...)")
    return key.doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lvsguard.configdoc",
        description="The configuration reference, generated from the config schema.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {REFERENCE.name}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 when {REFERENCE.name} differs from the schema")
    args = parser.parse_args(argv)
    try:
        text = render()
    except ConfigDocError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.write:
        REFERENCE.write_text(text)
        print(f"wrote {REFERENCE}")
    elif args.check:
        current = REFERENCE.read_text() if REFERENCE.exists() else ""
        if current != text:
            print(f"{REFERENCE} differs from the schema: run python -m lvsguard.configdoc --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
