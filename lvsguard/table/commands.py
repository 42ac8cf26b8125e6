"""The table commands of the CLI: ``lvsguard diff`` (read-only).

``diff`` loads only the ``table`` section and the services of the config, reads
the kernel over netlink and prints the plan. Exit 0 when the kernel already
matches, 2 when changes are pending; errors raise (the CLI prints them, exit 1).
Without the ledger it knows of nothing lvsguard created, so under ``prune:
owned`` it removes nothing and counts what it leaves alone.
"""

from __future__ import annotations

import sys
from typing import TextIO

from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.table.importers import read_source
from lvsguard.table.load import load_table_text
from lvsguard.table.plan import plan

EXIT_MATCHES = 0
EXIT_PENDING = 2


def diff(config: str, netns: str | None = None, *, out: TextIO | None = None) -> int:
    """Print the plan from the kernel's table (of ``netns``, else the config's) to the config's."""
    from lvsguard.ipvs.netlink import NetlinkIPVS

    text, name = read_source(config)
    settings, desired, data = load_table_text(text, name)
    if not settings.manage:
        raise ConfigError([ConfigProblem(name, 0, 0, "table.manage", "is not true: this config only names services")])
    director = data.get("director") or {}
    netns = netns or (director.get("netns") if isinstance(director, dict) else None)
    with NetlinkIPVS(netns) as ipvs:
        table = ipvs.read()
    steps = plan(desired, table, prune=settings.prune)
    (out or sys.stdout).write(str(steps))
    return EXIT_MATCHES if steps.empty else EXIT_PENDING
