"""Where lvsguard's shipped files are: units, sysusers, examples, alert rules, dashboards, the MIB.

The repository keeps them in its own folders (``packaging/``, ``examples/``,
``alerts/``, ``dashboards/``); the build (setup.py, which reads ``SHARE`` from
this file) puts each into the wheel as ``lvsguard/share/NAME/``, so an install
has them next to the code, whatever its prefix. In a checkout (an editable
install) they are read where the repository has them. ``lvsguard paths``
prints the folders. Standard library only: the agent's bare install has it too.
"""

from __future__ import annotations

from pathlib import Path

# NAME -> (the repository's folder, the files of it that ship, as package-data globs).
SHARE: dict[str, tuple[str, tuple[str, ...]]] = {
    "systemd": ("packaging/systemd", ("*.service", "*.example")),
    "sysusers": ("packaging/sysusers.d", ("*.conf",)),
    "examples": ("examples", ("*.yaml",)),
    "alerts": ("alerts", ("*.yml",)),
    "dashboards": ("dashboards", ("*.json", "provisioning/*.yml")),
}
PACKAGE = Path(__file__).resolve().parent


def share(name: str) -> Path:
    """The folder of ``name`` (a key of ``SHARE``, or ``mib``): in the install, else in the checkout."""
    if name == "mib":
        return PACKAGE / "exporter" / "snmp" / "mibs"
    shipped = PACKAGE / "share" / name
    return shipped if shipped.is_dir() else PACKAGE.parent / SHARE[name][0]


def all_paths() -> dict[str, Path]:
    """Every shipped folder by name, the MIB's last."""
    return {name: share(name) for name in (*SHARE, "mib")}
