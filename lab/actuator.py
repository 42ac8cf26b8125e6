"""A real actuator serving a lab director, inside the test (or benchmark) process.

The kernel tests of the actuator, the probes, the console and HA all need the
same thing: the real Flask app over waitress, with its job threads running,
writing the director's real IPVS table through netlink. In-process rather than
a ``lvsguard actuator`` process because starting Python and importing pyroute2
costs about 2 s under UML.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import waitress

from actuator.app import create_app
from actuator.settings import ActuatorSettings
from lvsguard.ipvs.netlink import NetlinkIPVS


@contextmanager
def running_actuator(settings: ActuatorSettings, netns: str, ledger_path: str, *, port: int = 0) -> Iterator[str]:
    """Serve an actuator for the IPVS table of ``netns`` on 127.0.0.1 (``port`` 0: a free one); yields its base URL."""
    kernel = NetlinkIPVS(netns)
    app = create_app(settings, kernel=kernel, ledger_path=ledger_path)
    state = app.extensions["lvsguard"]
    state.runner.begin()
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=4, asyncore_loop_timeout=0.05)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        try:  # close every channel from the loop's own thread, then the loop ends
            server.trigger.pull_trigger(lambda: [channel.close() for channel in list(server._map.values())])
        except OSError:  # EBADF, seen once in the lab: the trigger was already closed, no loop is left to wake
            server.close()
        thread.join(5)
        server.task_dispatcher.shutdown()
        state.runner.stop()
        kernel.close()
