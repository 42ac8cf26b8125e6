"""A real actuator serving a lab director, inside the test (or benchmark) process.

The kernel tests of the actuator, the probes, the console and HA all need the
same thing: the real Flask app over waitress, with its job threads running,
writing the director's real IPVS table through netlink. In-process rather than
a ``lvsguard actuator`` process because starting Python and importing pyroute2
costs about 2 s under UML.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lvsguard.actuator import limits
from lvsguard.actuator.app import create_app
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.ipvs.netlink import NetlinkIPVS


@contextmanager
def serving(
    app: Any, *, port: int = 0, threads: int = 4, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> Iterator[str]:
    """Serve a WSGI ``app`` over waitress on ``host`` in a thread; yields its base URL (on 127.0.0.1), and stops it for good.

    The server is built as ``lvsguard actuator`` builds it (``actuator.limits``),
    so tests meet the same connection, timeout and body limits. The stop order matters: waitress's worker threads pull the loop's trigger
    after each response, so they go first (a pull on a closed trigger is an
    EBADF in a worker, or a byte written into whatever file took its number);
    then the loop closes every channel from its own thread (closing from here
    races its select) and ends when none is left.
    """
    server = limits.create_server(app, host=host, port=port, threads=threads, tls=tls, asyncore_loop_timeout=0.05)
    thread = threading.Thread(target=server.run, name="waitress-loop", daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.effective_port}"
    finally:
        server.task_dispatcher.shutdown(timeout=5)
        try:
            server.trigger.pull_trigger(lambda: [channel.close() for channel in list(server._map.values())])
        except OSError:  # the trigger is closed already: no loop is left to wake
            server.close()
        thread.join(5)


@contextmanager
def running_actuator(settings: ActuatorSettings, netns: str, ledger_path: str, *, port: int = 0) -> Iterator[str]:
    """Serve an actuator for the IPVS table of ``netns`` on 127.0.0.1 (``port`` 0: a free one); yields its base URL."""
    kernel = NetlinkIPVS(netns)
    app = create_app(settings, kernel=kernel, ledger_path=ledger_path)
    state = app.extensions["lvsguard"]
    state.runner.begin()
    try:
        with serving(app, port=port) as url:
            yield url
    finally:
        state.runner.stop()
        kernel.close()
