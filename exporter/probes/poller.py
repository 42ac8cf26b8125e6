"""The engine's own epoll set for the checks that run on bare sockets (tcp, plain http).

asyncio's ``sock_connect`` costs a future, a task step and two ``epoll_ctl``
calls per probe; at thousands of probes a second that is most of a probe's
CPU. Here each probe socket joins one epoll set owned by the engine, one-shot,
and that set's descriptor is the only thing registered with the event loop:
a ready socket costs one dictionary lookup and a call. Closing a socket takes
it out of the set (the kernel does that), so a probe costs one ``epoll_ctl``.

Linux only (``select.epoll``); elsewhere ``Poller.available()`` is False and
the engine runs every check as an asyncio task.
"""

from __future__ import annotations

import asyncio
import select
from typing import Callable

Ready = Callable[[int], None]  # gets the epoll event mask

IN = getattr(select, "EPOLLIN", 0)
OUT = getattr(select, "EPOLLOUT", 0)
_ONESHOT = getattr(select, "EPOLLONESHOT", 0)
_BATCH = 1024


class Poller:
    """Sockets waiting for one readiness event each; callbacks run on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._epoll = select.epoll()
        self._waiting: dict[int, Ready] = {}
        self._loop = loop
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    @staticmethod
    def available() -> bool:
        return hasattr(select, "epoll")

    def watch(self, fd: int, events: int, ready: Ready) -> None:
        """Call ``ready`` once when ``fd`` has one of ``events`` (a new fd)."""
        self._epoll.register(fd, events | _ONESHOT)
        self._waiting[fd] = ready

    def rewatch(self, fd: int, events: int, ready: Ready) -> None:
        """Wait again on an fd already watched (after its one event)."""
        self._epoll.modify(fd, events | _ONESHOT)
        self._waiting[fd] = ready

    def forget(self, fd: int) -> None:
        """Drop the callback of an fd about to be closed (closing takes it out of the set)."""
        self._waiting.pop(fd, None)

    def __len__(self) -> int:
        return len(self._waiting)

    def _dispatch(self) -> None:
        waiting = self._waiting
        for fd, events in self._epoll.poll(0, _BATCH):
            ready = waiting.pop(fd, None)
            if ready is not None:
                try:
                    ready(events)
                except Exception as exc:  # noqa: BLE001 - one probe's bug must not drop the others' events
                    self._loop.call_exception_handler({"message": f"probe callback for fd {fd} failed", "exception": exc})

    def close(self) -> None:
        if not self._epoll.closed:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        self._waiting.clear()
