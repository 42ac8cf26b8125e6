"""A stand-in for ``systemctl`` where no systemd runs (the lab VM): units started as systemd starts them.

For the test that follows docs/install.md literally. ``enable --now``, ``start``
and ``restart`` run a unit's ``ExecStart=`` (from /etc/systemd/system, else
/lib/systemd/system, with its drop-ins) as its ``User=``/``Group=`` with exactly
its ``AmbientCapabilities=``, its ``Environment=`` and ``UMask=``, after making
its ``StateDirectory=`` and ``RuntimeDirectory=``; ``stop`` and ``disable --now``
end it; ``daemon-reload``, plain ``enable`` and ``disable`` do nothing. Each
unit's pid and output are kept in ``$LVSGUARD_SYSTEMCTL_STATE``. Standard
library only: it runs with the system's python3.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("LVSGUARD_SYSTEMCTL_STATE", "/run/lvsguard-systemctl"))
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"))


def service_settings(path: Path, into: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The ``[Service]`` keys of a unit file or drop-in, each with its values in order (added to ``into``)."""
    found: dict[str, list[str]] = {} if into is None else into
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def settings(unit: str) -> dict[str, list[str]]:
    """The ``[Service]`` keys of ``unit`` and its drop-ins, each with its values in order."""
    files = [d / unit for d in UNIT_DIRS if (d / unit).is_file()][:1]
    if not files:
        sys.exit(f"systemctl: Unit {unit} not found.")
    files += sorted((UNIT_DIRS[0] / f"{unit}.d").glob("*.conf"))
    found: dict[str, list[str]] = {}
    for path in files:
        service_settings(path, found)
    return found


def start(unit: str) -> None:
    if running(unit):
        return
    s = settings(unit)
    user, group = s["User"][0], s["Group"][0]
    for kind, top in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run")):
        for name in s.get(kind, []):
            mode = s.get(f"{kind}Mode", ["0755"])[0]
            subprocess.run(["install", "-d", "-m", mode, "-o", user, "-g", group, f"{top}/{name}"], check=True)
    caps = [c.removeprefix("CAP_").lower() for value in s.get("AmbientCapabilities", []) for c in value.split()]
    spec = ",".join(f"+{c}" for c in caps)
    argv = [
        "setpriv",
        f"--reuid={user}",
        f"--regid={group}",
        "--init-groups",
        f"--bounding-set=-all{',' + spec if caps else ''}",
        f"--inh-caps=-all{',' + spec if caps else ''}",
        *([f"--ambient-caps=-all,{spec}"] if caps else []),
        "--no-new-privs",
        *shlex.split(s["ExecStart"][-1]),
    ]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for value in s.get("Environment", []):
        env.update(item.split("=", 1) for item in shlex.split(value))
    umask = int(s.get("UMask", ["0022"])[0], 8)
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / f"{unit}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=lambda: os.umask(umask),  # before exec; this process has no threads
        )
    (STATE / f"{unit}.pid").write_text(str(proc.pid))


def running(unit: str) -> int | None:
    try:
        pid = int((STATE / f"{unit}.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def stop(unit: str) -> None:
    pid = running(unit)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    (STATE / f"{unit}.pid").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    now = "--now" in argv
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return 0
    verb, units = words[0], [u if "." in u else f"{u}.service" for u in words[1:]]  # as systemctl completes them
    for unit in units:
        if verb in ("start", "restart", "try-restart") or (verb == "enable" and now):
            if verb in ("restart", "try-restart"):
                was = running(unit)
                stop(unit)
                if verb == "try-restart" and was is None:
                    continue
            start(unit)
        elif verb == "stop" or (verb == "disable" and now):
            stop(unit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
