"""Exceptions as HTTP replies: the status each error class gets, and the app's one JSON error handler.

Apart from the app factory and the blueprints (as flaskr keeps ``db.py`` apart), so
that the console's error page and the app's handler give the same status without
either importing the other.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from flask import request
from werkzeug.exceptions import HTTPException

from lvsguard.errors import (
    AlreadyExists,
    ApiError,
    InvalidRequest,
    IPVSUnavailable,
    KernelError,
    LvsguardError,
    NoSuchDestination,
    NoSuchService,
    NotPermitted,
    PayloadError,
    PolicyRefused,
    TooManyFailures,
    Unauthorized,
)
from lvsguard.logs import logfmt_value

log = logging.getLogger(__name__)

ERROR_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (PayloadError, 400),
    (TooManyFailures, 429),
    (Unauthorized, 401),
    (PolicyRefused, 409),
    (NoSuchService, 404),
    (NoSuchDestination, 404),
    (AlreadyExists, 409),
    (InvalidRequest, 400),
    (NotPermitted, 503),  # CAP_NET_ADMIN missing: an operator fixes it, Alertmanager's retry then succeeds
    (IPVSUnavailable, 503),
    (KernelError, 503),
    (sqlite3.OperationalError, 503),  # the ledger is locked or its disk is full: retry later
)
"""Exception class -> HTTP status, first match wins; 5xx only where a retry can help."""


def error_status(exc: BaseException) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def handle_error(exc: Exception) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The one error handler: exception class -> status and a JSON body (never a traceback)."""
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPException):
        return {"error": exc.description or exc.name}, exc.code or 500, headers
    status = error_status(exc)
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, (ApiError, PayloadError)):
        body = {"error": exc.message, "path": exc.path}
    elif isinstance(exc, PolicyRefused):
        body["reason"] = exc.reason
    elif isinstance(exc, TooManyFailures):
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="lvsguard"'
    elif isinstance(exc, sqlite3.OperationalError):
        body = {"error": f"ledger: {exc}"}
    if status == 503:
        headers["Retry-After"] = "5"
    if status == 500 or not isinstance(exc, (LvsguardError, sqlite3.OperationalError)):
        log.exception("internal error on %s %s", request.method, logfmt_value(request.path))
        body = {"error": "internal error; the actuator's log has the details"}
        status = 500
    return body, status, headers
