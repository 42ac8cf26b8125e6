"""The only code that writes to IPVS: quarantine, restore, drain, add, remove, set weight, failover.

Webhook, API, console and CLI all come here, so every write goes through the
ledger and :mod:`actuator.policy`, under one lock (SQLite and the kernel see one
writer). Callers make one call on :class:`Actions` and get an :class:`Outcome`
back; the lock, the kernel and the views stay inside (``writer``).

The model is *desired state*: holds (one per alert fingerprint or manual
holder) say that a real server should be out; the ``backends`` table says what
the actuator did to the kernel. Every operation records the intent, then
converges the two: take the real server out when it has a hold and is in, bring
it back when its last hold is gone. A refused convergence (quorum, hold-down,
rate limit) is retried by :meth:`Actions.retry_pending` while the hold lasts,
which is how "applied later, when the quorum allows it and the alert still
fires" works.

Order of writes for crash safety: ledger intent (``write_pending``) committed,
kernel write, ledger confirmation committed. :meth:`Actions.reconcile` at start
finishes or reports whatever a kill -9 interrupted. A kernel weight that differs
from the ledger with no write pending was changed by hand: it is reported
(audit ``drift``) and never overwritten.

One module per job:

- ``holds``: converge holds (quarantine, drain, restore, the retry of refusals);
- ``steps``: job steps (drain, slow start);
- ``members``: weights and membership (set a weight, add, remove);
- ``director``: failover;
- ``reconcile``: the reconciliation at start and in every retry round;
- ``table``: the table reconciler (``table.manage``): the config's table applied, the holds winning;
- ``session``: the view of the kernel, the crash-safe writes and the record of each decision;
- ``writer``: :class:`Actions`, the door.
"""

from lvsguard.actuator.actions.outcome import ACTUATOR, Actor, Kernel, Outcome, Recorder, holder_text
from lvsguard.actuator.actions.steps import ramp_weight
from lvsguard.actuator.actions.view import VIEW_CACHE_MIN, VIEW_TTL, ServiceView
from lvsguard.actuator.actions.writer import Actions, Batch, LedgerSource
from lvsguard.actuator.states import RESULTS, Result, Source

__all__ = [
    "ACTUATOR",
    "RESULTS",
    "VIEW_CACHE_MIN",
    "VIEW_TTL",
    "Actions",
    "Actor",
    "Batch",
    "Kernel",
    "LedgerSource",
    "Outcome",
    "Recorder",
    "Result",
    "ServiceView",
    "Source",
    "holder_text",
    "ramp_weight",
]
