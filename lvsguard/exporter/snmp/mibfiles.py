"""Where LVSGUARD-MIB lives, and the IETF modules it imports (fetched, never shipped).

net-snmp tools and smilint need the base modules (SNMPv2-SMI, SNMPv2-TC,
SNMPv2-CONF, SNMP-FRAMEWORK-MIB, INET-ADDRESS-MIB) next to ours. Debian
treats those texts as non-free and the project does not carry them:
``mibs/fetch-base-mibs.sh`` takes them from Debian's erlang-snmp package into
a cache directory, once.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lvsguard.errors import BaseMibsUnavailable

MIB_DIR = Path(__file__).resolve().parent / "mibs"
MIB_FILE = MIB_DIR / "LVSGUARD-MIB.txt"
MODULE = "LVSGUARD-MIB"
FETCH_SCRIPT = MIB_DIR / "fetch-base-mibs.sh"


def default_cache() -> Path:
    """``$LVSGUARD_MIB_CACHE``, else ``$XDG_CACHE_HOME/lvsguard/base-mibs`` (``~/.cache`` by default)."""
    explicit = os.environ.get("LVSGUARD_MIB_CACHE")
    if explicit:
        return Path(explicit)
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "lvsguard" / "base-mibs"


def base_mib_dir(dest: Path | None = None) -> Path:
    """The directory holding the base modules, fetched there first when missing."""
    target = dest or default_cache()
    result = subprocess.run(["sh", str(FETCH_SCRIPT), str(target)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BaseMibsUnavailable(f"{FETCH_SCRIPT.name} {target}: {result.stderr.strip() or 'failed'}")
    return target


def mib_search_path(dest: Path | None = None) -> str:
    """A ``-M`` / ``SMIPATH`` value with the base modules and LVSGUARD-MIB."""
    return f"{base_mib_dir(dest)}:{MIB_DIR}"
