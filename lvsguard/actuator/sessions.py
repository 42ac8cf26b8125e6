"""Console sessions: what the signed cookie carries, and when a session is over.

The cookie is signed, not stored: anything in it is the browser's to keep and
send again. So a session carries its own limits, and the server keeps the
one thing a cookie cannot say, that it was logged out:

- ``since``: the login time. The session ends ``SESSION_HOURS`` after it,
  however often the cookie is re-signed (every flashed message re-signs it, and
  Flask's own expiry counts from the last signature).
- ``key``: a fingerprint of the token's secret (an HMAC of a constant under the
  secret, which does not reveal it). A new secret for the same token name
  (the token file changed, then SIGHUP) ends the token's sessions.
- ``sid``: a random id. Logout writes it to the ledger's ``ended_sessions``
  (kept until the session would have expired anyway), so a copy of the cookie
  taken before the logout no longer acts, after a restart too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping, MutableMapping
from typing import Any

from lvsguard.actuator.ledger import Ledger

SESSION_HOURS = 12  # a console session ends this long after the login, whatever the key
SESSION_SECONDS = SESSION_HOURS * 3600


def fingerprint(secret: str) -> str:
    """A stand-in for a token's secret that changes with it and does not reveal it."""
    return hmac.new(secret.encode(), b"lvsguard console session", hashlib.sha256).hexdigest()[:32]


def start(session: MutableMapping[str, Any], name: str, secret: str, now: float) -> None:
    """A fresh session for token ``name`` (with ``secret``), logged in at ``now``."""
    session.clear()
    session.update(
        user=name,
        key=fingerprint(secret),
        since=now,
        sid=secrets.token_urlsafe(16),
        csrf=secrets.token_urlsafe(32),
    )


def current_user(session: Mapping[str, Any], tokens: Mapping[str, str], now: float, ledger: Ledger) -> str | None:
    """The session's token name while the session lasts, else None."""
    name, key, since, sid = (session.get(k) for k in ("user", "key", "since", "sid"))
    if not isinstance(name, str) or name not in tokens or not isinstance(key, str) or not isinstance(sid, str):
        return None
    if not isinstance(since, (int, float)) or not since <= now < since + SESSION_SECONDS:
        return None
    if not hmac.compare_digest(key, fingerprint(tokens[name])):
        return None
    return None if ledger.session_ended(sid) else name


def end(session: MutableMapping[str, Any], ledger: Ledger) -> None:
    """Log the session out for good: its id is refused until the session would have expired."""
    sid, since = session.get("sid"), session.get("since")
    if isinstance(sid, str) and isinstance(since, (int, float)):
        ledger.end_session(sid, until=since + SESSION_SECONDS)
    session.clear()
