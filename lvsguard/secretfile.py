"""Reading a secret file (tokens, the console's session key) only when it is private.

Why refuse rather than warn: a token file others can read hands every local
user the right to drain real servers, and a warning scrolls by in a journal
nobody reads. The rule is PostgreSQL's for its key file: no permission for
others; group permissions only when root owns the file (the documented
``root:lvsguard 0640`` setup, where the group is the service's own).
"""

from __future__ import annotations

import os
import stat


def exposure(path: str, st: os.stat_result) -> str | None:
    """Why ``st`` (the file at ``path``) is not private enough for a secret, or None when it is."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        who = "others"
    elif mode & 0o070 and st.st_uid != 0:
        who = "its group"
    else:
        return None
    return f"{path}: open to {who} (mode {mode:04o}): make it private with chmod 600 {path} (or 640 with owner root)"


def read_secret(path: str, limit: int = 1 << 20) -> bytes:
    """The first ``limit`` bytes of ``path``; OSError when it cannot be read, ValueError when it is not private.

    The mode is checked on the open file, so a file swapped between the check
    and the read is still the one checked.
    """
    with open(path, "rb") as fh:
        problem = exposure(path, os.fstat(fh.fileno()))
        if problem is not None:
            raise ValueError(problem)
        return fh.read(limit)
