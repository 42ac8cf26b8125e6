"""Limits at the actuator's door: connections, body sizes, JSON shape and the Host header.

Why here and not in each view: every one of these is checked before a view
runs (most before the body is read), so they hold for the webhook, the API and
the console alike, and a new route gets them without a line of its own.

- **waitress** (:func:`create_server`): up to ``CONNECTION_LIMIT`` connections;
  one idle (a header that never ends, a keep-alive nobody uses) is closed after
  ``CHANNEL_TIMEOUT`` seconds; a body longer than ``MAX_BODY`` is answered 413
  from its ``Content-Length``, before a byte of it is read or spooled.
- **Per route** (:func:`check_request`): the webhook takes ``MAX_BODY``, every
  other route ``ROUTE_BODY``; 413 from the ``Content-Length``, before the body is read.
- **Host header**: an IP address, ``localhost``, this host's name or one of
  ``actuator.trusted_hosts``; anything else is 400, so that a name an attacker
  points at the director (DNS rebinding) reaches no page, and no redirect is
  built from it.
- **JSON**: nesting too deep for the parser is a 400, not a RecursionError;
  a webhook payload is counted before it is parsed (:func:`check_webhook_body`).

- **Per client** (:func:`admit`): at most ``MAX_PER_CLIENT`` connections per
  address, so one host's slow clients cannot take all of ``CONNECTION_LIMIT``.
- **TLS** (:class:`TLSChannel`, with ``tls_server_config`` in the web config):
  the handshake is one more non-blocking step in waitress's own loop, so a
  client that never finishes it holds one channel until ``CHANNEL_TIMEOUT``,
  as a silent plain connection does, and never the loop.

Requests per client, and connections from many addresses, are a reverse
proxy's to limit: docs/actuator.md shows one.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import ssl
import time
from typing import Any

from flask import Flask, current_app, request
from flask.json.provider import DefaultJSONProvider
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.server import create_server as waitress_server
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from lvsguard.actuator.auth import is_loopback
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.errors import PayloadError
from lvsguard.logs import event

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024 * 1024
"""Bytes of the largest request (a webhook: 1 000 alerts are about 1 MB); waitress refuses more unread."""
ROUTE_BODY = 64 * 1024
"""Bytes of any other request body: an API call or a console form is a few hundred."""
BULK_BODY = 2 * 1024 * 1024
"""Bytes of a bulk action's body (``MAX_BULK`` targets of about 60 bytes each, names or addresses)."""
BODY_LIMITS = {"webhook.alertmanager": MAX_BODY, "api.bulk_quarantine": BULK_BODY, "api.bulk_restore": BULK_BODY}
"""Endpoint -> bytes, where it differs from ``ROUTE_BODY``."""
MAX_ALERTS = 10_000
"""Alerts in one webhook payload; Alertmanager's ``max_alerts`` on the receiver keeps a group below it."""
CONTAINERS_PER_ALERT = 32
"""JSON objects and arrays one alert may bring (it has 3, and a few more in strings): counted before parsing."""

CONNECTION_LIMIT = 500
"""Connections waitress serves at once (its default is 100: 110 slow clients took the actuator down)."""
MAX_PER_CLIENT = 64
"""Connections one client address may hold; more get 503 and are closed. 127.0.0.1 and ::1 are exempt:
a reverse proxy on the director connects from there for every client (it limits per client itself)."""
CHANNEL_TIMEOUT = 15
"""Seconds a connection may stay silent, mid-header or idle, before waitress closes it (default 120)."""
SERVER_OPTIONS: dict[str, Any] = {
    "connection_limit": CONNECTION_LIMIT,
    "channel_timeout": CHANNEL_TIMEOUT,
    "cleanup_interval": 5,  # seconds between two sweeps for silent connections (default 30)
    "asyncore_use_poll": True,  # poll(), not select(): no file descriptor limit of 1024
    "max_request_header_size": 64 * 1024,  # bytes (default 256 KiB)
    "max_request_body_size": MAX_BODY,  # bytes (default 1 GiB, spooled to /tmp)
    "ident": "lvsguard",
}


BUSY_REPLY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
EXEMPT = ("127.0.0.1", "::1")


class CurrentTLS:
    """The TLS context new connections get; a reload of the web config swaps ``context`` (a new certificate)."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context


def create_server(
    app: Any, *, host: str, port: int, threads: int, tls: ssl.SSLContext | CurrentTLS | None = None, **overrides: Any
) -> Any:
    """The waitress server of ``lvsguard actuator`` (``run()`` serves until interrupted); HTTPS with ``tls``."""
    if isinstance(tls, ssl.SSLContext):
        tls = CurrentTLS(tls)
    if tls is not None:
        overrides.setdefault("url_scheme", "https")  # what the app's URLs say (redirects, the console's links)
    server = waitress_server(app, host=host, port=port, threads=threads, **{**SERVER_OPTIONS, **overrides})
    listeners = [server] if isinstance(server, BaseWSGIServer) else list((server.map or {}).values())  # v4 and v6
    for listener in listeners:
        if isinstance(listener, BaseWSGIServer):
            # waitress calls channel_class with each accepted connection and keeps nothing it returns:
            # a function that may refuse stands in for the class waitress's stubs expect here
            listener.channel_class = functools.partial(admit, tls=tls)  # type: ignore[assignment]
    return server


class TLSChannel(HTTPChannel):
    """A waitress channel over a non-blocking TLS socket: the handshake, then HTTP as ever.

    Waitress's loop calls ``handle_read``/``handle_write`` when the socket is
    ready; until the handshake is done they drive it. A read takes everything
    the TLS layer has decrypted (``pending()``), so no request waits in
    OpenSSL's buffer for a poll event that will not come. ``SSLWant*`` is
    "not now", as EWOULDBLOCK is for a plain socket.
    """

    def __init__(self, server: Any, sock: ssl.SSLSocket, addr: Any, adj: Any, map: dict[int, Any] | None = None):
        self.handshaken = False
        self.handshake_wants_write = False
        self.tls = sock  # the same object as ``self.socket``, typed
        super().__init__(server, sock, addr, adj, map=map)

    def readable(self) -> bool:
        return True if not self.handshaken else bool(super().readable())

    def writable(self) -> bool:
        if not self.handshaken:  # will_close: waitress's sweep gave up on a silent connection
            return self.handshake_wants_write or bool(self.will_close)
        return bool(super().writable())

    def handle_write(self) -> None:
        if not self.handshaken:
            if self.will_close:
                self.handle_close()
                return
            self._handshake()
            return
        super().handle_write()

    def handle_read(self) -> None:
        if not self.handshaken:
            self._handshake()
            if not self.handshaken:
                return
        tls = self.tls
        try:
            data = tls.recv(self.adj.recv_bytes)
            while data and tls.pending():
                data += tls.recv(tls.pending())
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:  # ssl.SSLError too: a broken record is the end of the connection
            event(log, logging.DEBUG, "tls_read_failed", client=self.addr[0], reason=str(exc))
            self.handle_close()
            return
        if data:
            self.last_activity = time.time()
            self.received(data)
        else:
            self.connected = False  # the client closed the connection

    def send(self, data: bytes, do_close: bool = True) -> int:
        try:
            return int(super().send(data, do_close))
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0
        except ssl.SSLError as exc:
            event(log, logging.DEBUG, "tls_write_failed", client=self.addr[0], reason=str(exc))
            if do_close:
                self.handle_close()
            return 0

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self.handshake_wants_write = False
            return
        except ssl.SSLWantWriteError:
            self.handshake_wants_write = True
            return
        except OSError as exc:  # a plain-HTTP client, an unknown CA, no client certificate, a reset
            event(log, logging.DEBUG, "tls_handshake_failed", client=self.addr[0], reason=str(exc))
            self.handle_close()
            return
        self.handshaken = True
        self.handshake_wants_write = False
        self.last_activity = time.time()


def admit(
    server: Any, conn: socket.socket, addr: Any, adj: Any, map: dict[int, Any], tls: CurrentTLS | None = None
) -> HTTPChannel | None:
    """A channel for ``conn``, or a 503 and close when its address holds ``MAX_PER_CLIENT`` connections already.

    Counted from waitress's own map of open channels (at most ``CONNECTION_LIMIT``),
    so nothing is left to forget when a connection closes.
    """
    client = addr[0] if isinstance(addr, tuple) else ""
    if client and client not in EXEMPT:
        held = sum(1 for ch in map.values() if isinstance(ch, HTTPChannel) and ch.addr and ch.addr[0] == client)
        if held >= MAX_PER_CLIENT:
            try:
                conn.setblocking(False)  # the server's one loop never waits on a client
                conn.send(BUSY_REPLY)
            except OSError:
                pass
            conn.close()
            event(log, logging.DEBUG, "connection_refused", client=client, held=held)
            return None
    if tls is not None:
        wrapped = tls.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return TLSChannel(server, wrapped, addr, adj, map=map)
    return HTTPChannel(server, conn, addr, adj, map=map)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, with nesting too deep for the parser a ValueError (so ``get_json`` answers 400)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply") from None


def init_app(app: Flask) -> None:
    """Check every request at the door (called by ``create_app``)."""
    app.json = JSONProvider(app)
    app.before_request(check_request)


def check_request() -> None:
    """The Host header, then the body's declared length against the route's limit."""
    host = request.host
    if not trusted_host(host, current_app.config["LVSGUARD_SETTINGS"].trusted_hosts):
        raise BadRequest(
            f"Host {host[:100]!r} is not a name of this actuator: add it to actuator.trusted_hosts"
            " (IP addresses, localhost and this host's name are always accepted)"
        )
    limit = BODY_LIMITS.get(request.endpoint or "", ROUTE_BODY)
    request.max_content_length = limit  # a chunked body is cut at the limit while it is read
    length = request.content_length
    if length is not None and length > limit:
        raise RequestEntityTooLarge(f"the body is {length} bytes; {request.path} takes at most {_size(limit)}")


def trusted_host(host: str, trusted: tuple[str, ...]) -> bool:
    """Whether a Host header (``name``, ``name:port``, ``[v6]:port``) names this actuator."""
    name = host.lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True  # a browser that sent an address went to that address: no rebinding through it
    except ValueError:
        pass
    return name == "localhost" or name in _own_names() or name in trusted or "*" in trusted


@functools.cache
def _own_names() -> frozenset[str]:
    """This host's name and its fully qualified name (resolved once)."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(n.rstrip(".") for n in names if n)


def check_webhook_body(raw: bytes) -> None:
    """Refuse a payload with more objects and arrays than ``MAX_ALERTS`` alerts can hold, before it is parsed.

    Why: the parser builds every container before the version or the alerts
    are checked; 14 MB of ``[]`` became 400 MB of Python lists.
    """
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > CONTAINERS_PER_ALERT * MAX_ALERTS + 64:
        raise PayloadError(
            f"{containers} JSON objects and arrays: more than {MAX_ALERTS} alerts can hold "
            f"(set max_alerts: {MAX_ALERTS} or less on the Alertmanager receiver)",
            "alerts",
        )


def check_alert_count(body: Any) -> None:
    """Refuse a parsed payload of more than ``MAX_ALERTS`` alerts, before any of them is checked or acted on."""
    alerts = body.get("alerts") if isinstance(body, dict) else None
    if isinstance(alerts, list) and len(alerts) > MAX_ALERTS:
        raise PayloadError(
            f"{len(alerts)} alerts in one payload, at most {MAX_ALERTS} "
            f"(set max_alerts: {MAX_ALERTS} or less on the Alertmanager receiver)",
            "alerts",
        )


def warn_exposure(host: str, settings: ActuatorSettings) -> None:
    """Log a warning when the config opens reads (``read_only_open: true``) and the actuator listens beyond loopback."""
    if not settings.read_only_open or _loopback(host):
        return
    event(
        log,
        logging.WARNING,
        "read_access_open",
        listen=host,
        reads="services, ledger, audit and the console, to anyone who reaches the port",
        fix="set actuator.read_only_open: false, listen on 127.0.0.1, or let a firewall or proxy limit who connects",
    )


def _loopback(host: str) -> bool:
    return is_loopback(host)


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit // 2**10} KiB"
