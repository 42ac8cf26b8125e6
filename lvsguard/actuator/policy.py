"""Every safety rule of the actuator, in one place, for every source.

``actuator.actions`` asks :meth:`Policy.check` before each kernel write, whether
the write came from Alertmanager, the API or the CLI. A refusal is a
:class:`~lvsguard.errors.PolicyRefused` whose message is what an operator reads
("refused: service web would have 1 healthy real server, min 2") and whose
``reason`` is what metrics and the API use:

- ``allow_list``: only real servers in the kernel table are acted on (one that
  is not is answered ``not_found`` by the actions layer), and ``add`` takes only
  the real servers the config lists for a service, when it lists some;
- ``quorum``: the service would have fewer real servers with a non-zero weight
  than ``min_healthy`` (a count, or a fraction of its real servers rounded up);
- ``hold_down``: the actuator changed this real server's weight less than
  ``hold_down`` seconds ago (against flapping; both directions);
- ``managed``: ``weight``, ``add`` or ``remove`` on a service whose table the
  config owns (``table.manage``): the config decides (``actuator.actions.table``).
- ``rate_limit``: more than ``rate_limit.actions`` capacity-removing writes in
  ``rate_limit.per`` seconds, over all services.

Restores are never refused by the quorum or the rate limit: both protect
capacity, and a restore adds capacity. ``force`` (an authenticated operator's
explicit override) skips the hold-down and the rate limit, never the quorum.
``dry_run`` is not a refusal: the actions layer decides and records, but does not write.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.actuator.targets import Target
from lvsguard.errors import PolicyRefused, RefusedForNow
from lvsguard.model import RealServer, RealServerKey

REASONS = ("allow_list", "quorum", "hold_down", "rate_limit", "managed")


class Standing(Protocol):
    """A service as the rules see it (``actions.ServiceView``): its real servers and how many are in."""

    healthy: int  # real servers with a non-zero weight
    total: int  # real servers

    def real_server(self, key: RealServerKey) -> RealServer | None: ...


class Policy:
    """The safety rules over the current kernel view; holds the rate-limit window."""

    def __init__(self, settings: ActuatorSettings, *, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock
        self._writes: deque[float] = deque()
        self._lock = threading.Lock()

    @property
    def dry_run(self) -> bool:
        return self.settings.dry_run

    def check_allowed(self, target: Target, service: Standing | None) -> None:
        """The real server is in the kernel table or listed in the config."""
        if service is not None and service.real_server(target.real_server) is not None:
            return
        if target.real_server in self.settings.real_servers_allowed.get(target.service, frozenset()):
            return
        raise PolicyRefused(
            f"refused: {self._name(target)} is neither in the kernel table nor in the config", reason="allow_list"
        )

    def check_unmanaged(self, target: Target) -> None:
        """``weight``, ``add``, ``remove``, ``drain --delete`` on a service the config's table owns: the config decides.

        A change made here would be undone by the next apply (a reload, a
        restart): it is refused instead, so no reboot silently undoes an
        operator's action. Holds (quarantine, drain, restore) are not refused:
        the apply keeps them.
        """
        if self.settings.table.manage and target.service in self.settings.desired:
            raise PolicyRefused(
                f"refused: {self.settings.names.describe_service(target.service)} is managed by the config "
                "(table.manage): change the config and run 'lvsguard apply'; a quarantine or a drain is kept",
                reason="managed",
            )

    def check_add(self, target: Target) -> None:
        """``add`` of a real server: a service whose config lists real servers accepts only those."""
        listed = self.settings.real_servers_allowed.get(target.service)
        if listed is not None and target.real_server not in listed:
            raise PolicyRefused(
                f"refused: {target.real_server} is not among the real servers the config lists for "
                f"{self.settings.names.describe_service(target.service)}",
                reason="allow_list",
            )

    def check_quorum(self, target: Target, service: Standing, *, removing: bool = False) -> None:
        """Taking ``target`` out (weight 0, or deleting it) must leave ``min_healthy`` real servers in."""
        current = service.real_server(target.real_server)
        if current is None or current.weight == 0:
            return
        healthy = service.healthy - 1
        quorum = self.settings.quorum_for(target.service)
        required = quorum.required(service.total - (1 if removing else 0))
        if healthy < required:
            plural = "" if healthy == 1 else "s"
            raise PolicyRefused(
                f"refused: service {self.settings.names.describe_service(target.service)} would have "
                f"{healthy} healthy real server{plural}, min {required}"
                + (f" ({quorum} of {service.total})" if quorum.fraction else ""),
                reason="quorum",
            )

    def check_hold_down(self, target: Target, changed_at: float | None, *, force: bool = False) -> None:
        """The actuator last changed this real server at ``changed_at`` (epoch seconds)."""
        hold_down = self.settings.hold_down
        if force or hold_down <= 0 or changed_at is None:
            return
        age = self.clock() - changed_at
        if age < hold_down:
            wait = hold_down - age
            raise RefusedForNow(
                f"refused: {self._name(target)} changed {age:.0f} s ago, hold-down {hold_down:g} s "
                f"(retry in {math.ceil(wait)} s)",
                reason="hold_down",
                retry_after=wait,
            )

    def check_rate(self, *, force: bool = False) -> None:
        """The global limit on capacity-removing writes."""
        limit = self.settings.rate_limit
        if force or limit.actions <= 0:
            return
        with self._lock:
            now = self.clock()
            self._prune(now)
            if len(self._writes) >= limit.actions:
                wait = self._writes[0] + limit.per - now
                raise RefusedForNow(
                    f"refused: rate limit of {limit.actions} actions per {limit.per:g} s reached "
                    f"(retry in {math.ceil(wait)} s)",
                    reason="rate_limit",
                    retry_after=wait,
                )

    def record_write(self) -> None:
        """Count one capacity-removing write against the rate limit."""
        with self._lock:
            now = self.clock()
            self._prune(now)
            self._writes.append(now)

    def check_take_out(
        self,
        target: Target,
        service: Standing,
        changed_at: float | None,
        *,
        force: bool = False,
        removing: bool = False,
    ) -> None:
        """All the rules for a write that removes capacity (weight 0, delete), in the order an operator reads them."""
        self.check_allowed(target, service)
        self.check_quorum(target, service, removing=removing)
        self.check_hold_down(target, changed_at, force=force)
        current = service.real_server(target.real_server)
        if current is not None and current.weight > 0:
            self.check_rate(force=force)

    def check_bring_back(
        self, target: Target, service: Standing, changed_at: float | None, *, force: bool = False
    ) -> None:
        """The rules for a restore: the allow-list and the hold-down."""
        self.check_allowed(target, service)
        self.check_hold_down(target, changed_at, force=force)

    def _prune(self, now: float) -> None:
        per = self.settings.rate_limit.per
        while self._writes and self._writes[0] <= now - per:
            self._writes.popleft()

    def _name(self, target: Target) -> str:
        names = self.settings.names
        rs = names.real_server_name(target.service, target.real_server)
        rs_text = f"{rs} ({target.real_server})" if rs else str(target.real_server)
        return f"real server {rs_text} of {names.describe_service(target.service)}"
