"""The passive detector's thread: read the connection table (or conntrack events), judge, count, log the verdicts.

With ``source: table`` it reads /proc/net/ip_vs_conn every interval. With
``source: conntrack`` it reads ctnetlink events as they come
(``exporter.passive.ctevents``) and judges every interval, and at once
(within ``ctevents.BATCH``) when a handshake failed.

Each verdict is a log line (``passive_verdict``), the ``lvs_backend_passive_*``
series, and, with a ``Fusion`` (probes publishing to the actuator), a
quarantine through the actuator that an active check releases
(``exporter.passive.fusion``); ``on_verdict`` sees every ``Verdict`` too.

With a reader of the IPVS table (``weights``; the exporter gives one to the
``table`` source), each pass also reads the weights, and judges only the real
servers that take new connections (``Serving``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection

from lvsguard.config.passive import CONNTRACK, PassiveConfig
from lvsguard.errors import LvsguardError
from lvsguard.exporter.passive.conntable import Backend, ConnTableReader, PassCounts
from lvsguard.exporter.passive.ctevents import (
    GROUP_DESTROY,
    GROUP_NEW,
    GROUP_UPDATE,
    ConntrackEvents,
    conntrack_enabled,
    open_socket,
)
from lvsguard.exporter.passive.fusion import Fusion
from lvsguard.exporter.passive.metrics import PassiveMetrics
from lvsguard.exporter.passive.rule import Judge, RuleSettings, Verdict
from lvsguard.ipvs import TableReader
from lvsguard.ipvs.netns import entered
from lvsguard.logs import event
from lvsguard.model import ServiceKey, Table

log = logging.getLogger("lvsguard.exporter.passive")

CONN_TABLE = "/proc/thread-self/net/ip_vs_conn"  # /proc/net is the main thread's namespace, not this one's


def rule_settings(config: PassiveConfig) -> RuleSettings:
    return RuleSettings(
        min_failures=config.min_failures,
        min_passes=config.min_passes,
        min_share=config.min_share,
        margin=config.margin,
        chance=config.chance,
        window=config.window,
        peer_span=config.handshake_timeout,
        max_out=config.max_out,
        holddown_min=config.holddown_min,
        holddown_max=config.holddown_max,
    )


def opener(netns: str | None) -> Callable[[str], int]:
    """Opens the table as seen from ``netns``: a /proc/net file shows the namespace of the thread that opens it."""

    def open_in(path: str) -> int:
        if netns is None:
            return os.open(path, os.O_RDONLY)
        with entered(netns):
            return os.open(path, os.O_RDONLY)

    return open_in


def without(counts: PassCounts, out: Collection[Backend]) -> PassCounts:
    """``counts`` less the real servers a verdict holds out: their active check, not a stray connection, judges them.

    IPVS can still send a held real server a connection (a client port
    reused while its old entry lives): its refusal must not renew the
    verdict and double the hold-down of a server that never came back.
    """
    if not out:
        return counts
    kept = PassCounts(entries=counts.entries, bytes=counts.bytes, complete=counts.complete)
    kept.attempts.update({b: n for b, n in counts.attempts.items() if b not in out})
    for reason, counter in counts.failures.items():
        kept.failures[reason].update({b: n for b, n in counter.items() if b not in out})
    return kept


class Serving:
    """Which real servers take new connections, from the weights; the others are not judged.

    A real server at weight 0 (an operator's quarantine or drain, a failed
    check's, another director's verdict) gets no new connection, but the
    handshakes it had still end, and under a SYN flood they all time out:
    judged, they would look like a dead server. A real server back at a
    weight (or new) has the opposite bias for one handshake timeout: its
    handshakes succeed at once and the flood's fail only a handshake timeout
    later, so its failure share is low and, as a peer, it would make the
    others' look high. So a real server is judged, and counts as a peer, only
    from one handshake timeout after it got a weight; when it drops to weight
    0 its recent passes are forgotten. Only TCP services by address are read:
    the detector names a fwmark service's real servers by address and port,
    which the table does not, and they are judged as before.
    """

    def __init__(self, read: Callable[[], Table], settle: float) -> None:
        self.read = read
        self.settle = settle  # seconds from a real server's weight to its first judged pass
        self._since: dict[Backend, float] | None = None  # real servers at a weight -> since when; None before a read
        self._services: set[ServiceKey] = set()

    def update(self, now: float) -> list[Backend]:
        """Read the weights; the real servers that stopped taking connections since the last read."""
        table = self.read()
        since = {}
        services = set()
        for svc in table.services:
            if svc.key.protocol != "TCP" or svc.key.fwmark:
                continue
            services.add(svc.key)
            for rs in svc.real_servers:
                if rs.weight > 0:
                    backend = (svc.key, rs.key)
                    known = self._since.get(backend, now) if self._since is not None else float("-inf")
                    since[backend] = known
        stopped = [b for b in self._since or () if b not in since]
        self._since, self._services = since, services
        return stopped

    def unjudged(self, counts: PassCounts, now: float) -> set[Backend]:
        """The real servers of ``counts`` not to judge: out, gone, or back for less than ``settle`` seconds."""
        if self._since is None:
            return set()
        seen = set(counts.attempts)
        for counter in counts.failures.values():
            seen.update(counter)
        limit = now - self.settle
        return {b for b in seen if b[0] in self._services and self._since.get(b, math.inf) > limit}


class PassiveDetector:
    """Reads, judges and records on its own thread; ``tick`` is one interval's work (tests call it directly)."""

    def __init__(
        self,
        config: PassiveConfig,
        netns: str | None,
        metrics: PassiveMetrics,
        *,
        on_verdict: Callable[[Verdict], None] | None = None,
        fusion: Fusion | None = None,
        path: str = CONN_TABLE,
        clock: Callable[[], float] = time.monotonic,
        weights: TableReader | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.on_verdict = on_verdict
        self.fusion = fusion
        self.clock = clock
        self.judge = Judge(rule_settings(config))
        self.netns = netns
        self.reader = ConnTableReader(
            path,
            max_entries=config.max_entries,
            handshake_timeout=config.handshake_timeout,
            clock=clock,
            opener=opener(netns),
        )
        self.events: ConntrackEvents | None = None  # source conntrack: opened by the first tick
        self.weights = weights  # closed by stop()
        self.serving = Serving(weights.read, config.handshake_timeout) if weights is not None else None
        self._weights_failing = False
        self.verdicts: list[Verdict] = []  # every verdict so far, newest last (bounded below)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = ""

    def tick(self) -> list[Verdict]:
        """Read the table once and judge what it shows; the verdicts of this pass. Then release what is up again."""
        verdicts = self._judge()
        if self.fusion is not None:  # also while paused: a release waits on the active checks, not on the table
            self.fusion.poll(self.judge, self.clock())
        return verdicts

    def _events(self) -> ConntrackEvents:
        """The ctnetlink socket, opened in the director's namespace once (an OSError says why it cannot be)."""
        if self.events is None:
            with entered(self.netns):
                sock = open_socket(groups=GROUP_NEW | GROUP_UPDATE)
                try:
                    refusals = open_socket(groups=GROUP_DESTROY)
                except OSError:
                    sock.close()
                    raise
                enabled = conntrack_enabled()
            self.events = ConntrackEvents(
                sock, refusals=refusals, handshake_timeout=self.config.handshake_timeout, clock=self.clock
            )
            if not enabled:
                event(
                    log,
                    logging.WARNING,
                    "passive_conntrack_off",
                    reason="net.ipv4.vs.conntrack is not 1: IPVS keeps no conntrack entries, no events will come",
                )
        return self.events

    def _read(self) -> list[PassCounts]:
        if self.config.source == CONNTRACK:
            return self._events().read_passes()
        return [self.reader.read_pass()]

    def _judge(self) -> list[Verdict]:
        try:
            passes = self._read()
        except OSError as exc:
            what = "conntrack events" if self.config.source == CONNTRACK else self.reader.path
            self._state(f"cannot read {what}: {exc.strerror or exc}")
            return []
        verdicts = []
        for counts in passes:
            verdicts += self._judge_pass(counts)
        return verdicts

    def _judge_pass(self, counts: PassCounts) -> list[Verdict]:
        if not counts.complete:
            self._state(f"more than {self.reader.max_entries} connections in the table: passive detection paused")
            self.metrics.record(counts, [], self.judge.held_until())
            return []
        self._state("")
        now = self.clock()
        out = set(self.fusion.out) if self.fusion is not None else set()
        if self.serving is not None:
            out |= self._unjudged(self.serving, counts, now)
        verdicts = self.judge.observe(without(counts, out), now)
        self.metrics.record(counts, verdicts, self.judge.held_until())
        for v in verdicts:
            if self.fusion is not None:  # first: the publisher's thread posts while this one logs
                self.fusion.verdict(v)
            event(
                log,
                logging.WARNING,
                "passive_verdict",
                service=str(v.service),
                real_server=str(v.real_server),
                reason=v.reason,
                failures=v.failures,
                attempts=v.attempts,
                share=f"{v.share:.2f}",
                peer_share=f"{v.peer_share:.2f}",
                holddown=f"{v.holddown:g}",
            )
            if self.on_verdict is not None:
                self.on_verdict(v)
        if verdicts:
            self.verdicts = (self.verdicts + verdicts)[-1000:]
        return verdicts

    def _unjudged(self, serving: Serving, counts: PassCounts, now: float) -> set[Backend]:
        """The real servers ``serving`` leaves out of this pass (none when the weights cannot be read: logged once)."""
        try:
            for backend in serving.update(now):
                self.judge.forget(backend)
        except (OSError, LvsguardError) as exc:
            if not self._weights_failing:
                event(log, logging.WARNING, "passive_weights_unread", reason=str(exc)[:300])
            self._weights_failing = True
            return set()
        self._weights_failing = False
        return serving.unjudged(counts, now)

    def _state(self, problem: str) -> None:
        """Log a problem once per change, and its end."""
        if problem == self._failing:
            return
        if problem:
            event(log, logging.WARNING, "passive_paused", reason=problem)
        else:
            event(log, logging.INFO, "passive_resumed")
        self._failing = problem

    def run(self) -> None:
        next_at = self.clock()
        while not self._stop.is_set():
            self.tick()
            if self.clock() >= next_at:
                next_at = max(next_at + self.config.interval, self.clock())  # after a stall, no burst of catch-ups
            if self.events is not None:  # until the next pass, or a failure: judged at once
                try:
                    self.events.collect(next_at, self._stop.wait)
                except OSError:
                    self._stop.wait(max(0.0, next_at - self.clock()))  # the next tick reads and logs it
            else:
                self._stop.wait(max(0.0, next_at - self.clock()))

    def start(self) -> PassiveDetector:
        self._thread = threading.Thread(target=self.run, name="passive-detector", daemon=True)
        self._thread.start()
        event(
            log,
            logging.INFO,
            "passive_started",
            source=self.config.source,
            interval=f"{self.config.interval:g}",
            max_entries=self.config.max_entries,
            handshake_timeout=f"{self.config.handshake_timeout:g}",
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.fusion is not None:
            self.fusion.publisher.close()  # its own sender (``exporter.main.start_passive``): what is queued goes out
        if self._thread is None or not self._thread.is_alive():
            if self.events is not None:
                self.events.close()
            if self.weights is not None:
                self.weights.close()
