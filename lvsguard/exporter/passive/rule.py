"""The verdict rule: is a real server failing its handshakes, or are the clients failing theirs?

Pure: it is fed a pass's counts and the time, and answers with verdicts. A
client-side failure (a SYN flood from spoofed addresses, a port scan, clients
that abandon or reset their own handshakes) fails across all real servers of
a service alike; a dead real server fails alone. So a real server is judged by
its failure *share*, against the shares of its peers in the same service:

1. its newest passes (any number of them within ``window`` seconds) hold at
   least ``min_failures`` failed handshakes, in at least ``min_passes`` of
   them (a dead server keeps failing; a burst in one pass is what floods and
   scheduler artifacts look like), at least ``min_share`` of its attempts;
2. its peers (the other real servers of the service with traffic in the
   window, for at least ``peer_span`` seconds of it) failed a share at least
   ``margin`` lower: their median share over the window, and over the same
   passes (clients' failures come in bursts); with no peer traffic there is
   nothing to compare and no verdict. A real server that only just got
   traffic (new, back from weight 0) has a share of a pass or two, and under
   a flood a low one (its handshakes succeed at once, the flood's fail a
   handshake timeout later): as a peer it would make the others' look high;
3. so many failures are unlikely to be the clients' doing: if each attempt
   failed with the peers' share (at least 1 / (the peers' attempts + 1)), the
   chance of as many failures or more is below ``chance``. Clients that fail
   often (a flood, resets) thus need more evidence against one server, and a
   dead server among clean peers is out after two or three failed requests;
4. at most ``max_out`` of the service's real servers are under a verdict at
   once (the actuator's quorum still applies; this keeps the detector itself
   from calling a whole service dead);
5. not while a hold-down from an earlier verdict runs. A verdict holds the
   real server down for ``holddown_min`` seconds; a real server that fails
   again within one hold-down of its release gets twice the last one, up to
   ``holddown_max`` (DPVS's inhibit period doubles the same way), so a
   flapping server is not toggled every tick.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from lvsguard.exporter.passive.conntable import REASONS, REFUSED, Backend, PassCounts
from lvsguard.model import RealServerKey, ServiceKey

TIMEOUTS_MIN = 2
"""Failed handshakes, in as many passes, that timeouts alone need, whatever ``min_failures`` and ``min_passes`` say.

A refusal is the real server's own answer, so a rule may act on one
(``min_failures: 1``); an unanswered handshake may be a real server that
died, or a director or host that stalled past the handshake timeout (seen
in the lab under load: one timeout of two handshakes, peers clean, gave a
verdict on the single-failure rule).
"""


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """The rule's parameters (the config's ``passive`` section)."""

    min_failures: int = 2  # failed handshakes a verdict needs at least
    min_passes: int = 2  # passes in which they failed, at least: one burst is the clients' signature
    min_share: float = 0.5  # of the real server's recent attempts that failed
    margin: float = 0.4  # how much the real server's share exceeds its peers' median share
    chance: float = 1e-6  # most probability that the failures are the clients' doing, for a verdict
    window: float = 10.0  # seconds of history: the peers' shares and the longest span
    peer_span: float = 0.0  # seconds of history a peer needs to count (the detector: its handshake timeout)
    max_out: float = 0.5  # most of a service's real servers under a verdict at once
    holddown_min: float = 5.0  # seconds of the first hold-down
    holddown_max: float = 3600.0  # seconds: the doubling stops here


@dataclass(frozen=True, slots=True)
class Verdict:
    """A real server failing its clients' handshakes: what the actuator fusion consumes.

    ``share`` and ``peer_share`` are fractions 0..1; ``holddown`` is seconds,
    ``at`` the rule's clock (monotonic seconds) when it was given.
    """

    service: ServiceKey
    real_server: RealServerKey
    reason: str  # the commonest failure in the span: "refused" or "timeout"
    failures: int
    attempts: int
    share: float
    peer_share: float
    holddown: float
    at: float

    def message(self) -> str:
        return (
            f"real server {self.real_server} of {self.service}: {self.failures} of {self.attempts} handshakes failed "
            f"({self.reason}), peers {self.peer_share:.0%}; held down {self.holddown:g} s"
        )


@dataclass(slots=True)
class _Pass:
    at: float
    attempts: int
    failures: Counter[str]


class _Window(deque[_Pass]):
    """A real server's recent passes, oldest first, with their attempts and failures summed as passes come and go.

    A peer's share is read on every judgement of its service: the sums spare
    a walk of the window (hundreds of passes when refusals come often).
    """

    __slots__ = ("attempts", "failed")

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0
        self.failed = 0

    def append(self, p: _Pass) -> None:
        super().append(p)
        self.attempts += p.attempts
        self.failed += p.failures.total()

    def popleft(self) -> _Pass:
        p = super().popleft()
        self.attempts -= p.attempts
        self.failed -= p.failures.total()
        return p

    def clear(self) -> None:
        super().clear()
        self.attempts = self.failed = 0


@dataclass(slots=True)
class _Backend:
    history: _Window = field(default_factory=_Window)  # append, popleft and clear only: they keep the sums
    holddown: float = 0.0  # the last hold-down given; 0 before any verdict
    held_until: float = -math.inf
    verdicts: int = 0

    def spans(self) -> Iterator[tuple[float, int, Counter[str], int]]:
        """(Start, attempts, failures, passes with failures) of the newest pass, the two newest, ... back through the window."""
        attempts, failures, failing = 0, Counter[str](), 0
        for p in reversed(self.history):
            attempts += p.attempts
            failures += p.failures
            failing += 1 if p.failures else 0
            yield p.at, max(attempts, sum(failures.values())), failures.copy(), failing

    def share_since(self, start: float) -> float | None:
        """The failure share of the passes from ``start`` on; None without attempts."""
        passes = [p for p in self.history if p.at >= start]
        attempts = sum(p.attempts for p in passes)
        if not attempts:
            return None
        return min(1.0, sum(sum(p.failures.values()) for p in passes) / attempts)

    def window_attempts(self) -> int:
        return self.history.attempts

    def window_share(self) -> float | None:
        if not self.history.attempts:
            return None
        return min(1.0, self.history.failed / self.history.attempts)


class Judge:
    """The rule's state: each real server's recent passes and hold-down. ``observe`` is the one entry."""

    def __init__(self, settings: RuleSettings = RuleSettings()) -> None:
        self.settings = settings
        self._backends: dict[Backend, _Backend] = {}

    def holddown(self, backend: Backend, now: float) -> float:
        """Seconds of hold-down left for ``backend`` (0 when none runs)."""
        b = self._backends.get(backend)
        return max(0.0, b.held_until - now) if b is not None else 0.0

    def held_until(self) -> dict[Backend, float]:
        """When each real server's last hold-down ends (the rule's clock), for those that ever had one."""
        return {k: b.held_until for k, b in self._backends.items() if b.verdicts}

    def released(self, backend: Backend, now: float) -> None:
        """The real server came back at ``now``, perhaps after its hold-down ended: the doubling counts from here.

        A real server that fails again within one hold-down of its return gets
        twice the last one; its return, not the end of its hold-down, is when
        its active check let it back in.
        """
        b = self._backends.get(backend)
        if b is not None and b.verdicts:
            b.held_until = max(b.held_until, now)

    def forget(self, backend: Backend) -> None:
        """Drop ``backend``'s recent passes (not its hold-down): it stopped taking connections, so they are stale."""
        b = self._backends.get(backend)
        if b is not None:
            b.history.clear()

    def held(self, now: float) -> dict[Backend, float]:
        """Every real server under a hold-down now, with its seconds left."""
        return {k: b.held_until - now for k, b in self._backends.items() if b.held_until > now}

    def observe(self, counts: PassCounts, now: float) -> list[Verdict]:
        """Record one pass and give the verdicts it warrants.

        Only a service with a real server whose newest pass failed can get a
        verdict (the rule's first step): the others are not judged.
        """
        self._record(counts, now)
        verdicts: list[Verdict] = []
        for service, members in self._services(now).items():
            verdicts += self._judge(service, members, now)
        return verdicts

    def _record(self, counts: PassCounts, now: float) -> None:
        seen = set(counts.attempts)
        for reason in REASONS:
            seen.update(counts.failures[reason])
        for backend in seen:
            failures = Counter({r: counts.failures[r][backend] for r in REASONS if counts.failures[r][backend]})
            b = self._backends.setdefault(backend, _Backend())
            b.history.append(_Pass(now, counts.attempts[backend], failures))
        horizon = now - self.settings.window
        for backend, b in list(self._backends.items()):
            while b.history and b.history[0].at <= horizon:
                b.history.popleft()
            if not b.history and b.held_until <= now - self.settings.holddown_max:
                del self._backends[backend]

    def _services(self, now: float) -> dict[ServiceKey, list[RealServerKey]]:
        """The services to judge, with all their real servers: those where one not held failed in its newest pass."""
        failing = {
            service
            for (service, _), b in self._backends.items()
            if b.history and b.history[-1].failures and b.held_until <= now
        }
        services: dict[ServiceKey, list[RealServerKey]] = {}
        for service, real_server in self._backends:
            if service in failing:
                services.setdefault(service, []).append(real_server)
        return services

    def _judge(self, service: ServiceKey, members: list[RealServerKey], now: float) -> list[Verdict]:
        s = self.settings
        young = now - s.peer_span
        shares = {
            rs: self._backends[(service, rs)].window_share()
            for rs in members
            if (h := self._backends[(service, rs)].history) and h[0].at <= young
        }
        candidates = []
        for rs in members:
            b = self._backends[(service, rs)]
            if b.held_until > now or not b.history or not b.history[-1].failures:
                continue  # held, or nothing new failed: nothing to judge
            peers = [share for peer, share in shares.items() if peer != rs and share is not None]
            if not peers:
                continue
            peer_attempts = sum(self._backends[(service, p)].window_attempts() for p in shares if p != rs)
            window_share = statistics.median_low(peers)
            for start, attempts, failures, failing in b.spans():
                failed = sum(failures.values())
                share = failed / attempts
                if failed < s.min_failures or share < s.min_share or failing < s.min_passes:
                    continue
                if not failures[REFUSED] and (failed < TIMEOUTS_MIN or failing < TIMEOUTS_MIN):
                    continue  # one timeout is no proof: a stall of the director looks the same
                peer_share = max(window_share, self._peer_share(service, list(shares), rs, start))
                rate = max(peer_share, 1.0 / (peer_attempts + 1))
                if share - peer_share >= s.margin and binomial_tail(attempts, failed, rate) < s.chance:
                    candidates.append((share, rs, attempts, failures, peer_share))
                    break
        out = sum(1 for rs in members if self._backends[(service, rs)].held_until > now)
        room = math.floor(s.max_out * len(members)) - out
        verdicts = []
        for share, rs, attempts, failures, peer_share in sorted(candidates, key=lambda c: (-c[0], str(c[1])))[
            : max(room, 0)
        ]:
            holddown = self._hold(self._backends[(service, rs)], now)
            reason = failures.most_common(1)[0][0]
            verdicts.append(
                Verdict(service, rs, reason, sum(failures.values()), attempts, share, peer_share, holddown, now)
            )
        return verdicts

    def _peer_share(self, service: ServiceKey, members: list[RealServerKey], rs: RealServerKey, start: float) -> float:
        """The peers' median failure share over the same passes as the span judged (0 when they had no attempts).

        Clients' failures come in bursts (a flood's SYNs time out together):
        a span of a few passes is compared with the same passes of the peers.
        """
        shares = [self._backends[(service, p)].share_since(start) for p in members if p != rs]
        known = [x for x in shares if x is not None]
        return statistics.median_low(known) if known else 0.0

    def _hold(self, b: _Backend, now: float) -> float:
        s = self.settings
        if b.holddown and now - b.held_until < b.holddown:
            b.holddown = min(2 * b.holddown, s.holddown_max)
        else:
            b.holddown = s.holddown_min
        b.held_until = now + b.holddown
        b.verdicts += 1
        b.history.clear()  # the failures behind this verdict are spent; the next one needs new ones
        return b.holddown


def binomial_tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the chance of ``k`` or more failures in ``n`` attempts (log space)."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    total = 0.0
    for i in range(k, n + 1):
        term = math.exp(log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        total += term
        if i > n * p and term < total * 1e-12:
            break
    return min(1.0, total)


def backends(verdicts: Iterable[Verdict]) -> set[Backend]:
    return {(v.service, v.real_server) for v in verdicts}
