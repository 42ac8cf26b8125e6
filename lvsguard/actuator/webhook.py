"""``POST /webhook/alertmanager``: Alertmanager's webhook payload, version 4.

The payload is validated strictly (every field Alertmanager 0.25+ sends, with
its type) before anything happens; an invalid one gets 400 with the field path
(``{"error": "...", "path": "alerts[3].labels"}``). Fields Alertmanager may add
in a later version are ignored, so an upgrade does not break the receiver.

Each alert is handled on its own, keyed by its fingerprint: ``firing`` applies
the action the rules (or the ``lvsguard_action`` label) give; ``resolved``
releases what that fingerprint holds, whatever the rules say now. An alert
labelled ``lvsguard_source=passive`` (the exporter's passive detector) is
recorded with source ``passive`` in the ledger, the audit trail and
``lvsguard_actions_total``; it is held and released as any alert. An alert
whose target is missing or unknown is recorded in the audit trail and answered
in the reply, never an error for the batch. The reply is 200 with one result
per alert; 503 only when a retry can help (the kernel table or the ledger
cannot be reached), so that Alertmanager retries.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from flask import Blueprint, g, request

from lvsguard.actuator import limits
from lvsguard.actuator.actions import Actor, Batch, Outcome, Result, Source
from lvsguard.actuator.auth import require_token
from lvsguard.actuator.current import current_actions, current_settings
from lvsguard.actuator.ledger import locked_ledger
from lvsguard.actuator.settings import ACTIONS, ActuatorSettings
from lvsguard.actuator.targets import TargetError, target_from_labels
from lvsguard.errors import IPVSUnavailable, KernelError, NotPermitted, PayloadError
from lvsguard.labels import PASSIVE_SOURCE, SOURCE_LABEL
from lvsguard.logs import event

bp = Blueprint("webhook", __name__)
log = logging.getLogger(__name__)

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
FINGERPRINT = re.compile(r"[0-9A-Za-z_.:-]{1,128}")
STATUSES = ("firing", "resolved")
PRELOAD_TABLE = 8
"""With more alerts than this in one payload, read the whole table once instead of per service."""
NOTHING_HELD = Outcome("restore", None, Result.NOOP, "this alert holds nothing")
"""The reply to a resolved alert that held nothing (not audited, not counted)."""


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert of a notification."""

    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    ends_at: str
    generator_url: str
    fingerprint: str

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True, slots=True)
class Notification:
    """A webhook notification (one Alertmanager group)."""

    receiver: str
    status: str
    group_key: str
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    common_annotations: Mapping[str, str]
    external_url: str
    truncated_alerts: int
    alerts: tuple[Alert, ...]


def _required(obj: Mapping[str, Any], key: str, path: str) -> tuple[Any, str]:
    """A required field's value, and where it is for an error (``alerts[0].labels``)."""
    where = f"{path}.{key}" if path else key
    if key not in obj:
        raise PayloadError("required field is missing", where)
    return obj[key], where


def _string(
    obj: Mapping[str, Any],
    key: str,
    path: str,
    *,
    choices: tuple[str, ...] = (),
    pattern: re.Pattern[str] | None = None,
) -> str:
    value, where = _required(obj, key, path)
    if not isinstance(value, str):
        raise PayloadError(f"must be a string, got {_json_type(value)}", where)
    if choices and value not in choices:
        raise PayloadError(f"must be one of {', '.join(choices)}, got {value!r}", where)
    if pattern is not None and not pattern.fullmatch(value):
        raise PayloadError(f"{value[:80]!r} is not valid here", where)
    return value


def _labels(obj: Mapping[str, Any], key: str, path: str, *, names: bool) -> dict[str, str]:
    value, where = _required(obj, key, path)
    if not isinstance(value, dict):
        raise PayloadError(f"must be an object of strings, got {_json_type(value)}", where)
    for name, text in value.items():
        if names and not LABEL_NAME.fullmatch(name):
            raise PayloadError(f"{name[:80]!r} is not a label name", where)
        if not isinstance(text, str):
            raise PayloadError(f"value of {name[:80]!r} must be a string, got {_json_type(text)}", where)
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_alert(obj: Any, path: str) -> Alert:
    if not isinstance(obj, dict):
        raise PayloadError(f"must be an object, got {_json_type(obj)}", path)
    return Alert(
        status=_string(obj, "status", path, choices=STATUSES),
        labels=_labels(obj, "labels", path, names=True),
        annotations=_labels(obj, "annotations", path, names=False),
        starts_at=_string(obj, "startsAt", path, pattern=RFC3339),
        ends_at=_string(obj, "endsAt", path, pattern=RFC3339),
        generator_url=_string(obj, "generatorURL", path),
        fingerprint=_string(obj, "fingerprint", path, pattern=FINGERPRINT),
    )


def parse_payload(obj: Any) -> Notification:
    """Validate a decoded JSON body; PayloadError names the first bad field."""
    if not isinstance(obj, dict):
        raise PayloadError(f"the body must be a JSON object, got {_json_type(obj)}", "")
    version = obj.get("version")
    if version != "4":
        raise PayloadError(f'only version "4" is understood, got {json.dumps(version)[:40]}', "version")
    alerts = obj.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError(
            "required field is missing" if alerts is None else f"must be an array, got {_json_type(alerts)}", "alerts"
        )
    truncated = obj.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise PayloadError(f"must be an integer >= 0, got {json.dumps(truncated)[:40]}", "truncatedAlerts")
    return Notification(
        receiver=_string(obj, "receiver", ""),
        status=_string(obj, "status", "", choices=STATUSES),
        group_key=_string(obj, "groupKey", ""),
        group_labels=_labels(obj, "groupLabels", "", names=True),
        common_labels=_labels(obj, "commonLabels", "", names=True),
        common_annotations=_labels(obj, "commonAnnotations", "", names=False),
        external_url=_string(obj, "externalURL", ""),
        truncated_alerts=truncated,
        alerts=tuple(parse_alert(a, f"alerts[{i}]") for i, a in enumerate(alerts)),
    )


def source_of(alert: Alert) -> Source:
    """``passive`` for the exporter's passive verdicts (label ``lvsguard_source=passive``), else ``alertmanager``."""
    return Source.PASSIVE if alert.labels.get(SOURCE_LABEL) == PASSIVE_SOURCE else Source.ALERTMANAGER


def handle_alert(batch: Batch, settings: ActuatorSettings, alert: Alert) -> list[Outcome]:
    """Apply or undo one alert; the first outcome is the reply's, the rest its ``others``."""
    actor = Actor(source_of(alert), alert.fingerprint, alert.alertname)
    if alert.status == "resolved":
        return batch.resolve(actor) or [NOTHING_HELD]
    source = alert.labels.get(SOURCE_LABEL, "")
    if source and source != PASSIVE_SOURCE:
        message = f"label {SOURCE_LABEL}={source!r} is not {PASSIVE_SOURCE!r} (leave it out for an alert rule's alert)"
        return [batch.ignore(actor, "none", message, Result.IGNORED)]
    action, rule = settings.action_for(alert.labels)
    label = alert.labels.get("lvsguard_action", "")
    if rule is None and label and label not in ACTIONS:
        message = f"label lvsguard_action={label!r} is not one of {', '.join(ACTIONS)}"
        return [batch.ignore(actor, "none", message, Result.IGNORED)]
    if action == "none":
        return [
            batch.ignore(actor, "none", "no rule matches and no lvsguard_action label", Result.IGNORED, audit=False)
        ]
    reason = alert.annotations.get("summary", "") or alert.alertname
    if action == "failover":
        return [batch.failover(actor, reason=reason)]
    try:
        target = target_from_labels(alert.labels, settings.names)
    except TargetError as exc:
        return [batch.ignore(actor, action, str(exc), Result.INVALID_TARGET)]
    if action == "restore":
        return [batch.release(target, actor, scope="alerts")]
    timeout = rule.drain_timeout if rule is not None else None
    delete = rule.drain_delete if rule is not None else False
    return [batch.hold(target, actor, action=action, reason=reason, drain_timeout=timeout, drain_delete=delete)]


def _handle_one(settings: ActuatorSettings, batch: Batch, alert: Alert) -> list[Outcome]:
    """One alert; a kernel error about its real server is its own result, not the batch's."""
    try:
        return handle_alert(batch, settings, alert)
    except (IPVSUnavailable, NotPermitted):
        raise  # the whole kernel is out of reach: 503, Alertmanager retries
    except KernelError as exc:
        actor = Actor(source_of(alert), alert.fingerprint, alert.alertname)
        return [batch.ignore(actor, settings.action_for(alert.labels)[0], str(exc), Result.ERROR)]


def reply_entry(alert: Alert, outcomes: list[Outcome]) -> dict[str, Any]:
    """One alert's entry of the reply: what happened to it, and to the rest of what it held (``others``)."""
    entry: dict[str, Any] = {"fingerprint": alert.fingerprint, "alertname": alert.alertname, "status": alert.status}
    entry.update(outcomes[0].to_json())
    if len(outcomes) > 1:
        entry["others"] = [o.to_json() for o in outcomes[1:]]
    return entry


@bp.post("/webhook/alertmanager")
@require_token
def alertmanager() -> tuple[dict[str, Any], int]:
    raw = request.get_data(cache=False)
    limits.check_webhook_body(raw)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"the body is not JSON: {exc}", "") from None
    limits.check_alert_count(body)
    note = parse_payload(body)
    if note.truncated_alerts:
        event(
            log,
            logging.WARNING,
            "webhook_truncated",
            receiver=note.receiver,
            truncated=note.truncated_alerts,
            hint=f"raise max_alerts in the Alertmanager webhook config (at most {limits.MAX_ALERTS})",
        )
    settings = current_settings()
    outcomes = current_actions().alerts(
        locked_ledger, note.alerts, partial(_handle_one, settings), preload=len(note.alerts) > PRELOAD_TABLE
    )
    results = [reply_entry(alert, done) for alert, done in zip(note.alerts, outcomes, strict=True)]
    g.webhook_alerts = len(note.alerts)
    return {"status": "ok", "receiver": note.receiver, "groupKey": note.group_key, "results": results}, 200
