"""The admin console: server-rendered pages under ``/ui/`` for the operator at the director.

Why a console when there is an API: at 3 a.m. an operator wants one page that
shows what the kernel does right now and lets them act without composing curl
calls. Every action here goes through the same code as ``/api/v1``: the request
is turned into the API's body, parsed by the API's own helpers, and handed to
the same :class:`actuator.actions.Actions` calls, so the safety rules, the
ledger and the audit trail apply unchanged (the actor's source is ``ui``).

Security:

- Log in with an API token; the session (a signed cookie, HttpOnly,
  SameSite=Strict) keeps only the token's *name* and a CSRF token. The token
  itself is never stored, logged or rendered. The cookie is signed with the
  config's ``session_secret_file`` (read again on reload), else with a key
  random per process, so that a restart logs everybody out. A session ends
  12 h after its login, when its token's secret changes, and at logout, for
  every copy of the cookie (``lvsguard/actuator/sessions.py``).
- Failed logins are limited per client address (:class:`LoginLimiter`): then
  429 with ``Retry-After``, before the token is even compared.
- Every POST carries the session's CSRF token (compared in constant time).
- Read-only pages are open without a login when ``read_only_open`` allows it.
- A Content-Security-Policy of ``'self'`` only: the pages use no inline script
  and nothing from another origin (no CDN; works offline).

Each action asks for confirmation first (a second form with ``confirmed=yes``),
then shows the outcome in plain words and, for a drain, the job's progress.
"""

from __future__ import annotations

import datetime
import functools
import hmac
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.exceptions import HTTPException

from lvsguard.actuator import api, sessions
from lvsguard.actuator.actions import Actor, Outcome, Result, Source
from lvsguard.actuator.auth import LoginLimiter, reads_open, token_name
from lvsguard.actuator.current import current_actions, current_settings
from lvsguard.actuator.health import real_server_health, service_health
from lvsguard.actuator.httperrors import error_status
from lvsguard.actuator.ledger import get_ledger
from lvsguard.actuator.states import HoldKind
from lvsguard.actuator.targets import Target
from lvsguard.errors import ApiError, LvsguardError, UiError
from lvsguard.logs import event, logfmt_value
from lvsguard.model import Forward

log = logging.getLogger(__name__)

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")

F = TypeVar("F", bound=Callable[..., Any])

ACTIONS = ("add", "weight", "quarantine", "restore", "drain", "remove")
FORWARDS = ("nat", "dr", "tunnel")
AUDIT_FILTERS = ("service", "real_server", "action", "result", "source", "actor")
AUDIT_SCAN = 1000  # newest audit events the filters look through
REFRESH_SECONDS = 2  # the kernel's rate estimator updates every 2 s
LOGIN_FAILURES = 5  # failed logins per client address ...
LOGIN_PER = 60.0  # ... in any this many seconds, then 429 until the oldest is that old

RESULT_WORDS = {
    Result.APPLIED: "Done",
    Result.RECORDED: "Recorded",
    Result.NOOP: "Nothing to do",
    Result.DRY_RUN: "Dry run (nothing written)",
    Result.REFUSED: "Refused by the safety rules",
    Result.NOT_FOUND: "Not found",
    Result.DRIFT: "Left alone (weight changed by hand)",
    Result.ERROR: "The kernel failed",
}
"""What each outcome means to an operator; the outcome's own message follows."""

CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"


class SettingsSessionInterface(SecureCookieSessionInterface):
    """Signs the session cookie with the settings' ``session_secret`` when the config has one.

    Read on every request, so a reload with a new secret file ends every
    session; without one, the app's ``SECRET_KEY`` (random per process) signs.
    """

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        secret: bytes = app.config["LVSGUARD_SETTINGS"].session_secret
        if not secret:
            return super().get_signing_serializer(app)
        return URLSafeTimedSerializer(
            secret,
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={"key_derivation": self.key_derivation, "digest_method": self.digest_method},
        )

    def get_cookie_secure(self, app: Flask) -> bool:
        """``secure_cookie`` of the settings (read per request: a reload turns it on or off)."""
        return bool(app.config["LVSGUARD_SETTINGS"].secure_cookie)


def init_app(app: Flask) -> None:
    """Register the console and configure its session cookie (called by ``create_app``)."""
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secrets.token_bytes(32)
    app.config.update(
        SESSION_COOKIE_NAME="lvsguard_ui",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/ui",
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(hours=sessions.SESSION_HOURS),
    )
    app.session_interface = SettingsSessionInterface()
    app.extensions["lvsguard_login"] = LoginLimiter(LOGIN_FAILURES, LOGIN_PER)
    app.register_blueprint(bp)


# session, login and CSRF


def user() -> str | None:
    """The logged-in token's name while the session lasts (``actuator.sessions``); once per request."""
    if "ui_user" not in g:
        now = current_app.config["LVSGUARD_CLOCK"]()
        g.ui_user = sessions.current_user(session, current_settings().tokens, now, get_ledger())
    name: str | None = g.ui_user
    return name


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def _check_csrf() -> None:
    expected = session.get("csrf")
    given = request.form.get("csrf", "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
        raise UiError("the form's CSRF token is missing or wrong: reload the page and try again", "csrf", 403)


def viewer(view: F) -> F:
    """Read-only pages: open when ``read_only_open`` allows it, else a login first."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        g.token_name = user() or "-"
        if user() is None and not reads_open():
            if request.path.endswith(".json"):
                return {"error": "log in first"}, 401
            return redirect(url_for("ui.login", next=request.full_path))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]  # wrapped takes and returns what the view does


def operator(view: F) -> F:
    """Forms that change something: a logged-in token and the session's CSRF token."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _check_csrf()
        name = user()
        if name is None:
            raise UiError("log in with an API token to act (this page is read-only without one)", "", 401)
        g.token_name = name
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]  # wrapped takes and returns what the view does


@bp.app_template_global()
def ui_csrf() -> str:
    return csrf_token()


@bp.app_template_global()
def ui_user() -> str | None:
    return user()


@bp.get("/login")
def login() -> Any:
    return render_template("ui/login.html", next=_safe_next(request.args.get("next", "")), error="")


@bp.post("/login")
def login_post() -> Any:
    _check_csrf()
    limiter: LoginLimiter = current_app.extensions["lvsguard_login"]
    client = request.remote_addr or "-"
    target = _safe_next(request.form.get("next", ""))
    wait = limiter.retry_after(client)
    if wait > 0:  # before the token is compared: a blocked address learns nothing
        seconds = math.ceil(wait)
        event(log, logging.WARNING, "ui_login_limited", remote=client, retry_after=seconds)
        error = (
            f"Too many failed logins from {client} (at most {limiter.failures} in {limiter.per:g} s). "
            f"Try again in {seconds} s."
        )
        return render_template("ui/login.html", next=target, error=error), 429, {"Retry-After": str(seconds)}
    given = request.form.get("token", "").strip()
    name = token_name(current_settings().tokens, f"Bearer {given}") if given else None
    if name is None:
        limiter.failed(client)
        event(log, logging.WARNING, "ui_login_failed", remote=client)
        return render_template(
            "ui/login.html", next=target, error="That token is not one of this actuator's tokens."
        ), 401
    limiter.succeeded(client)
    sessions.start(session, name, current_settings().tokens[name], current_app.config["LVSGUARD_CLOCK"]())
    g.pop("ui_user", None)
    g.token_name = name
    event(log, logging.INFO, "ui_login", token=name, remote=request.remote_addr or "-")
    return redirect(target or url_for("ui.overview"))


@bp.post("/logout")
def logout() -> Any:
    _check_csrf()
    name = user()
    sessions.end(session, get_ledger())
    g.pop("ui_user", None)
    if name:
        event(log, logging.INFO, "ui_logout", token=name)
    flash("Logged out.", "info")
    return redirect(url_for("ui.login"))


def _safe_next(text: str) -> str:
    """Only a path inside the console: never an open redirect."""
    if text.startswith("/ui/") and not text.startswith("//") and "\\" not in text:
        return text
    return ""


# views of the kernel table (the API's own JSON, so both say the same)


@dataclass(frozen=True, slots=True)
class Live:
    """What a page shows and its script refreshes: rendered rows plus flat ``key -> text`` values."""

    services: list[dict[str, Any]]
    director: dict[str, Any]
    values: dict[str, str]
    chart: dict[str, dict[str, float]]

    @property
    def layout(self) -> str:
        """Which services and real servers exist: when it changes, the page reloads to show new rows."""
        return " ".join(
            sorted(f"{s['service']}|{rs['real_server']}" for s in self.services for rs in s["real_servers"])
            + sorted(s["service"] for s in self.services)
        )


def rate(value: float, unit: str = "") -> str:
    """A rate for people: 950, 12.3k, 4.5M (``unit`` appended)."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.1f}{suffix}{unit}"
    return f"{value:g}{unit}"


def live_view() -> Live:
    """Services and director as ``/api/v1/services`` and ``/api/v1/director`` give them, plus the shares."""
    table = api.services_json()
    director = api.director_json()
    values: dict[str, str] = {"probes": probes_note(table["probes"])}
    chart: dict[str, dict[str, float]] = {}
    for svc in table["services"]:
        key = svc["service"]
        stats = svc["stats"]
        svc["bytes_per_second"] = stats["incoming_bps"] + stats["outgoing_bps"]
        values[f"{key}|cps"] = rate(stats["cps"])
        values[f"{key}|bps"] = rate(svc["bytes_per_second"], "B/s")
        values[f"{key}|healthy"] = service_health(svc, table["probes"]["state"])
        total_cps = sum(rs["stats"]["cps"] for rs in svc["real_servers"])
        total_active = sum(rs["active_connections"] for rs in svc["real_servers"])
        chart[key] = {}
        for rs in svc["real_servers"]:
            if total_cps:
                share = rs["stats"]["cps"] / total_cps
            elif total_active:
                share = rs["active_connections"] / total_active
            else:
                share = 0.0
            rs["share"] = share
            rs["holders"] = ", ".join(_holder(h) for h in rs["holds"])
            rs["reasons"] = "; ".join(h["reason"] for h in rs["holds"] if h["reason"])
            prefix = f"{key}|{rs['real_server']}"
            values[f"{prefix}|weight"] = str(rs["weight"])
            values[f"{prefix}|active"] = str(rs["active_connections"])
            values[f"{prefix}|inactive"] = str(rs["inactive_connections"])
            values[f"{prefix}|cps"] = rate(rs["stats"]["cps"])
            values[f"{prefix}|share"] = f"{share:.0%}"
            values[f"{prefix}|state"] = rs["state"]
            values[f"{prefix}|holders"] = rs["holders"] or "—"
            values[f"{prefix}|health"] = real_server_health(rs["probe"]["state"])
            values[f"{prefix}|latency"] = seconds(rs["probe"]["latency_seconds"])
            values[f"{prefix}|checks"] = checks_text(rs["probe"]["checks"])
            chart[key][rs["name"] or rs["real_server"]] = float(rs["stats"]["cps"])
    return Live(table["services"], director, values, chart)


def seconds(value: float | None) -> str:
    """A probe latency for people: 850 µs, 12.3 ms, 1.20 s; — when unknown."""
    if value is None:
        return "—"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def checks_text(checks: list[dict[str, Any]]) -> str:
    """Each check of a real server in a few words: ``tcp ok · http failed, down since 12:03:04Z``."""
    parts = []
    for c in checks:
        last = "—" if c["success"] is None else ("ok" if c["success"] else "failed")
        health = ""
        if c["healthy"] is not None and (c["last_change"] or c["healthy"] != c["success"]):
            health = ", up" if c["healthy"] else ", down"
            health += f" since {c['last_change'][11:19]}Z" if c["last_change"] else ""
        parts.append(f"{c['check']} {last}{health}")
    return " · ".join(parts)


def probes_note(probes: dict[str, Any]) -> str:
    """Where the health column comes from, and why it reads unknown when it does."""
    if probes["state"] == "off":
        return "Health: unknown (no actuator.exporter_url in the config to read the probes from)."
    if probes["state"] == "unreachable":
        return f"Health: unknown (the exporter at {probes['source']} did not answer: {probes['error']})."
    return f"Health from the exporter's probes ({probes['source']}), read at {probes['read_at'][11:19]}Z."


def _holder(hold: dict[str, Any]) -> str:
    if hold["source"] == Source.CLUSTER:  # an operator's hold on some director of the cluster
        return f"{hold['holder']} (cluster, {hold['action']})"
    if hold["kind"] == HoldKind.ALERT:
        return f"alert {hold['alertname'] or hold['holder']}"
    return f"{hold['holder']} ({hold['source']}, {hold['action']})"


def _vips(services: list[dict[str, Any]]) -> list[str]:
    vips: list[str] = []
    for svc in services:
        parts = svc["service"].split(" ", 1)
        if len(parts) == 2 and parts[0] != "FWM":
            address = parts[1].rsplit(":", 1)[0]
            if address not in vips:
                vips.append(address)
    return vips


@bp.get("/")
@viewer
def overview() -> Any:
    live = live_view()
    return render_template("ui/overview.html", live=live, vips=_vips(live.services), refresh=REFRESH_SECONDS)


@bp.get("/service")
@viewer
def service_page() -> Any:
    key = request.args.get("s", "")
    live = live_view()
    found = next((s for s in live.services if s["service"] == key or (s["name"] and s["name"] == key)), None)
    if found is None:
        raise UiError(f"no service {key!r} in the kernel table", "s", 404)
    return render_template(
        "ui/service.html", svc=found, live=live, refresh=REFRESH_SECONDS, forwards=FORWARDS, form=dict(request.args)
    )


@bp.get("/live.json")
@viewer
def live_json() -> Any:
    live = live_view()
    return {"values": live.values, "chart": live.chart, "layout": live.layout}


@bp.get("/ledger")
@viewer
def ledger_page() -> Any:
    ledger = get_ledger()
    filters = {name: request.args.get(name, "").strip() for name in AUDIT_FILTERS}
    active_only = request.args.get("active", "") == "1"
    events = [api.audit_json(e) for e in ledger.audit_events(limit=AUDIT_SCAN)]
    shown = [e for e in events if all(not v or v.lower() in str(e[k]).lower() for k, v in filters.items())]
    holds = [api.hold_json(h) for h in ledger.holds(limit=200, include_released=not active_only)]
    return render_template(
        "ui/ledger.html",
        events=shown[:200],
        holds=holds,
        filters=filters,
        active_only=active_only,
        backends=ledger.backends(),
    )


@bp.get("/cluster")
@viewer
def cluster_page() -> Any:
    return render_template("ui/cluster.html", cluster=api.cluster_json())


@bp.get("/jobs")
@viewer
def jobs_page() -> Any:
    jobs = [api.job_json(j) for j in get_ledger().jobs(limit=100)]
    return render_template("ui/jobs.html", jobs=jobs, focus=request.args.get("job", ""), refresh=REFRESH_SECONDS)


@bp.get("/jobs.json")
@viewer
def jobs_json() -> Any:
    return {"jobs": [api.job_json(j) for j in get_ledger().jobs(limit=100)]}


# actions


def form_body(form: dict[str, str]) -> dict[str, Any]:
    """The API body of a console form: the same fields, typed; UiError names a bad input."""
    action = form.get("action", "")
    if action not in ACTIONS:
        raise UiError(f"unknown action {action!r}", "action")
    body: dict[str, Any] = {
        "service": form.get("service", "").strip(),
        "real_server": form.get("real_server", "").strip(),
    }
    if not body["real_server"]:
        raise UiError("the real server is required (ADDRESS:PORT or a name from the config)", "real_server")
    if action in ("add", "weight"):
        body["weight"] = _int(form, "weight", "1" if action == "add" else None)
    if action == "add":
        forward = form.get("forward", "").strip()
        if forward:
            body["forward"] = forward
        body["upper_threshold"] = _int(form, "upper_threshold", "0")
        body["lower_threshold"] = _int(form, "lower_threshold", "0")
    if action in ("quarantine", "drain"):
        body["reason"] = form.get("reason", "").strip()
    if action == "drain":
        if form.get("timeout", "").strip():
            body["timeout"] = _int(form, "timeout", None)
        body["delete"] = form.get("delete") == "1"
    if action == "restore":
        body["all_holders"] = form.get("all_holders") == "1"
    if action in ("weight", "quarantine", "restore", "drain", "remove"):
        body["force"] = form.get("force") == "1"
    return body


def _int(form: dict[str, str], name: str, default: str | None) -> int:
    text = form.get(name, "").strip() or (default or "")
    if not text.lstrip("-").isdigit():
        raise UiError(f"{name.replace('_', ' ')} must be a whole number", name)
    return int(text)


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """One console action, parsed and checked by the API's own helpers before anything is asked or done."""

    action: str
    target: Target
    body: dict[str, Any]
    weight: int | None = None
    forward: Forward | None = None
    timeout: float | None = None


def parse_action(action: str, body: dict[str, Any]) -> ActionRequest:
    """Check every field of ``body`` as ``/api/v1`` does (ApiError names a bad field)."""
    target: Target = api.target_of(body)
    weight = forward = timeout = None
    if action in ("add", "weight"):
        weight = api.weight_of(body)
    if action == "add":
        try:
            forward = Forward.from_name(body["forward"]) if "forward" in body else None
        except ValueError as exc:
            raise ApiError(400, str(exc), "forward") from None
        for name in ("upper_threshold", "lower_threshold"):
            if not 0 <= body[name] < 2**32:
                raise ApiError(400, f"must be 0..4294967295, got {body[name]}", name)
    if action == "drain":
        timeout = body.get("timeout")
        if timeout is not None and not 0 < timeout <= 86400:
            raise ApiError(400, f"must be 0 < timeout <= 86400 seconds, got {timeout}", "timeout")
    return ActionRequest(action, target, body, weight, forward, timeout)


def run_action(req: ActionRequest, actor: Actor) -> Outcome:
    """Hand a checked request to the action layer, as the API's view of the same action does."""
    body, target, actions, ledger = req.body, req.target, current_actions(), get_ledger()
    if req.action == "quarantine":
        return actions.hold(ledger, target, actor, action="quarantine", reason=body["reason"], force=body["force"])
    if req.action == "drain":
        return actions.hold(
            ledger,
            target,
            actor,
            action="drain",
            reason=body["reason"],
            force=body["force"],
            drain_timeout=req.timeout,
            drain_delete=body["delete"],
        )
    if req.action == "restore":
        return actions.release(
            ledger, target, actor, scope="all" if body["all_holders"] else "own", force=body["force"]
        )
    if req.action == "weight":
        return actions.set_weight(ledger, target, req.weight or 0, actor, force=body["force"])
    if req.action == "remove":
        return actions.remove(ledger, target, actor, force=body["force"])
    try:
        return actions.add(
            ledger,
            target,
            actor,
            weight=req.weight if req.weight is not None else 1,
            forward=req.forward,
            upper_threshold=body["upper_threshold"],
            lower_threshold=body["lower_threshold"],
        )
    except ValueError as exc:
        raise ApiError(400, str(exc), "forward") from None


def describe(action: str, body: dict[str, Any]) -> str:
    """What the confirmation page asks, in plain words."""
    where = f"{body['real_server']} in {body['service']}"
    force = " (skipping the hold-down and the rate limit, never the quorum)" if body.get("force") else ""
    if action == "add":
        how = f" by {body['forward']}" if body.get("forward") else ""
        return f"Add real server {where} with weight {body['weight']}{how}?"
    if action == "weight":
        return f"Set the weight of {where} to {body['weight']}{force}?"
    if action == "quarantine":
        return f"Quarantine {where} (weight 0 until you restore it){force}?"
    if action == "drain":
        then = ", then delete it" if body.get("delete") else ""
        return f"Drain {where}: weight 0, wait for its active connections to finish{then}{force}?"
    if action == "restore":
        whose = "every hold, alerts' too" if body.get("all_holders") else "the manual holds"
        return f"Restore {where}, releasing {whose}{force}?"
    return f"Remove {where} from the kernel table now (open connections are cut){force}?"


@bp.post("/action")
@operator
def action() -> Any:
    form = {k: v for k, v in request.form.items() if k != "csrf"}
    back = url_for("ui.service_page", s=form.get("service", ""))
    try:
        body = form_body(form)
        req = parse_action(form["action"], body)  # a bad field is reported before the confirmation
        if form.get("confirmed") != "yes":
            return render_template("ui/confirm.html", question=describe(req.action, body), form=form, back=back)
        outcome = run_action(req, Actor(Source.UI, g.token_name))
    except (UiError, ApiError) as exc:
        message = exc.message if isinstance(exc, ApiError) else str(exc)
        field = exc.path if isinstance(exc, ApiError) else exc.field
        flash(f"Not done: {field.replace('_', ' ') + ': ' if field else ''}{message}", "error")
        return redirect(back)
    directors = api.directors_of(outcome) if req.action in ("quarantine", "drain", "restore") else None
    where = ""
    if directors:
        where = " Directors: " + ", ".join(f"{name} {state}" for name, state in sorted(directors.items())) + "."
    flash(
        f"{RESULT_WORDS.get(outcome.result, outcome.result)}: {outcome.message}{where}",
        "ok" if outcome.result in (Result.APPLIED, Result.RECORDED, Result.NOOP, Result.DRY_RUN) else "error",
    )
    if outcome.action == "drain" and outcome.job_id is not None:
        return redirect(url_for("ui.jobs_page", job=outcome.job_id))
    if outcome.action == "remove" and outcome.result == Result.APPLIED:
        return redirect(url_for("ui.service_page", s=body["service"]))
    return redirect(back)


# errors and headers


@bp.errorhandler(Exception)
def error_page(exc: Exception) -> Any:
    """Errors as a page (never a traceback); status as the API's handler would give it."""
    if isinstance(exc, UiError):
        status, message = exc.status, str(exc)
    elif isinstance(exc, HTTPException):
        status, message = exc.code or 500, exc.description or exc.name
    else:
        status = error_status(exc)
        message = str(exc)
        if status == 500 or not isinstance(exc, LvsguardError):
            log.exception("internal error on %s %s", request.method, logfmt_value(request.path))
            status, message = 500, "internal error; the actuator's log has the details"
    if request.path.endswith(".json"):
        return {"error": message}, status
    return render_template("ui/error.html", message=message, status=status), status


@bp.after_request
def headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response
