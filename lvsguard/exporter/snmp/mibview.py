"""A sorted, read-only OID index over tables, with BER-encoded answers.

Every served object is a column of a ``Subtree`` (scalars are a subtree with
one row whose index is ``(0,)``). A subtree holds its rows sorted by index
tuple, and the OID of a cell is ``entry + (column,) + index``, so Python's
tuple order is SNMP's lexicographic OID order: GETNEXT is a bisection, and a
GETBULK repetition is one step of a cursor (next row, else next column, else
next subtree). The OID prefix of every column and the BER suffix of every
row index are encoded once per snapshot, and a column's VarBinds are encoded
on its first use and kept until the next snapshot: a GETBULK answer is then a
join of ready byte strings.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lvsguard.exporter.snmp import ber
from lvsguard.exporter.snmp.ber import Oid

# Column kinds: how a cell value is encoded. A "dyn-" kind holds a zero-argument
# callable that is evaluated at answer time (sysUpTime, the agent's counters).
ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "integer": ber.encode_integer,
    "text": ber.encode_text,
    "octets": ber.encode_octets,
    "gauge32": ber.encode_gauge32,
    "unsigned32": ber.encode_gauge32,
    "counter64": ber.encode_counter64,
    "timeticks": ber.encode_timeticks,
    "oid": ber.encode_oid,
    "dyn-timeticks": lambda f: ber.encode_timeticks(f()),
    "dyn-counter32": lambda f: ber.encode_counter32(f()),
}

NO_SUCH_OBJECT = b"\x80\x00"
NO_SUCH_INSTANCE = b"\x81\x00"
END_OF_MIB_VIEW = b"\x82\x00"

Position = tuple[int, int, int]
"""(subtree, column, row) of one cell."""


@dataclass(frozen=True, slots=True)
class Column:
    """One served column: its sub-identifier under the entry, its name and its kind."""

    subid: int
    name: str
    kind: str


class Subtree:
    """A table (or scalar group) of rows sorted by index, with pre-encoded OID parts."""

    __slots__ = (
        "entry",
        "columns",
        "subids",
        "indexes",
        "rows",
        "col_prefix",
        "row_suffix",
        "encoders",
        "cache",
        "dynamic",
    )

    def __init__(self, entry: Oid, columns: Sequence[Column], rows: Sequence[tuple[Oid, Sequence[Any]]]) -> None:
        ordered = sorted(rows, key=lambda r: r[0])
        for previous, current in zip(ordered, ordered[1:]):
            if previous[0] == current[0]:
                raise ValueError(f"duplicate row index {ber.format_oid(current[0])} under {ber.format_oid(entry)}")
        self.entry = entry
        self.columns = tuple(sorted(columns, key=lambda c: c.subid))
        self.subids = [c.subid for c in self.columns]
        self.indexes: list[Oid] = [r[0] for r in ordered]
        self.rows: list[Sequence[Any]] = [r[1] for r in ordered]
        self.col_prefix = [ber.oid_body(entry + (c.subid,)) for c in self.columns]
        self.row_suffix = [ber.subids_body(index) for index in self.indexes]
        self.encoders = [ENCODERS[c.kind] for c in self.columns]
        self.dynamic = [c.kind.startswith("dyn-") for c in self.columns]
        self.cache: list[list[bytes] | None] = [None] * len(self.columns)

    def oid(self, col: int, row: int) -> Oid:
        return self.entry + (self.columns[col].subid,) + self.indexes[row]

    def column(self, col: int) -> list[bytes]:
        """The encoded VarBinds of one column, row by row; built on first use, kept for the snapshot."""
        encoded = self.cache[col]
        if encoded is None:
            encoded = self._encode_column(col)
            if not self.dynamic[col]:
                self.cache[col] = encoded
        return encoded

    def _encode_column(self, col: int) -> list[bytes]:
        prefix = self.col_prefix[col]
        encode = self.encoders[col]
        oid_header, seq_header, tlv = _OID_HEADER, _SEQ_HEADER, ber.tlv
        out = []
        for suffix, row in zip(self.row_suffix, self.rows):
            name = prefix + suffix
            n = len(name)
            inner = (oid_header[n] + name if n < 0x80 else tlv(ber.OBJECT_IDENTIFIER, name)) + encode(row[col])
            m = len(inner)
            out.append(seq_header[m] + inner if m < 0x80 else tlv(ber.SEQUENCE, inner))
        return out


_OID_HEADER = [bytes((ber.OBJECT_IDENTIFIER, n)) for n in range(0x80)]
_SEQ_HEADER = [bytes((ber.SEQUENCE, n)) for n in range(0x80)]


class MibView:
    """The OID index of one snapshot."""

    __slots__ = ("subtrees", "entries")

    def __init__(self, subtrees: Sequence[Subtree]) -> None:
        live = sorted((s for s in subtrees if s.rows and s.columns), key=lambda s: s.entry)
        for a, b in zip(live, live[1:]):
            if b.entry[: len(a.entry)] == a.entry:
                raise ValueError(f"subtree {ber.format_oid(b.entry)} nests in {ber.format_oid(a.entry)}")
        self.subtrees = live
        self.entries = [s.entry for s in live]

    def __len__(self) -> int:
        return sum(len(s.columns) * len(s.rows) for s in self.subtrees)

    # --- lookups ------------------------------------------------------------

    def find(self, oid: Oid) -> Position | None | Literal[False]:
        """Exact cell of ``oid``; None for no such object, False for no such instance."""
        i = bisect.bisect_right(self.entries, oid) - 1
        if i < 0:
            return None
        tree = self.subtrees[i]
        n = len(tree.entry)
        if oid[:n] != tree.entry or len(oid) <= n:
            return None
        c = bisect.bisect_left(tree.subids, oid[n])
        if c == len(tree.subids) or tree.subids[c] != oid[n]:
            return None
        index = oid[n + 1 :]
        r = bisect.bisect_left(tree.indexes, index)
        if r == len(tree.indexes) or tree.indexes[r] != index:
            return False
        return (i, c, r)

    def next_position(self, oid: Oid) -> Position | None:
        """The first cell whose OID is strictly greater than ``oid``; None at the end of the view."""
        i = max(bisect.bisect_right(self.entries, oid) - 1, 0)
        while i < len(self.subtrees):
            tree = self.subtrees[i]
            n = len(tree.entry)
            if oid < tree.entry:
                return (i, 0, 0)
            if oid[:n] == tree.entry:
                if len(oid) == n:
                    return (i, 0, 0)
                c = bisect.bisect_left(tree.subids, oid[n])
                if c < len(tree.subids):
                    if tree.subids[c] != oid[n]:
                        return (i, c, 0)
                    r = bisect.bisect_right(tree.indexes, oid[n + 1 :])
                    if r < len(tree.indexes):
                        return (i, c, r)
                    if c + 1 < len(tree.subids):
                        return (i, c + 1, 0)
            i += 1
        return None

    def advance(self, pos: Position) -> Position | None:
        """The cell after ``pos`` in OID order."""
        i, c, r = pos
        tree = self.subtrees[i]
        if r + 1 < len(tree.rows):
            return (i, c, r + 1)
        if c + 1 < len(tree.columns):
            return (i, c + 1, 0)
        if i + 1 < len(self.subtrees):
            return (i + 1, 0, 0)
        return None

    # --- answers --------------------------------------------------------------

    def varbind(self, pos: Position) -> bytes:
        """The encoded VarBind (SEQUENCE of OID and value) of one cell."""
        i, c, r = pos
        return self.subtrees[i].column(c)[r]

    def oid(self, pos: Position) -> Oid:
        i, c, r = pos
        return self.subtrees[i].oid(c, r)

    def cell(self, pos: Position) -> tuple[Oid, str, Any]:
        """(OID, kind, value) of one cell, a dynamic value already evaluated (the v3 path)."""
        i, c, r = pos
        tree = self.subtrees[i]
        kind = tree.columns[c].kind
        value = tree.rows[r][c]
        if kind.startswith("dyn-"):
            value = value()
        return tree.oid(c, r), kind, value


def exception_varbind(oid: Oid, exception: bytes) -> bytes:
    """A VarBind carrying noSuchObject, noSuchInstance or endOfMibView."""
    return ber.tlv(ber.SEQUENCE, ber.encode_oid(oid) + exception)
