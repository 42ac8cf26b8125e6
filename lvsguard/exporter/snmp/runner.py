"""Run the SNMP agent beside a synchronous program: its own event loop in a daemon thread.

The exporter's HTTP side is synchronous; the agent is asyncio. ``start_in_thread``
gives the agent a loop of its own, waits until it listens (or re-raises why it
could not), and returns a handle whose ``stop()`` shuts it down.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from lvsguard.exporter.snmp.agent import SnmpAgent
from lvsguard.exporter.snmp.settings import AgentSettings
from lvsguard.exporter.snmp.snapshot import SnapshotProvider


class RunningAgent:
    """An ``SnmpAgent`` serving from a daemon thread."""

    def __init__(self, agent: SnmpAgent, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.agent = agent
        self.loop = loop
        self.thread = thread

    @property
    def address(self) -> tuple[str, int]:
        return self.agent.address

    def stop(self, timeout: float = 10.0) -> None:
        asyncio.run_coroutine_threadsafe(self.agent.stop(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        self.loop.close()


def start_in_thread(
    settings: AgentSettings, provider: SnapshotProvider, *, timeout: float = 60.0, **agent_options: Any
) -> RunningAgent:
    """Start the agent in a new thread; raises what ``SnmpAgent.start`` raised (SnmpAgentError...)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="lvsguard-snmp", daemon=True)
    thread.start()
    agent = SnmpAgent(settings, provider, **agent_options)
    try:
        asyncio.run_coroutine_threadsafe(agent.start(), loop).result(timeout)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()
        raise
    return RunningAgent(agent, loop, thread)
