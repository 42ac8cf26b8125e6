"""The table reconciler in the actuator, on the fake kernel: holds win, owned prune, drains, refusals, reloads.

Each test drives the one door (``Actions``) or the app, as the actuator does
at start, on SIGHUP, from the retry loop and on ``POST /api/v1/table/apply``.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from lvsguard import cli, config
from lvsguard.actuator import reload as reloading
from lvsguard.actuator.actions import Actions, Actor, Source
from lvsguard.actuator.jobs import JobRunner
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.openapi import document
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.actuator.targets import Target
from lvsguard.errors import ConfigError, LvsguardError
from lvsguard.model import RealServer, RealServerKey, ServiceKey
from lvsguard.table import commands
from tests.fakes import FakeClock, FakeKernel, fake_app, kernel_of, service
from tests.unit.test_actuator_api import OpenAPI

TOKEN = "admin-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEB = ServiceKey.parse("TCP 192.0.2.10:80")
DNS = ServiceKey.parse("UDP 192.0.2.10:53")
WEB1, WEB2 = RealServerKey.parse("10.0.1.1:80"), RealServerKey.parse("10.0.1.2:80")
ALICE = Actor(Source.API, "alice")

CONFIG = """\
table: {manage: true, prune: %(prune)s}
services:
  - name: web
    service: TCP 192.0.2.10:80
    scheduler: wrr
    forward: masq
    real_servers:
      - {name: web1, address: "10.0.1.1:80", weight: 5}
      - {name: web2, address: "10.0.1.2:80", weight: %(web2)s}
%(more)s
actuator:
  hold_down: 0s
"""
DNS_ENTRY = """\
  - name: dns
    service: UDP 192.0.2.10:53
    scheduler: %(scheduler)s
    real_servers:
      - {name: dns1, address: "10.0.1.1:53"}
"""


def settings_of(*, prune: str = "owned", web2: int = 5, dns: str | None = None, **overrides: Any) -> ActuatorSettings:
    """The actuator's settings as ``lvsguard actuator`` builds them from a config file."""
    more = DNS_ENTRY % {"scheduler": dns} if dns else ""
    cfg = config.loads(CONFIG % {"prune": prune, "web2": web2, "more": more}, "lvsguard.yaml")
    assert cfg.actuator is not None
    return dataclasses.replace(cfg.actuator, tokens={"alice": TOKEN}, table=cfg.table, desired=cfg.desired, **overrides)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    ledger = Ledger.open(str(tmp_path / "ledger.db"), clock=clock)
    yield ledger
    ledger.close()


def actions_for(kernel: FakeKernel, clock: FakeClock, **settings: Any) -> Actions:
    return Actions(kernel, settings_of(**settings), clock=clock)


def audit_of(ledger: Ledger) -> list[tuple[str, str, str]]:
    return [(e.action, e.actor, e.result) for e in reversed(ledger.audit_events()) if e.action == "table_apply"]


def test_an_empty_kernel_gets_the_whole_table_and_lvsguard_owns_it(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    actions = actions_for(kernel, clock, dns="rr")
    outcome = actions.apply_table(ledger, ALICE)
    assert outcome.outcome == "applied" and not outcome.failures
    assert kernel.weight(WEB, WEB1) == 5 and kernel.weight(DNS, RealServerKey.parse("10.0.1.1:53")) == 1
    assert ledger.owned() == actions.settings.desired.keys()
    assert audit_of(ledger) == [("table_apply", "alice", "applied")]
    again = actions.apply_table(ledger, ALICE)
    assert again.outcome == "noop" and again.plan.empty
    assert len(audit_of(ledger)) == 1, "a run with nothing to do is not audited"


def test_a_held_real_server_stays_at_0_and_comes_back_at_the_new_config_weight(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    actions = actions_for(kernel, clock)
    actions.apply_table(ledger, ALICE)
    target = Target(WEB, WEB2)
    assert actions.hold(ledger, target, ALICE, reason="maintenance").result == "applied"
    assert kernel.weight(WEB, WEB2) == 0
    actions.replace_settings(settings_of(web2=10))
    outcome = actions.apply_table(ledger, Actor(Source.ACTUATOR, "reload"))
    assert kernel.weight(WEB, WEB2) == 0, "the hold wins over the config"
    assert outcome.held == (target,) and "1 held real server(s)" in outcome.message
    backend = ledger.backend(target)
    assert backend is not None and backend.original_weight == 10
    assert "back at weight 10, was 5" in ledger.audit_events()[0].message, "the new restore weight is audited"
    assert actions.plan_table(ledger).empty, "a held weight is not a pending change"
    assert actions.release(ledger, target, ALICE).result == "applied"
    assert kernel.weight(WEB, WEB2) == 10


@pytest.mark.parametrize("drift", ["report", "correct"])
def test_a_held_real_server_deleted_by_hand_comes_back_held(
    drift: str, kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    """ipvsadm -d of a quarantined managed real server: the config puts it back, at 0, its hold kept."""
    settings = settings_of()
    actions = Actions(
        kernel, dataclasses.replace(settings, table=dataclasses.replace(settings.table, drift=drift)), clock=clock
    )
    actions.apply_table(ledger, ALICE)
    target = Target(WEB, WEB2)
    assert actions.hold(ledger, target, ALICE, reason="broken disk").result == "applied"
    kernel.delete_real_server(WEB, WEB2)  # by hand
    actions.reconcile(ledger)  # the retry loop's round
    clock.advance(60)
    actions.check_drift(ledger, Actor(Source.ACTUATOR, "drift"))  # drift: correct puts it back now
    actions.apply_table(ledger, Actor(Source.ACTUATOR, "reload"), whole=True)  # a reload or a restart
    assert kernel.weight(WEB, WEB2) == 0, "the quarantined real server is back in rotation"
    assert [(h.target, h.reason) for h in ledger.active_holds()] == [(target, "broken disk")]
    assert actions.release(ledger, target, ALICE).result == "applied"
    assert kernel.weight(WEB, WEB2) == 5


def test_after_a_reboot_the_table_is_rebuilt_with_the_holds_before_the_ledger_looks(
    tmp_path: Path, kernel: FakeKernel, clock: FakeClock
) -> None:
    path = str(tmp_path / "ledger.db")
    ledger = Ledger.open(path, clock=clock)
    actions = actions_for(kernel, clock)
    actions.apply_table(ledger, ALICE)
    actions.hold(ledger, Target(WEB, WEB2), ALICE, reason="quarantined")
    ledger.close()
    kernel.flush()  # the reboot

    runner = JobRunner(actions, path)
    runner.begin()
    runner.stop()
    assert kernel.weight(WEB, WEB1) == 5
    assert kernel.weight(WEB, WEB2) == 0, "a quarantined real server stays out after the reboot"
    ledger = Ledger.open(path, clock=clock)
    assert [h.reason for h in ledger.active_holds(Target(WEB, WEB2))] == ["quarantined"]
    assert [e.actor for e in ledger.audit_events() if e.action == "table_apply"][0] == "start"
    ledger.close()


def test_prune_owned_removes_only_what_lvsguard_created(kernel: FakeKernel, clock: FakeClock, ledger: Ledger) -> None:
    hand_made = service("TCP 192.0.2.99:80", ("10.0.9.9:80", 1))
    kernel.add_service(hand_made)
    actions = actions_for(kernel, clock, dns="rr")
    first = actions.apply_table(ledger, ALICE)
    assert first.plan.left_alone == (hand_made.key,), "the whole run lists what it leaves alone"
    actions.replace_settings(settings_of())  # dns leaves the config
    outcome = actions.apply_table(ledger, ALICE)
    services = {svc.key for svc in kernel.read().services}
    assert services == {WEB, hand_made.key}
    assert outcome.plan.left_alone == (), "a reload reads only what the config changed"
    assert DNS not in ledger.owned()

    actions.replace_settings(settings_of(prune="exact"))
    actions.apply_table(ledger, ALICE)
    assert {svc.key for svc in kernel.read().services} == {WEB}


def test_a_busy_real_server_that_leaves_the_config_is_drained_then_removed(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    actions = actions_for(kernel, clock)
    actions.apply_table(ledger, ALICE)
    kernel.set_connections(WEB, WEB2, active=3)
    config_without_web2 = settings_of()
    config_without_web2 = dataclasses.replace(
        config_without_web2,
        desired=config.loads(
            "table: {manage: true}\nservices:\n  - name: web\n    service: TCP 192.0.2.10:80\n    scheduler: wrr\n"
            "    forward: masq\n    real_servers:\n      - {name: web1, address: '10.0.1.1:80', weight: 5}\n",
            "lvsguard.yaml",
        ).desired,
    )
    actions.replace_settings(config_without_web2)
    actions.apply_table(ledger, ALICE)
    assert kernel.weight(WEB, WEB2) == 0, "drained first"
    assert actions.retry_table(ledger, Actor(Source.ACTUATOR, "retry")) is not None  # still busy: waits
    assert WEB2 in {rs.key for rs in kernel.read_service(WEB).real_servers}
    kernel.set_connections(WEB, WEB2, active=0)
    actions.retry_table(ledger, Actor(Source.ACTUATOR, "retry"))
    assert WEB2 not in {rs.key for rs in kernel.read_service(WEB).real_servers}, "removed once idle"
    assert actions.retry_table(ledger, Actor(Source.ACTUATOR, "retry")) is None, "nothing left pending"


def test_a_drain_that_outlasts_the_timeout_is_removed_anyway(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    actions = actions_for(kernel, clock, dns="rr", drain_timeout=60.0)
    actions.apply_table(ledger, ALICE)
    dns1 = RealServerKey.parse("10.0.1.1:53")
    kernel.set_connections(DNS, dns1, active=0, inactive=4)  # UDP: any connection counts
    actions.replace_settings(settings_of(drain_timeout=60.0))
    actions.apply_table(ledger, ALICE)
    assert kernel.weight(DNS, dns1) == 0 and DNS in {s.key for s in kernel.read().services}
    clock.advance(61)
    actions.retry_table(ledger, Actor(Source.ACTUATOR, "retry"))
    assert DNS not in {s.key for s in kernel.read().services}


def test_a_drain_out_of_the_config_survives_a_restart_with_its_deadline(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger, tmp_path: Path
) -> None:
    """The drain's start is in the ledger: a restarted actuator resumes it and removes it on the first deadline."""
    actions = actions_for(kernel, clock, dns="rr", drain_timeout=60.0)
    actions.apply_table(ledger, ALICE)
    dns1 = RealServerKey.parse("10.0.1.1:53")
    kernel.set_connections(DNS, dns1, active=0, inactive=4)
    actions.replace_settings(settings_of(drain_timeout=60.0))
    actions.apply_table(ledger, ALICE)
    assert kernel.weight(DNS, dns1) == 0
    assert ledger.table_drains() == {(DNS, dns1): clock() + 60}
    clock.advance(40)
    ledger.close()  # the actuator is killed: a new process, a new connection, new actions

    again = Ledger.open(str(tmp_path / "ledger.db"), clock=clock)
    restarted = actions_for(kernel, clock, drain_timeout=60.0)
    start = restarted.apply_table(again, Actor(Source.ACTUATOR, "start"))
    assert "1 real server still draining" in start.message, start.message
    assert DNS in {s.key for s in kernel.read().services}, "20 s of its drain are left"
    clock.advance(21)
    restarted.retry_table(again, Actor(Source.ACTUATOR, "retry"))
    assert DNS not in {s.key for s in kernel.read().services}, (
        "removed 60 s after the drain began, not after the restart"
    )
    assert again.table_drains() == {}
    again.close()


def test_a_real_server_back_in_the_config_ends_its_drain(kernel: FakeKernel, clock: FakeClock, ledger: Ledger) -> None:
    """Taken out again later, it drains for a whole drain_timeout, not what was left of the first drain."""
    actions = actions_for(kernel, clock, dns="rr", drain_timeout=60.0)
    actions.apply_table(ledger, ALICE)
    dns1 = RealServerKey.parse("10.0.1.1:53")
    kernel.set_connections(DNS, dns1, active=2)
    actions.replace_settings(settings_of(drain_timeout=60.0))
    actions.apply_table(ledger, ALICE)
    assert (DNS, dns1) in ledger.table_drains()
    actions.replace_settings(settings_of(dns="rr", drain_timeout=60.0))
    actions.apply_table(ledger, ALICE)
    assert kernel.weight(DNS, dns1) == 1 and ledger.table_drains() == {}
    clock.advance(50)
    actions.replace_settings(settings_of(drain_timeout=60.0))
    actions.apply_table(ledger, ALICE)
    clock.advance(30)
    actions.retry_table(ledger, Actor(Source.ACTUATOR, "retry"))
    assert kernel.weight(DNS, dns1) == 0, "still draining: 30 s of its new 60"


class Killed(BaseException):
    """The process dies here (kill -9): nothing after this line of the apply runs, not even a finally of ours."""


class DyingKernel(FakeKernel):
    """While ``dying``, writes the first real server of a batch, then the process is gone (the kernel stays)."""

    dying = True

    def add_real_servers_to(self, servers: Iterable[tuple[ServiceKey, RealServer]]) -> int:
        if not self.dying:
            return super().add_real_servers_to(servers)
        super().add_real_servers_to(list(servers)[:1])
        raise Killed


def test_an_apply_cut_short_is_in_the_audit_and_the_restart_finishes_it(
    clock: FakeClock, ledger: Ledger, tmp_path: Path
) -> None:
    """The audit event is written before the first write: a killed run leaves it saying it did not finish."""
    kernel = DyingKernel()
    with pytest.raises(Killed):
        actions_for(kernel, clock, dns="rr").apply_table(ledger, Actor(Source.ACTUATOR, "start"))
    ledger.close()
    kernel.dying = False
    assert len(kernel.read().services) == 2 and kernel.read().real_server_count == 1

    again = Ledger.open(str(tmp_path / "ledger.db"), clock=clock)
    restarted = actions_for(kernel, clock, dns="rr")
    outcome = restarted.apply_table(again, Actor(Source.ACTUATOR, "start"))
    assert outcome.plan.summary() == "2 real servers to add", "only what is missing"
    assert restarted.apply_table(again, ALICE).plan.empty
    events = [(e.actor, e.result, e.message) for e in reversed(again.audit_events()) if e.action == "table_apply"]
    assert events == [
        (
            "start",
            "error",
            "table: 2 services to add; 3 real servers to add; not finished: the actuator stopped during the apply",
        ),
        ("start", "applied", "table: 2 real servers to add; 2 applied"),
    ]
    again.close()


def test_a_refused_entry_is_named_the_rest_applied_and_retried(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    kernel.missing_schedulers = {"nosuch"}
    actions = actions_for(kernel, clock, dns="nosuch")
    outcome = actions.apply_table(ledger, ALICE)
    assert outcome.outcome == "error"
    assert [f["service"] for f in outcome.failures] == ["UDP 192.0.2.10:53"] * 2  # the service and its real server
    assert "no scheduler 'nosuch' in this kernel" in outcome.message
    assert kernel.weight(WEB, WEB1) == 5, "the rest is applied"
    assert audit_of(ledger) == [("table_apply", "alice", "error")]

    for _ in range(3):  # the retry loop's rounds: the same failure is audited once
        actions.retry_table(ledger, Actor(Source.ACTUATOR, "retry"))
    assert audit_of(ledger) == [("table_apply", "alice", "error"), ("table_apply", "retry", "error")]

    kernel.missing_schedulers = set()  # the module is there now
    retried = actions.retry_table(ledger, Actor(Source.ACTUATOR, "retry"))
    assert retried is not None and retried.outcome == "applied"
    assert DNS in {s.key for s in kernel.read().services}
    assert actions.retry_table(ledger, Actor(Source.ACTUATOR, "retry")) is None


# the app: SIGHUP and the API


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    jsonschema = pytest.importorskip("jsonschema")
    return OpenAPI(document(), jsonschema)


def make_app(tmp_path: Path) -> Flask:
    kernel = FakeKernel([service(str(WEB), ("10.0.1.1:80", 1))])
    return fake_app(settings_of(), kernel, str(tmp_path / "ledger.db"))


def test_the_api_shows_the_diff_and_applies_it(tmp_path: Path, spec: OpenAPI) -> None:
    app = make_app(tmp_path)
    client = app.test_client()
    r = client.get("/api/v1/table/diff")
    spec.check("/api/v1/table/diff", "get", r.status_code, r.get_json())
    assert r.get_json()["pending"] is True and "~ 10.0.1.1:80: weight 1 → 5" in r.get_json()["plan"]
    r = client.post("/api/v1/table/apply")
    assert r.status_code == 401
    r = client.post("/api/v1/table/apply", headers=AUTH)
    spec.check("/api/v1/table/apply", "post", r.status_code, r.get_json())
    assert r.status_code == 200 and r.get_json()["result"] == "applied"
    assert kernel_of(app).weight(WEB, WEB2) == 5
    assert client.get("/api/v1/table/diff").get_json()["pending"] is False
    events = client.get("/api/v1/audit").get_json()["events"]
    assert [(e["action"], e["actor"]) for e in events if e["action"] == "table_apply"] == [("table_apply", "alice")]


def test_a_bad_config_at_reload_is_refused_whole_and_the_running_table_kept(tmp_path: Path, spec: OpenAPI) -> None:
    app = make_app(tmp_path)
    app.test_client().post("/api/v1/table/apply", headers=AUTH)
    before = kernel_of(app).read()
    running = app.config["LVSGUARD_SETTINGS"]

    def bad() -> ActuatorSettings:
        config.loads(CONFIG % {"prune": "owned", "web2": -1, "more": ""}, "/etc/lvsguard.yaml")
        raise AssertionError("the config should not load")

    assert reloading.reload(app, bad) is False  # SIGHUP
    app.extensions["lvsguard"].reload = bad  # what `serve` wires for the API call
    r = app.test_client().post("/api/v1/table/apply", headers=AUTH)
    spec.check("/api/v1/table/apply", "post", r.status_code, r.get_json())
    assert r.status_code == 422
    assert (
        "/etc/lvsguard.yaml:9:" in r.get_json()["error"] and "weight: must be 0..65535, got -1" in r.get_json()["error"]
    )
    assert app.config["LVSGUARD_SETTINGS"] is running
    assert kernel_of(app).read() == before


def test_a_good_reload_applies_the_new_table(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    assert reloading.reload(app, lambda: settings_of(web2=7)) is True
    assert kernel_of(app).weight(WEB, WEB2) == 7


def test_without_table_manage_the_table_endpoints_say_so(tmp_path: Path, spec: OpenAPI) -> None:
    settings = dataclasses.replace(settings_of(), table=config.TableSettings())
    app = fake_app(settings, FakeKernel(), str(tmp_path / "ledger.db"))
    r = app.test_client().post("/api/v1/table/apply", headers=AUTH)
    spec.check("/api/v1/table/apply", "post", r.status_code, r.get_json())
    assert r.status_code == 409 and "table.manage" in r.get_json()["error"]
    r = app.test_client().get("/api/v1/table/diff")
    spec.check("/api/v1/table/diff", "get", r.status_code, r.get_json())
    assert r.get_json()["manage"] is False and r.get_json()["pending"] is False
    assert kernel_of(app).read().services == ()


def test_config_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        settings_of(web2=-1)


# `lvsguard apply`


def apply_args(config_file: Path, url: str, *extra: str) -> Any:
    from lvsguard.cli import build_parser

    return build_parser().parse_args(["apply", "--config", str(config_file), "--url", url, *extra])


def test_apply_makes_the_running_actuator_reload_and_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.actuator import serving
    from lvsguard.actuator.tableapply import run_apply

    config_file = tmp_path / "lvsguard.yaml"
    config_file.write_text(CONFIG % {"prune": "owned", "web2": 9, "more": ""})
    app = make_app(tmp_path)
    app.extensions["lvsguard"].reload = lambda: settings_of(web2=9)  # the actuator re-reads its config file
    monkeypatch.setenv("LVSGUARD_TOKEN", TOKEN)
    out = io.StringIO()
    with serving(app) as url:
        assert run_apply(apply_args(config_file, url), out) == 0
    assert kernel_of(app).weight(WEB, WEB2) == 9
    assert "+ 10.0.1.2:80: masq, weight 9" in out.getvalue()


def test_apply_checks_the_config_before_anything(tmp_path: Path) -> None:
    from lvsguard.actuator.tableapply import run_apply

    config_file = tmp_path / "lvsguard.yaml"
    config_file.write_text(CONFIG % {"prune": "owned", "web2": "heavy", "more": ""})
    with pytest.raises(ConfigError) as info:
        run_apply(apply_args(config_file, "http://127.0.0.1:9"), io.StringIO())
    assert f"{config_file}:9:" in str(info.value) and "weight" in str(info.value)


def test_apply_in_process_waits_for_no_one_while_an_actuator_holds_the_lock(tmp_path: Path) -> None:
    """An actuator that holds the ledger's lock but does not answer: nothing is written, the message says why."""
    from lvsguard.actuator.ledger import writer_lock
    from lvsguard.actuator.tableapply import run_apply

    config_file = tmp_path / "lvsguard.yaml"
    config_file.write_text(CONFIG % {"prune": "owned", "web2": 5, "more": ""})
    ledger_path = str(tmp_path / "ledger.db")
    held = writer_lock(ledger_path)
    assert held is not None
    try:
        assert writer_lock(ledger_path) is None, "one writer at a time"
        with pytest.raises(LvsguardError, match="holds .*ledger.db.lock"):
            run_apply(apply_args(config_file, "http://127.0.0.1:9", "--ledger", ledger_path), io.StringIO())
    finally:
        held.close()
    reopened = writer_lock(ledger_path)
    assert reopened is not None
    reopened.close()


def test_an_operators_change_to_a_managed_service_is_refused_not_silently_undone(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    actions = actions_for(kernel, clock)
    actions.apply_table(ledger, ALICE)
    target = Target(WEB, WEB2)
    refusals = [
        actions.set_weight(ledger, target, 9, ALICE),
        actions.remove(ledger, target, ALICE),
        actions.add(ledger, Target(WEB, RealServerKey.parse("10.0.1.9:80")), ALICE),
        actions.hold(ledger, target, ALICE, action="drain", drain_delete=True),
    ]
    assert [(o.result, o.reason) for o in refusals] == [("refused", "managed")] * 4
    assert "change the config and run 'lvsguard apply'" in refusals[0].message
    assert kernel.weight(WEB, WEB2) == 5
    assert actions.hold(ledger, target, ALICE, action="drain").result == "applied", "a hold is still taken"
    unmanaged = Actions(kernel, dataclasses.replace(settings_of(), table=config.TableSettings()), clock=clock)
    assert unmanaged.set_weight(ledger, Target(WEB, WEB1), 9, ALICE).result == "applied"


def test_diff_reads_the_ledger_the_actuator_wrote(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger, tmp_path: Path
) -> None:
    """A held real server whose config weight changes: held at 0, restored to the new weight; not a weight change."""
    actions = actions_for(kernel, clock, dns="rr")
    actions.apply_table(ledger, ALICE)
    assert actions.hold(ledger, Target(WEB, WEB2), ALICE, reason="maintenance").result == "applied"
    path = str(tmp_path / "ledger.db")
    new = settings_of(web2=10, dns="rr")

    text, pending = commands.render(new.desired, "owned", kernel.read(), commands.read_ledger(path))
    assert pending
    assert text == (
        "No changes: the kernel's table matches the config.\n"
        f"\nHeld by the actuator (ledger {path}):\n"
        "~ TCP 192.0.2.10:80 10.0.1.2:80: held at 0, restored to 10 (the ledger says 5); quarantine by alice (api): "
        "maintenance\n"
        "Restore weights to record: 1 (the next apply writes them to the ledger).\n"
    )
    blind, _ = commands.render(new.desired, "owned", kernel.read(), None)
    assert "~ 10.0.1.2:80: weight 0 → 10" in blind, "without the ledger the hold looks like a weight to put back"

    actions.replace_settings(new)
    actions.apply_table(ledger, ALICE)
    text, pending = commands.render(new.desired, "owned", kernel.read(), commands.read_ledger(path))
    assert not pending and "  TCP 192.0.2.10:80 10.0.1.2:80: held at 0, restored to 10; quarantine by alice" in text


def test_diff_with_the_ledger_removes_what_lvsguard_owns(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger, tmp_path: Path
) -> None:
    """``prune: owned``: the service lvsguard created and the config dropped goes; without the ledger it is left alone."""
    actions = actions_for(kernel, clock, dns="rr")
    actions.apply_table(ledger, ALICE)
    dropped = settings_of().desired
    known = commands.read_ledger(str(tmp_path / "ledger.db"))
    text, pending = commands.render(dropped, "owned", kernel.read(), known)
    assert pending and "- UDP 192.0.2.10:53: remove, with 1 real server" in text and "Held" not in text
    text, pending = commands.render(dropped, "owned", kernel.read(), None)
    assert (text, pending) == ("No changes: the kernel's table matches the config.\n", False)


@pytest.mark.parametrize("content", [None, b"not a database"], ids=["missing", "not-sqlite"])
def test_diff_names_a_ledger_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None
) -> None:
    cfg = tmp_path / "lvsguard.yaml"
    cfg.write_text(CONFIG % {"prune": "owned", "web2": 5, "more": ""})
    path = tmp_path / "ledger.db"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["diff", "--config", str(cfg), "--ledger", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: " in err and ("no such ledger" if content is None else "cannot read the actuator's ledger") in err
    assert "Traceback" not in err
