"""What an importer produces, and how it is printed as an lvsguard config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from lvsguard.model import RealServerKey, VirtualService
from lvsguard.table.load import service_mapping, service_name


@dataclass(frozen=True, slots=True)
class Note:
    """A remark on one line of the source; ``translated=False`` says what was lost (``--strict`` fails on it)."""

    file: str
    line: int
    message: str
    translated: bool = False

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def comment(self) -> str:
        lead = "" if self.translated else "not translated: "
        return f"# {self.where}: {lead}{self.message}"


@dataclass
class ImportedService:
    """A desired service, its names, and the notes printed above it."""

    service: VirtualService
    name: str = ""
    names: dict[RealServerKey, str] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)

    @property
    def config_name(self) -> str:
        return self.name or service_name(self.service.key)


@dataclass
class ImportedCheck:
    """One ``probes.checks`` entry (keys as the config has them) and the notes printed above it."""

    check: dict[str, Any]
    notes: list[Note] = field(default_factory=list)


@dataclass
class Imported:
    """An importer's result: services, checks, and the notes about the file as a whole."""

    source: str  # "keepalived", "ldirectord", "ipvsadm"
    file: str
    services: list[ImportedService] = field(default_factory=list)
    checks: list[ImportedCheck] = field(default_factory=list)
    general: list[Note] = field(default_factory=list)
    default_tcp: bool | None = None  # probes.default_tcp; None: leave the section out when there are no checks

    @property
    def notes(self) -> list[Note]:
        out = list(self.general)
        for svc in self.services:
            out += svc.notes
        for check in self.checks:
            out += check.notes
        return out


def _block(value: Any, indent: int) -> list[str]:
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=None, allow_unicode=True, width=1000)
    pad = " " * indent
    return [pad + line for line in text.splitlines()]


def render(imported: Imported) -> str:
    """The lvsguard config: ``table`` (management on, prune owned), ``services``, ``probes``."""
    untranslated = sum(1 for n in imported.notes if not n.translated)
    lines = [
        f"# lvsguard config imported from {imported.source} {imported.file}",
        "# (lvsguard import; docs/table.md says what each key means).",
    ]
    if untranslated:
        lines.append(f"# {untranslated} setting{'s' if untranslated != 1 else ''} not translated: see the comments.")
    lines += [note.comment() for note in imported.general]
    lines += ["", "table:", "  manage: true", "  prune: owned", ""]
    if imported.services:
        lines.append("services:")
    else:
        lines.append("services: []")
    for svc in imported.services:
        lines += ["  " + note.comment() for note in svc.notes]
        lines += _block([service_mapping(svc.service, svc.config_name, svc.names)], 2)
    if imported.checks or imported.default_tcp is not None:
        lines += ["", "probes:"]
        if imported.default_tcp is not None:
            lines.append(f"  default_tcp: {'true' if imported.default_tcp else 'false'}")
        if imported.checks:
            lines.append("  checks:")
        for check in imported.checks:
            lines += ["    " + note.comment() for note in check.notes]
            lines += _block([check.check], 4)
    return "\n".join(lines) + "\n"
