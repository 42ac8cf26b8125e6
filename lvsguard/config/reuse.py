"""A reload's shortcut: the ``services`` entries whose text did not change since the last load are not parsed again.

A daemon loads its whole config again on each reload (SIGHUP), and with a big
managed table composing and checking ``services`` is nearly all of that time
(4 s for 10 000 services of 10 real servers), while a reload usually changes
one entry. ``Reuse`` remembers, from the last load that went through, the text
of each entry of ``services`` and what it became (its ``ServiceConfig`` and its
desired service). The next load cuts the new text into entries the same way;
an entry whose text is remembered becomes a one-line placeholder in a shorter
copy of the file, which is composed and checked like any file, and the
placeholders then stand for what their entries became.

Why this gives what a whole load gives:

- the entries are cut by lines, at the column of the list's dashes, and the cut
  is checked by the YAML parser itself: the shorter copy must give the
  ``services`` list with one item per entry, each starting within its own
  entry's lines, the placeholders where they were put. Anything else (flow
  style, a multi-line string across entries, a second document) and the whole
  file is loaded the usual way;
- an entry is remembered only once a whole load (or a shortened one) took it
  in that very place, and never with an anchor, an alias or a tag (``&``,
  ``*``, ``!``): its meaning then depends on its text alone;
- a load that finds any problem is done again the whole way, so a bad config
  is reported exactly as without ``Reuse`` (every problem, file:line:column
  and key) and refused whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

if TYPE_CHECKING:
    from lvsguard.config.services import ServiceConfig
    from lvsguard.model import VirtualService

TAG = "!lvsguard-reused"
"""The tag of a placeholder; its value is the entry's index in the list."""

_OTHER_BREAKS = ("\r", "\x85", "\u2028", "\u2029")  # line breaks to YAML besides "\n": the cut counts "\n" only
_KEPT_OUT = ("&", "*", "!")  # anchors, aliases, tags: an entry with one means something beyond its text


@dataclass(frozen=True, slots=True)
class Entry:
    """What one entry of ``services`` became."""

    config: ServiceConfig
    desired: VirtualService


@dataclass(frozen=True, slots=True)
class Cut:
    """A text cut into its ``services`` entries: ``text[start:end]`` is the list, ``entries`` each entry's text."""

    start: int
    end: int
    column: int  # of the entries' dashes
    entries: tuple[str, ...]


class Reuse:
    """What the last load of a config parsed, for the next load to reuse (``config.load(path, reuse=...)``).

    One per daemon, kept across its reloads. Each load that goes through
    replaces what is remembered with its own entries (a reload's memory is the
    size of its file). Loads may run in threads: each swaps one dict.
    """

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self.entries)


def cut(text: str) -> Cut | None:
    """The ``services`` list of a config's text cut into entries; None when it is not a plain block list.

    The list is the lines after a ``services:`` line at column 0 (a key of the
    top mapping), up to the first line that is neither blank, nor a comment,
    nor indented deeper than its dashes, nor a dash at their column. Each
    entry runs from its dash's line to the next one's.
    """
    if any(b in text for b in _OTHER_BREAKS):
        return None
    key = 0 if text.startswith("services:") else text.find("\nservices:") + 1
    if (key == 0 and not text.startswith("services:")) or text.find("\nservices:", key) >= 0:
        return None  # none, or two (a duplicate key: the whole load reports it)
    eol = text.find("\n", key)
    rest = text[key + len("services:") : eol if eol >= 0 else len(text)].strip()
    if eol < 0 or (rest and not rest.startswith("#")):
        return None  # `services: []`, a flow list, an anchor or a tag on the list
    first = _ENTRY.match(text, eol + 1)
    if first is None:
        return None
    start, column = first.start(1), len(first.group(1))
    past = _end(column).search(text, start - 1)  # from the newline before the first entry
    end = past.start() + 1 if past is not None else len(text)
    dash = "\n" + " " * column + "-"
    starts = [start]
    at = text.find(dash, start, end)
    while at >= 0:
        after = at + len(dash)
        if after >= len(text) or text[after] in " \n":
            starts.append(at + 1)
        at = text.find(dash, after, end)
    bounds = [*starts, end]
    return Cut(start, end, column, tuple(text[bounds[i] : bounds[i + 1]] for i in range(len(starts))))


_ENTRY = re.compile(r"(?:[ \t]*(?:#[^\n]*)?\n)*( *)-(?:[ \n]|$)")
"""Blank and comment lines, then the first entry's dash (group 1: its indentation)."""


@lru_cache(maxsize=8)
def _end(column: int) -> re.Pattern[str]:
    """The first line past a list whose dashes are at ``column``: less indented, or at it and no dash."""
    less = f" {{0,{column - 1}}}[^ \\n#]|" if column else ""
    return re.compile(rf"\n(?:{less} {{{column}}}(?:[^ \n#-]|-[^ \n]))")


def reusable(entry: str) -> bool:
    """Whether an entry's text alone says what it means (no anchor, alias or tag)."""
    return not any(c in entry for c in _KEPT_OUT)


@dataclass(frozen=True, slots=True)
class Shortened:
    """A config's text with the remembered entries as placeholders, and what to check the parse against."""

    text: str
    reused: dict[int, Entry]  # entry index -> what it became
    lines: tuple[int, ...]  # the line (0-based) each entry starts at in ``text``, and the list's end


def shorten(text: str, found: Cut, reuse: Reuse) -> Shortened | None:
    """``text`` with each remembered entry a one-line placeholder; None when none is remembered."""
    remembered = reuse.entries
    reused: dict[int, Entry] = {}
    pieces: list[str] = [text[: found.start]]
    line = text.count("\n", 0, found.start)
    lines = []
    indent = " " * found.column
    for i, entry in enumerate(found.entries):
        lines.append(line)
        known = remembered.get(entry)
        if known is not None:
            reused[i] = known
            pieces.append(f"{indent}- {TAG} {i}\n")
            line += 1
        else:
            pieces.append(entry)
            line += entry.count("\n")
    if not reused:
        return None
    lines.append(line)
    pieces.append(text[found.end :])
    return Shortened("".join(pieces), reused, tuple(lines))


def services_node(root: Node | None) -> Node | None:
    """The value of the top mapping's ``services`` key."""
    if not isinstance(root, MappingNode):
        return None
    values = [value for key, value in root.value if isinstance(key, ScalarNode) and key.value == "services"]
    return values[0] if len(values) == 1 else None


def matches(node: Node | None, lines: tuple[int, ...], reused: dict[int, Any]) -> bool:
    """Whether the parsed list has one item per entry, each starting within its entry's lines, placeholders as put."""
    if not isinstance(node, SequenceNode) or len(node.value) != len(lines) - 1:
        return False
    for i, item in enumerate(node.value):
        if not lines[i] <= item.start_mark.line < lines[i + 1]:
            return False
        placeholder = isinstance(item, ScalarNode) and item.tag == TAG
        if placeholder != (i in reused) or (placeholder and item.value != str(i)):
            return False
    return True


def entry_lines(text: str, found: Cut) -> tuple[int, ...]:
    """The line (0-based) each entry of ``found`` starts at in ``text``, and the list's end."""
    line = text.count("\n", 0, found.start)
    lines = [line]
    for entry in found.entries:
        line += entry.count("\n")
        lines.append(line)
    return tuple(lines)


def remember(reuse: Reuse, found: Cut, configs: tuple[ServiceConfig, ...], desired: tuple[VirtualService, ...]) -> None:
    """Make the entries of a load that went through (their texts, in order, with what they became) the memory."""
    if not len(found.entries) == len(configs) == len(desired):
        reuse.entries = {}
        return
    reuse.entries = {
        text: Entry(config, svc)
        for text, config, svc in zip(found.entries, configs, desired, strict=True)
        if reusable(text)
    }


__all__ = ["TAG", "Cut", "Entry", "Reuse", "Shortened", "cut", "matches", "remember", "reusable", "shorten"]
