"""The engine's own epoll set for the checks that run on bare sockets (tcp, plain http).

asyncio's ``sock_connect`` costs a future, a task step and two ``epoll_ctl``
calls per probe; at thousands of probes a second that is most of a probe's
CPU. Here each probe socket joins one epoll set owned by the engine, one-shot,
and that set's descriptor is the only thing registered with the event loop:
a ready socket costs one dictionary lookup and a call. Closing a socket takes
it out of the set (the kernel does that), so a probe costs one ``epoll_ctl``.

``now`` is the monotonic time of the batch being handled, read once per batch
(by ``dispatch``, or set by the engine's scheduler for the probes it starts): a probe
takes its start and end times from it instead of reading the clock itself.
Under UML every clock read is a system call of 20-100 us.

Linux only (``select.epoll``); elsewhere ``Poller.available()`` is False and
the engine runs every check as an asyncio task.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable

Ready = Callable[[int], None]  # gets the epoll event mask

IN = getattr(select, "EPOLLIN", 0)
OUT = getattr(select, "EPOLLOUT", 0)
FAILED = getattr(select, "EPOLLERR", 0) | getattr(select, "EPOLLHUP", 0)  # a socket error is pending (SO_ERROR has it)
_ONESHOT = getattr(select, "EPOLLONESHOT", 0)
_BATCH = 1024


class Poller:
    """Sockets waiting for one readiness event each; callbacks run on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._epoll = select.epoll()
        self._waiting: dict[int, Ready] = {}
        self._loop = loop
        self.now = time.monotonic()  # the time of the batch of events (or of starts) being handled
        loop.add_reader(self._epoll.fileno(), self.dispatch)

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

    def dispatch(self) -> int:
        """Run the callbacks of the sockets ready now; how many there were."""
        ready_now = self._epoll.poll(0, _BATCH)
        if not ready_now:
            return 0
        self.now = time.monotonic()
        waiting = self._waiting
        for fd, events in ready_now:
            ready = waiting.pop(fd, None)
            if ready is not None:
                try:
                    ready(events)
                except Exception as exc:
                    self._loop.call_exception_handler(
                        {"message": f"probe callback for fd {fd} failed", "exception": exc}
                    )
        return len(ready_now)

    def close(self) -> None:
        if not self._epoll.closed:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        self._waiting.clear()
