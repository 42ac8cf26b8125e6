"""The admin API under ``/api/v1`` (JSON; described by ``/api/v1/openapi.json``).

Mutating calls take a JSON object naming the real server the way an operator
does: ``{"service": "web" | "TCP 192.0.2.10:80", "real_server": "rs1" |
"10.0.1.2:80"}``. Every one of them goes through ``actuator.actions`` (and so
the ledger and the safety rules) and answers with the outcome; the HTTP status
follows the result (see :data:`RESULT_STATUS`). The CLI identifies itself with
``X-Lvsguard-Client: cli`` so that the ledger says "cli" rather than "api".
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from flask import Blueprint, current_app, g, request

from lvsguard.actuator import reload as reloading
from lvsguard.actuator.actions import Actor, Outcome, Result, Source
from lvsguard.actuator.auth import read_only, require_token
from lvsguard.actuator.current import current_actions, current_fleet, current_settings
from lvsguard.actuator.failover import read_track_file
from lvsguard.actuator.fleet import confirm, confirm_many
from lvsguard.actuator.ledger import AuditEvent, Backend, Hold, Job, get_ledger, locked_ledger
from lvsguard.actuator.openapi import document
from lvsguard.actuator.probestate import CheckState, ProbeView, probe_view
from lvsguard.actuator.states import Confirmed
from lvsguard.actuator.targets import Target
from lvsguard.cluster.drains import DrainsView
from lvsguard.cluster.table import TableStore
from lvsguard.errors import ApiError, ClusterStoreError, LvsguardError
from lvsguard.keepalived import read_role_file
from lvsguard.model import (
    MAX_WEIGHT,
    Forward,
    RealServer,
    RealServerKey,
    ServiceKey,
    Stats,
    VirtualService,
)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

RESULT_STATUS = {
    Result.APPLIED: 200,
    Result.RECORDED: 200,
    Result.NOOP: 200,
    Result.DRY_RUN: 200,
    Result.REFUSED: 409,
    Result.NOT_FOUND: 404,
    Result.DRIFT: 409,
    Result.ERROR: 502,
}
"""HTTP status of each outcome; a refusal that time lifts (hold-down, rate limit) is 429."""

MAX_LIMIT = 1000
MAX_BULK = 10_000  # targets in one bulk action
OK_RESULTS = (Result.APPLIED, Result.RECORDED, Result.NOOP, Result.DRY_RUN)


# request helpers


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object (Content-Type: application/json)")
    return body


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in body:
        if default is ...:
            raise ApiError(400, "required field is missing", name)
        return default
    value = body[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ApiError(400, f"must be {_kind_name(kind)}, got a boolean", name)
    if not isinstance(value, kind):
        raise ApiError(400, f"must be {_kind_name(kind)}", name)
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", float: "a number", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _service(text: str) -> ServiceKey:
    names = current_settings().names
    if text in names.services:
        return names.services[text]
    try:
        return ServiceKey.parse(text)
    except ValueError as exc:
        raise ApiError(400, f"neither a service name from the config nor a service: {exc}", "service") from None


def target_of(body: dict[str, Any]) -> Target:
    """The real server a request body names (``service`` + ``real_server``, by name or key); ApiError naming the field."""
    service = _service(_field(body, "service", str))
    text = _field(body, "real_server", str)
    named = current_settings().names.real_servers.get(service, {})
    if text in named:
        return Target(service, named[text])
    try:
        return Target(service, RealServerKey.parse(text))
    except ValueError as exc:
        raise ApiError(
            400, f"neither a real server name from the config nor ADDRESS:PORT: {exc}", "real_server"
        ) from None


def targets_of(body: dict[str, Any]) -> list[Target]:
    """The real servers of a bulk action (``targets``: a list of ``service`` + ``real_server``); ApiError naming the item."""
    items = _field(body, "targets", list)
    if not 1 <= len(items) <= MAX_BULK:
        raise ApiError(400, f"must list 1..{MAX_BULK} real servers, got {len(items)}", "targets")
    targets = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, "must be an object with service and real_server", f"targets[{i}]")
        try:
            targets.append(target_of(item))
        except ApiError as exc:
            raise ApiError(exc.status, exc.message, f"targets[{i}].{exc.path}") from None
    return targets


def weight_of(body: dict[str, Any], default: Any = ...) -> int:
    """The ``weight`` of a request body, checked against the kernel's range; ApiError naming the field."""
    weight = _field(body, "weight", int, default)
    if not 0 <= weight <= MAX_WEIGHT:
        raise ApiError(400, f"must be 0..{MAX_WEIGHT}, got {weight}", "weight")
    return int(weight)


def _actor() -> Actor:
    source = Source.CLI if request.headers.get("X-Lvsguard-Client", "").lower() == "cli" else Source.API
    return Actor(source, g.token_name)


def _limit() -> int:
    text = request.args.get("limit", "100")
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"must be an integer 1..{MAX_LIMIT}", "limit")
    return int(text)


def reply(outcome: Outcome, *, cluster: bool = False) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The outcome as JSON with the status its result calls for.

    ``cluster``: an operator's hold or restore, which with a cluster store
    waits for every director to show it (``fleet.confirm``) and says where it
    took effect (``directors``: name -> applied, pending or stale).
    """
    body = outcome.to_json()
    directors = directors_of(outcome) if cluster else None
    if directors is not None:
        body["directors"] = directors
    status = RESULT_STATUS[outcome.result]
    headers: dict[str, str] = {}
    if outcome.retry_after is not None:
        status = 429
        headers["Retry-After"] = str(max(1, math.ceil(outcome.retry_after)))
    if outcome.result == Result.APPLIED and outcome.job_id is not None and outcome.action == "drain":
        status = 202
    if status >= 400:
        body["error"] = outcome.message
    return body, status, headers


def bulk_reply(action: str, outcomes: list[Outcome]) -> tuple[dict[str, Any], int]:
    """A bulk action's outcomes: 200 when every one is fine, 207 when some are not (the first named in ``error``).

    With a cluster store, ``directors`` says where the whole action took effect (every item shown).
    """
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
    body: dict[str, Any] = {"action": action, "counts": counts, "results": [o.to_json() for o in outcomes]}
    shared = current_fleet()
    done = [o for o in outcomes if o.target is not None and o.result in (Result.APPLIED, Result.NOOP)]
    if shared is not None and done:
        items = [(o.target, o.details.get("cluster")) for o in done if o.target is not None]
        if action == "restore" or all(holder is not None for _t, holder in items):
            body["directors"] = confirm_many(shared[0], items)
    bad = [(i, o) for i, o in enumerate(outcomes) if o.result not in OK_RESULTS]
    if not bad:
        return body, 200
    i, first = bad[0]
    body["error"] = f"{len(bad)} of {len(outcomes)} not done; targets[{i}]: {first.message}"
    return body, 207


def directors_of(outcome: Outcome) -> dict[str, Confirmed] | None:
    """With a cluster store, where an operator's hold or restore took effect, director by director; else None."""
    shared = current_fleet()
    if shared is None or outcome.target is None or outcome.result not in (Result.APPLIED, Result.NOOP):
        return None
    holder = outcome.details.get("cluster")
    if holder is None and outcome.action != "restore":
        return None
    return confirm(shared[0], outcome.target, holder)


# JSON views of model and ledger values


def iso(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC (what the OpenAPI document calls date-time)."""
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


def stats_json(stats: Stats) -> dict[str, int]:
    return {
        "connections": stats.connections,
        "incoming_packets": stats.incoming_packets,
        "outgoing_packets": stats.outgoing_packets,
        "incoming_bytes": stats.incoming_bytes,
        "outgoing_bytes": stats.outgoing_bytes,
        "cps": stats.cps,
        "incoming_pps": stats.incoming_pps,
        "outgoing_pps": stats.outgoing_pps,
        "incoming_bps": stats.incoming_bps,
        "outgoing_bps": stats.outgoing_bps,
    }


def hold_json(hold: Hold) -> dict[str, Any]:
    return {
        "id": hold.id,
        "service": str(hold.target.service),
        "real_server": str(hold.target.real_server),
        "kind": hold.kind,
        "holder": hold.holder,
        "alertname": hold.alertname,
        "source": hold.source,
        "action": hold.action,
        "reason": hold.reason,
        "state": hold.state,
        "created_at": iso(hold.created_at),
        "released_at": iso(hold.released_at),
        "released_by": hold.released_by,
    }


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "service": str(job.target.service),
        "real_server": str(job.target.real_server),
        "state": job.state,
        "progress": job.progress,
        "message": job.message,
        "params": job.params,
        "actor": job.actor,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "finished_at": iso(job.finished_at),
    }


def audit_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": iso(event.at),
        "source": event.source,
        "actor": event.actor,
        "action": event.action,
        "service": event.service,
        "real_server": event.real_server,
        "result": event.result,
        "reason": event.reason,
        "message": event.message,
        "details": event.details,
    }


def _check_json(check: CheckState) -> dict[str, Any]:
    return {
        "check": check.check,
        "healthy": check.healthy,
        "success": check.success,
        "latency_seconds": check.latency,
        "last_change": iso(check.last_change) if check.last_change > 0 else None,
    }


def probe_json(view: ProbeView, target: Target) -> dict[str, Any]:
    """A real server's probe state from the exporter: the worst latency and the newest change of its checks."""
    state, checks = view.of(target)
    latencies = [c.latency for c in checks if c.latency is not None]
    changes = [c.last_change for c in checks if c.last_change > 0]
    return {
        "state": state,
        "latency_seconds": max(latencies) if latencies else None,
        "last_change": iso(max(changes)) if changes else None,
        "checks": [_check_json(c) for c in checks],
    }


def probes_json(view: ProbeView) -> dict[str, Any]:
    """Where the probe state comes from and whether it is known (``actuator.exporter_url``)."""
    return {
        "state": view.state,
        "source": view.source,
        "error": view.error,
        "read_at": iso(view.read_at) if view.read_at else None,
    }


def _real_server_json(
    svc: VirtualService, rs: RealServer, holds: list[Hold], backend: Backend | None, probes: ProbeView
) -> dict[str, Any]:
    names = current_settings().names
    if backend is None:
        state = "in"
    elif backend.drift:
        state = "drift"
    else:
        state = backend.state
    return {
        "real_server": str(rs.key),
        "name": names.real_server_name(svc.key, rs.key),
        "weight": rs.weight,
        "forward": rs.forward.label,
        "upper_threshold": rs.upper_threshold,
        "lower_threshold": rs.lower_threshold,
        "active_connections": rs.active_connections,
        "inactive_connections": rs.inactive_connections,
        "persistent_connections": rs.persistent_connections,
        "stats": stats_json(rs.stats),
        "state": state,
        "original_weight": backend.original_weight if backend is not None else None,
        "drift": backend.drift if backend is not None else "",
        "holds": [hold_json(h) for h in holds],
        "probe": probe_json(probes, Target(svc.key, rs.key)),
    }


def _service_json(
    svc: VirtualService, holds: dict[Target, list[Hold]], backends: dict[Target, Backend], probes: ProbeView
) -> dict[str, Any]:
    settings = current_settings()
    quorum = settings.quorum_for(svc.key)
    healthy = sum(1 for rs in svc.real_servers if rs.weight > 0)
    return {
        "service": str(svc.key),
        "name": settings.names.service_name(svc.key),
        "scheduler": svc.scheduler,
        "persistent": svc.persistent,
        "timeout": svc.timeout,
        "stats": stats_json(svc.stats),
        "healthy": healthy,
        "min_healthy": quorum.required(len(svc.real_servers)),
        "real_servers": [
            _real_server_json(
                svc, rs, holds.get(Target(svc.key, rs.key), []), backends.get(Target(svc.key, rs.key)), probes
            )
            for rs in svc.real_servers
        ],
    }


# read-only endpoints


@bp.get("/services")
@read_only
def services() -> dict[str, Any]:
    return services_json()


def services_json() -> dict[str, Any]:
    """The kernel table with names, holds and probe state (``GET /services``; the console's pages)."""
    table = current_actions().read_table()
    ledger = get_ledger()
    holds: dict[Target, list[Hold]] = {}
    for hold in ledger.active_holds():
        holds.setdefault(hold.target, []).append(hold)
    backends = {b.target: b for b in ledger.backends()}
    probes = probe_view(current_app)
    return {
        "source": table.source,
        "dry_run": current_settings().dry_run,
        "probes": probes_json(probes),
        "services": [_service_json(svc, holds, backends, probes) for svc in table.services],
    }


@bp.get("/jobs")
@read_only
def jobs() -> dict[str, Any]:
    state = request.args.get("state")
    if state is not None and state not in ("running", "done", "failed", "timeout", "cancelled"):
        raise ApiError(400, "must be running, done, failed, timeout or cancelled", "state")
    return {"jobs": [job_json(j) for j in get_ledger().jobs(state=state, limit=_limit())]}


@bp.get("/jobs/<int:job_id>")
@read_only
def job(job_id: int) -> dict[str, Any]:
    found = get_ledger().job(job_id)
    if found is None:
        raise ApiError(404, f"no job {job_id}", "job_id")
    return job_json(found)


@bp.get("/ledger")
@read_only
def ledger_view() -> dict[str, Any]:
    active_only = request.args.get("active", "false").lower() in ("1", "true", "yes")
    ledger = get_ledger()
    return {
        "holds": [hold_json(h) for h in ledger.holds(limit=_limit(), include_released=not active_only)],
        "backends": [
            {
                "service": str(b.target.service),
                "real_server": str(b.target.real_server),
                "state": b.state,
                "original_weight": b.original_weight,
                "expected_weight": b.expected_weight,
                "write_pending": b.write_pending,
                "since": iso(b.since),
                "drift": b.drift,
                "job_id": b.job_id,
            }
            for b in ledger.backends()
        ],
    }


@bp.get("/audit")
@read_only
def audit() -> dict[str, Any]:
    after = request.args.get("after", "0")
    if not (after.isascii() and after.isdigit()):  # "²".isdigit() is True but int() refuses it
        raise ApiError(400, "must be an integer >= 0", "after")
    return {"events": [audit_json(e) for e in get_ledger().audit_events(limit=_limit(), after=int(after))]}


@bp.get("/director")
@read_only
def director() -> dict[str, Any]:
    return director_json()


@bp.get("/cluster")
@read_only
def cluster() -> dict[str, Any]:
    return cluster_json()


def cluster_json() -> dict[str, Any]:
    """Every director of the cluster and the cluster's holds, each with where it is applied (``GET /cluster``)."""
    settings = current_settings().cluster
    out: dict[str, Any] = {
        "store": settings.store,
        "cluster": settings.name if settings.shared else "",
        "director": settings.director_name,
        "store_up": None,
        "directors": [],
        "holds": [],
        "table": None,
        "drains": [],
        "problems": [],
    }
    shared = current_fleet()
    if shared is None:
        return out
    fleet, sync = shared
    out["store_up"] = sync.up
    drains = current_actions().drains.store
    try:
        view = fleet.view()
        records, _revision = sync.store.snapshot()
        table = TableStore(sync.store.client, settings).head()
        jobs = drains.view() if drains is not None else DrainsView()
    except ClusterStoreError as exc:
        out["problems"] = [str(exc)]
        return out
    out["problems"] = [*view.problems, *jobs.problems]
    revision = table.revision if table is not None else 0
    out["table"] = None
    if table is not None:
        out["table"] = {
            "revision": table.revision,
            "by": table.by,
            "at": iso(table.at),
            "file": table.file,
            "services": table.services,
            "real_servers": table.real_servers,
        }
    out["directors"] = [
        {
            **d.to_json(),
            "at": iso(d.at),
            "stale": view.stale(d),
            "table_matches": d.table_matches(revision),
            "converged": d.converged and d.table_matches(revision) and not view.stale(d),
        }
        for d in view.directors
    ]
    out["holds"] = [
        {
            "service": str(r.service),
            "real_server": str(r.real_server),
            "holder": r.holder,
            "action": r.action,
            "reason": r.reason,
            "director": r.director,
            "at": iso(r.at),
            "applied": view.applied_by(str(r.service), str(r.real_server), r.holder),
        }
        for r in records
    ]
    out["drains"] = [
        {
            "job": j.id,
            "service": str(j.service),
            "real_server": str(j.real_server),
            "holder": j.holder,
            "state": j.state,
            "owner": jobs.owners.get(j.id),
            "owners": list(j.owners),
            "deadline": iso(j.deadline),
            "ended_at": iso(j.ended_at) if j.ended_at else None,
            "delete": j.delete,
            "message": j.message,
            "active": {d.director: dict(d.draining).get(j.id) for d in view.directors} if j.running else {},
        }
        for j in jobs.jobs
    ]
    return out


def director_json() -> dict[str, Any]:
    """This director's role, failover requests and sync daemons (``GET /director``; the console's pages)."""
    settings = current_settings()
    role = read_role_file(settings.role_file) if settings.role_file else "unknown"
    # The peer director's failover check asks this at every failover: one netlink
    # request for the sync daemons, not a read of the whole table, whose cost grows with it.
    daemons = current_actions().sync_daemons()
    path = settings.failover_track_file
    failovers = get_ledger().active_failovers()
    return {
        "role": role,
        "dry_run": settings.dry_run,
        "failover": {
            "configured": bool(path),
            "track_file": path,
            "requested": read_track_file(path) if path else None,
            "holders": [
                {
                    "kind": f.kind,
                    "holder": f.holder,
                    "alertname": f.alertname,
                    "source": f.source,
                    "reason": f.reason,
                    "since": iso(f.created_at),
                }
                for f in failovers
            ],
        },
        "sync_daemons": [
            {
                "role": d.role,
                "mcast_interface": d.mcast_interface,
                "sync_id": d.sync_id,
                "mcast_group": d.mcast_group,
                "mcast_port": d.mcast_port,
            }
            for d in daemons
        ],
    }


@bp.get("/openapi.json")
@read_only
def openapi() -> dict[str, Any]:
    return document()


# mutating endpoints


@bp.post("/quarantine")
@require_token
def quarantine() -> Any:
    body = _body()
    target = target_of(body)
    reason = _field(body, "reason", str, "")
    force = _field(body, "force", bool, False)
    return reply(
        current_actions().hold(get_ledger(), target, _actor(), action="quarantine", reason=reason, force=force),
        cluster=True,
    )


@bp.post("/restore")
@require_token
def restore() -> Any:
    body = _body()
    target = target_of(body)
    scope = "all" if _field(body, "all_holders", bool, False) else "own"
    force = _field(body, "force", bool, False)
    return reply(current_actions().release(get_ledger(), target, _actor(), scope=scope, force=force), cluster=True)


@bp.post("/bulk/quarantine")
@require_token
def bulk_quarantine() -> Any:
    """Quarantine many real servers at once: one batch here, one etcd transaction with a cluster store."""
    body = _body()
    targets = targets_of(body)
    reason = _field(body, "reason", str, "")
    force = _field(body, "force", bool, False)
    outcomes = current_actions().hold_many(get_ledger(), targets, _actor(), reason=reason, force=force)
    return bulk_reply("quarantine", outcomes)


@bp.post("/bulk/restore")
@require_token
def bulk_restore() -> Any:
    """Restore many real servers at once (``bulk_quarantine``)."""
    body = _body()
    targets = targets_of(body)
    scope = "all" if _field(body, "all_holders", bool, False) else "own"
    force = _field(body, "force", bool, False)
    outcomes = current_actions().release_many(get_ledger(), targets, _actor(), scope=scope, force=force)
    return bulk_reply("restore", outcomes)


@bp.post("/drain")
@require_token
def drain() -> Any:
    body = _body()
    target = target_of(body)
    timeout = _field(body, "timeout", (int, float), None)
    if timeout is not None and not 0 < timeout <= 86400:
        raise ApiError(400, f"must be 0 < timeout <= 86400 seconds, got {timeout}", "timeout")
    delete = _field(body, "delete", bool, False)
    reason = _field(body, "reason", str, "")
    force = _field(body, "force", bool, False)
    outcome = current_actions().hold(
        get_ledger(),
        target,
        _actor(),
        action="drain",
        reason=reason,
        force=force,
        drain_timeout=timeout,
        drain_delete=delete,
    )
    return reply(outcome, cluster=True)


@bp.post("/weight")
@require_token
def weight() -> Any:
    body = _body()
    target = target_of(body)
    value = weight_of(body)
    force = _field(body, "force", bool, False)
    return reply(current_actions().set_weight(get_ledger(), target, value, _actor(), force=force))


@bp.post("/add")
@require_token
def add() -> Any:
    body = _body()
    target = target_of(body)
    value = weight_of(body, 1)
    forward_text = _field(body, "forward", str, None)
    try:
        forward = Forward.from_name(forward_text) if forward_text is not None else None
    except ValueError as exc:
        raise ApiError(400, str(exc), "forward") from None
    upper = _field(body, "upper_threshold", int, 0)
    lower = _field(body, "lower_threshold", int, 0)
    for name, value_ in (("upper_threshold", upper), ("lower_threshold", lower)):
        if not 0 <= value_ < 2**32:
            raise ApiError(400, f"must be 0..4294967295, got {value_}", name)
    try:
        outcome = current_actions().add(
            get_ledger(), target, _actor(), weight=value, forward=forward, upper_threshold=upper, lower_threshold=lower
        )
    except ValueError as exc:
        raise ApiError(400, str(exc), "forward") from None
    return reply(outcome)


# A failover runs on the app's one warm ledger connection (``locked_ledger``), as the webhook's
# sessions do: its time to the track file counts, and this thread's own connection may be cold
# (opened on first use, or re-reading the pages other connections changed), which costs a few
# dozen system calls, each slow in a VM.


@bp.post("/failover")
@require_token
def failover() -> Any:
    body = _body()
    reason = _field(body, "reason", str, "")
    return reply(current_actions().failover(locked_ledger, _actor(), reason=reason))


@bp.post("/failover/release")
@require_token
def failover_release() -> Any:
    body = _body()
    scope = "all" if _field(body, "all_holders", bool, False) else "own"
    return reply(current_actions().end_failover(locked_ledger, _actor(), scope=scope))


@bp.post("/remove")
@require_token
def remove() -> Any:
    body = _body()
    target = target_of(body)
    force = _field(body, "force", bool, False)
    return reply(current_actions().remove(get_ledger(), target, _actor(), force=force))


# the table (``table.manage``; docs/table.md)


def _managed() -> None:
    if not current_settings().table.manage:
        raise ApiError(409, "table.manage is not true in the config: lvsguard does not own the IPVS table")


@bp.get("/table/diff")
@read_only
def table_diff() -> dict[str, Any]:
    """The plan from the kernel's table to the running config's, read-only."""
    if not current_settings().table.manage:
        return {"manage": False, "pending": False, "summary": "table.manage is not true: nothing to plan", "plan": ""}
    plan = current_actions().plan_table(get_ledger())
    return {"manage": True, "pending": not plan.empty, "summary": plan.summary(), "plan": str(plan)}


@bp.post("/table/apply")
@require_token
def table_apply() -> Any:
    """Reload the config (as SIGHUP: a bad one is refused whole, 422) and make the kernel's table match it."""
    load = current_app.extensions["lvsguard"].reload
    if load is not None:
        try:
            new = reloading.load_settings(load)
        except LvsguardError as exc:
            raise ApiError(
                422, "the config is refused, the running one is kept: " + "; ".join(str(exc).splitlines())
            ) from None
        reloading.apply(current_app, new)
    _managed()
    outcome = current_actions().apply_table(get_ledger(), _actor())
    return outcome.to_json(), RESULT_STATUS.get(outcome.outcome, 200)
