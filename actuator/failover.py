"""The keepalived ``track_file`` through which the actuator asks this director to give its VIPs up.

keepalived reads an integer from the file and adds it, times the track
weight, to the VRRP priority of the instances that track it::

    track_file lvsguard_failover {
        file /run/lvsguard/failover      # actuator.failover_track_file
        weight -100                      # "1" in the file lowers the priority below the backup's
    }
    vrrp_instance VI_1 { ... track_file { lvsguard_failover } }

The actuator writes ``1`` while at least one failover request holds (an alert
whose action is ``failover``, or an operator's ``lvsguard failover``) and ``0``
when the last one is released; the write is atomic (a rename), so keepalived
never reads half a file.
"""

from __future__ import annotations

import os
import tempfile

from lvsguard.errors import LvsguardError


class TrackFileError(LvsguardError):
    """The track file cannot be written; the message names it."""


def write_track_file(path: str, requested: bool) -> None:
    """Write ``1`` (give the VIPs up) or ``0`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lvsguard-failover-", dir=directory)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write("1\n" if requested else "0\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise TrackFileError(f"failover track file {path}: {exc.strerror or exc}") from None


def read_track_file(path: str) -> bool | None:
    """True when the file asks for a failover, False when not, None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return text not in ("", "0")
