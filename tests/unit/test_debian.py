"""debian/ agrees with the rest of the repository: the version, the units, the sysusers file.

The package itself is built by ``make deb`` and installed and started on the lab
kernel by tests/integration/test_deb_kernel.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from lvsguard import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_the_changelogs_version_is_lvsguards() -> None:
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert re.fullmatch(r"lvsguard \(([^)]+)\) \S+; urgency=\w+", first)
    assert first.split("(")[1].split(")")[0] == __version__  # a native package: no Debian revision


def test_the_package_ships_every_unit_of_packaging_systemd() -> None:
    rules = (ROOT / "debian" / "rules").read_text()
    units = re.search(r"^UNITS := (.+)$", rules, re.MULTILINE)
    assert units is not None
    assert sorted(units.group(1).split()) == sorted(p.name for p in (ROOT / "packaging" / "systemd").glob("*.service"))
    assert "packaging/sysusers.d/lvsguard.conf" in rules


def test_the_build_dependencies_are_in_the_makefiles_apt_packages() -> None:
    makefile = (ROOT / "Makefile").read_text()
    apt = re.search(r"^APT_PACKAGES := (.*?)(?<!\\)\n", makefile, re.MULTILINE | re.DOTALL)
    assert apt is not None
    packages = set(apt.group(1).replace("\\\n", " ").split())
    control = (ROOT / "debian" / "control").read_text()
    build_depends = re.search(r"^Build-Depends: (.+)$", control, re.MULTILINE)
    assert build_depends is not None
    names = {item.split()[0].split("-compat")[0] for item in build_depends.group(1).split(",")}
    assert sorted(names - packages - {"python3"}) == []  # python3: what make itself runs (PYTHON)
