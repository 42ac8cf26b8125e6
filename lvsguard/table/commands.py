"""The table commands of the CLI: ``lvsguard diff`` (read-only).

``diff`` loads the config as every command does (``lvsguard.config``: every
problem with its file and line), reads the kernel over netlink and prints the
plan. Exit 0 when the kernel already
matches, 2 when changes are pending; errors raise (the CLI prints them, exit 1).
Without the ledger it knows of nothing lvsguard created, so under ``prune:
owned`` it removes nothing and counts what it leaves alone.
"""

from __future__ import annotations

import sys
from typing import TextIO

from lvsguard.config import loads
from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.table.importers import read_source
from lvsguard.table.plan import plan

EXIT_MATCHES = 0
EXIT_PENDING = 2


def diff(config: str, netns: str | None = None, *, out: TextIO | None = None) -> int:
    """Print the plan from the kernel's table (of ``netns``, else the config's) to the config's."""
    from lvsguard.ipvs.netlink import NetlinkIPVS

    text, name = read_source(config)
    cfg = loads(text, name)
    if not cfg.table.manage:
        raise ConfigError([ConfigProblem(name, 0, 0, "table.manage", "is not true: this config only names services")])
    with NetlinkIPVS(netns or cfg.director.netns) as ipvs:
        table = ipvs.read()
    steps = plan(cfg.desired, table, prune=cfg.table.prune)
    (out or sys.stdout).write(str(steps))
    return EXIT_MATCHES if steps.empty else EXIT_PENDING
