"""``POST /webhook/alertmanager``: Alertmanager's webhook payload, version 4.

The payload is validated strictly (every field Alertmanager 0.25+ sends, with
its type) before anything happens; an invalid one gets 400 with the field path
(``{"error": "...", "path": "alerts[3].labels"}``). Fields Alertmanager may add
in a later version are ignored, so an upgrade does not break the receiver.

Each alert is handled on its own, keyed by its fingerprint: ``firing`` applies
the action the rules (or the ``lvsguard_action`` label) give; ``resolved``
releases what that fingerprint holds, whatever the rules say now. An alert
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
from typing import Any

from flask import Blueprint, current_app, g, request

from actuator.actions import Actions, Actor, Outcome, Session
from actuator.auth import require_token
from actuator.ledger import locked_ledger
from actuator.settings import ACTIONS, ActuatorSettings
from actuator.targets import TargetError, target_from_labels
from lvsguard.errors import IPVSUnavailable, KernelError, NotPermitted, PayloadError
from lvsguard.logs import event

bp = Blueprint("webhook", __name__)
log = logging.getLogger(__name__)

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
FINGERPRINT = re.compile(r"[0-9A-Za-z_.:-]{1,128}")
STATUSES = ("firing", "resolved")
PRELOAD_TABLE = 8
"""With more alerts than this in one payload, read the whole table once instead of per service."""


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


def _string(
    obj: Mapping[str, Any],
    key: str,
    path: str,
    *,
    choices: tuple[str, ...] = (),
    pattern: re.Pattern[str] | None = None,
) -> str:
    where = f"{path}.{key}" if path else key
    if key not in obj:
        raise PayloadError("required field is missing", where)
    value = obj[key]
    if not isinstance(value, str):
        raise PayloadError(f"must be a string, got {_json_type(value)}", where)
    if choices and value not in choices:
        raise PayloadError(f"must be one of {', '.join(choices)}, got {value!r}", where)
    if pattern is not None and not pattern.fullmatch(value):
        raise PayloadError(f"{value[:80]!r} is not valid here", where)
    return value


def _labels(obj: Mapping[str, Any], key: str, path: str, *, names: bool) -> dict[str, str]:
    where = f"{path}.{key}" if path else key
    if key not in obj:
        raise PayloadError("required field is missing", where)
    value = obj[key]
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


def handle_alert(session: Session, settings: ActuatorSettings, alert: Alert) -> dict[str, Any]:
    """Apply or undo one alert; the reply entry says what happened to it."""
    actor = Actor("alertmanager", alert.fingerprint, alert.alertname)
    base = {"fingerprint": alert.fingerprint, "alertname": alert.alertname, "status": alert.status}
    if alert.status == "resolved":
        return {**base, **_resolve(session, actor)}
    action, rule = settings.action_for(alert.labels)
    label = alert.labels.get("lvsguard_action", "")
    if rule is None and label and label not in ACTIONS:
        return {
            **base,
            **_ignored(session, actor, "none", f"label lvsguard_action={label!r} is not one of {', '.join(ACTIONS)}"),
        }
    if action == "none":
        return {**base, **_ignored(session, actor, "none", "no rule matches and no lvsguard_action label", audit=False)}
    if action == "failover":
        return {
            **base,
            **_result(session.failover(actor, reason=alert.annotations.get("summary", "") or alert.alertname)),
        }
    try:
        target = target_from_labels(alert.labels, settings.names)
    except TargetError as exc:
        return {**base, **_ignored(session, actor, action, str(exc), result="invalid_target")}
    reason = alert.annotations.get("summary", "") or alert.alertname
    if action == "restore":
        outcome = session.release(target, actor, scope="alerts")
    else:
        timeout = rule.drain_timeout if rule is not None else None
        delete = rule.drain_delete if rule is not None else False
        outcome = session.hold(target, actor, action=action, reason=reason, drain_timeout=timeout, drain_delete=delete)
    return {**base, **_result(outcome)}


def _handle_one(session: Session, settings: ActuatorSettings, alert: Alert) -> dict[str, Any]:
    """One alert; a kernel error about its real server is its own result, not the batch's."""
    try:
        return handle_alert(session, settings, alert)
    except (IPVSUnavailable, NotPermitted):
        raise  # the whole kernel is out of reach: 503, Alertmanager retries
    except KernelError as exc:
        base = {"fingerprint": alert.fingerprint, "alertname": alert.alertname, "status": alert.status}
        actor = Actor("alertmanager", alert.fingerprint, alert.alertname)
        return {**base, **_ignored(session, actor, settings.action_for(alert.labels)[0], str(exc), result="error")}


def _resolve(session: Session, actor: Actor) -> dict[str, Any]:
    """Release every hold of this fingerprint (whatever the rules say now)."""
    holds = session.ledger.holds_of("alert", actor.name)
    outcomes = [session.release(h.target, actor) for h in holds]
    if any(f.kind == "alert" and f.holder == actor.name for f in session.ledger.active_failovers()):
        outcomes.append(session.end_failover(actor))
    if not outcomes:
        return {
            "action": "restore",
            "result": "noop",
            "message": "this alert holds nothing",
            "reason": "",
            "service": "",
            "real_server": "",
            "weight": None,
            "job_id": None,
            "holders": [],
        }
    return (
        _result(outcomes[0])
        if len(outcomes) == 1
        else {**_result(outcomes[0]), "others": [_result(o) for o in outcomes[1:]]}
    )


def _ignored(
    session: Session, actor: Actor, action: str, message: str, *, result: str = "ignored", audit: bool = True
) -> dict[str, Any]:
    if audit:
        with session.ledger.transaction():
            session.ledger.audit(
                source="alertmanager",
                actor=f"{actor.alertname}/{actor.name}",
                action=action,
                result=result,
                message=message,
            )
    session.a.metrics.action(action, result, "alertmanager")
    return {
        "action": action,
        "result": result,
        "message": message,
        "reason": "",
        "service": "",
        "real_server": "",
        "weight": None,
        "job_id": None,
        "holders": [],
    }


def _result(outcome: Outcome) -> dict[str, Any]:
    return outcome.to_json()


@bp.post("/webhook/alertmanager")
@require_token
def alertmanager() -> tuple[dict[str, Any], int]:
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"the body is not JSON: {exc}", "") from None
    note = parse_payload(body)
    if note.truncated_alerts:
        event(
            log,
            logging.WARNING,
            "webhook_truncated",
            receiver=note.receiver,
            truncated=note.truncated_alerts,
            hint="raise or remove max_alerts in the Alertmanager webhook config",
        )
    actions: Actions = current_app.extensions["lvsguard"].actions
    settings: ActuatorSettings = current_app.config["LVSGUARD_SETTINGS"]
    with actions.lock:
        ledger = locked_ledger()
        try:
            table = actions.kernel.read() if len(note.alerts) > PRELOAD_TABLE else None
            with actions.session(ledger, table=table, batch=True, cached=True) as session:
                results = [_handle_one(session, settings, a) for a in note.alerts]
        finally:
            if ledger.conn.in_transaction:  # a commit that failed (disk full, locked): the next request starts clean
                ledger.rollback()
    for result in results:  # a kernel write of the batch failed: say so for the alerts that asked for it
        for target, message in session.failed.items():
            if result["result"] == "applied" and (result["service"], result["real_server"]) == (
                str(target.service),
                str(target.real_server),
            ):
                result.update(result="error", message=f"{result['message']}: not applied, {message}")
    g.webhook_alerts = len(note.alerts)
    return {"status": "ok", "receiver": note.receiver, "groupKey": note.group_key, "results": results}, 200
