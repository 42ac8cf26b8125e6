"""The cluster's desired table in etcd: content-addressed chunks and one manifest that names them.

A table of any size (100 000 real servers is about 7 MB of JSON, etcd takes
1.5 MiB in one request) is stored as:

- **chunks**, ``<root>table/chunks/<sha256>``: each a part of the table, JSON
  ``{"services": [...]}`` of the config's table keys in their canonical form
  (``lvsguard.table.load.service_mapping``: what the importers print), at most
  :data:`MAX_CHUNK` bytes. The key is the SHA-256 of the value, so a chunk
  never changes once written and a reader checks what it got. A service too
  big for one chunk continues in the next: an entry without ``name`` carries
  more real servers of the entry before it.
- **the manifest**, ``<root>table`` (``/lvsguard/dc1/table``): the chunks'
  hashes in order, the totals, and who wrote it, when, from which file and
  on which director (``by``, ``at``, ``file``, ``director``). Its etcd
  ``mod_revision`` is the table's revision: each director says which revision
  its kernel has applied (the fleet view compares it with the manifest's).

A push (``lvsguard apply --cluster``) writes the chunks the current manifest
does not name, then the manifest in one compare-and-swap on the revision it
planned against, with the last chunks when they fit in that request (a small
change is one transaction): a push that raced another writes no manifest
and says so.

Cuts between chunks are content-defined (after a real server whose key's
CRC-32 is a multiple of :data:`CUT`, once a chunk has :data:`MIN_CHUNK`
bytes), so one weight changed rewrites the one chunk that holds it, and a
service added or removed moves the cuts of its neighbourhood only.

A director watches the manifest alone and fetches the chunks it does not
hold, read at the revision it read the manifest at, and applies the table
only once every chunk is there and matches its hash: never half a table.

After its manifest is written, a push deletes the chunks that the manifest
does not name and that were written before it (a push under way has written
its chunks after the manifest it planned against: they stay). A director
still reading an older manifest reads its chunks at that manifest's revision,
which etcd keeps until it compacts its history; a read of a compacted
revision fails and the director reads the newest manifest again.

Before chunks, a table was one record of the same JSON; no release wrote it,
and a manifest without ``chunks`` is refused with a message that says to push
the table again.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lvsguard.cluster.etcd import Compare, EtcdClient, KeyValue, delete_op, put_op
from lvsguard.config.cluster import ClusterConfig
from lvsguard.errors import ClusterStoreError, TableRefused
from lvsguard.model import VirtualService
from lvsguard.table.desired import DesiredTable
from lvsguard.table.load import load_table, service_mapping

MAX_REQUEST = 1_500_000  # bytes: etcd's default --max-request-bytes is 1.5 MiB (the request's JSON is base64)
MIN_CHUNK = 16 * 1024  # bytes of JSON before a content-defined cut may close a chunk
MAX_CHUNK = 256 * 1024  # bytes of JSON: a chunk is closed here whatever its content
CUT = 64  # a chunk may close after a real server whose key's CRC-32 is a multiple of this
BATCH_BYTES = 700_000  # bytes of chunks put in one transaction (base64 and JSON: about 1 MiB, under the limit)
BATCH_OPS = 100  # operations in one transaction (etcd's --max-txn-ops is 128 by default)
FETCH_KEYS = 32  # chunks read in one transaction (about 600 KB, 8 MiB at most)


def _json(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def digest(text: str) -> str:
    """The chunk's name: the SHA-256 of its text, in hex."""
    return hashlib.sha256(text.encode()).hexdigest()


Pieces = tuple[tuple[str, int], ...]
"""Where a service's entries are: (chunk hash, entry index) each; chunks never change, so neither does it."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """The manifest of the cluster's table at one revision: its chunks and who wrote it."""

    chunks: tuple[str, ...]  # the chunks' hashes, in the table's order
    services: int
    real_servers: int
    revision: int  # the key's mod_revision (0: not from etcd)
    by: str = ""  # user@host that wrote it
    at: float = 0.0  # epoch seconds of the write (the writer's clock)
    file: str = ""  # the config file it came from
    director: str = ""  # the director whose config named the cluster (the writer's ``cluster.director``)
    text: str = ""  # the manifest as stored

    @property
    def summary(self) -> str:
        """``revision 12 by alice@ops1 (2 services, 5 real servers)``."""
        return (
            f"revision {self.revision} by {self.by or 'unknown'} "
            f"({self.services} services, {self.real_servers} real servers)"
        )


@dataclass(frozen=True, slots=True)
class TableRecord:
    """The cluster's desired table at one revision: its manifest and its chunks' text."""

    desired: DesiredTable
    manifest: Manifest
    chunks: Mapping[str, str] = field(default_factory=dict)  # hash -> the chunk's text
    pieces: tuple[Pieces, ...] = ()  # where each service of ``desired`` came from (empty: not read from chunks)

    def parsed(self) -> dict[Pieces, VirtualService]:
        """Each service by where it came from: a later table's service from the same pieces is the same."""
        if len(self.pieces) != len(self.desired.services):
            return {}
        return dict(zip(self.pieces, self.desired.services, strict=True))

    @property
    def revision(self) -> int:
        return self.manifest.revision

    @property
    def by(self) -> str:
        return self.manifest.by

    @property
    def at(self) -> float:
        return self.manifest.at

    @property
    def file(self) -> str:
        return self.manifest.file

    @property
    def director(self) -> str:
        return self.manifest.director

    @property
    def summary(self) -> str:
        return self.manifest.summary

    @property
    def text(self) -> str:
        """The whole table as the ledger caches it: ``{"manifest": ..., "chunks": {hash: text}}``."""
        return _json({"manifest": self.manifest.text, "chunks": dict(self.chunks)})


def split(desired: DesiredTable, names: Callable[[Any], str]) -> list[str]:
    """The chunks' texts of ``desired``, in order; ``names(service key)`` gives the config's name of a service."""
    chunks: list[str] = []
    entries: list[dict[str, Any]] = []
    size = 0

    def close() -> None:
        nonlocal entries, size
        if entries:
            chunks.append(_json({"services": entries}))
        entries, size = [], 0

    for svc in desired:
        mapping = service_mapping(svc, names(svc.key))
        servers = mapping.pop("real_servers")
        key = mapping["service"]
        entry: dict[str, Any] = {**mapping, "real_servers": []}
        entries.append(entry)
        size += len(_json(mapping))
        if not servers and size >= MIN_CHUNK and zlib.crc32(key.encode()) % CUT == 0:
            close()
        for rs in servers:
            if not entries:  # the service goes on in a new chunk
                entry = {"service": key, "real_servers": []}
                entries.append(entry)
            entry["real_servers"].append(rs)
            size += len(_json(rs)) + 1
            if size >= MAX_CHUNK or (size >= MIN_CHUNK and zlib.crc32(f"{key} {rs['address']}".encode()) % CUT == 0):
                close()
    close()
    return chunks


def parse_manifest(text: str, revision: int, where: str) -> Manifest:
    """The manifest in ``text``; ClusterStoreError naming the problem when it is not one."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ClusterStoreError(f"{where}: not JSON: {exc}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("chunks"), list):
        raise ClusterStoreError(
            f"{where}: not a table manifest (no list of 'chunks'; a table written before chunks?): "
            f"push the table again with 'lvsguard apply --cluster'"
        )
    chunks = doc["chunks"]
    if not all(isinstance(h, str) and len(h) == 64 for h in chunks):
        raise ClusterStoreError(f"{where}: 'chunks' must be SHA-256 hashes in hex")

    def number(name: str) -> float:
        try:
            return float(doc.get(name, 0))
        except (TypeError, ValueError):
            return 0.0

    return Manifest(
        tuple(chunks),
        int(number("services")),
        int(number("real_servers")),
        revision,
        by=str(doc.get("by", "")),
        at=number("at"),
        file=str(doc.get("file", "")),
        director=str(doc.get("director", "")),
        text=text,
    )


def assemble(
    manifest: Manifest, chunks: Mapping[str, str], where: str, known: Mapping[Pieces, VirtualService] | None = None
) -> TableRecord:
    """The table of ``manifest`` from its chunks' texts; ClusterStoreError naming each problem.

    ``known``: services already parsed (``TableRecord.parsed`` of the table
    held), taken as they are when they come from the same pieces: a new
    revision parses the services of its new chunks only.
    """
    services: list[dict[str, Any]] = []
    pieces: list[list[tuple[str, int]]] = []
    for n, name in enumerate(manifest.chunks):
        text = chunks.get(name)
        if text is None:
            raise ClusterStoreError(f"{where}: chunk {name} is missing")
        if digest(text) != name:
            raise ClusterStoreError(f"{where}: chunk {name} does not match its hash")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ClusterStoreError(f"{where}: chunk {name}: not JSON: {exc}") from None
        entries = doc.get("services") if isinstance(doc, Mapping) else None
        if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
            raise ClusterStoreError(f"{where}: chunk {name}: expected an object with a list of 'services'")
        for i, entry in enumerate(entries):
            if "name" in entry:
                services.append(dict(entry))
                pieces.append([(name, i)])
                continue
            last = services[-1] if services else None
            if (
                last is None
                or last.get("service") != entry.get("service")
                or not isinstance(entry.get("real_servers"), list)
            ):
                raise ClusterStoreError(f"{where}: chunk {n + 1} ({name}): a continuation of no service before it")
            last["real_servers"] = [*last.get("real_servers", []), *entry["real_servers"]]
            pieces[-1].append((name, i))
    where_from = tuple(tuple(p) for p in pieces)
    known = known or {}
    items: list[Any] = [known.get(p, svc) for p, svc in zip(where_from, services, strict=True)]
    _settings, desired, problems = load_table({"services": items})
    if problems:
        raise ClusterStoreError(f"{where}: " + "; ".join(f"{path}: {message}" for path, message in problems))
    kept = {name: chunks[name] for name in manifest.chunks}
    return TableRecord(desired, manifest, kept, where_from)


def decode(text: str, revision: int, where: str = "the cluster's table") -> TableRecord:
    """The table in ``text`` as :attr:`TableRecord.text` writes it (the ledger's cache)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ClusterStoreError(f"{where}: not JSON: {exc}") from None
    if (
        not isinstance(doc, Mapping)
        or not isinstance(doc.get("manifest"), str)
        or not isinstance(doc.get("chunks"), Mapping)
    ):
        raise ClusterStoreError(f"{where}: expected a manifest and its chunks (a table cached before chunks?)")
    return assemble(parse_manifest(doc["manifest"], revision, where), doc["chunks"], where)


def who() -> str:
    """``alice@ops1``: the user and host writing a record."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class Pushed:
    """What a push wrote: the new table, and the chunks it had to write (the others were there)."""

    record: TableRecord
    written: int  # chunks written
    written_bytes: int  # their bytes of JSON
    deleted: int  # old chunks deleted after the manifest


class TableStore:
    """The desired table of one cluster (``ClusterConfig.root``) in etcd."""

    def __init__(self, client: EtcdClient, config: ClusterConfig, *, clock: Callable[[], float] = time.time):
        self.client = client
        self.config = config
        self.clock = clock
        self.key = f"{config.root}table"
        self.chunk_prefix = f"{config.root}table/chunks/"

    def where(self, revision: int) -> str:
        return f"cluster table {self.key!r} at revision {revision}"

    def head(self) -> Manifest | None:
        """The manifest alone (the fleet view's summary): None when no table was written."""
        kvs, _revision = self.client.range(self.key, exact=True)
        return parse_manifest(kvs[0].value, kvs[0].mod_revision, self.where(kvs[0].mod_revision)) if kvs else None

    def read(self, *, held: TableRecord | None = None) -> TableRecord | None:
        """The whole table (None when none was written); ClusterStoreError when etcd is away or it is not a table.

        ``held``: a table read before: its chunks are not fetched again, its services not parsed again.
        """
        kvs, revision = self.client.range(self.key, exact=True)
        return self.fetch(kvs[0], revision, held=held) if kvs else None

    def fetch(self, kv: KeyValue, revision: int, *, held: TableRecord | None = None) -> TableRecord:
        """The table of the manifest ``kv``, its chunks read at ``revision`` (the manifest's, or later).

        ClusterStoreError: from the etcd client when etcd cannot be read (a
        compacted revision too), :class:`TableRefused` when what it holds is
        not a valid table.
        """
        where = self.where(kv.mod_revision)
        try:
            manifest = parse_manifest(kv.value, kv.mod_revision, where)
        except ClusterStoreError as exc:
            raise TableRefused(str(exc)) from None
        have = held.chunks if held is not None else {}
        chunks = {name: have[name] for name in manifest.chunks if name in have}
        missing = list(dict.fromkeys(name for name in manifest.chunks if name not in chunks))
        for start in range(0, len(missing), FETCH_KEYS):
            keys = [self.chunk_prefix + name for name in missing[start : start + FETCH_KEYS]]
            got = self.client.get_many(keys, revision=revision)
            for key in keys:
                if key not in got:
                    raise TableRefused(f"{where}: chunk {key.removeprefix(self.chunk_prefix)} is not in etcd")
                chunks[key.removeprefix(self.chunk_prefix)] = got[key].value
        try:
            return assemble(manifest, chunks, where, held.parsed() if held is not None else None)
        except ClusterStoreError as exc:
            raise TableRefused(str(exc)) from None

    def write(
        self,
        desired: DesiredTable,
        names: Callable[[Any], str],
        *,
        base: TableRecord | None,
        expect: int | None = None,
        by: str = "",
        file: str = "",
    ) -> Pushed:
        """Put ``desired`` as the cluster's table, if the table is still ``base`` (None: there is none yet).

        The chunks ``base`` does not name are written first, then the
        manifest in one compare-and-swap on ``base``'s revision (with the
        last chunks when they fit in the same request: a small change is one
        transaction, and a push that loses leaves none of them; ``expect``:
        on this revision instead, for a manifest that could not be read:
        every chunk is written); else ClusterStoreError: the table changed
        since it was read, and no manifest was written. Then the chunks no
        longer named are deleted (:meth:`collect`).
        """
        texts = split(desired, names)
        hashes = [digest(t) for t in texts]
        doc = {
            "chunks": hashes,
            "services": len(desired),
            "real_servers": desired.real_server_count,
            "by": by or who(),
            "at": self.clock(),
            "file": file,
            "director": self.config.director_name,
        }
        manifest_text = _json(doc)
        if len(manifest_text) * 4 // 3 > MAX_REQUEST:
            raise ClusterStoreError(
                f"the table's manifest names {len(texts)} chunks ({len(manifest_text)} bytes): more than etcd "
                f"takes in one request (--max-request-bytes, 1.5 MiB by default); split the cluster"
            )
        if expect is None:
            expect = base.revision if base is not None else 0
        held = set(base.manifest.chunks) if base is not None and base.revision == expect else set()
        new = {h: t for h, t in zip(hashes, texts, strict=True) if h not in held}
        batches = _batches(new)
        last = (
            batches.pop() if batches and sum(map(len, batches[-1].values())) + len(manifest_text) <= BATCH_BYTES else {}
        )
        for batch in batches:
            self.put_chunks(batch)
        compare = Compare(self.key, "mod", "=", expect) if expect else Compare(self.key, "create", "=", 0)
        puts = [put_op(self.chunk_prefix + h, t) for h, t in last.items()]
        ok, revision = self.client.txn([compare], [*puts, put_op(self.key, manifest_text)])
        if not ok:
            raise ClusterStoreError(
                f"the cluster's table changed since it was read (it was at revision {expect}): no table was "
                f"written; look at 'lvsguard diff --cluster' again"
            )
        manifest = parse_manifest(manifest_text, revision, self.where(revision))
        record = TableRecord(desired, manifest, dict(zip(hashes, texts, strict=True)))
        deleted = self.collect(manifest)
        return Pushed(record, len(new), sum(len(t) for t in new.values()), deleted)

    def revision(self) -> int:
        """The manifest's revision, whatever it holds (0: none)."""
        kvs, _revision = self.client.range(self.key, exact=True, keys_only=True)
        return kvs[0].mod_revision if kvs else 0

    def put_chunks(self, chunks: Mapping[str, str]) -> None:
        """Write ``chunks`` in as few transactions as the request limit allows."""
        for batch in _batches(chunks):
            self.client.txn([], [put_op(self.chunk_prefix + h, t) for h, t in batch.items()])

    def collect(self, manifest: Manifest) -> int:
        """Delete the chunks ``manifest`` does not name and written before it; how many were deleted.

        Each delete is a transaction that holds only while ``manifest`` is
        still the table and the chunk is as listed: a push planned against
        ``manifest`` writes its new chunks after it (they are newer, kept)
        and names the others, which stay. Best effort: a failure leaves the
        chunks to the next push.
        """
        try:
            kvs, _revision = self.client.range(self.chunk_prefix, keys_only=True)
        except ClusterStoreError:
            return 0
        named = set(manifest.chunks)
        old = [kv for kv in kvs if kv.key.removeprefix(self.chunk_prefix) not in named]
        old = [kv for kv in old if kv.mod_revision < manifest.revision]
        deleted = 0
        for batch in (old[i : i + BATCH_OPS - 1] for i in range(0, len(old), BATCH_OPS - 1)):
            compare = [Compare(self.key, "mod", "=", manifest.revision)]
            compare += [Compare(kv.key, "mod", "=", kv.mod_revision) for kv in batch]
            try:
                ok, _revision = self.client.txn(compare, [delete_op(kv.key) for kv in batch])
            except ClusterStoreError:
                return deleted
            if ok:
                deleted += len(batch)
        return deleted

    def chunk_names(self) -> dict[str, int]:
        """Every chunk in etcd and its mod_revision (tests and ``doctor``-like checks)."""
        kvs, _revision = self.client.range(self.chunk_prefix, keys_only=True)
        return {kv.key.removeprefix(self.chunk_prefix): kv.mod_revision for kv in kvs}


def _batches(chunks: Mapping[str, str]) -> list[dict[str, str]]:
    """``chunks`` in groups of at most BATCH_OPS - 1 and BATCH_BYTES (one a transaction, room for the manifest)."""
    out: list[dict[str, str]] = []
    size = 0
    for name, text in chunks.items():
        if not out or size + len(text) > BATCH_BYTES or len(out[-1]) >= BATCH_OPS - 1:
            out.append({})
            size = 0
        out[-1][name] = text
        size += len(text)
    return out
