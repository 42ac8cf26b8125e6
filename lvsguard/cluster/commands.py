"""``lvsguard apply --cluster`` and ``lvsguard diff --cluster``: the cluster's desired table in etcd.

Both load the config as every command does (every problem with its file and
line; nothing is written when there is one) and talk to the etcd of its
``cluster`` section. ``diff --cluster`` prints the plan from the cluster's
table to the file's, table against table (exit 0: the same, 2: changes
pending). ``apply --cluster`` prints the same plan and, when there is a
change, writes the chunks of the file's table that the cluster's table does
not have, then its manifest in one compare-and-swap on the revision it
planned against (``lvsguard.cluster.table``): a push that raced another
writes no manifest and says so. Every director with ``table.source:
cluster`` applies the new record to its own kernel.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from lvsguard.cluster.etcd import EtcdClient
from lvsguard.cluster.table import TableRecord, TableStore
from lvsguard.config.loader import Config
from lvsguard.errors import ConfigError, ConfigProblem, TableRefused
from lvsguard.table.desired import DesiredTable
from lvsguard.table.plan import Plan, plan

EXIT_MATCHES = 0
EXIT_PENDING = 2


def table_store(cfg: Config) -> TableStore:
    """The cluster's table store of ``cfg``; ConfigError when the config has no etcd or no managed table."""
    problems = []
    if not cfg.cluster.shared:
        problems.append(ConfigProblem(cfg.file, 0, 0, "cluster.store", "is not etcd: there is no cluster table"))
    if not cfg.table.manage:
        problems.append(ConfigProblem(cfg.file, 0, 0, "table.manage", "is not true: this config only names services"))
    if problems:
        raise ConfigError(problems)
    c = cfg.cluster
    client = EtcdClient(c.endpoints, ca_file=c.ca_file, cert_file=c.cert_file, key_file=c.key_file)
    return TableStore(client, c)


def cluster_plan(desired: DesiredTable, record: TableRecord | None) -> Plan:
    """The steps from the cluster's table (``record``; None: no table yet) to ``desired``."""
    current = record.desired.services if record is not None else ()
    return plan(desired, current, prune="exact", drain=False)


def heading(cfg: Config, record: TableRecord | None) -> str:
    if record is None:
        return f"cluster {cfg.cluster.name}: no table yet\n"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.at)) if record.at else "unknown time"
    origin = f" from {record.file}" if record.file else ""
    return f"cluster {cfg.cluster.name}: table {record.summary}, {when}{origin}\n"


def diff(cfg: Config, out: TextIO | None = None) -> int:
    """Print the plan from the cluster's table to ``cfg``'s; EXIT_PENDING when they differ."""
    out = out or sys.stdout
    store = table_store(cfg)
    try:
        record = store.read()
    finally:
        store.client.close()
    steps = cluster_plan(cfg.desired, record)
    out.write(heading(cfg, record) + "\n" + str(steps))
    return EXIT_MATCHES if steps.empty and record is not None else EXIT_PENDING


def apply(cfg: Config, out: TextIO | None = None, *, by: str = "") -> int:
    """Write ``cfg``'s table as the cluster's (only when it changes something); 0 when written or the same."""
    out = out or sys.stdout
    store = table_store(cfg)
    try:
        expect = None
        try:
            record = store.read()
        except TableRefused as exc:  # a broken table: replaced whole, still against its revision
            print(f"The cluster's table in etcd is not valid ({exc}): writing this one whole.", file=out)
            record, expect = None, store.revision()
        steps = cluster_plan(cfg.desired, record)
        out.write(heading(cfg, record) + "\n" + str(steps))
        if steps.empty and record is not None:
            print("Nothing written: the cluster's table is already this one.", file=out)
            return EXIT_MATCHES
        pushed = store.write(cfg.desired, cfg.service_name, base=record, expect=expect, by=by, file=cfg.file)
    finally:
        store.client.close()
    written = pushed.record
    print(
        f"Written: cluster {cfg.cluster.name}'s table is {written.summary}: {pushed.written} of its "
        f"{len(written.manifest.chunks)} chunks written ({pushed.written_bytes} bytes), {pushed.deleted} old ones "
        f"deleted; every director with table.source: cluster applies it ('lvsguard status --cluster' shows "
        f"where it is applied).",
        file=out,
    )
    return EXIT_MATCHES
