"""Where health transitions and weight changes go: the actuator, never IPVS.

Two ways, chosen in the config (``probes.publish``):

- ``actuator`` (the fast path): a transition is posted straight to the
  actuator's ``/webhook/alertmanager`` as an Alertmanager version-4 payload
  (``firing`` with ``lvsguard_action=quarantine`` when the real server falls,
  ``resolved`` when it rises), with a fingerprint that is stable per real
  server and check, so the actuator's hold is this check's and only its
  resolve releases it. A weight change is ``POST /api/v1/weight``.
- ``alertmanager``: the same alerts to an Alertmanager's ``/api/v2/alerts``;
  its routes and the actuator's webhook receiver do the rest. As Prometheus
  does, a firing alert is sent again every ``RESEND`` seconds with ``endsAt``
  four resends ahead, so Alertmanager never resolves it on its own while the
  real server is still down.

Posting happens on a thread of its own, so the event loop never blocks on
HTTP; events are sent in order, a failed post is logged and retried a few
times. The thread keeps one HTTP/1.1 keep-alive connection to the receiver
(``Poster``): a transition then costs one request on a warm socket, not a
TCP handshake, a fresh urllib opener and a connection teardown, which is the
larger part of the way from a judged failure to the actuator under a
virtual machine's dear system calls.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import queue
import select
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from lvsguard.exporter.collector import BACKEND_LABELS, Names, NoNames, backend_label_values
from lvsguard.labels import PASSIVE_SOURCE, SOURCE_LABEL
from lvsguard.logs import event
from lvsguard.model import RealServerKey, ServiceKey

log = logging.getLogger(__name__)

ALERTNAME = "LvsguardProbeFailed"
PASSIVE_ALERTNAME = "LvsguardPassiveVerdict"
"""The alert of a passive verdict (``exporter.passive.fusion``), labelled ``lvsguard_source=passive``."""
RETRIES = 3
RETRY_DELAY = 0.5
HTTP_TIMEOUT = 5.0
RESEND = 60.0  # seconds between two sends of a firing alert to Alertmanager
KEEP_WARM = 5.0
"""Seconds between two looks, while idle, at a kept-open connection (``HTTPPublisher(warm=True)``).

The actuator's waitress closes a connection silent for 15 s; a look every 5 s opens it
again within 5 s of that."""


@dataclass(frozen=True, slots=True)
class Transition:
    service: ServiceKey
    real_server: RealServerKey
    check: str
    healthy: bool
    message: str
    source: str = ""  # "": a check's transition; PASSIVE_SOURCE: a passive verdict (falling) or its release (rising)


@dataclass(frozen=True, slots=True)
class WeightChange:
    service: ServiceKey
    real_server: RealServerKey
    check: str
    weight: int
    message: str


_Item = tuple[
    str, dict[str, Any] | list[Any], str, float
]  # url, body, what it is about (for the log), perf_counter when queued


class Publisher(Protocol):
    """Takes events from the engine without blocking it."""

    def transition(self, change: Transition) -> None: ...

    def weight(self, change: WeightChange) -> None: ...

    def close(self) -> None: ...


def fingerprint(service: ServiceKey, real_server: RealServerKey, check: str, source: str = "") -> str:
    """Stable per real server and check (and source): the same across restarts and exporters.

    A passive verdict's fingerprint differs from any check's, also from a
    check a config names ``passive``: their holds are apart.
    """
    key = f"{service}|{real_server}|{check}" + (f"|{source}" if source else "")
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def alert(change: Transition, names: Names, now: float) -> dict[str, Any]:
    """The Alertmanager alert of a transition (webhook-v4 shape; also what /api/v2/alerts takes)."""
    labels = dict(zip(BACKEND_LABELS, backend_label_values(change.service, change.real_server, names)))
    labels = {k: v for k, v in labels.items() if v}
    labels.update(alertname=ALERTNAME, check=change.check, lvsguard_action="quarantine")
    summary = f"{change.check} check of {change.real_server} of {change.service}: {change.message}"
    if change.source == PASSIVE_SOURCE:
        labels.update(alertname=PASSIVE_ALERTNAME, **{SOURCE_LABEL: change.source})
        summary = f"passive verdict on {change.message}"
    return {
        "status": "resolved" if change.healthy else "firing",
        "labels": labels,
        "annotations": {"summary": summary[:500]},
        "startsAt": _rfc3339(now),
        "endsAt": _rfc3339(now) if change.healthy else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fingerprint(change.service, change.real_server, change.check, change.source),
    }


def webhook_payload(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """An Alertmanager version-4 webhook body around ``alerts``."""
    firing = any(a["status"] == "firing" for a in alerts)
    names = {a["labels"]["alertname"] for a in alerts}
    return {
        "version": "4",
        "groupKey": "lvsguard-probes",
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "lvsguard-probes",
        "groupLabels": {},
        "commonLabels": {"alertname": names.pop()} if len(names) == 1 else {},
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": alerts,
    }


class HTTPPublisher:
    """Posts events on a background thread; ``mode`` is ``actuator`` or ``alertmanager``."""

    def __init__(
        self,
        url: str,
        *,
        mode: str = "actuator",
        token: str = "",
        names: Names | None = None,
        name: str = "probe-publisher",
        warm: bool = False,
    ):
        self.url = url.rstrip("/")
        self.mode = mode
        self.token = token
        self.names: Names = names if names is not None else NoNames()
        self.sent = 0
        self.resend = RESEND
        self.warm = warm  # keep a connection to the receiver open while idle: an event then needs no handshake
        self._firing: dict[
            str, tuple[dict[str, Any], str]
        ] = {}  # fingerprint -> v2 alert, real server (alertmanager mode)
        self._firing_lock = threading.Lock()  # the engine's thread adds and removes, the sender's thread resends
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._poster = Poster()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def transition(self, change: Transition) -> None:
        one = alert(change, self.names, time.time())
        if self.mode == "alertmanager":
            v2 = {k: one[k] for k in ("labels", "annotations", "startsAt", "endsAt", "generatorURL")}
            with self._firing_lock:
                if not change.healthy:
                    v2["endsAt"] = _rfc3339(time.time() + 4 * self.resend)
                    self._firing[one["fingerprint"]] = (dict(v2), str(change.real_server))
                else:
                    self._firing.pop(one["fingerprint"], None)
            self._queue.put((f"{self.url}/api/v2/alerts", [v2], str(change.real_server), time.perf_counter()))
        else:
            self._queue.put(
                (
                    f"{self.url}/webhook/alertmanager",
                    webhook_payload([one]),
                    str(change.real_server),
                    time.perf_counter(),
                )
            )

    def weight(self, change: WeightChange) -> None:
        if self.mode == "alertmanager":
            event(
                log,
                logging.WARNING,
                "probe_weight_not_published",
                real_server=str(change.real_server),
                service=str(change.service),
                weight=change.weight,
                reason="weights need the actuator (probes.publish.mode: actuator)",
            )
            return
        body = {"service": str(change.service), "real_server": str(change.real_server), "weight": change.weight}
        self._queue.put((f"{self.url}/api/v1/weight", body, str(change.real_server), time.perf_counter()))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(HTTP_TIMEOUT * RETRIES)

    def _next(self) -> _Item | None:
        """The next event; on a quiet ``resend`` interval, the firing alerts again (alertmanager mode).

        With ``warm``, it also looks at the connection every ``KEEP_WARM`` seconds
        while idle and opens it again when the receiver closed it.
        """
        resend_at = time.monotonic() + self.resend
        while True:
            waits = [KEEP_WARM] if self.warm else []
            if self._firing:
                waits.append(max(0.0, resend_at - time.monotonic()))
            try:
                return self._queue.get(timeout=min(waits) if waits else None)
            except queue.Empty:
                pass
            if self.warm:
                self._poster.keep_open(self.url)
            if not self._firing or time.monotonic() < resend_at:
                continue
            resend_at = time.monotonic() + self.resend
            with self._firing_lock:
                ends = _rfc3339(time.time() + 4 * self.resend)
                alerts = [{**v2, "endsAt": ends} for v2, _ in self._firing.values()]
            if alerts:
                return (f"{self.url}/api/v2/alerts", alerts, f"{len(alerts)} firing", time.perf_counter())

    def _run(self) -> None:
        try:
            self._send_all()
        finally:
            self._poster.close()

    def _send_all(self) -> None:
        while (item := self._next()) is not None:
            url, body, about, queued = item
            for attempt in range(1, RETRIES + 1):
                posting = time.perf_counter()
                try:
                    status, reply = self._post(url, body)
                except (OSError, ValueError) as exc:
                    status, reply = 0, str(getattr(exc, "reason", exc))
                done = time.perf_counter()
                if 200 <= status < 300 or 400 <= status < 500 and status != 429:
                    self.sent += 1
                    level = logging.INFO if status < 300 else logging.WARNING
                    event(
                        log,
                        level,
                        "probe_published",
                        url=url,
                        real_server=about,
                        status=status,
                        reply=reply[:300],
                        queued_ms=round(1000 * (posting - queued), 2),
                        post_ms=round(1000 * (done - posting), 2),
                    )
                    break
                event(
                    log,
                    logging.WARNING,
                    "probe_publish_failed",
                    url=url,
                    real_server=about,
                    status=status,
                    reply=reply[:300],
                    attempt=attempt,
                )
                time.sleep(RETRY_DELAY * attempt)

    def _post(self, url: str, body: object) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return self._poster.post(url, json.dumps(body).encode(), headers)


class Poster:
    """POSTs over one kept-alive connection per receiver (never via a proxy: the actuator is local).

    A connection the receiver closed while idle (its keep-alive timeout) is
    seen before the request (the socket reads as ready: end of file) and
    opened again; one that breaks during the request is retried once at once
    on a fresh connection, since the request may simply have met that close.
    """

    def __init__(self, timeout: float = HTTP_TIMEOUT):
        self.timeout = timeout
        self.opened = 0  # connections opened (tests: one per receiver while it keeps them alive)
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """(status, reply text); raises OSError (or http.client.HTTPException, an OSError here) when it cannot."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"cannot post to {url!r}: not an http(s) URL")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        for fresh in (False, True):
            conn = self._connection(parts.scheme, parts.netloc, fresh)
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                reply = response.read().decode(errors="replace")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._conns.pop((parts.scheme, parts.netloc), None)
                if fresh or not isinstance(
                    exc, (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)
                ):
                    raise OSError(f"{type(exc).__name__}: {exc}") from exc
                continue
            if response.will_close:
                conn.close()
                self._conns.pop((parts.scheme, parts.netloc), None)
            return response.status, reply
        raise AssertionError("unreachable")  # the fresh attempt returns or raises

    def keep_open(self, url: str) -> None:
        """Have a connection to ``url``'s receiver open, before any post or again after the receiver closed it.

        A failure is left to the next post, which tries again and reports it.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return
        conn = self._connection(parts.scheme, parts.netloc, False)
        if conn.sock is None:
            try:
                conn.connect()
            except OSError:
                conn.close()

    def _connection(self, scheme: str, netloc: str, fresh: bool) -> http.client.HTTPConnection:
        conn = self._conns.get((scheme, netloc))
        if conn is not None and not fresh and _closed_by_peer(conn):
            conn.close()
            conn = None
        if conn is None or fresh:
            if scheme == "https":
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            self.opened += 1
            self._conns[(scheme, netloc)] = conn
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle kept-alive socket that reads as ready has an end of file (or a reset) waiting: the peer closed it."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
