"""The kernel table as a session sees it, and the views of big services shared between sessions."""

from __future__ import annotations

import time
from collections.abc import Callable

from lvsguard.model import RealServer, RealServerKey, ServiceKey

VIEW_TTL = 0.5
"""Seconds a webhook session may reuse the view of a big service read by an earlier session."""
VIEW_CACHE_MIN = 64
"""Real servers from which a service's view is worth caching (its read costs O(real servers))."""


class ServiceView:
    """One service of the session's kernel view, indexed by real server (O(1) per alert in a big batch)."""

    def __init__(self, key: ServiceKey, real_servers: tuple[RealServer, ...]):
        self.key = key
        self.servers = {rs.key: rs for rs in real_servers}
        self.healthy = sum(1 for rs in real_servers if rs.weight > 0)
        self.total = len(self.servers)

    def real_server(self, key: RealServerKey) -> RealServer | None:
        return self.servers.get(key)

    def update(self, rs: RealServer) -> None:
        old = self.servers.get(rs.key)
        self.healthy += (rs.weight > 0) - (old is not None and old.weight > 0)
        self.servers[rs.key] = rs


class SharedViews:
    """Views of big services (``VIEW_CACHE_MIN``) by read time; only used under the action layer's lock.

    ``clock`` is monotonic seconds (a test moves it to age a view).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._views: dict[ServiceKey, tuple[float, ServiceView]] = {}

    def fresh(self, key: ServiceKey, now: float) -> ServiceView | None:
        """The shared view of ``key`` if it was read less than ``VIEW_TTL`` seconds before ``now``."""
        entry = self._views.get(key)
        if entry is not None and now - entry[0] < VIEW_TTL:
            return entry[1]
        return None

    def get(self, key: ServiceKey) -> ServiceView | None:
        """The shared view of ``key``, whatever its age; None when there is none."""
        entry = self._views.get(key)
        return entry[1] if entry is not None else None

    def remember(self, view: ServiceView, read_at: float) -> None:
        """Share a big service's view with later cached sessions (writes update it in place)."""
        if view.total >= VIEW_CACHE_MIN:
            self._views[view.key] = (read_at, view)
        else:
            self._views.pop(view.key, None)

    def forget(self, key: ServiceKey) -> None:
        self._views.pop(key, None)

    def clear(self) -> None:
        self._views.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._views
