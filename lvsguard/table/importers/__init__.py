"""Peers' configs in, an lvsguard config out: keepalived.conf, ldirectord.cf, ipvsadm-save.

Each importer parses its file into an ``Imported`` (desired services with
their names, probes, and notes on what did not translate); ``render`` prints
it as an lvsguard config with management on, every note a comment next to
what it is about. A malformed file raises ``ConfigError`` whose problems read
``file:line: message``. ``run`` is what ``lvsguard import`` calls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from lvsguard.table.importers._emit import Imported, Note, render

__all__ = ["FORMATS", "Imported", "Note", "read_source", "render", "run"]

FORMATS = ("keepalived", "ldirectord", "ipvsadm")

EXIT_UNTRANSLATED = 3  # --strict and something was not translated


def _importer(kind: str) -> Callable[[str, str], Imported]:
    if kind == "keepalived":
        from lvsguard.table.importers.keepalived import parse
    elif kind == "ldirectord":
        from lvsguard.table.importers.ldirectord import parse
    elif kind == "ipvsadm":
        from lvsguard.table.importers.ipvsadm import parse
    else:
        raise ValueError(f"unknown import format {kind!r} (one of {', '.join(FORMATS)})")
    return parse


def read_source(path: str) -> tuple[str, str]:
    """(text, name) of ``path``; ``-`` is stdin. Raises ConfigError when it cannot be read."""
    from lvsguard.errors import ConfigError, ConfigProblem

    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigProblem(path, 0, 0, "", f"cannot read: {reason}")]) from None


def run(kind: str, path: str, *, strict: bool = False) -> int:
    """Print the lvsguard config for ``path``; the notes go to stderr too. 3 when ``strict`` and one did not translate."""
    text, name = read_source(path)
    imported = _importer(kind)(text, name)
    sys.stdout.write(render(imported))
    untranslated = [n for n in imported.notes if not n.translated]
    for note in untranslated:
        print(f"{note.where}: not translated: {note.message}", file=sys.stderr)
    return EXIT_UNTRANSLATED if strict and untranslated else 0
