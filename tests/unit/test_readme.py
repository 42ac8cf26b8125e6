"""The README: the lab's two commands come first; the quick start's config is a valid one.

The project's rule is that the README's first code block is ``make demo`` and
``make test``; the quick start for a real director pair follows the intro. Its
config (the here-document of step 2) must load, and the keepalived snippet it
leads to must have every part the quick start names.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from lvsguard import config, keepalived

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^ *```[a-z]*\n(.*?)^ *```", README, re.M | re.S)


def test_the_first_code_block_is_make_demo_and_make_test() -> None:
    commands = [line.split("#")[0].strip() for line in BLOCKS[0].splitlines()]
    assert commands == ["make demo", "make test"]


def test_the_quick_starts_config_loads_and_gives_the_whole_keepalived_snippet(tmp_path: Path) -> None:
    documents = [re.search(r"<<'YAML'\n(.*?)^ *YAML\n", block, re.M | re.S) for block in BLOCKS]
    found = [textwrap.dedent(m.group(1)) for m in documents if m]
    assert len(found) == 1
    path = tmp_path / "lvsguard.yaml"
    path.write_text(found[0])
    cfg = config.load(path)
    assert cfg.exporter.listen.endswith(":9910") and not cfg.exporter.listen.startswith("127.")
    text = keepalived.snippet(
        cfg, keepalived.SnippetOptions("VI_1", "eth0", "", 51, 150, (), keepalived.ROLE_FIFO, keepalived.LVSGUARD)
    )
    for part in (
        "lvs_sync_daemon",
        "vrrp_notify_fifo",
        "notify_fifo_script",
        "track_file lvsguard_failover",
        "192.0.2.10",
    ):
        assert part in text
