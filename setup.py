"""What goes into the wheel: the packages, their data, and the repository's data folders.

pyproject.toml holds the rest. Units, sysusers, examples, alert rules and
dashboards stay in the folders the repository keeps them in; each is mapped to
``lvsguard/share/NAME/`` in the wheel (``lvsguard.paths.SHARE`` names them and
the files that ship; ``lvsguard paths`` prints where an install has them).
A mapped folder's Python files (the dashboards' generator) are not shipped.
"""

import runpy
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHARE = runpy.run_path(str(HERE / "lvsguard" / "paths.py"))["SHARE"]
SHARED = [f"lvsguard.share.{name}" for name in SHARE]


class BuildPy(build_py):
    """build_py that takes data only, no modules, from the mapped folders."""

    def find_package_modules(self, package, package_dir):
        return [] if package in SHARED else super().find_package_modules(package, package_dir)


setup(
    packages=[*find_packages(include=["lvsguard", "lvsguard.*"]), *SHARED],
    package_dir={f"lvsguard.share.{name}": folder for name, (folder, _) in SHARE.items()},
    package_data={
        "": ["*.txt", "*.yaml", "*.json"],
        "lvsguard.exporter.snmp": ["mibs/*", "snmp_exporter/*"],  # LVSGUARD-MIB, the snmp_exporter module
        "lvsguard.actuator": ["templates/ui/*.html", "static/*.js", "static/*.css"],
        **{f"lvsguard.share.{name}": list(globs) for name, (_, globs) in SHARE.items()},
    },
    cmdclass={"build_py": BuildPy},
)
