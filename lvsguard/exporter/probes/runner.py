"""Runs the probe engine beside the exporter: its own thread, event loop and table reader.

The engine's thread enters the director's namespace (``director.netns``), so
its check sockets and its table reader live there; the publisher's thread is
started from the caller's thread and stays in the caller's namespace, where
the actuator is reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from contextlib import nullcontext
from dataclasses import dataclass

from lvsguard.config import Config, PublishConfig
from lvsguard.errors import ConfigError, ConfigProblem
from lvsguard.exporter.probes.engine import Damping, ProbeEngine
from lvsguard.exporter.probes.metrics import ProbeMetrics
from lvsguard.exporter.probes.plan import build_plan
from lvsguard.exporter.probes.publish import HTTPPublisher, Publisher
from lvsguard.exporter.source import ExporterReader
from lvsguard.ipvs.netns import entered
from lvsguard.logs import event
from lvsguard.secretfile import read_secret

log = logging.getLogger(__name__)


def read_token(publish: PublishConfig, env: dict[str, str] | None = None) -> str:
    """The token for the actuator: the token file's first secret, else $LVSGUARD_TOKEN, else none."""
    if not publish.token_file:
        return (env if env is not None else dict(os.environ)).get("LVSGUARD_TOKEN", "")
    try:
        text = read_secret(publish.token_file).decode("utf-8", "replace")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(publish.token_file, 0, 0, "probes.publish.token_file", f"cannot read: {exc.strerror}")]
        ) from None
    except ValueError as exc:  # others may read it
        raise ConfigError([ConfigProblem(publish.token_file, 0, 0, "probes.publish.token_file", str(exc))]) from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ConfigError([ConfigProblem(publish.token_file, 0, 0, "probes.publish.token_file", "holds no token")])
    return lines[0].split(":", 1)[-1] if ":" in lines[0] else lines[0]


@dataclass
class ProbeRunner:
    """A started engine; ``stop()`` cancels every check and waits for the thread."""

    engine: ProbeEngine
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    publisher: Publisher | None

    main: asyncio.Task[None]

    def stop(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.main.cancel)  # the engine's run() cancels every check on its way out
        except RuntimeError:
            pass  # the loop already ended
        self.thread.join(10)
        if self.publisher is not None:
            self.publisher.close()


def start(config: Config, netns: str | None, metrics: ProbeMetrics) -> ProbeRunner:
    """Start the checks of ``config.probes`` against the table of ``netns``."""
    probes = config.probes
    publisher: Publisher | None = None
    if probes.publish is not None:
        publisher = HTTPPublisher(
            probes.publish.url, mode=probes.publish.mode, token=read_token(probes.publish), names=config
        )
    engine = ProbeEngine(
        build_plan(probes),
        metrics=metrics,
        publisher=publisher,
        damping=Damping(probes.weight_min_step, probes.weight_min_interval),
        default_rate=probes.default_rate,
    )
    loop = asyncio.new_event_loop()
    reader = ExporterReader(netns, config.exporter.ipvs_source)  # opens on its first read, inside the namespace
    main = loop.create_task(engine.run(reader, probes.refresh))

    def run() -> None:
        with entered(netns) if netns else nullcontext():
            try:
                loop.run_until_complete(main)
            except asyncio.CancelledError:
                pass
            finally:
                reader.close()
                loop.close()
                event(log, logging.INFO, "probes_stopped")

    thread = threading.Thread(target=run, name="probe-engine", daemon=True)
    thread.start()
    event(
        log,
        logging.INFO,
        "probes_started",
        publish=probes.publish.mode if probes.publish else "metrics only",
        checks=len(probes.checks),
        default_tcp=probes.default_tcp,
    )
    return ProbeRunner(engine, loop, thread, publisher, main)
