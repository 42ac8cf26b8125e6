"""Drift on the fake kernel: a managed entry changed by hand is reported once, shown as a metric, corrected by policy.

Each test drives the door (``Actions.check_drift``) as the retry loop does,
with the clock of the actions moved past ``table.drift_interval``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from lvsguard import config
from lvsguard.actuator.actions import Actions, Actor, Source
from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.metrics import DriftCollector
from lvsguard.actuator.targets import Target
from lvsguard.errors import ConfigError
from lvsguard.model import RealServerKey, ServiceKey, Table, VirtualService
from tests.fakes import FakeClock, FakeKernel, fake_app, service
from tests.unit.test_actuator_table import (  # noqa: F401 - clock, kernel and ledger are fixtures
    DNS,
    WEB,
    WEB1,
    WEB2,
    clock,
    kernel,
    ledger,
    settings_of,
)

DRIFT = Actor(Source.ACTUATOR, "drift")
ALICE = Actor(Source.API, "alice")
INTERVAL = 30.0


def drift_settings(policy: str = "report", **overrides: Any) -> Any:
    base = settings_of(**overrides)
    table = dataclasses.replace(base.table, drift=policy, drift_interval=INTERVAL)
    return dataclasses.replace(base, table=table)


def applied(kernel: FakeKernel, clock: FakeClock, ledger: Ledger, policy: str = "report", **settings: Any) -> Actions:
    actions = Actions(kernel, drift_settings(policy, **settings), clock=clock)
    actions.apply_table(ledger, ALICE)
    assert actions.check_drift(ledger, DRIFT) == [], "the kernel matches right after an apply"
    return actions


def check(actions: Actions, ledger: Ledger, clock: FakeClock) -> list[str]:
    clock.advance(INTERVAL)
    found = actions.check_drift(ledger, DRIFT)
    assert found is not None, "a check was due"
    return sorted(str(d) for d in found)


def scrape(actions: Actions) -> str:
    registry = CollectorRegistry()
    registry.register(DriftCollector(actions))
    return generate_latest(registry).decode()


def drift_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("table_drift ")]


def test_report_names_a_weight_changed_by_hand_once_and_leaves_it(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    actions = applied(kernel, clock, ledger)
    caplog.set_level(logging.INFO)
    kernel.set_weight_by_hand(WEB, WEB2, 3)
    expected = ["real server 10.0.1.2:80 of TCP 192.0.2.10:80: weight is 3 in the kernel, lvsguard wants 5"]
    for _ in range(3):
        assert check(actions, ledger, clock) == expected
    assert kernel.weight(WEB, WEB2) == 3, "report leaves the hand change"
    lines = drift_lines(caplog)
    assert len(lines) == 1, "one line when it starts, not one per interval"
    assert 'service="TCP 192.0.2.10:80" real_server=10.0.1.2:80 field=weight kernel=3 config=5' in lines[0]
    assert "policy=report" in lines[0]
    assert (
        'lvsguard_table_drift{field="weight",local_address="192.0.2.10",local_mark="",local_port="80",proto="TCP",'
        'real_server="web2",remote_address="10.0.1.2",remote_port="80",service="web"} 1.0'
    ) in scrape(actions)
    assert not [e for e in ledger.audit_events() if e.actor == "drift"], "nothing applied, nothing audited"

    kernel.set_weight_by_hand(WEB, WEB2, 5)  # put back by hand
    assert check(actions, ledger, clock) == []
    assert "lvsguard_table_drift{" not in scrape(actions), "gone once fixed"
    assert any(r.getMessage().startswith("table_drift_ended ") for r in caplog.records)


def test_correct_puts_the_config_back_audits_it_and_the_metric_drops(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    actions = applied(kernel, clock, ledger, "correct")
    caplog.set_level(logging.INFO)
    kernel.set_weight_by_hand(WEB, WEB2, 3)
    assert check(actions, ledger, clock) == [], "corrected in the same round"
    assert kernel.weight(WEB, WEB2) == 5
    assert len(drift_lines(caplog)) == 1 and "policy=correct" in drift_lines(caplog)[0]
    assert "lvsguard_table_drift{" not in scrape(actions)
    events = [e for e in ledger.audit_events() if e.action == "table_apply" and e.actor == "drift"]
    assert [(e.source, e.result) for e in events] == [("actuator", "applied")]
    assert "1 real server to change" in events[0].message

    kernel.set_weight_by_hand(WEB, WEB2, 3)  # the same hand change again: a second event, not a repeat
    check(actions, ledger, clock)
    assert len([e for e in ledger.audit_events() if e.actor == "drift"]) == 2
    assert len(drift_lines(caplog)) == 2


def test_a_held_real_server_at_0_is_not_drift_but_a_hand_change_to_it_is(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    actions = applied(kernel, clock, ledger)
    assert actions.hold(ledger, Target(WEB, WEB2), ALICE, reason="maintenance").result == "applied"
    assert kernel.weight(WEB, WEB2) == 0
    assert check(actions, ledger, clock) == [], "the hold is desired"
    kernel.set_weight_by_hand(WEB, WEB2, 5)
    assert check(actions, ledger, clock) == [
        "real server 10.0.1.2:80 of TCP 192.0.2.10:80: weight is 5 in the kernel, lvsguard wants 0 (held; "
        "the config says 5)"
    ]


def test_a_real_server_the_reconciler_drains_is_not_drift(kernel: FakeKernel, clock: FakeClock, ledger: Ledger) -> None:
    actions = applied(kernel, clock, ledger, dns="rr")
    dns1 = RealServerKey.parse("10.0.1.1:53")
    kernel.set_connections(DNS, dns1, active=0, inactive=4)
    actions.replace_settings(drift_settings())  # dns leaves the config: drained while busy
    actions.apply_table(ledger, ALICE)
    assert kernel.weight(DNS, dns1) == 0
    assert check(actions, ledger, clock) == []


def test_a_service_and_real_servers_changed_by_hand(kernel: FakeKernel, clock: FakeClock, ledger: Ledger) -> None:
    actions = applied(kernel, clock, ledger, prune="exact")
    web = kernel.read_service(WEB)
    kernel.edit_service(dataclasses.replace(web, scheduler="rr"))
    kernel.delete_real_server(WEB, WEB1)
    kernel.add_real_server(WEB, dataclasses.replace(web.real_servers[0], key=RealServerKey.parse("10.0.1.9:80")))
    kernel.add_service(service("TCP 192.0.2.99:80", ("10.0.9.9:80", 1)))
    assert check(actions, ledger, clock) == [
        "real server 10.0.1.1:80 of TCP 192.0.2.10:80 is not in the kernel (changed by hand; the config has it: "
        "present)",
        "real server 10.0.1.9:80 of TCP 192.0.2.10:80 is in the kernel, not in the config (added by hand)",
        "service TCP 192.0.2.10:80: scheduler is rr in the kernel, lvsguard wants wrr",
        "service TCP 192.0.2.99:80 is in the kernel, not in the config (added by hand)",
    ]


def test_with_prune_owned_only_the_managed_services_are_read(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    kernel.add_service(service("TCP 192.0.2.99:80", ("10.0.9.9:80", 1)))
    actions = applied(kernel, clock, ledger)
    kernel.add_real_server(
        WEB, dataclasses.replace(kernel.read_service(WEB).real_servers[0], key=RealServerKey.parse("10.0.1.9:80"))
    )
    reads: list[str] = []
    original = kernel.read_service
    kernel.read_service = lambda key: reads.append(str(key)) or original(key)  # type: ignore[method-assign]  # count
    kernel.read = lambda: pytest.fail("the whole table was read")  # type: ignore[method-assign]  # must not
    assert check(actions, ledger, clock) == [], "a real server added by hand is not lvsguard's under owned"
    assert reads == [str(WEB)]


def test_an_entry_the_kernel_refuses_is_retried_not_drift(kernel: FakeKernel, clock: FakeClock, ledger: Ledger) -> None:
    kernel.missing_schedulers = {"nosuch"}
    actions = Actions(kernel, drift_settings(dns="nosuch"), clock=clock)
    assert actions.apply_table(ledger, ALICE).outcome == "error"
    assert check(actions, ledger, clock) == []


def test_no_check_before_the_interval_nor_without_manage(kernel: FakeKernel, clock: FakeClock, ledger: Ledger) -> None:
    actions = applied(kernel, clock, ledger)
    kernel.set_weight_by_hand(WEB, WEB2, 3)
    clock.advance(INTERVAL - 1)
    assert actions.check_drift(ledger, DRIFT) is None
    clock.advance(1)
    assert actions.check_drift(ledger, DRIFT)
    off = drift_settings()
    actions.replace_settings(dataclasses.replace(off, table=dataclasses.replace(off.table, drift_interval=0.0)))
    clock.advance(INTERVAL)
    assert actions.check_drift(ledger, DRIFT) is None and not actions.table.drift, "off: the metric goes"


def test_a_reload_between_its_settings_and_its_apply_is_not_drift(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    actions = applied(kernel, clock, ledger)
    actions.replace_settings(drift_settings(web2=9))  # the apply has not run yet
    clock.advance(INTERVAL)
    assert actions.check_drift(ledger, DRIFT) is None
    actions.apply_table(ledger, Actor(Source.ACTUATOR, "reload"))
    assert check(actions, ledger, clock) == []


def test_a_reload_that_applies_clears_the_drift_at_once(kernel: FakeKernel, clock: FakeClock, ledger: Ledger) -> None:
    actions = applied(kernel, clock, ledger)
    kernel.set_weight_by_hand(WEB, WEB2, 3)
    assert check(actions, ledger, clock)
    actions.apply_table(ledger, Actor(Source.ACTUATOR, "reload"))
    assert kernel.weight(WEB, WEB2) == 5 and not actions.table.drift


def test_the_app_serves_the_drift_metric(tmp_path: Path) -> None:
    app = fake_app(drift_settings(), FakeKernel(), str(tmp_path / "ledger.db"))
    body = app.test_client().get("/metrics").get_data(as_text=True)
    assert "# TYPE lvsguard_table_drift gauge" in body


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        pytest.param(
            "{manage: true, drift: fix}", "lvsguard.yaml:1:30: table.drift: must be one of report, correct", id="policy"
        ),
        pytest.param(
            "{manage: true, drift_interval: -5s}",
            "lvsguard.yaml:1:39: table.drift_interval: must be a duration such as 1s",
            id="negative-interval",
        ),
    ],
)
def test_bad_drift_keys_are_config_errors(table: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.loads(f"table: {table}\n", "lvsguard.yaml")
    assert problem in str(caught.value)


def test_the_defaults_report_every_30_seconds() -> None:
    cfg = config.loads("table: {manage: true}\n", "lvsguard.yaml")
    assert (cfg.table.drift, cfg.table.drift_interval) == ("report", 30.0)


def test_correct_puts_a_held_real_server_back_at_its_held_weight(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    actions = applied(kernel, clock, ledger, "correct")
    actions.hold(ledger, Target(WEB, WEB2), ALICE, reason="maintenance")
    kernel.set_weight_by_hand(WEB, WEB2, 5)
    assert check(actions, ledger, clock) == []
    assert kernel.weight(WEB, WEB2) == 0, "the hold wins"
    assert [h.reason for h in ledger.active_holds(Target(WEB, WEB2))] == ["maintenance"]


def test_under_dry_run_nothing_is_compared(kernel: FakeKernel, clock: FakeClock, ledger: Ledger) -> None:
    actions = Actions(kernel, drift_settings("correct", dry_run=True), clock=clock)
    actions.apply_table(ledger, ALICE)
    clock.advance(INTERVAL)
    assert actions.check_drift(ledger, DRIFT) is None


class CountingKernel(FakeKernel):
    """The fake kernel, counting what a run reads: whole-table dumps, and each service read alone."""

    def __init__(self) -> None:
        super().__init__()
        self.dumps = 0
        self.services_read: list[ServiceKey] = []

    def read(self) -> Table:
        self.dumps += 1
        return super().read()

    def read_service(self, key: ServiceKey) -> VirtualService:
        self.services_read.append(key)
        return super().read_service(key)

    def counted(self) -> tuple[int, list[ServiceKey], list[tuple[str, str, str, int | None]]]:
        """Dumps, services read and writes since the last call."""
        out = (self.dumps, self.services_read, self.writes)
        self.dumps, self.services_read, self.writes = 0, [], []
        return out


def many_settings(weights: dict[int, int] | None = None, prune: str = "owned") -> Any:
    """20 services ``TCP 192.0.2.<n>:80`` of 3 real servers each; ``weights``: service n's first real server's."""
    weights = weights or {}
    lines = [f"table: {{manage: true, prune: {prune}, drift: report, drift_interval: {int(INTERVAL)}s}}", "services:"]
    for n in range(1, 21):
        lines += [f"  - name: s{n}", f"    service: TCP 192.0.2.{n}:80", "    forward: masq", "    real_servers:"]
        lines += [
            f'      - {{name: s{n}r{i}, address: "10.0.{n}.{i}:80", weight: {weights.get(n, 1) if i == 1 else 1}}}'
            for i in range(1, 4)
        ]
    lines += ["actuator:", "  hold_down: 0s"]
    cfg = config.loads("\n".join(lines) + "\n", "lvsguard.yaml")
    assert cfg.actuator is not None
    return dataclasses.replace(cfg.actuator, tokens={"alice": "x" * 20}, table=cfg.table, desired=cfg.desired)


def svc(n: int) -> ServiceKey:
    return ServiceKey.parse(f"TCP 192.0.2.{n}:80")


def first(n: int) -> RealServerKey:
    return RealServerKey.parse(f"10.0.{n}.1:80")


@pytest.mark.parametrize("prune", ["owned", "exact"])
def test_a_reload_reads_and_writes_only_the_service_it_changed_and_the_drift_check_still_sees_the_rest(
    clock: FakeClock, ledger: Ledger, prune: str
) -> None:
    kernel = CountingKernel()
    actions = Actions(kernel, many_settings(prune=prune), clock=clock)
    actions.apply_table(ledger, Actor(Source.ACTUATOR, "start"), whole=True)
    dumps, _read, writes = kernel.counted()
    assert dumps == 1 and len(writes) == 20 + 60, "the start reads and builds the whole table"

    reload = Actor(Source.ACTUATOR, "reload")
    actions.replace_settings(many_settings({7: 4}, prune))
    outcome = actions.apply_table(ledger, reload)
    assert kernel.counted() == (0, [svc(7)], [("edit_real_server", str(svc(7)), str(first(7)), 4)])
    assert "1 real server to change" in outcome.message
    event = ledger.audit_events()[0]
    assert (event.action, event.actor, event.result) == ("table_apply", "reload", "applied"), "one audit per apply"

    kernel.set_weight_by_hand(svc(3), first(3), 9)  # a hand change where the config does not change
    kernel.counted()
    actions.replace_settings(many_settings({7: 4, 12: 2}, prune))
    actions.apply_table(ledger, reload)
    assert kernel.counted() == (0, [svc(12)], [("edit_real_server", str(svc(12)), str(first(12)), 2)])
    assert kernel.weight(svc(3), first(3)) == 9, "not read, not touched"

    assert check(actions, ledger, clock) == [
        "real server 10.0.3.1:80 of TCP 192.0.2.3:80: weight is 9 in the kernel, lvsguard wants 1"
    ], "the drift check compares the whole managed table"
    kernel.counted()

    actions.apply_table(ledger, reload)  # the same config again: only the drifted service is planned, and put back
    _dumps, read, writes = kernel.counted()
    assert read == [svc(3)] and writes == [("edit_real_server", str(svc(3)), str(first(3)), 1)]
    assert check(actions, ledger, clock) == []


def test_a_reload_that_changes_prune_plans_the_whole_table(clock: FakeClock, ledger: Ledger) -> None:
    kernel = CountingKernel()
    actions = Actions(kernel, many_settings(), clock=clock)
    actions.apply_table(ledger, ALICE, whole=True)
    kernel.add_service(service("TCP 192.0.2.99:80", ("10.0.9.9:80", 1)))  # by hand: owned leaves it
    kernel.counted()
    actions.replace_settings(many_settings(prune="exact"))
    actions.apply_table(ledger, ALICE)
    dumps, _read, writes = kernel.counted()
    assert dumps == 1 and ("delete_service", "TCP 192.0.2.99:80", "", None) in writes


def test_the_table_is_read_for_drift_without_the_lock_a_reload_waits_for(
    kernel: FakeKernel, clock: FakeClock, ledger: Ledger
) -> None:
    """The check's read of the table (seconds at 100 000 real servers) does not hold up a reload or an action.

    A reload applied while the table was being read leaves that read stale: what it shows unlike the
    config is read again under the lock, so the reload is not taken for drift.
    """
    actions = applied(kernel, clock, ledger, prune="exact")
    original = kernel.read
    locked: list[bool] = []

    def read() -> Table:
        table = original()
        locked.append(held_elsewhere(actions))
        actions.replace_settings(drift_settings(prune="exact", web2=9))  # a reload meanwhile
        actions.apply_table(ledger, ALICE)
        return table

    kernel.read = read  # type: ignore[method-assign]  # a read during which a reload runs
    assert check(actions, ledger, clock) == []
    assert locked == [False], "the whole table is read without the action lock"
    assert kernel.weight(WEB, WEB2) == 9


def held_elsewhere(actions: Actions) -> bool:
    """Whether another thread (a reload's) would wait for the actions' lock now."""
    free: list[bool] = []

    def take() -> None:
        if actions._lock.acquire(blocking=False):
            actions._lock.release()
            free.append(True)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    return not free
