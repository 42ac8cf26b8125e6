"""Bearer tokens: several named tokens, constant-time comparison, never logged.

A token is known by its *name* (``alertmanager``, ``alice``); the name goes
into the ledger and the audit trail, the secret goes nowhere. There is no
default token: an actuator without one answers every mutating call with 401.

Token sources (the CLI's ``--token-file`` and ``LVSGUARD_TOKEN``):

- ``LVSGUARD_TOKEN=SECRET`` is one token named ``env``;
- a token file has one token per line, ``NAME:SECRET`` or a bare ``SECRET``
  (named ``token<line>``); blank lines and ``#`` comments are skipped.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, jsonify, request

from lvsguard.errors import TokenFileError, TooManyFailures, Unauthorized
from lvsguard.secretfile import read_secret
from lvsguard.webconfig import NO_WEB_CONFIG, WebConfig, basic_credentials

F = TypeVar("F", bound=Callable[..., Any])

TOKEN_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_SECRET = 16  # characters; shorter secrets are refused at load
MIN_DISTINCT = 5  # different characters; "aaaa..." or "abab..." is a guessable secret whatever its length
MAKE_ONE = "make one with: head -c 24 /dev/urandom | base64"


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """Tokens from a token file's text; errors name ``source`` and the line."""
    tokens: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            name, secret = f"token{number}", line
        name, secret = name.strip(), secret.strip()
        if not TOKEN_NAME.fullmatch(name):
            raise TokenFileError(f"{source}:{number}: token name {name!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
        if len(secret) < MIN_SECRET or any(c.isspace() for c in secret):
            raise TokenFileError(
                f"{source}:{number}: token {name!r} must be at least {MIN_SECRET} characters without spaces,"
                f" got {len(secret)}{' with spaces' if any(c.isspace() for c in secret) else ''} ({MAKE_ONE})"
            )
        if len(set(secret)) < MIN_DISTINCT:
            raise TokenFileError(f"{source}:{number}: token {name!r} {_weak(secret)}")
        if name in tokens:
            raise TokenFileError(f"{source}:{number}: token name {name!r} appears twice")
        tokens[name] = secret
    return tokens


def _weak(secret: str) -> str:
    return (
        f"uses {len(set(secret))} different characters; at least {MIN_DISTINCT} are needed,"
        f" a repeated pattern is guessed first ({MAKE_ONE})"
    )


def load_tokens(env: Mapping[str, str], token_file: str | None) -> dict[str, str]:
    """``LVSGUARD_TOKEN`` (named ``env``) plus every token of ``token_file``."""
    tokens: dict[str, str] = {}
    if token_file:
        try:
            text = read_secret(token_file).decode("utf-8", "replace")
        except OSError as exc:
            raise TokenFileError(f"{token_file}: cannot read the token file: {exc.strerror}") from None
        except ValueError as exc:  # others may read it
            raise TokenFileError(str(exc)) from None
        tokens.update(parse_tokens(text, token_file))
    secret = env.get("LVSGUARD_TOKEN", "").strip()
    if secret:
        if len(secret) < MIN_SECRET:
            raise TokenFileError(
                f"LVSGUARD_TOKEN must be at least {MIN_SECRET} characters, got {len(secret)} ({MAKE_ONE})"
            )
        if len(set(secret)) < MIN_DISTINCT:
            raise TokenFileError(f"LVSGUARD_TOKEN {_weak(secret)}")
        tokens.setdefault("env", secret)
    return tokens


def token_name(tokens: Mapping[str, str], header: str | None) -> str | None:
    """The name of the token in an ``Authorization: Bearer ...`` header, or None.

    Every configured token is compared (constant time each), so the time taken
    does not tell which one, or how much of one, matched.
    """
    if not header:
        return None
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    given = presented.strip().encode()
    found = None
    for name, secret in tokens.items():
        if hmac.compare_digest(given, secret.encode()) and found is None:
            found = name
    return found


class LoginLimiter:
    """At most ``failures`` failed console logins per client address in any ``per`` seconds.

    Why: a console login is a token guess anyone who reaches the port can
    make; this slows guessing to ``failures`` per ``per`` seconds and address
    without locking anybody out for long. Successful logins are not counted
    and clear the address's failures. Behind a reverse proxy every client has
    the proxy's address, so the limit is then shared (docs/ui.md).
    """

    def __init__(
        self,
        failures: int = 5,
        per: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ):
        self.failures = failures
        self.per = per
        self.max_clients = max_clients  # addresses remembered; the stalest go first
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        with self._lock:
            times = self._recent(client)
            if len(times) < self.failures:
                return 0.0
            return max(times[0] + self.per - self._clock(), 0.001)

    def failed(self, client: str) -> None:
        with self._lock:
            times = self._recent(client)
            times.append(self._clock())
            self._seen[client] = times
            if len(self._seen) > self.max_clients:
                self._forget()

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._seen.pop(client, None)

    def _recent(self, client: str) -> deque[float]:
        times = self._seen.get(client, deque())
        while times and times[0] <= self._clock() - self.per:
            times.popleft()
        return times

    def _forget(self) -> None:
        """Drop the addresses with no recent failure, then the stalest, down to ``max_clients``."""
        cutoff = self._clock() - self.per
        for client in [c for c, times in self._seen.items() if not times or times[-1] <= cutoff]:
            del self._seen[client]
        for client in sorted(self._seen, key=lambda c: self._seen[c][-1])[: len(self._seen) - self.max_clients]:
            del self._seen[client]


BEARER_FAILURES = 10  # wrong bearer tokens per client address ...
BEARER_PER = 60.0  # ... in any this many seconds, then 429 until the oldest is that old


def authenticate() -> str:
    """The calling token's name (also on ``g.token_name``); Unauthorized otherwise.

    A wrong token counts against the client's address as a failed console
    login does: past ``BEARER_FAILURES`` in ``BEARER_PER`` seconds every token,
    the right one too, is answered 429 before it is compared. A request with
    no ``Authorization`` header guesses nothing and is not counted.
    """
    tokens = current_app.config["LVSGUARD_SETTINGS"].tokens
    if not tokens:
        raise Unauthorized("this actuator has no token configured: set LVSGUARD_TOKEN or --token-file")
    header = request.headers.get("Authorization")
    limiter: LoginLimiter = current_app.extensions["lvsguard_bearer"]
    client = request.remote_addr or "-"
    if header:
        wait = limiter.retry_after(client)
        if wait > 0:
            seconds = max(math.ceil(wait), 1)
            raise TooManyFailures(
                f"too many wrong tokens from {client} (at most {limiter.failures} in {limiter.per:g} s):"
                f" try again in {seconds} s",
                seconds,
            )
    name = token_name(tokens, header)
    if name is None:
        if header:
            limiter.failed(client)
        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")
    limiter.succeeded(client)
    g.token_name = name
    return name


def init_app(app: Flask) -> None:
    """The bearer tokens' failure limiter and the web config's basic-auth gate (called by ``create_app``)."""
    app.extensions["lvsguard_bearer"] = LoginLimiter(BEARER_FAILURES, BEARER_PER)
    app.config.setdefault("LVSGUARD_WEB", NO_WEB_CONFIG)
    app.before_request(basic_gate)
    app.after_request(web_headers)


def basic_gate() -> Response | None:
    """With ``basic_auth_users`` in the web config, every request needs a user's password or a bearer token.

    As exporter-toolkit does, basic auth closes the whole port (the metrics, the
    console, the API, the webhook). HTTP has one ``Authorization`` header, so a
    caller sends one of the two: valid ``Basic`` credentials let it read (a
    scraper), a valid ``Bearer`` token is checked here as everywhere and also
    lets it change things; a basic user never may, a token still must.
    """
    web: WebConfig = current_app.config["LVSGUARD_WEB"]
    if not web.users:
        return None
    header = request.headers.get("Authorization")
    credentials = basic_credentials(header)
    if credentials is not None and web.authorized(header):
        g.basic_user = credentials[0]
        return None
    if credentials is None and header and header.strip().lower().startswith("bearer "):
        authenticate()  # a wrong token is 401 (or 429) from the one error handler, and counted
        return None
    response = jsonify(error="missing or wrong credentials: basic auth (a scraper) or a bearer token")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="lvsguard actuator", charset="UTF-8"'
    return response


def web_headers(response: Response) -> Response:
    """The web config's ``http_server_config.headers`` on every answer."""
    for name, value in current_app.config["LVSGUARD_WEB"].headers.items():
        response.headers[name] = value
    return response


def require_token(view: F) -> F:
    """Mutating endpoints and the webhook."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        authenticate()
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]  # wrapped takes and returns what the view does


LISTEN_HOST = "LVSGUARD_LISTEN_HOST"
"""``app.config`` key: the address the actuator listens on (set by ``serve``; absent: loopback)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reads_open(app: Flask | None = None) -> bool:
    """Whether GET endpoints and the console's pages need no token.

    ``actuator.read_only_open`` when the config sets it; absent, reads are open
    only when the actuator listens on loopback (only the director itself reaches it).
    """
    app = app or current_app
    setting = app.config["LVSGUARD_SETTINGS"].read_only_open
    if setting is not None:
        return bool(setting)
    return is_loopback(app.config.get(LISTEN_HOST, "127.0.0.1"))


def read_only(view: F) -> F:
    """GET endpoints: open when :func:`reads_open`, else a token first; a basic user may read."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not reads_open() and not g.get("basic_user"):
            authenticate()  # a web config's basic user may read (basic_gate)
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]  # wrapped takes and returns what the view does
