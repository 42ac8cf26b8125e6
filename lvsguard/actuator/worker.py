"""One background thread of the actuator beside the app: the cluster's watches, the fleet announcer, the drains.

Each is a :class:`Worker`: ``start()`` once the app runs (``JobRunner.begin``)
runs its ``_run`` in a daemon thread, ``stop()`` at exit sets ``_stop``
(which ``_run`` waits on between rounds), wakes it (``_wake``, for a worker
that waits on an event of its own) and joins the thread.
"""

from __future__ import annotations

import threading


class Worker:
    """A daemon thread named ``thread_name`` that runs ``_run`` until ``stop()``."""

    thread_name = "lvsguard-worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask ``_run`` to end and wait for it up to ``timeout`` seconds."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def _wake(self) -> None:
        """End the wait of ``_run`` when it waits on something else than ``_stop``."""

    def _run(self) -> None:
        raise NotImplementedError
