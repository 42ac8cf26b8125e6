"""The OpenAPI 3.0 document of the actuator's API and webhook, served at ``/api/v1/openapi.json``.

Written as data next to the code it describes; the unit tests validate every
response the API gives against these schemas (``additionalProperties: false``
on our own objects, so a field added to a reply and not here fails a test).
"""

from __future__ import annotations

import copy
from typing import Any

from lvsguard import __version__
from lvsguard.actuator.policy import REASONS
from lvsguard.actuator.states import RESULTS, Confirmed, Result

S = dict[str, Any]


def _obj(required: list[str], props: S, *, extra: bool = False) -> S:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": extra}


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


STR: S = {"type": "string"}
INT: S = {"type": "integer"}
NUM: S = {"type": "number"}
BOOL: S = {"type": "boolean"}
TIME: S = {"type": "string", "format": "date-time"}
TIME_OR_NULL: S = {"type": "string", "format": "date-time", "nullable": True}
NUM_OR_NULL: S = {"type": "number", "nullable": True}
BOOL_OR_NULL: S = {"type": "boolean", "nullable": True}
STRMAP: S = {"type": "object", "additionalProperties": {"type": "string"}}

OUTCOME_REQUIRED = ["action", "result", "message", "reason", "service", "real_server", "weight", "job_id", "holders"]


def _outcome_props(results: list[str]) -> S:
    """The fields of an action's outcome, in the API's replies and in the webhook's results."""
    return {
        "action": STR,
        "result": {"type": "string", "enum": results},
        "message": STR,
        "reason": STR,
        "service": STR,
        "real_server": STR,
        "weight": {"type": "integer", "nullable": True},
        "job_id": {"type": "integer", "nullable": True},
        "holders": {"type": "array", "items": STR},
        "retry_after": INT,
        "directors": {
            "type": "object",
            "additionalProperties": {"type": "string", "enum": [c.value for c in Confirmed]},
        },
    }


_TABLE_ENTRY: S = _obj(["service", "real_server"], {"service": STR, "real_server": STR})

SCHEMAS: S = {
    "Error": _obj(["error"], {"error": STR, "path": STR}, extra=True),
    "TableDiff": _obj(
        ["manage", "pending", "summary", "plan"], {"manage": BOOL, "pending": BOOL, "summary": STR, "plan": STR}
    ),
    "TableApply": _obj(
        ["result", "message", "summary", "plan", "applied", "failures", "held"],
        {
            "result": {"type": "string", "enum": ["applied", "noop", "dry_run", "error"]},
            "message": STR,
            "summary": STR,
            "plan": STR,
            "applied": INT,
            "failures": {
                "type": "array",
                "items": _obj(
                    ["service", "real_server", "message"], {"service": STR, "real_server": STR, "message": STR}
                ),
            },
            "held": {"type": "array", "items": _TABLE_ENTRY},
        },
    ),
    "Outcome": _obj(OUTCOME_REQUIRED, {**_outcome_props(list(RESULTS)), "error": STR}),
    "Stats": _obj(
        ["connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes"],
        {
            k: INT
            for k in (
                "connections",
                "incoming_packets",
                "outgoing_packets",
                "incoming_bytes",
                "outgoing_bytes",
                "cps",
                "incoming_pps",
                "outgoing_pps",
                "incoming_bps",
                "outgoing_bps",
            )
        },
    ),
    "Hold": _obj(
        [
            "id",
            "service",
            "real_server",
            "kind",
            "holder",
            "alertname",
            "source",
            "action",
            "reason",
            "state",
            "created_at",
            "released_at",
            "released_by",
        ],
        {
            "id": INT,
            "service": STR,
            "real_server": STR,
            "kind": {"type": "string", "enum": ["alert", "manual"]},
            "holder": STR,
            "alertname": STR,
            "source": STR,
            "action": {"type": "string", "enum": ["quarantine", "drain"]},
            "reason": STR,
            "state": {"type": "string", "enum": ["active", "released", "removed"]},
            "created_at": TIME,
            "released_at": TIME_OR_NULL,
            "released_by": STR,
        },
    ),
    "Job": _obj(
        [
            "id",
            "kind",
            "service",
            "real_server",
            "state",
            "progress",
            "message",
            "params",
            "actor",
            "created_at",
            "updated_at",
            "finished_at",
        ],
        {
            "id": INT,
            "kind": {"type": "string", "enum": ["drain", "slow_start"]},
            "service": STR,
            "real_server": STR,
            "state": {"type": "string", "enum": ["running", "done", "failed", "timeout", "cancelled"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "message": STR,
            "params": {"type": "object"},
            "actor": STR,
            "created_at": TIME,
            "updated_at": TIME,
            "finished_at": TIME_OR_NULL,
        },
    ),
    "AuditEvent": _obj(
        ["id", "at", "source", "actor", "action", "service", "real_server", "result", "reason", "message", "details"],
        {
            "id": INT,
            "at": TIME,
            "source": STR,
            "actor": STR,
            "action": STR,
            "service": STR,
            "real_server": STR,
            "result": STR,
            "reason": STR,
            "message": STR,
            "details": {"type": "object"},
        },
    ),
    "RealServer": _obj(
        [
            "real_server",
            "name",
            "weight",
            "forward",
            "active_connections",
            "inactive_connections",
            "persistent_connections",
            "stats",
            "state",
            "original_weight",
            "drift",
            "holds",
            "probe",
        ],
        {
            "real_server": STR,
            "name": STR,
            "weight": INT,
            "forward": {"type": "string", "enum": ["masq", "local", "tunnel", "route", "bypass"]},
            "upper_threshold": INT,
            "lower_threshold": INT,
            "active_connections": INT,
            "inactive_connections": INT,
            "persistent_connections": INT,
            "stats": _ref("Stats"),
            "state": {"type": "string", "enum": ["in", "out", "restoring", "drift"]},
            "original_weight": {"type": "integer", "nullable": True},
            "drift": STR,
            "holds": {"type": "array", "items": _ref("Hold")},
            "probe": _ref("Probe"),
        },
    ),
    "Probe": _obj(
        ["state", "latency_seconds", "last_change", "checks"],
        {
            "state": {"type": "string", "enum": ["healthy", "unhealthy", "unchecked", "unknown"]},
            "latency_seconds": NUM_OR_NULL,
            "last_change": TIME_OR_NULL,
            "checks": {
                "type": "array",
                "items": _obj(
                    ["check", "healthy", "success", "latency_seconds", "last_change"],
                    {
                        "check": STR,
                        "healthy": BOOL_OR_NULL,
                        "success": BOOL_OR_NULL,
                        "latency_seconds": NUM_OR_NULL,
                        "last_change": TIME_OR_NULL,
                    },
                ),
            },
        },
    ),
    "ProbeSource": _obj(
        ["state", "source", "error", "read_at"],
        {
            "state": {"type": "string", "enum": ["ok", "off", "unreachable"]},
            "source": STR,
            "error": STR,
            "read_at": TIME_OR_NULL,
        },
    ),
    "Service": _obj(
        ["service", "name", "scheduler", "persistent", "stats", "healthy", "min_healthy", "real_servers"],
        {
            "service": STR,
            "name": STR,
            "scheduler": STR,
            "persistent": BOOL,
            "timeout": INT,
            "stats": _ref("Stats"),
            "healthy": INT,
            "min_healthy": INT,
            "real_servers": {"type": "array", "items": _ref("RealServer")},
        },
    ),
    "Services": _obj(
        ["source", "dry_run", "probes", "services"],
        {
            "source": STR,
            "dry_run": BOOL,
            "probes": _ref("ProbeSource"),
            "services": {"type": "array", "items": _ref("Service")},
        },
    ),
    "Jobs": _obj(["jobs"], {"jobs": {"type": "array", "items": _ref("Job")}}),
    "Ledger": _obj(
        ["holds", "backends"],
        {
            "holds": {"type": "array", "items": _ref("Hold")},
            "backends": {
                "type": "array",
                "items": _obj(
                    [
                        "service",
                        "real_server",
                        "state",
                        "original_weight",
                        "expected_weight",
                        "write_pending",
                        "since",
                        "drift",
                        "job_id",
                    ],
                    {
                        "service": STR,
                        "real_server": STR,
                        "state": {"type": "string", "enum": ["out", "restoring"]},
                        "original_weight": INT,
                        "expected_weight": INT,
                        "write_pending": BOOL,
                        "since": TIME,
                        "drift": STR,
                        "job_id": {"type": "integer", "nullable": True},
                    },
                ),
            },
        },
    ),
    "Audit": _obj(["events"], {"events": {"type": "array", "items": _ref("AuditEvent")}}),
    "Cluster": _obj(
        ["store", "cluster", "director", "store_up", "directors", "holds", "table", "drains", "problems"],
        {
            "store": {"type": "string", "enum": ["local", "etcd"]},
            "cluster": STR,
            "director": STR,
            "store_up": {"type": "boolean", "nullable": True},
            "directors": {
                "type": "array",
                "items": _obj(
                    [
                        "director",
                        "role",
                        "vips",
                        "actuator_url",
                        "store_up",
                        "exporter",
                        "applied",
                        "pending",
                        "drift",
                        "draining",
                        "at",
                        "table_source",
                        "table_revision",
                        "table_pending",
                        "stale",
                        "table_matches",
                        "converged",
                    ],
                    {
                        "director": STR,
                        "role": STR,
                        "vips": {"type": "array", "items": STR},
                        "actuator_url": STR,
                        "store_up": BOOL,
                        "exporter": STR,
                        "applied": {"type": "array", "items": {"type": "array", "items": STR}},
                        "pending": INT,
                        "drift": INT,
                        "draining": {"type": "object", "additionalProperties": INT},
                        "at": TIME,
                        "table_source": {"type": "string", "enum": ["config", "cluster"]},
                        "table_revision": INT,
                        "table_pending": INT,
                        "stale": BOOL,
                        "table_matches": BOOL,
                        "converged": BOOL,
                    },
                ),
            },
            "holds": {
                "type": "array",
                "items": _obj(
                    ["service", "real_server", "holder", "action", "reason", "director", "at", "applied"],
                    {
                        "service": STR,
                        "real_server": STR,
                        "holder": STR,
                        "action": STR,
                        "reason": STR,
                        "director": STR,
                        "at": TIME,
                        "applied": {"type": "object", "additionalProperties": BOOL},
                    },
                ),
            },
            "table": {
                **_obj(
                    ["revision", "by", "at", "file", "services", "real_servers"],
                    {"revision": INT, "by": STR, "at": TIME, "file": STR, "services": INT, "real_servers": INT},
                ),
                "nullable": True,
            },
            "drains": {
                "type": "array",
                "items": _obj(
                    [
                        "job",
                        "service",
                        "real_server",
                        "holder",
                        "state",
                        "owner",
                        "owners",
                        "deadline",
                        "ended_at",
                        "delete",
                        "message",
                        "active",
                    ],
                    {
                        "job": STR,
                        "service": STR,
                        "real_server": STR,
                        "holder": STR,
                        "state": {"type": "string", "enum": ["running", "done", "timeout", "failed", "cancelled"]},
                        "owner": {"type": "string", "nullable": True},
                        "owners": {"type": "array", "items": STR},
                        "deadline": TIME,
                        "ended_at": TIME_OR_NULL,
                        "delete": BOOL,
                        "message": STR,
                        "active": {"type": "object", "additionalProperties": {"type": "integer", "nullable": True}},
                    },
                ),
            },
            "problems": {"type": "array", "items": STR},
        },
    ),
    "Director": _obj(
        ["role", "dry_run", "failover", "sync_daemons"],
        {
            "role": {"type": "string", "enum": ["master", "backup", "fault", "stop", "unknown"]},
            "dry_run": BOOL,
            "failover": _obj(
                ["configured", "track_file", "requested", "holders"],
                {
                    "configured": BOOL,
                    "track_file": STR,
                    "requested": {"type": "boolean", "nullable": True},
                    "holders": {
                        "type": "array",
                        "items": _obj(
                            ["kind", "holder", "alertname", "source", "reason", "since"],
                            {
                                "kind": {"type": "string", "enum": ["alert", "manual"]},
                                "holder": STR,
                                "alertname": STR,
                                "source": STR,
                                "reason": STR,
                                "since": TIME,
                            },
                        ),
                    },
                },
            ),
            "sync_daemons": {
                "type": "array",
                "items": _obj(
                    ["role", "mcast_interface", "sync_id", "mcast_group", "mcast_port"],
                    {
                        "role": {"type": "string", "enum": ["master", "backup"]},
                        "mcast_interface": STR,
                        "sync_id": INT,
                        "mcast_group": STR,
                        "mcast_port": INT,
                    },
                ),
            },
        },
    ),
    "Target": _obj(
        ["service", "real_server"],
        {
            "service": {**STR, "description": "a service name from the config, or 'TCP 192.0.2.10:80' / 'FWM 1'"},
            "real_server": {**STR, "description": "a real server name from the config, or '10.0.1.2:80'"},
        },
        extra=True,
    ),
    "BulkOutcome": _obj(
        ["action", "counts", "results"],
        {
            "action": {"type": "string", "enum": ["quarantine", "restore"]},
            "counts": {"type": "object", "additionalProperties": INT, "description": "result -> how many"},
            "results": {"type": "array", "items": _ref("Outcome"), "description": "one per target, in their order"},
            "directors": _outcome_props([])["directors"],
            "error": STR,
        },
    ),
    "WebhookResult": _obj(
        ["fingerprint", "alertname", "status", *OUTCOME_REQUIRED],
        {
            "fingerprint": STR,
            "alertname": STR,
            "status": {"type": "string", "enum": ["firing", "resolved"]},
            **_outcome_props([r.value for r in Result]),
            "others": {"type": "array", "items": _ref("Outcome")},
        },
    ),
    "WebhookReply": _obj(
        ["status", "receiver", "groupKey", "results"],
        {"status": STR, "receiver": STR, "groupKey": STR, "results": {"type": "array", "items": _ref("WebhookResult")}},
    ),
    "AlertmanagerPayload": _obj(
        [
            "version",
            "groupKey",
            "status",
            "receiver",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "alerts",
        ],
        {
            "version": {"type": "string", "enum": ["4"]},
            "groupKey": STR,
            "truncatedAlerts": {"type": "integer", "minimum": 0},
            "status": {"type": "string", "enum": ["firing", "resolved"]},
            "receiver": STR,
            "groupLabels": STRMAP,
            "commonLabels": STRMAP,
            "commonAnnotations": STRMAP,
            "externalURL": STR,
            "alerts": {
                "type": "array",
                "items": _obj(
                    ["status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"],
                    {
                        "status": {"type": "string", "enum": ["firing", "resolved"]},
                        "labels": STRMAP,
                        "annotations": STRMAP,
                        "startsAt": TIME,
                        "endsAt": TIME,
                        "generatorURL": STR,
                        "fingerprint": STR,
                    },
                    extra=True,
                ),
            },
        },
        extra=True,
    ),
}


def _body_schema(extra: S, required: tuple[str, ...] = ()) -> S:
    return {"allOf": [_ref("Target"), {"type": "object", "required": list(required), "properties": extra}]}


FORCE: S = {**BOOL, "description": "skip the hold-down and the rate limit (never the quorum)"}

BODIES: dict[str, tuple[str, S]] = {
    "/quarantine": (
        "Take a real server out (weight 0) with a manual hold",
        _body_schema({"reason": STR, "force": FORCE}),
    ),
    "/restore": (
        "Release the manual holds (all_holders: every hold) and bring the real server back",
        _body_schema({"all_holders": BOOL, "force": FORCE}),
    ),
    "/drain": (
        "Weight 0, then wait for active connections to reach 0 (a job); optionally delete",
        _body_schema(
            {
                "timeout": {"type": "number", "minimum": 0, "maximum": 86400},
                "delete": BOOL,
                "reason": STR,
                "force": FORCE,
            }
        ),
    ),
    "/weight": (
        "Set a weight (on a held real server: the weight it comes back at)",
        _body_schema({"weight": {"type": "integer", "minimum": 0, "maximum": 65535}, "force": FORCE}, ("weight",)),
    ),
    "/add": (
        "Add a real server (idempotent)",
        _body_schema(
            {
                "weight": {"type": "integer", "minimum": 0, "maximum": 65535},
                "forward": STR,
                "upper_threshold": INT,
                "lower_threshold": INT,
            }
        ),
    ),
    "/remove": ("Delete a real server at once (drain first to let connections finish)", _body_schema({"force": FORCE})),
    "/failover": (
        "Ask keepalived to hand this director's VIPs to the backup (writes 1 to the track file)",
        {"type": "object", "properties": {"reason": STR}},
    ),
    "/failover/release": (
        "Release the manual failover requests (all_holders: every request); 0 once none is left",
        {"type": "object", "properties": {"all_holders": BOOL}},
    ),
}

GETS: dict[str, tuple[str, str, list[S]]] = {
    "/services": ("Services with stats, real servers, weights, holds and state", "Services", []),
    "/jobs": (
        "Drains and slow starts, newest first",
        "Jobs",
        [
            {
                "name": "state",
                "in": "query",
                "schema": {"type": "string", "enum": ["running", "done", "failed", "timeout", "cancelled"]},
            },
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        ],
    ),
    "/jobs/{job_id}": (
        "One job with its progress",
        "Job",
        [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
    ),
    "/ledger": (
        "Holds (who holds which real server out) and what the actuator changed",
        "Ledger",
        [
            {"name": "active", "in": "query", "schema": {"type": "boolean"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        ],
    ),
    "/audit": (
        "Audit events, newest first",
        "Audit",
        [
            {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        ],
    ),
    "/director": ("This director's VRRP role and sync daemons", "Director", []),
    "/cluster": (
        "Every director of the cluster (cluster.store: etcd) and where each cluster hold is applied",
        "Cluster",
        [],
    ),
    "/table/diff": ("The plan from the kernel's IPVS table to the config's (table.manage), read-only", "TableDiff", []),
}


def _bulk_body(extra: S) -> S:
    targets = {"type": "array", "minItems": 1, "maxItems": 10_000, "items": _ref("Target")}
    return {"type": "object", "required": ["targets"], "properties": {"targets": targets, **extra}}


BULK: dict[str, tuple[str, S]] = {
    "/bulk/quarantine": (
        "Quarantine many real servers at once (one batch; with a cluster store one etcd transaction)",
        _bulk_body({"reason": STR, "force": FORCE}),
    ),
    "/bulk/restore": (
        "Restore many real servers at once (one batch; with a cluster store one etcd transaction)",
        _bulk_body({"all_holders": BOOL, "force": FORCE}),
    ),
}


def _json(schema: S, description: str) -> S:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR_RESPONSES: S = {
    "400": _json(_ref("Error"), "invalid request; path names the field"),
    "401": _json(_ref("Error"), "missing or wrong bearer token"),
    "503": _json(_ref("Error"), "the kernel table or the ledger is out of reach; retry"),
}


def _paths() -> S:
    paths: S = {}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    for path, (summary, schema) in BODIES.items():
        outcome = _json(_ref("Outcome"), "the outcome")
        paths[path] = {
            "post": {
                "summary": summary,
                "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                "responses": {
                    "200": outcome,
                    "202": _json(_ref("Outcome"), "a job started"),
                    "404": _json(_ref("Outcome"), "no such service or real server"),
                    "409": _json(_ref("Outcome"), "refused by a safety rule, or the weight was changed by hand"),
                    "429": _json(_ref("Outcome"), "refused for now (hold-down, rate limit); see Retry-After"),
                    "502": _json(_ref("Outcome"), "the kernel failed"),
                    **ERROR_RESPONSES,
                },
            }
        }
    for path, (summary, schema) in BULK.items():
        paths[path] = {
            "post": {
                "summary": summary,
                "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                "responses": {
                    "200": _json(_ref("BulkOutcome"), "every target done (applied, recorded, noop, dry run)"),
                    "207": _json(_ref("BulkOutcome"), "some targets not done (refused, not found, error); see error"),
                    "413": _json(_ref("Error"), "body too large"),
                    **ERROR_RESPONSES,
                },
            }
        }
    for path, (summary, name, params) in GETS.items():
        responses = {"200": _json(_ref(name), summary), **ERROR_RESPONSES}
        if "{" in path:
            responses["404"] = _json(_ref("Error"), "no such job")
        paths[path] = {"get": {"summary": summary, "parameters": params, "responses": responses}}
    paths["/table/apply"] = {
        "post": {
            "summary": "Reload the config (as SIGHUP) and make the kernel's IPVS table match it (table.manage)",
            "security": secured,
            "responses": {
                "200": _json(_ref("TableApply"), "applied, or nothing to do"),
                "409": _json(_ref("Error"), "table.manage is not true"),
                "422": _json(
                    _ref("Error"), "the config is refused (every problem with its file:line); nothing changed"
                ),
                "502": _json(_ref("TableApply"), "the kernel refused some entries (each named); the rest is applied"),
                **ERROR_RESPONSES,
            },
        }
    }
    paths["/webhook/alertmanager"] = {
        "servers": [{"url": "/"}],
        "post": {
            "summary": "Alertmanager webhook receiver (payload version 4); one result per alert",
            "security": secured,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AlertmanagerPayload")}}},
            "responses": {
                "200": _json(_ref("WebhookReply"), "every alert handled"),
                "413": _json(_ref("Error"), "body too large"),
                **ERROR_RESPONSES,
            },
        },
    }
    paths["/openapi.json"] = {
        "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0")}}
    }
    return paths


def document() -> S:
    """A fresh copy of the document (callers may not mutate the shared one)."""
    return copy.deepcopy(_DOCUMENT)


_DOCUMENT: S = {
    "openapi": "3.0.3",
    "info": {
        "title": "lvsguard actuator",
        "version": __version__,
        "description": "Quarantine, drain, restore, add and remove IPVS real servers safely. Refusal reasons: "
        + ", ".join(REASONS)
        + ".",
    },
    "servers": [{"url": "/api/v1"}],
    "paths": _paths(),
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}
