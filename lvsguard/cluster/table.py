"""The cluster's desired table in etcd: one record that every director with ``table.source: cluster`` applies.

One key, ``<prefix><name>/table`` (``/lvsguard/dc1/table``), whose value is JSON::

    {"services": [{"name": "web", "service": "TCP 192.0.2.10:80", "scheduler": "wrr", "real_servers": [...]}],
     "by": "alice@ops1", "at": 1765120000.0, "file": "/etc/lvsguard/lvsguard.yaml", "director": "lvs1"}

``services`` are the config's table keys in their canonical form
(``lvsguard.table.load.service_mapping``: what the importers print), so a
record reads back through the same checks as a config file (``load_table``).
The record's etcd ``mod_revision`` is the table's revision: each director
says which revision its kernel has applied (the fleet view compares it with
the record's). ``by``, ``at``, ``file`` and ``director`` say who wrote it, when,
from which file and on which director.

One record, not one key per service, so that a push is one Raft commit and
one watch event, and every director sees a whole table, never half of one.
etcd refuses a request above ``--max-request-bytes`` (1.5 MiB by default):
about 20 000 real servers; :data:`MAX_RECORD` refuses a bigger one here with
a message that says so.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lvsguard.cluster.etcd import Compare, EtcdClient, KeyValue, put_op
from lvsguard.config.cluster import ClusterConfig
from lvsguard.errors import ClusterStoreError
from lvsguard.table.desired import DesiredTable
from lvsguard.table.load import load_table, service_mapping

MAX_RECORD = 1_500_000  # bytes: etcd's default --max-request-bytes is 1.5 MiB (the request's JSON is base64)


@dataclass(frozen=True, slots=True)
class TableRecord:
    """The cluster's desired table at one revision, with who wrote it."""

    desired: DesiredTable
    revision: int  # the key's mod_revision (0: not from etcd)
    by: str = ""  # user@host that wrote it
    at: float = 0.0  # epoch seconds of the write (the writer's clock)
    file: str = ""  # the config file it came from
    director: str = ""  # the director whose config named the cluster (the writer's ``cluster.director``)
    text: str = ""  # the record as stored (the ledger caches it as it is)

    @property
    def summary(self) -> str:
        """``revision 12 by alice@ops1 (2 services, 5 real servers)``."""
        return (
            f"revision {self.revision} by {self.by or 'unknown'} "
            f"({len(self.desired)} services, {self.desired.real_server_count} real servers)"
        )


def encode(desired: DesiredTable, names: Callable[[Any], str], *, by: str, at: float, file: str, director: str) -> str:
    """The record's JSON for ``desired``; ``names(service key)`` gives the config's name of a service."""
    doc = {
        "services": [service_mapping(svc, names(svc.key)) for svc in desired],
        "by": by,
        "at": at,
        "file": file,
        "director": director,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def decode(text: str, revision: int, where: str = "the cluster's table") -> TableRecord:
    """The record in ``text``; ClusterStoreError naming each problem when it is not a valid table."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ClusterStoreError(f"{where}: not JSON: {exc}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("services"), list):
        raise ClusterStoreError(f"{where}: expected an object with a list of 'services'")
    _settings, desired, problems = load_table({"services": doc["services"]})
    if problems:
        raise ClusterStoreError(f"{where}: " + "; ".join(f"{path}: {message}" for path, message in problems))
    try:
        at = float(doc.get("at", 0.0))
    except (TypeError, ValueError):
        at = 0.0
    return TableRecord(
        desired,
        revision,
        by=str(doc.get("by", "")),
        at=at,
        file=str(doc.get("file", "")),
        director=str(doc.get("director", "")),
        text=text,
    )


def who() -> str:
    """``alice@ops1``: the user and host writing a record."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class TableStore:
    """The desired table of one cluster (``ClusterConfig.root``) in etcd."""

    def __init__(self, client: EtcdClient, config: ClusterConfig, *, clock: Callable[[], float] = time.time):
        self.client = client
        self.config = config
        self.clock = clock
        self.key = f"{config.root}table"

    def read(self, *, serializable: bool = False) -> TableRecord | None:
        """The record (None when none was written); ClusterStoreError when etcd is away or it is not a table."""
        kv = self.client.get(self.key, serializable=serializable)
        return None if kv is None else self.decode(kv)

    def decode(self, kv: KeyValue) -> TableRecord:
        return self.decode_text(kv.value, kv.mod_revision)

    def decode_text(self, text: str, revision: int) -> TableRecord:
        return decode(text, revision, f"cluster record {self.key!r} at revision {revision}")

    def write(
        self,
        desired: DesiredTable,
        names: Callable[[Any], str],
        *,
        by: str = "",
        file: str = "",
        expect: int | None = None,
    ) -> TableRecord:
        """Put ``desired`` as the cluster's table; the record written, with its revision.

        ``expect``: only if the record is still at this revision (0: there is
        none yet), else ClusterStoreError: the table changed since it was read.
        """
        text = encode(desired, names, by=by or who(), at=self.clock(), file=file, director=self.config.director_name)
        if len(text) * 4 // 3 > MAX_RECORD:
            raise ClusterStoreError(
                f"the table is {len(text)} bytes of JSON: more than etcd takes in one request "
                f"(--max-request-bytes, 1.5 MiB by default); raise it on every member or split the cluster"
            )
        if expect is None:
            return decode(text, self.client.put(self.key, text))
        compare = Compare(self.key, "mod", "=", expect) if expect else Compare(self.key, "create", "=", 0)
        ok, revision = self.client.txn([compare], [put_op(self.key, text)])
        if not ok:
            raise ClusterStoreError(
                f"the cluster's table changed since it was read (it was at revision {expect}): nothing was "
                f"written; look at 'lvsguard diff --cluster' again"
            )
        return decode(text, revision)
