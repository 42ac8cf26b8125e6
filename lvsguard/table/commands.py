"""The table commands of the CLI: ``lvsguard diff`` (read-only).

``diff`` loads the config as every command does (``lvsguard.config``: every
problem with its file and line), reads the kernel over netlink and prints the
plan. Exit 0 when the kernel already matches, 2 when changes are pending;
errors raise (the CLI prints them, exit 1).

It reads the actuator's ledger too, read-only (``lvsguard.ledger``), when the
file is there (``--ledger``, else the config's ``actuator.ledger``), so that
its plan is the actuator's: under ``prune: owned`` it removes what lvsguard
owns and no longer wants; a real server the actuator holds (quarantined,
drained, ramping back) keeps its held weight, and a new config weight shows
as the weight its restore returns to, with who holds it and why. Without a
ledger it knows of nothing lvsguard created: it removes nothing under ``prune:
owned`` and counts what it leaves alone.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from lvsguard.config import loads
from lvsguard.defaults import LEDGER_PATH
from lvsguard.errors import ClusterStoreError, ConfigError, ConfigProblem, LvsguardError
from lvsguard.ledger import LedgerHolds, read_cluster_table, read_holds, read_owned
from lvsguard.model import RealServerKey, ServiceKey, Table
from lvsguard.table.desired import DesiredTable
from lvsguard.table.importers import read_source
from lvsguard.table.plan import Owned, plan

if TYPE_CHECKING:
    from lvsguard.config.loader import Config

EXIT_MATCHES = 0
EXIT_PENDING = 2


@dataclass(frozen=True, slots=True)
class Known:
    """What the ledger says: the holds and the entries the table reconciler owns."""

    path: str
    holds: LedgerHolds
    owned: Owned


def read_ledger(path: str) -> Known:
    """The ledger at ``path``, read-only; LvsguardError when it is there but cannot be read."""
    try:
        holds = read_holds(path)
        rows = read_owned(path)
    except sqlite3.Error as exc:
        raise LvsguardError(f"{path}: cannot read the actuator's ledger: {exc}") from None
    owned: set[ServiceKey | tuple[ServiceKey, RealServerKey]] = set()
    for service, real_server in rows:
        key = ServiceKey.parse(service)
        owned.add((key, RealServerKey.parse(real_server)) if real_server else key)
    return Known(path, holds, frozenset(owned))


def render(desired: DesiredTable, prune: str, table: Table, known: Known | None) -> tuple[str, bool]:
    """The plan's text, then the held real servers'; True when anything is pending (a write or a restore weight)."""
    weights = held_weights(known, table) if known is not None else {}
    steps = plan(desired, table, prune=prune, owned=known.owned if known is not None else (), weights=weights)
    text = str(steps)
    if known is None:
        return text, not steps.empty
    lines, restores = held_lines(known, desired, table)
    if lines:
        text += f"\nHeld by the actuator (ledger {known.path}):\n" + "".join(f"{line}\n" for line in lines)
    if restores:
        text += f"Restore weights to record: {restores} (the next apply writes them to the ledger).\n"
    return text, not steps.empty or restores > 0


def held_weights(known: Known, table: Table) -> dict[tuple[ServiceKey, RealServerKey], int]:
    """The weight a held real server keeps: 0 while out; while ramping back, the one the kernel shows."""
    kernel = {(svc.key, rs.key): rs.weight for svc in table.services for rs in svc.real_servers}
    out = {}
    for row in known.holds.backends:
        key = (ServiceKey.parse(row.service), RealServerKey.parse(row.real_server))
        out[key] = 0 if row.state == "out" else kernel.get(key, 0)
    return out


def held_lines(known: Known, desired: DesiredTable, table: Table) -> tuple[list[str], int]:
    """One line per held real server (``~`` when the config changes its restore weight), and how many change."""
    weights = held_weights(known, table)
    why: dict[tuple[str, str], list[str]] = {}
    for h in known.holds.holds:
        who = f"alert {h.alertname or h.holder}" if h.kind == "alert" else h.holder
        why.setdefault((h.service, h.real_server), []).append(
            f"{h.action} by {who} ({h.source})" + (f": {h.reason}" if h.reason else "")
        )
    lines, restores = [], 0
    for row in known.holds.backends:
        service, real_server = ServiceKey.parse(row.service), RealServerKey.parse(row.real_server)
        svc = desired.service(service)
        wanted = next((rs.weight for rs in svc.real_servers if rs.key == real_server), None) if svc else None
        weight = weights[(service, real_server)]
        mark, text = " ", f"held at {weight}" if row.state == "out" else f"ramping back, at {weight}"
        if wanted is None:
            text += f", not in the config (restored to {row.original_weight})"
        elif wanted != row.original_weight:
            mark, text = "~", text + f", restored to {wanted} (the ledger says {row.original_weight})"
            restores += 1
        else:
            text += f", restored to {wanted}"
        reasons = "".join(f"; {w}" for w in why.get((row.service, row.real_server), []))
        lines.append(f"{mark} {service} {real_server}: {text}{reasons}")
    return lines, restores


def cluster_table(cfg: Config, ledger: str) -> tuple[DesiredTable, str]:
    """``table.source: cluster``: the cluster's table from etcd, else the one the ledger cached; and a heading.

    LvsguardError when neither is there.
    """
    from lvsguard.cluster.commands import table_store
    from lvsguard.cluster.table import decode

    store = table_store(cfg)
    try:
        record = store.read()
        if record is not None:
            return record.desired, f"The cluster's table: {record.summary} (etcd).\n\n"
        away = "etcd has no table yet"
    except ClusterStoreError as exc:
        away = str(exc)
    finally:
        store.client.close()
    try:
        cached = read_cluster_table(ledger) if os.path.exists(ledger) else None
    except sqlite3.Error as exc:
        raise LvsguardError(f"{ledger}: cannot read the actuator's ledger: {exc}") from None
    if cached is None:
        raise LvsguardError(f"table.source is cluster: {away}, and the ledger {ledger} has no cached table")
    record = decode(cached[1], cached[0], f"{ledger}: the cached cluster table")
    return record.desired, f"The cluster's table: {record.summary}, cached in {ledger} ({away}).\n\n"


def diff(config: str, netns: str | None = None, *, ledger: str | None = None, out: TextIO | None = None) -> int:
    """Print the plan from the kernel's table (of ``netns``, else the config's) to the config's."""
    from lvsguard.ipvs.netlink import NetlinkIPVS

    text, name = read_source(config)
    cfg = loads(text, name)
    if not cfg.table.manage:
        raise ConfigError([ConfigProblem(name, 0, 0, "table.manage", "is not true: this config only names services")])
    path = ledger or (cfg.actuator.ledger_path if cfg.actuator is not None else LEDGER_PATH)
    if ledger is not None and not os.path.exists(ledger):
        raise LvsguardError(f"{ledger}: no such ledger")
    known = read_ledger(path) if os.path.exists(path) else None
    desired, heading = cfg.desired, ""
    if cfg.table.source == "cluster":
        desired, heading = cluster_table(cfg, path)
    with NetlinkIPVS(netns or cfg.director.netns) as ipvs:
        table = ipvs.read()
    printed, pending = render(desired, cfg.table.prune, table, known)
    (out or sys.stdout).write(heading + printed)
    return EXIT_PENDING if pending else EXIT_MATCHES
