"""The actuator's words for results, sources, hold kinds and states, one enum each.

``StrEnum``: a member is its string, so JSON replies, metric label values, the
ledger's columns and the audit trail carry the same text as before, and text
read back from the ledger compares equal to a member.
"""

from __future__ import annotations

from enum import StrEnum


class Result(StrEnum):
    """What one action did (the ``result`` of a reply, an audit event and ``lvsguard_actions_total``)."""

    APPLIED = "applied"
    """The kernel was written or a job started."""
    RECORDED = "recorded"
    """The ledger changed but the kernel needed no write (another holder keeps the real server out)."""
    NOOP = "noop"
    """Nothing to do (a repeat)."""
    REFUSED = "refused"
    """A safety rule said no (``reason``)."""
    DRY_RUN = "dry_run"
    """Would have written."""
    NOT_FOUND = "not_found"
    """No such service or real server."""
    DRIFT = "drift"
    """The kernel weight was changed by hand and is left as it is."""
    ERROR = "error"
    """The kernel failed."""
    IGNORED = "ignored"
    """An alert the rules give no action (webhook only)."""
    INVALID_TARGET = "invalid_target"
    """An alert whose labels name no real server (webhook only)."""


RESULTS = tuple(r.value for r in Result if r not in (Result.IGNORED, Result.INVALID_TARGET))
"""The results of an action on a real server or the director (the API's replies)."""

WARNINGS = (Result.REFUSED, Result.DRIFT, Result.ERROR)
"""Results logged at WARNING, each on its own line even in a big batch."""


class Source(StrEnum):
    """Who asked (``Actor.source``; the ``source`` label and audit column)."""

    ALERTMANAGER = "alertmanager"
    PASSIVE = "passive"
    """An alert from the exporter's passive detector (``lvsguard_source=passive``): held and released as an alert."""
    API = "api"
    CLI = "cli"
    UI = "ui"
    ACTUATOR = "actuator"
    """The actuator itself: retries, reconciliation, job steps."""
    CLUSTER = "cluster"
    """A hold of the cluster store (``cluster.store: etcd``), holder ``<director>/<source> <name>``: held as an
    alert's (a refusal waits), released when its cluster record goes (``actions.shared``)."""


class HoldKind(StrEnum):
    """Whose hold: an alert's (holder = fingerprint) or an operator's (holder = token name)."""

    ALERT = "alert"
    MANUAL = "manual"


class HoldState(StrEnum):
    """A hold's life in the ledger."""

    ACTIVE = "active"
    RELEASED = "released"
    REMOVED = "removed"


class BackendState(StrEnum):
    """What the actuator did to a real server it tracks (the ledger's ``backends`` row)."""

    OUT = "out"
    """Taken out: weight 0, the original weight recorded."""
    RESTORING = "restoring"
    """Coming back: a restore whose write is pending, or a slow start ramping up."""


class JobKind(StrEnum):
    DRAIN = "drain"
    SLOW_START = "slow_start"


class JobState(StrEnum):
    """A job's state; the ending ones are also its result in the audit trail and the metrics."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class Confirmed(StrEnum):
    """Where an operator's cluster action took effect, director by director (a reply's ``directors``)."""

    APPLIED = "applied"
    """That director's kernel shows it."""
    PENDING = "pending"
    """Not yet, after the reply's wait (refused there for now, or slow)."""
    STALE = "stale"
    """That director has not announced itself lately: not waited for."""
