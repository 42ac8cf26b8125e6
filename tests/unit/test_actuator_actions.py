"""The action layer over the fake kernel: holds, safety, jobs, drift and crash recovery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lvsguard.actuator.actions import Actions, Actor, ramp_weight
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.settings import ActuatorSettings, Names, Quorum, RateLimit
from lvsguard.actuator.targets import Target
from lvsguard.errors import NotPermitted
from lvsguard.model import Forward, RealServerKey, ServiceKey
from tests.fakes import FakeClock, FakeKernel, service

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
RS = [RealServerKey.parse(f"10.0.1.{i}:80") for i in range(1, 5)]
NAMES = Names(services={"web": WEB}, real_servers={WEB: {f"rs{i + 1}": k for i, k in enumerate(RS)}})
OPERATOR = Actor("api", "alice")


def alert(fingerprint: str, alertname: str = "BackendDown") -> Actor:
    return Actor("alertmanager", fingerprint, alertname)


@dataclass
class Env:
    kernel: FakeKernel
    clock: FakeClock
    actions: Actions
    ledger: Ledger
    started: list[int]

    def do(self, name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        return getattr(self.actions, name)(self.ledger, *args, **kwargs)

    def weight(self, i: int) -> int:
        return self.kernel.weight(WEB, RS[i])

    def writes(self) -> list[tuple[str, str, str, int | None]]:
        return [w for w in self.kernel.writes if w[0] != "add_service"]


def make_env(tmp_path: Path, weights: tuple[int, ...] = (5, 5, 5, 5), **overrides) -> Env:  # type: ignore[no-untyped-def]
    settings = ActuatorSettings(**{"hold_down": 0.0, "names": NAMES, **overrides})
    kernel = FakeKernel([service(str(WEB), *((str(RS[i]), w) for i, w in enumerate(weights)))])
    clock = FakeClock()
    actions = Actions(kernel, settings, clock=clock)
    started: list[int] = []
    actions.on_new_job(started.append)
    return Env(kernel, clock, actions, Ledger.open(str(tmp_path / "ledger.db"), clock=clock), started)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def t(i: int) -> Target:
    return Target(WEB, RS[i])


def test_quarantine_sets_weight_zero_and_restore_brings_back_the_recorded_weight(tmp_path: Path) -> None:
    env = make_env(tmp_path, (7, 5, 5, 5))
    out = env.do("hold", t(0), alert("fp1"))
    assert (out.result, env.weight(0)) == ("applied", 0)
    assert env.ledger.backend(t(0)).original_weight == 7
    back = env.do("release", t(0), alert("fp1"))
    assert (back.result, env.weight(0)) == ("applied", 7)
    assert env.ledger.backend(t(0)) is None
    assert [h.state for h in env.ledger.holds()] == ["released"]


def test_repeated_alert_is_idempotent(env: Env) -> None:
    env.do("hold", t(0), alert("fp1"))
    again = env.do("hold", t(0), alert("fp1"))
    assert again.result == "noop"
    assert env.writes() == [("edit_real_server", str(WEB), str(RS[0]), 0)]
    assert len(env.ledger.active_holds(t(0))) == 1
    env.do("release", t(0), alert("fp1"))
    assert env.do("release", t(0), alert("fp1")).result == "noop"
    assert [w[3] for w in env.writes()] == [0, 5]


def test_two_fingerprints_server_returns_after_the_last_resolves(env: Env) -> None:
    env.do("hold", t(0), alert("fp1"))
    second = env.do("hold", t(0), alert("fp2", "HighLatency"))
    assert second.result == "recorded" and len(second.holders) == 2
    first_gone = env.do("release", t(0), alert("fp1"))
    assert first_gone.result == "recorded" and "HighLatency" in first_gone.message
    assert env.weight(0) == 0
    env.do("release", t(0), alert("fp2", "HighLatency"))
    assert env.weight(0) == 5


def test_manual_quarantine_survives_a_resolved_alert(env: Env) -> None:
    env.do("hold", t(0), OPERATOR)
    env.do("hold", t(0), alert("fp1"))
    env.do("release", t(0), alert("fp1"))
    assert env.weight(0) == 0
    assert [h.kind for h in env.ledger.active_holds(t(0))] == ["manual"]
    env.do("release", t(0), Actor("cli", "bob"))
    assert env.weight(0) == 5


def test_resolve_of_an_alert_that_never_held_leaves_a_manual_hold(env: Env) -> None:
    env.do("hold", t(0), OPERATOR)
    out = env.do("release", t(0), alert("other"))
    assert out.result == "noop" and "manual" in out.message
    assert env.weight(0) == 0


def test_manual_restore_keeps_alert_holds_unless_all_holders(env: Env) -> None:
    env.do("hold", t(0), alert("fp1"))
    kept = env.do("release", t(0), OPERATOR)
    assert kept.result == "noop" and env.weight(0) == 0
    forced = env.do("release", t(0), OPERATOR, scope="all")
    assert forced.result == "applied" and env.weight(0) == 5


def test_quorum_refusal_names_the_service_and_the_minimum(tmp_path: Path) -> None:
    env = make_env(tmp_path, (5, 5, 0, 0), min_healthy=Quorum(2))
    out = env.do("hold", t(0), OPERATOR)
    assert out.result == "refused" and out.reason == "quorum"
    assert out.message == "refused: service web would have 1 healthy real server, min 2"
    assert env.weight(0) == 5
    assert env.ledger.audit_events()[0].result == "refused"
    assert env.ledger.active_holds() == []  # an operator's refused request leaves no hold behind


def test_quorum_as_a_fraction_rounds_up(tmp_path: Path) -> None:
    env = make_env(tmp_path, min_healthy=Quorum.parse("50%"))
    assert env.do("hold", t(0), OPERATOR).result == "applied"
    assert env.do("hold", t(1), OPERATOR).result == "applied"
    third = env.do("hold", t(2), OPERATOR)
    assert third.reason == "quorum" and "min 2 (50% of 4)" in third.message


def test_default_quorum_keeps_the_last_real_server(tmp_path: Path) -> None:
    env = make_env(tmp_path, (5, 0, 0, 0))
    assert env.do("hold", t(0), alert("fp")).reason == "quorum"


def test_refused_alert_is_applied_later_when_the_quorum_allows(tmp_path: Path) -> None:
    env = make_env(tmp_path, (5, 5, 5, 0), min_healthy=Quorum(2))
    env.do("hold", t(0), alert("a"))
    assert env.do("hold", t(1), alert("b")).result == "refused"
    assert [o.result for o in env.actions.retry_pending(env.ledger)] == ["refused"]  # not audited again
    refusals = [e for e in env.ledger.audit_events() if e.result == "refused"]
    assert len(refusals) == 1
    env.do("release", t(0), alert("a"))
    later = env.actions.retry_pending(env.ledger)
    assert [(o.target, o.result) for o in later] == [(t(1), "applied")]
    assert (env.weight(0), env.weight(1)) == (5, 0)


def test_refused_alert_that_resolves_is_never_applied(tmp_path: Path) -> None:
    env = make_env(tmp_path, (5, 5, 5, 0), min_healthy=Quorum(2))
    env.do("hold", t(0), alert("a"))
    env.do("hold", t(1), alert("b"))
    env.do("release", t(1), alert("b"))
    env.do("release", t(0), alert("a"))
    env.actions.retry_pending(env.ledger)
    assert (env.weight(0), env.weight(1)) == (5, 5)


def test_hold_down_refuses_a_quick_flap_and_retries_after_it(tmp_path: Path) -> None:
    env = make_env(tmp_path, hold_down=30.0)
    env.do("hold", t(0), alert("a"))
    env.clock.advance(10)
    out = env.do("release", t(0), alert("a"))
    assert out.reason == "hold_down" and "retry in 20 s" in out.message and out.retry_after == pytest.approx(20)
    assert env.weight(0) == 0
    env.clock.advance(21)
    assert [o.result for o in env.actions.retry_pending(env.ledger)] == ["applied"]
    assert env.weight(0) == 5


def test_force_skips_the_hold_down_but_not_the_quorum(tmp_path: Path) -> None:
    env = make_env(tmp_path, (5, 5, 0, 0), hold_down=30.0, min_healthy=Quorum(1))
    env.do("hold", t(0), OPERATOR)
    assert env.do("release", t(0), OPERATOR).reason == "hold_down"
    assert env.do("release", t(0), OPERATOR, force=True).result in ("applied", "noop")
    assert env.weight(0) == 5
    env.do("hold", t(1), OPERATOR, force=True)
    assert env.do("hold", t(0), OPERATOR, force=True).reason == "quorum"


def test_global_rate_limit(tmp_path: Path) -> None:
    env = make_env(tmp_path, (5, 5, 5, 5), rate_limit=RateLimit(2, 60), min_healthy=Quorum(0))
    assert [env.do("hold", t(i), alert(f"f{i}")).result for i in range(3)] == ["applied", "applied", "refused"]
    assert env.ledger.audit_events()[0].reason == "rate_limit"
    env.clock.advance(61)
    assert [o.target for o in env.actions.retry_pending(env.ledger)] == [t(2)]
    assert env.weight(2) == 0


def test_restores_are_not_rate_limited(tmp_path: Path) -> None:
    env = make_env(tmp_path, rate_limit=RateLimit(2, 60))
    env.do("hold", t(0), alert("a"))
    env.do("hold", t(1), alert("b"))
    assert env.do("release", t(0), alert("a")).result == "applied"
    assert env.do("release", t(1), alert("b")).result == "applied"


def test_dry_run_decides_and_records_without_writing(tmp_path: Path) -> None:
    env = make_env(tmp_path, dry_run=True)
    out = env.do("hold", t(0), alert("a"))
    assert out.result == "dry_run" and env.writes() == []
    assert env.ledger.active_holds() == [] and env.ledger.audit_events()[0].result == "dry_run"


def test_unknown_target_is_answered_not_raised(env: Env) -> None:
    missing = Target(WEB, RealServerKey.parse("10.9.9.9:80"))
    out = env.do("hold", missing, alert("a"))
    assert (out.result, out.message) == (
        "not_found",
        "no real server 10.9.9.9:80 in TCP 192.0.2.10:80 in the kernel table",
    )
    no_service = Target(ServiceKey.parse("TCP 192.0.2.99:80"), RS[0])
    assert env.do("hold", no_service, alert("a")).message == "no service TCP 192.0.2.99:80 in the kernel table"
    assert env.ledger.active_holds() == [] and env.writes() == []
    assert [e.result for e in env.ledger.audit_events()] == ["not_found", "not_found"]


def test_target_listed_in_config_but_absent_is_not_found(tmp_path: Path) -> None:
    extra = RealServerKey.parse("10.0.1.9:80")
    env = make_env(tmp_path, real_servers_allowed={WEB: frozenset({extra})})
    assert env.do("hold", Target(WEB, extra), alert("a")).message.endswith("(the config lists it)")


def test_set_weight_on_a_held_server_changes_the_weight_it_comes_back_at(env: Env) -> None:
    env.do("hold", t(0), OPERATOR)
    assert env.do("set_weight", t(0), 9, OPERATOR).result == "recorded"
    assert env.weight(0) == 0
    env.do("release", t(0), OPERATOR)
    assert env.weight(0) == 9


def test_set_weight_zero_obeys_the_quorum(tmp_path: Path) -> None:
    env = make_env(tmp_path, (5, 0, 0, 0))
    assert env.do("set_weight", t(0), 0, OPERATOR).reason == "quorum"
    assert env.do("set_weight", t(0), 3, OPERATOR).result == "applied"
    assert env.do("set_weight", t(0), 3, OPERATOR).result == "noop"


def test_drain_job_waits_for_active_connections_then_deletes(env: Env) -> None:
    env.kernel.set_connections(WEB, RS[0], active=4)
    out = env.do("hold", t(0), OPERATOR, action="drain", drain_delete=True, drain_timeout=60)
    assert out.result == "applied" and env.started == [out.job_id]
    env.kernel.set_connections(WEB, RS[0], active=1)
    assert env.actions.step_job(env.ledger, out.job_id) is False
    job = env.ledger.job(out.job_id)
    assert (job.progress, job.message) == (0.75, "1 active connections left")
    env.kernel.set_connections(WEB, RS[0], active=0)
    assert env.actions.step_job(env.ledger, out.job_id) is True
    job = env.ledger.job(out.job_id)
    assert (job.state, job.progress) == ("done", 1.0)
    assert env.kernel.read_service(WEB).real_server(RS[0]) is None
    assert env.ledger.active_holds() == [] and env.ledger.backend(t(0)) is None


def test_drain_times_out_and_keeps_the_server_out(env: Env) -> None:
    env.kernel.set_connections(WEB, RS[0], active=2)
    out = env.do("hold", t(0), OPERATOR, action="drain", drain_timeout=60)
    env.clock.advance(61)
    assert env.actions.step_job(env.ledger, out.job_id) is True
    assert env.ledger.job(out.job_id).state == "timeout"
    assert env.weight(0) == 0


def test_restore_cancels_a_running_drain(env: Env) -> None:
    env.kernel.set_connections(WEB, RS[0], active=2)
    out = env.do("hold", t(0), OPERATOR, action="drain")
    env.do("release", t(0), OPERATOR)
    assert env.ledger.job(out.job_id).state == "cancelled"
    assert env.actions.step_job(env.ledger, out.job_id) is True
    assert env.weight(0) == 5


@pytest.mark.parametrize(
    "weight, elapsed, expected",
    [(10, 0, 1), (10, 5, 6), (10, 9.99, 10), (10, 10, 10), (3, 0, 1), (1, 0, 1), (100, 0, 10)],
    ids=["start", "half", "just-before-end", "end", "small-weight", "weight-one", "big-weight"],
)
def test_ramp_weight(weight: int, elapsed: float, expected: int) -> None:
    assert ramp_weight(weight, elapsed, 10.0, 10) == expected


def test_slow_start_restore_ramps_as_a_job(tmp_path: Path) -> None:
    env = make_env(tmp_path, (10, 5, 5, 5), slow_start=10.0, slow_start_steps=5)
    env.do("hold", t(0), OPERATOR)
    out = env.do("release", t(0), OPERATOR)
    assert (out.result, env.weight(0), env.ledger.backend(t(0)).state) == ("applied", 2, "restoring")
    env.clock.advance(4.5)
    assert env.actions.step_job(env.ledger, out.job_id) is False
    assert env.weight(0) == 6 and env.ledger.job(out.job_id).progress == 0.6
    env.clock.advance(6)
    assert env.actions.step_job(env.ledger, out.job_id) is True
    assert env.weight(0) == 10 and env.ledger.backend(t(0)) is None


def test_quarantine_during_slow_start_stops_the_ramp_and_keeps_the_original(tmp_path: Path) -> None:
    env = make_env(tmp_path, (10, 5, 5, 5), slow_start=10.0, slow_start_steps=5)
    env.do("hold", t(0), OPERATOR)
    ramp = env.do("release", t(0), OPERATOR)
    env.do("hold", t(0), alert("a"))
    assert env.weight(0) == 0 and env.ledger.job(ramp.job_id).state == "cancelled"
    assert env.ledger.backend(t(0)).original_weight == 10


def test_weight_changed_by_hand_is_reported_not_overwritten(env: Env) -> None:
    env.do("hold", t(0), alert("a"))
    env.kernel.set_weight_by_hand(WEB, RS[0], 2)
    found = env.actions.reconcile(env.ledger)
    assert [(o.result, o.weight) for o in found] == [("drift", 2)]
    assert env.actions.reconcile(env.ledger) == []  # reported once
    back = env.do("release", t(0), alert("a"))
    assert back.result == "drift" and env.weight(0) == 2
    assert env.ledger.backend(t(0)) is None


def test_add_uses_the_services_forwarding_method_and_is_idempotent(env: Env) -> None:
    new = Target(WEB, RealServerKey.parse("10.0.1.9:80"))
    assert env.do("add", new, OPERATOR, weight=3).result == "applied"
    rs = env.kernel.read_service(WEB).real_server(new.real_server)
    assert (rs.weight, rs.forward) == (3, Forward.MASQ)
    assert env.do("add", new, OPERATOR, weight=3).result == "noop"


def test_add_outside_the_configured_list_is_refused(tmp_path: Path) -> None:
    env = make_env(tmp_path, real_servers_allowed={WEB: frozenset(RS)})
    out = env.do("add", Target(WEB, RealServerKey.parse("10.0.1.9:80")), OPERATOR)
    assert out.reason == "allow_list" and "not among the real servers the config lists for web" in out.message


def test_remove_obeys_the_quorum_and_closes_holds(tmp_path: Path) -> None:
    env = make_env(tmp_path, (5, 5, 0, 0), min_healthy=Quorum(1))
    env.do("hold", t(2), alert("a"))
    assert env.do("remove", t(2), OPERATOR).result == "applied"
    assert env.ledger.active_holds() == [] and env.ledger.holds()[0].state == "removed"
    env.do("remove", t(0), OPERATOR)
    assert env.do("remove", t(1), OPERATOR).reason == "quorum"


def test_kernel_refusal_leaves_no_intent_behind(env: Env) -> None:
    env.kernel.fail_writes = NotPermitted("operation not permitted")
    with pytest.raises(NotPermitted):
        env.do("hold", t(0), OPERATOR)
    assert env.ledger.backend(t(0)) is None
    env.kernel.fail_writes = None
    assert [o.result for o in env.actions.retry_pending(env.ledger)] == ["applied"]
    assert env.weight(0) == 0


@pytest.mark.parametrize(
    "kernel_written", [False, True], ids=["killed-before-kernel-write", "killed-after-kernel-write"]
)
def test_reconcile_finishes_a_take_out_interrupted_by_kill(tmp_path: Path, kernel_written: bool) -> None:
    env = make_env(tmp_path)
    with env.ledger.transaction():
        env.ledger.add_hold(t(0), kind="alert", holder="a", source="alertmanager", action="quarantine")
        env.ledger.begin_write(t(0), state="out", original=5, expected=0, previous=5)
    if kernel_written:
        env.kernel.set_weight_by_hand(WEB, RS[0], 0)
    restarted = Actions(env.kernel, env.actions.settings, clock=env.clock)
    found = restarted.reconcile(env.ledger)
    assert [o.result for o in found] == ["applied"]
    assert env.weight(0) == 0 and env.ledger.backend(t(0)).write_pending is False
    assert env.ledger.backend(t(0)).original_weight == 5


def test_reconcile_finishes_an_interrupted_restore(env: Env) -> None:
    env.do("hold", t(0), alert("a"))
    with env.ledger.transaction():
        env.ledger.release_hold(env.ledger.active_holds()[0].id)
        env.ledger.begin_write(t(0), state="restoring", original=5, expected=5, previous=0)
    env.actions.reconcile(env.ledger)
    assert env.weight(0) == 5 and env.ledger.backend(t(0)) is None


def test_reconcile_closes_holds_of_a_deleted_real_server(env: Env) -> None:
    env.do("hold", t(0), alert("a"))
    env.kernel.delete_real_server(WEB, RS[0])
    found = env.actions.reconcile(env.ledger)
    assert [o.result for o in found] == ["not_found"]
    assert env.ledger.active_holds() == []


@pytest.mark.parametrize("min_healthy, result", [(1, "applied"), (4, "refused")])
def test_reconcile_settles_an_operator_hold_whose_request_a_kill_cut(
    tmp_path: Path, min_healthy: int, result: str
) -> None:
    env = make_env(tmp_path, min_healthy=Quorum(min_healthy))
    with env.ledger.transaction():  # what a kill -9 leaves after the hold's commit, before the intent's
        env.ledger.add_hold(t(0), kind="manual", holder="alice", source="api", action="quarantine")
    found = Actions(env.kernel, env.actions.settings, clock=env.clock).reconcile(env.ledger)
    assert [(o.result, o.target) for o in found] == [(result, t(0))]
    if result == "applied":  # taken out, as the operator asked
        assert env.weight(0) == 0 and len(env.ledger.active_holds()) == 1
    else:  # refused, as the live request would have been: no hold is left behind
        assert env.weight(0) == 5 and env.ledger.active_holds() == []
    assert env.actions.reconcile(env.ledger) == []  # settled


def test_reconcile_leaves_a_waiting_alert_hold_to_the_retries(tmp_path: Path) -> None:
    env = make_env(tmp_path, min_healthy=Quorum(4))
    assert env.do("hold", t(0), alert("fp1")).result == "refused"
    assert env.actions.reconcile(env.ledger) == [] and len(env.ledger.active_holds()) == 1
