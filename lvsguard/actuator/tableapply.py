"""``lvsguard apply --config FILE``: the running actuator reloads and applies, or, with none running, this process.

The config is checked first, in full (every problem with its file:line; exit
1, nothing written). Then:

- an actuator answers at ``--url`` (``$LVSGUARD_URL``): ``POST
  /api/v1/table/apply`` with the token (``$LVSGUARD_TOKEN`` or
  ``--token-file``). The actuator reloads its own config file (as on SIGHUP)
  and applies it; give ``apply`` that same file;
- none answers (at boot, in a script): the table is applied in this process,
  through the same reconciler (``actuator.actions.table``) and the same
  ledger, under the ledger's writer lock (``<ledger>.lock``), which a running
  actuator holds for its whole life. An actuator that runs but does not answer
  holds the lock: ``apply`` says so and writes nothing. An actuator started
  during an in-process apply waits for the lock (up to 30 s) before it reads
  the kernel.

Exit 0 when the kernel matches (or all went in), 1 on an error or when the
kernel refused some entries (each named).

``--cluster`` writes the config's table to etcd instead, as the cluster's
desired table (``lvsguard.cluster.commands``): every director with
``table.source: cluster`` applies it to its own kernel.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lvsguard.actuator.client import add_client_options, client_from_args
from lvsguard.errors import ClientError, ConfigError, ConfigProblem, LvsguardError

if TYPE_CHECKING:
    from lvsguard.actuator.actions import Actor
    from lvsguard.actuator.actions.table import TableOutcome
    from lvsguard.config.loader import Config


def setup_apply(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "apply",
        help="make the IPVS table match the config (through the running actuator, or in-process)",
        description="Make the kernel's IPVS table the config's (table.manage: true): the running actuator reloads "
        "its config and applies it; with none running, this process applies it through the same reconciler, "
        "under the ledger's lock. Exit 0 when applied, 1 on an error or a refused entry.",
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="the YAML config")
    p.add_argument("--netns", metavar="NAME", help="the IPVS table of this network namespace (in-process only)")
    p.add_argument("--ledger", metavar="FILE", help="the actuator's ledger (in-process; default: the config's)")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="write the config's table as the cluster's desired table in etcd (cluster.store: etcd); every "
        "director with table.source: cluster applies it to its own kernel",
    )
    add_client_options(p)
    p.set_defaults(func=run_apply)
    return p


def run_apply(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from lvsguard import config

    out = out or sys.stdout
    cfg = config.load(Path(args.config))
    if args.cluster:
        from lvsguard.cluster import commands

        return commands.apply(cfg, out)
    if not cfg.table.manage:
        raise ConfigError(
            [ConfigProblem(cfg.file, 0, 0, "table.manage", "is not true: this config only names services")]
        )
    client = client_from_args(args)
    try:
        reply = client.post("/api/v1/table/apply", {})
    except ClientError as exc:
        if exc.status == 0:  # nobody answered: apply here
            return _in_process(cfg, args, out, reached=str(exc))
        if exc.body.get("result") == "error":
            return _print(exc.body, out)
        raise
    return _print(reply, out)


def _print(reply: dict[str, Any], out: TextIO) -> int:
    out.write(str(reply.get("plan", "")))
    print(reply.get("message", ""), file=out)
    return 1 if reply.get("failures") else 0


def _in_process(cfg: Config, args: argparse.Namespace, out: TextIO, *, reached: str) -> int:
    from lvsguard.actuator.actions import Actor, Source

    try:
        outcome = apply_here(cfg, netns=args.netns, ledger_path=args.ledger, actor=Actor(Source.CLI, _user()))
    except LvsguardError as exc:
        raise LvsguardError(f"{reached}; but {exc}") from None
    print(f"no actuator answered ({reached}): applied in this process", file=out)
    return _print(outcome.to_json(), out)


def apply_here(
    cfg: Config, *, netns: str | None = None, ledger_path: str | None = None, actor: Actor | None = None
) -> TableOutcome:
    """Apply ``cfg``'s table (a loaded ``lvsguard.config`` with ``table.manage``) in this process.

    The same reconciler and ledger as the actuator's, under the ledger's writer
    lock; ``netns`` defaults to the config's ``director.netns``, ``ledger_path``
    to its ``actuator.ledger``. Returns the ``TableOutcome``; raises
    LvsguardError, writing nothing, when another process (an actuator) holds the
    lock. The lab builds its directors' tables through this.
    """
    from lvsguard.actuator.actions import Actions, Actor, Source
    from lvsguard.actuator.ledger import Ledger, writer_lock
    from lvsguard.actuator.settings import from_mapping
    from lvsguard.ipvs.netlink import NetlinkIPVS

    settings = dataclasses.replace(
        cfg.actuator or from_mapping(None), table=cfg.table, desired=cfg.desired, cluster=cfg.cluster
    )
    path = ledger_path or settings.ledger_path
    lock = writer_lock(path)
    if lock is None:
        raise LvsguardError(f"an actuator holds {path}.lock: it runs and does not answer, nothing was applied")
    try:
        with NetlinkIPVS(netns or cfg.director.netns) as kernel:
            actions = Actions(kernel, settings)
            ledger = Ledger.open(path)
            try:
                actions.load_cached_cluster_table(ledger)  # table.source: cluster: the last one the actuator applied
                return actions.apply_table(ledger, actor or Actor(Source.CLI, _user()))
            finally:
                ledger.close()
    finally:
        lock.close()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"
