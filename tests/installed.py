"""lvsguard installed where any user can run it, for the tests that run it as user nobody.

The test venv is an editable install of the checkout, and a checkout is often
where other users cannot read it (a clone under /root, or in a ``mktemp -d``
directory: both mode 0700). The units run lvsguard as an unprivileged user from
a world-readable install (/opt/lvsguard), so these tests do the same: a venv in
a world-readable directory with lvsguard's packages and its runtime
dependencies (the closure of its requirements with the ``director`` extra, as
the units' install has them, taken from the test venv: no package index needed,
as the lab VM has no network).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lvsguard",)
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


def runtime_distributions(
    name: str = "lvsguard", extras: tuple[str, ...] = ("director",)
) -> list[importlib.metadata.Distribution]:
    """The distributions ``name`` with ``extras`` needs at run time (transitively, the others' extras
    left out), itself excluded."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [(name, ("", *extras))]
    while todo:
        wanted, with_extras = todo.pop()
        dist = importlib.metadata.distribution(wanted)
        key = canonicalize_name(dist.metadata["Name"])
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in with_extras):
                todo.append((requirement.name, ("",)))
    del seen[canonicalize_name(name)]
    return list(seen.values())


def install(target: Path) -> Path:
    """A venv at ``target`` that every user can run lvsguard from; returns its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(target)], check=True, capture_output=True)
    site = target / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for dist in runtime_distributions():
        for file in dist.files or ():
            source = Path(str(dist.locate_file(file)))
            if file.parts[0] == ".." or file.suffix == ".pyc" or not source.is_file():
                continue  # scripts in bin/ and byte code: not needed to import
            (site / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, site / file)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, site / package, ignore=SKIP)
    _readable(target)
    return target / "bin" / "python"


def _readable(top: Path) -> None:
    """Directories 0755 and files at least 0644, whatever the umask of the checkout or of this process."""
    top.chmod(0o755)
    for directory, dirnames, filenames in os.walk(top):
        for name in dirnames:
            (Path(directory) / name).chmod(0o755)
        for name in filenames:
            path = Path(directory) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o644)
