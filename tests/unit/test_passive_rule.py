"""The passive verdict rule: a real server judged by its failure share against its peers, with doubling hold-downs."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvsguard.exporter.passive.conntable import REFUSED, TIMEOUT, PassCounts
from lvsguard.exporter.passive.rule import Judge, RuleSettings, Verdict, binomial_tail
from lvsguard.model import RealServerKey, ServiceKey

SVC = ServiceKey.parse("TCP 192.0.2.10:80")
OTHER = ServiceKey.parse("TCP 192.0.2.20:80")
RS = {f"rs{i}": RealServerKey.parse(f"10.0.1.{i + 1}:8080") for i in range(1, 5)}

# One pass: real server name -> (attempts, refused, timed out); a service prefix "other/" selects OTHER.
Pass = dict[str, tuple[int, int, int]]


def counts(p: Pass) -> PassCounts:
    c = PassCounts()
    for name, (attempts, refused, timeout) in p.items():
        service, _, rs = name.rpartition("/")
        backend = (OTHER if service == "other" else SVC, RS[rs])
        c.attempts[backend] += attempts
        c.failures[REFUSED][backend] += refused
        c.failures[TIMEOUT][backend] += timeout
    return c


def run(passes: list[Pass], settings: RuleSettings = RuleSettings(), step: float = 1.0) -> list[tuple[float, Verdict]]:
    """Feed the passes one ``step`` apart; every verdict with the time it came."""
    judge = Judge(settings)
    out = []
    for i, p in enumerate(passes):
        now = 100.0 + i * step
        out += [(now, v) for v in judge.observe(counts(p), now)]
    return out


def healthy(n: int, per_pass: int = 10, names: tuple[str, ...] = ("rs1", "rs2", "rs3")) -> list[Pass]:
    return [{name: (per_pass, 0, 0) for name in names} for _ in range(n)]


def killed(n: int, per_pass: int = 10, reason: int = 1) -> list[Pass]:
    """rs1 fails every attempt (refused: reason 1, timeout: reason 2), rs2 and rs3 are fine."""
    dead = (per_pass, per_pass, 0) if reason == 1 else (per_pass, 0, per_pass)
    return [{"rs1": dead, "rs2": (per_pass, 0, 0), "rs3": (per_pass, 0, 0)} for _ in range(n)]


def client_noise(n: int, share: float, seed: int = 7, per_pass: int = 10, reason: int = 1) -> list[Pass]:
    """Every real server's attempts fail at random with the same ``share`` (resets, a flood, a scan)."""
    rng = random.Random(seed)
    out: list[Pass] = []
    for _ in range(n):
        p: Pass = {}
        for name in ("rs1", "rs2", "rs3"):
            failed = sum(rng.random() < share for _ in range(per_pass))
            p[name] = (per_pass, failed, 0) if reason == 1 else (per_pass, 0, failed)
        out.append(p)
    return out


Check = Callable[[list[tuple[float, Verdict]]], None]


def first(name: str, at: float, reason: str = REFUSED) -> Check:
    def check(verdicts: list[tuple[float, Verdict]]) -> None:
        assert verdicts, "no verdict"
        when, v = verdicts[0]
        assert (v.real_server, when, v.reason) == (RS[name], at, reason)
        assert {v.real_server for _, v in verdicts} == {RS[name]}

    return check


def none(verdicts: list[tuple[float, Verdict]]) -> None:
    assert verdicts == []


CASES = [
    pytest.param(healthy(5) + killed(3), first("rs1", 106.0), id="refused-kill-verdict-on-the-second-failing-pass"),
    pytest.param(
        (healthy(5) + [{"rs1": (10, 8, 0), "rs2": (10, 0, 0), "rs3": (10, 0, 0)}]) * 20,
        none,
        id="a-burst-in-one-pass-is-no-dead-server",
    ),
    pytest.param(
        healthy(5) + [{"rs1": (10, 4, 0), "rs2": (10, 0, 0), "rs3": (10, 0, 0)}] + killed(2),
        first("rs1", 106.0),
        id="kill-mid-pass-waits-for-a-failing-majority",
    ),
    pytest.param(healthy(5) + killed(3, reason=2), first("rs1", 106.0, TIMEOUT), id="blackhole-verdict-as-timeout"),
    pytest.param(
        healthy(12, per_pass=1) + killed(8, per_pass=1),
        first("rs1", 116.0),
        id="one-connection-a-second-needs-five-failures",
    ),
    pytest.param(
        [{"rs1": (10, 0, 9), "rs2": (10, 0, 9), "rs3": (10, 0, 9)}] * 60, none, id="syn-flood-across-all-peers"
    ),
    pytest.param(
        (healthy(5, per_pass=2) + [{"rs1": (15, 0, 13), "rs2": (10, 0, 9), "rs3": (5, 0, 4)}]) * 20,
        none,
        id="flood-bursts-time-out-together-on-weighted-peers",
    ),
    pytest.param(client_noise(600, 0.3), none, id="clients-reset-30-percent-everywhere-ten-minutes"),
    pytest.param(client_noise(600, 0.05), none, id="clients-reset-5-percent-everywhere-ten-minutes"),
    pytest.param(client_noise(600, 0.9, reason=2), none, id="syn-flood-90-percent-everywhere-ten-minutes"),
    pytest.param(
        [{"rs1": (10, 0, 2), "rs2": (10, 0, 0), "rs3": (10, 0, 0)}] * 60, none, id="one-slow-server-some-timeouts"
    ),
    pytest.param(healthy(5, names=("rs1",)) + [{"rs1": (10, 10, 0)}] * 5, none, id="no-peer-with-traffic-no-verdict"),
    pytest.param(
        healthy(5, names=("rs1", "rs2", "rs3", "other/rs1")) + [{"rs1": (10, 0, 0), "other/rs1": (10, 10, 0)}] * 5,
        none,
        id="another-service-is-no-peer",
    ),
    pytest.param(
        healthy(5) + [{"rs1": (10, 10, 0), "rs2": (10, 10, 0), "rs3": (10, 0, 0)}] * 3,
        lambda vs: (none(vs[1:]), first("rs1", 106.0)(vs[:1])),
        id="two-of-three-dead-at-most-half-flagged",
    ),
]


@pytest.mark.parametrize(("passes", "check"), CASES)
def test_rule(passes: list[Pass], check: Check) -> None:
    check(run(passes))


def test_flapping_server_doubles_its_holddown() -> None:
    """Still dead each time its hold-down ends: 5 s, 10 s, 20 s, then the ceiling."""
    verdicts = run(killed(120), RuleSettings(holddown_min=5.0, holddown_max=30.0))
    assert [(t, v.holddown) for t, v in verdicts] == [
        (101.0, 5.0),  # released at 106, failing again at once: twice the last
        (106.0, 10.0),
        (116.0, 20.0),
        (136.0, 30.0),  # the ceiling
        (166.0, 30.0),
        (196.0, 30.0),
    ]


def test_a_server_stable_for_a_holddown_starts_again_at_the_minimum() -> None:
    passes = killed(3) + healthy(40) + killed(3)
    assert [(t, v.holddown) for t, v in run(passes)] == [(101.0, 5.0), (144.0, 5.0)]


def test_no_verdict_while_held_and_holddown_reported() -> None:
    judge = Judge(RuleSettings(holddown_min=5.0))
    for i, p in enumerate(healthy(3)):
        judge.observe(counts(p), 100.0 + i)
    assert judge.observe(counts(killed(1)[0]), 103.0) == []
    (v,) = judge.observe(counts(killed(1)[0]), 104.0)
    assert judge.observe(counts(killed(1)[0]), 105.0) == []
    assert judge.holddown((SVC, RS["rs1"]), 105.0) == 4.0
    assert judge.held(105.0) == {(SVC, RS["rs1"]): 4.0}
    assert v.message() == (
        "real server 10.0.1.2:8080 of TCP 192.0.2.10:80: 20 of 20 handshakes failed (refused), peers 0%; held down 5 s"
    )


@pytest.mark.parametrize(
    ("n", "k", "p", "expected"),
    [(2, 2, 0.1, 0.01), (3, 0, 0.5, 1.0), (3, 4, 0.5, 0.0), (4, 1, 0.5, 0.9375), (5, 5, 1.0, 1.0), (5, 1, 0.0, 0.0)],
)
def test_binomial_tail(n: int, k: int, p: float, expected: float) -> None:
    assert binomial_tail(n, k, p) == pytest.approx(expected)


class _EveryService(Judge):
    """The rule as written: every service judged on every pass, every share summed over the whole window."""

    def _services(self, now: float) -> dict[ServiceKey, list[RealServerKey]]:
        services: dict[ServiceKey, list[RealServerKey]] = {}
        for service, real_server in self._backends:
            services.setdefault(service, []).append(real_server)
        for b in self._backends.values():
            assert b.history.attempts == sum(p.attempts for p in b.history)
            assert b.history.failed == sum(sum(p.failures.values()) for p in b.history)
        return services


_PASS = st.dictionaries(
    st.sampled_from(["rs1", "rs2", "rs3", "rs4", "other/rs1", "other/rs2"]),
    st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(0, 3)).map(lambda t: (max(t[0], t[1] + t[2]), *t[1:])),
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_PASS, st.floats(0.01, 4.0)), max_size=40))
def test_judging_only_failing_services_gives_the_verdicts_of_judging_all(passes: list[tuple[Pass, float]]) -> None:
    """The rule skips services with no new failure and keeps the window's sums as it goes: the same verdicts."""
    quick = RuleSettings(min_failures=1, min_passes=1, chance=0.2, window=5.0, holddown_min=2.0)
    judge, oracle, now = Judge(quick), _EveryService(quick), 100.0
    for p, step in passes:
        now += step
        assert judge.observe(counts(p), now) == oracle.observe(counts(p), now)


def test_a_peer_with_a_short_history_does_not_make_the_others_look_failing() -> None:
    """Under a flood (40 % timeouts on all), rs1 comes back: its first passes fail little, its handshakes not ended yet.

    Judging rs2 against the lower of its two peers' shares, rs1's first clean
    pass would be that share; with ``peer_span`` it is no peer for its first
    seconds.
    """
    flood = [{"rs2": (10, 0, 4), "rs3": (10, 0, 4)} for _ in range(10)]
    back = [{"rs1": (10, 0, 0), "rs2": (10, 0, 7), "rs3": (10, 0, 4)}]
    assert [v.real_server for _, v in run(flood + back, RuleSettings(min_passes=1))] == [RS["rs2"]]
    assert run(flood + back, RuleSettings(min_passes=1, peer_span=2.0)) == []


SINGLE = RuleSettings(min_failures=1, min_passes=1, chance=0.05)  # the conntrack source's single-failure rule


def test_the_single_failure_rule_acts_on_one_refusal_not_on_one_timeout() -> None:
    """A refusal is the real server's answer; an unanswered handshake may be a stall of the director."""
    clean = healthy(10, per_pass=2)
    assert [v.reason for _, v in run([*clean, {"rs1": (2, 1, 0), "rs2": (2, 0, 0), "rs3": (2, 0, 0)}], SINGLE)] == [
        "refused"
    ]
    one = {"rs1": (2, 0, 1), "rs2": (2, 0, 0), "rs3": (2, 0, 0)}
    assert run([*clean, one], SINGLE) == []
    assert [v.reason for _, v in run([*clean, one, one], SINGLE)] == ["timeout"]
