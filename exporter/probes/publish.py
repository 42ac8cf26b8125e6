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
times.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from exporter.collector import BACKEND_LABELS, Names, NoNames, backend_label_values
from lvsguard.logs import event
from lvsguard.model import RealServerKey, ServiceKey

log = logging.getLogger("exporter.probes")

ALERTNAME = "LvsguardProbeFailed"
RETRIES = 3
RETRY_DELAY = 0.5
HTTP_TIMEOUT = 5.0
RESEND = 60.0  # seconds between two sends of a firing alert to Alertmanager
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the actuator is local: never via a proxy


@dataclass(frozen=True, slots=True)
class Transition:
    service: ServiceKey
    real_server: RealServerKey
    check: str
    healthy: bool
    message: str


@dataclass(frozen=True, slots=True)
class WeightChange:
    service: ServiceKey
    real_server: RealServerKey
    check: str
    weight: int
    message: str


class Publisher(Protocol):
    """Takes events from the engine without blocking it."""

    def transition(self, change: Transition) -> None: ...

    def weight(self, change: WeightChange) -> None: ...

    def close(self) -> None: ...


def fingerprint(service: ServiceKey, real_server: RealServerKey, check: str) -> str:
    """Stable per real server and check: the same across restarts and exporters."""
    return hashlib.sha256(f"{service}|{real_server}|{check}".encode()).hexdigest()[:16]


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def alert(change: Transition, names: Names, now: float) -> dict[str, Any]:
    """The Alertmanager alert of a transition (webhook-v4 shape; also what /api/v2/alerts takes)."""
    labels = dict(zip(BACKEND_LABELS, backend_label_values(change.service, change.real_server, names)))
    labels = {k: v for k, v in labels.items() if v}
    labels.update(alertname=ALERTNAME, check=change.check, lvsguard_action="quarantine")
    return {
        "status": "resolved" if change.healthy else "firing",
        "labels": labels,
        "annotations": {"summary": f"{change.check} check of {change.real_server} of {change.service}: {change.message}"[:500]},
        "startsAt": _rfc3339(now),
        "endsAt": _rfc3339(now) if change.healthy else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fingerprint(change.service, change.real_server, change.check),
    }


def webhook_payload(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """An Alertmanager version-4 webhook body around ``alerts``."""
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": "lvsguard-probes",
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "lvsguard-probes",
        "groupLabels": {},
        "commonLabels": {"alertname": ALERTNAME},
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": alerts,
    }


class HTTPPublisher:
    """Posts events on a background thread; ``mode`` is ``actuator`` or ``alertmanager``."""

    def __init__(self, url: str, *, mode: str = "actuator", token: str = "", names: Names | None = None):
        self.url = url.rstrip("/")
        self.mode = mode
        self.token = token
        self.names: Names = names if names is not None else NoNames()
        self.sent = 0
        self.resend = RESEND
        self._firing: dict[str, tuple[dict[str, Any], str]] = {}  # fingerprint -> v2 alert, real server (alertmanager mode)
        self._firing_lock = threading.Lock()  # the engine's thread adds and removes, the sender's thread resends
        self._queue: queue.Queue[tuple[str, dict[str, Any] | list[Any], str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="probe-publisher", daemon=True)
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
            self._queue.put((f"{self.url}/api/v2/alerts", [v2], str(change.real_server)))
        else:
            self._queue.put((f"{self.url}/webhook/alertmanager", webhook_payload([one]), str(change.real_server)))

    def weight(self, change: WeightChange) -> None:
        if self.mode == "alertmanager":
            event(log, logging.WARNING, "probe_weight_not_published", real_server=str(change.real_server), service=str(change.service),
                  weight=change.weight, reason="weights need the actuator (probes.publish.mode: actuator)")  # fmt: skip
            return
        body = {"service": str(change.service), "real_server": str(change.real_server), "weight": change.weight}
        self._queue.put((f"{self.url}/api/v1/weight", body, str(change.real_server)))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(HTTP_TIMEOUT * RETRIES)

    def _next(self) -> tuple[str, dict[str, Any] | list[Any], str] | None:
        """The next event; on a quiet ``resend`` interval, the firing alerts again (alertmanager mode)."""
        while True:
            try:
                return self._queue.get(timeout=self.resend if self._firing else None)
            except queue.Empty:
                with self._firing_lock:
                    ends = _rfc3339(time.time() + 4 * self.resend)
                    alerts = [{**v2, "endsAt": ends} for v2, _ in self._firing.values()]
                if alerts:
                    return (f"{self.url}/api/v2/alerts", alerts, f"{len(alerts)} firing")

    def _run(self) -> None:
        while (item := self._next()) is not None:
            url, body, about = item
            for attempt in range(1, RETRIES + 1):
                try:
                    status, reply = self._post(url, body)
                except (OSError, ValueError) as exc:
                    status, reply = 0, str(getattr(exc, "reason", exc))
                if 200 <= status < 300 or 400 <= status < 500 and status != 429:
                    self.sent += 1
                    level = logging.INFO if status < 300 else logging.WARNING
                    event(log, level, "probe_published", url=url, real_server=about, status=status, reply=reply[:300])
                    break
                event(log, logging.WARNING, "probe_publish_failed", url=url, real_server=about, status=status, reply=reply[:300], attempt=attempt)
                time.sleep(RETRY_DELAY * attempt)

    def _post(self, url: str, body: object) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
        try:
            with _OPENER.open(request, timeout=HTTP_TIMEOUT) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
