"""The keepalived ``track_file`` through which the actuator asks this director to give its VIPs up.

keepalived reads an integer from the file; with the track weight 0, a
non-zero value puts the instances that track it in FAULT (``lvsguard keepalived
snippet`` prints these lines; lvsguard/keepalived.py says why 0 and not a
negative weight)::

    track_file lvsguard_failover {
        file /run/lvsguard/failover      # actuator.failover_track_file
        weight 0                         # "1" in the file = FAULT: the VIPs go, the backup takes them
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
holding them. The request carries this actuator's own token (the first of its
token file): a peer that listens beyond loopback needs a token for reads, so
the two directors share one (as the Alertmanager receivers that post to both do).

The peer is asked afresh at every request that would write ``1``: no cached
view, so a peer whose keepalived stopped a moment ago is seen as stopped. What
is kept is the connection (:class:`PeerCheck`, HTTP/1.1 keep-alive): a new TCP
connection per check cost about 18 ms of the failover's time in the lab VM
(UML, where every system call is slow), a request on a kept connection about 6 ms.
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import threading
import urllib.parse

from lvsguard.errors import TrackFileError

PEER_TIMEOUT = 2.0  # seconds to wait for the peer actuator's answer


def write_track_file(path: str, requested: bool) -> None:
    """Write ``1`` (give the VIPs up) or ``0`` atomically.

    Plain ``os`` calls on the descriptor (six system calls in all): on the
    failover's path to keepalived, a buffered file object adds four more.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lvsguard-failover-", dir=directory)
        try:
            try:
                os.write(fd, b"1\n" if requested else b"0\n")
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
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
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 64).strip()
        finally:
            os.close(fd)
    except OSError:
        return None
    return text not in (b"", b"0")


class PeerCheck:
    """Asks the peer director's actuator whether it can take the VIPs over, on one kept-alive connection.

    Every :meth:`problem` is a live ``GET /api/v1/director``: only the TCP
    connection is reused, never an answer. A kept connection that the peer
    closed meanwhile (its idle timeout, a restart) fails at once on reuse; the
    request is then sent once more on a new connection, so a restarted peer
    costs one extra connection and is not refused. A timeout is not retried:
    it is a peer that does not answer.
    """

    def __init__(self, url: str, timeout: float = PEER_TIMEOUT, token: str = "") -> None:
        self.where = url.rstrip("/") + "/api/v1/director"
        self.token = token  # sent as a bearer token when set: the peer's reads may need one
        parts = urllib.parse.urlsplit(self.where)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def problem(self, timeout: float | None = None) -> str | None:
        """Why the peer could not take the VIPs over now; None when it is a healthy backup."""
        with self._lock:
            try:
                status, body = self._get(self.timeout if timeout is None else timeout)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
                return f"the peer director's actuator ({self.where}) cannot be reached: {reason}"
        if status == 401:
            return (
                f"the peer director's actuator ({self.where}) answered HTTP 401: it needs a token for reads;"
                " give both directors the same token (LVSGUARD_TOKEN or --token-file)"
                " or set actuator.read_only_open: true on the peer"
            )
        if status != 200:
            return f"the peer director's actuator ({self.where}) answered HTTP {status}"
        try:
            director = json.loads(body)
        except ValueError as exc:
            return f"the peer director's actuator ({self.where}) cannot be reached: {exc}"
        return _director_problem(director, self.where)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _get(self, timeout: float) -> tuple[int, bytes]:
        if self._conn is not None:
            try:
                return self._request(self._conn, timeout)
            except TimeoutError:
                raise
            except (OSError, http.client.HTTPException):
                self.close()  # the peer closed the kept connection: one more try on a new one
        conn_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._conn = conn_class(self._host, self._port, timeout=timeout)
        return self._request(self._conn, timeout)

    def _request(self, conn: http.client.HTTPConnection, timeout: float) -> tuple[int, bytes]:
        if conn.timeout != timeout:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn.request("GET", self._path, headers=headers)
        response = conn.getresponse()
        body = response.read()  # read to the end, or the connection cannot carry the next request
        if response.will_close:
            self.close()
        return response.status, body


_checks: dict[str, PeerCheck] = {}
_checks_lock = threading.Lock()


def peer_problem(url: str, timeout: float = PEER_TIMEOUT, token: str = "") -> str | None:
    """Why the peer director at ``url`` (its actuator) could not take the VIPs over; None when it can.

    One :class:`PeerCheck` (one kept connection) per peer URL for the life of the process;
    ``token`` (this actuator's own) goes with the request, the latest one given.
    """
    with _checks_lock:
        check = _checks.get(url)
        if check is None:
            check = _checks[url] = PeerCheck(url)
        check.token = token
    return check.problem(timeout)


def _director_problem(director: object, where: str) -> str | None:
    if not isinstance(director, dict):
        return f"the peer director is in an unknown state, not backup ({where})"
    role = director.get("role")
    if role != "backup":
        return f"the peer director is {role or 'in an unknown state'}, not backup ({where})"
    failover = director.get("failover")
    if isinstance(failover, dict) and failover.get("requested"):
        return f"the peer director has a failover requested itself ({where})"
    return None
