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

With ``failover_peer_url`` (the other director's actuator), a request that
would write ``1`` is refused unless the peer says it is a healthy BACKUP
(``GET /api/v1/director``: role ``backup``, no failover requested there):
giving the VIPs up with no director ready to take them would leave nobody
holding them.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request

from lvsguard.errors import LvsguardError

PEER_TIMEOUT = 2.0  # seconds to wait for the peer actuator's answer


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


def peer_problem(url: str, timeout: float = PEER_TIMEOUT) -> str | None:
    """Why the peer director at ``url`` (its actuator) could not take the VIPs over; None when it can."""
    where = url.rstrip("/") + "/api/v1/director"
    try:
        with urllib.request.urlopen(where, timeout=timeout) as response:
            director = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return f"the peer director's actuator ({where}) answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        return f"the peer director's actuator ({where}) cannot be reached: {reason}"
    role = director.get("role") if isinstance(director, dict) else None
    if role != "backup":
        return f"the peer director is {role or 'in an unknown state'}, not backup ({where})"
    failover = director.get("failover")
    if isinstance(failover, dict) and failover.get("requested"):
        return f"the peer director has a failover requested itself ({where})"
    return None
