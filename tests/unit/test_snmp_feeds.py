"""What a running exporter feeds into the SNMP snapshot: probes, the actuator's ledger, keepalived.

The probe side runs the real ``ProbeEngine`` (its checks parked far in the
future, results given with ``record``); the ledger side writes a real SQLite
ledger through ``actuator.ledger.Ledger``; the director side feeds lines to a
real ``KeepalivedFifo``. The notifications are those ``notify.changes`` finds
between the fed snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from lvsguard.actuator.ledger import Ledger
from lvsguard.actuator.targets import Target
from lvsguard.exporter.keepalived import KeepalivedFifo
from lvsguard.exporter.passive.conntable import REFUSED, TIMEOUT, PassCounts
from lvsguard.exporter.passive.metrics import PassiveMetrics
from lvsguard.exporter.passive.rule import Verdict
from lvsguard.exporter.probes.engine import CheckSpec, ProbeEngine
from lvsguard.exporter.probes.result import ProbeResult
from lvsguard.exporter.probes.result import Target as ProbeTarget
from lvsguard.exporter.snmp import layout
from lvsguard.exporter.snmp.agent import quiet_after
from lvsguard.exporter.snmp.feeds import (
    CheckView,
    DirectorFeed,
    FeedingProvider,
    LedgerFeed,
    PassiveFeed,
    ProbeFeed,
    compose,
    director_role,
    ledger_holds,
    probe_states,
    rs_health,
)
from lvsguard.exporter.snmp.notify import changes
from lvsguard.exporter.snmp.snapshot import Health, Hold, RealServerState, Role, ServiceState, Snapshot
from lvsguard.ledger import BackendRow, DrainRow, HoldRow, LedgerHolds
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Table, VirtualService

BASE = layout.DEFAULT_BASE
WEB = ServiceKey("TCP", "192.0.2.10", 80)
FWM = ServiceKey("FWM", "", 0, 7)
KEYS = [RealServerKey(f"10.0.0.{i}", 80) for i in (1, 2, 3)]
TABLE = Table(
    (
        VirtualService(WEB, "wlc", real_servers=tuple(RealServer(k, 5, Forward.MASQ) for k in KEYS)),
        VirtualService(FWM, "rr", real_servers=(RealServer(RealServerKey("10.0.0.1", 0), 1, Forward.ROUTE),)),
    )
)


def check(
    rs: int,
    *,
    healthy: bool = True,
    settled: bool = True,
    changed_at: float = 0.0,
    name: str = "tcp",
    message: str = "",
) -> CheckView:
    return CheckView(WEB, KEYS[rs], name, "tcp", healthy, settled, changed_at, healthy, 0.001, message)


# --- health from checks ----------------------------------------------------------------------


def test_rs_health_over_its_checks() -> None:
    assert rs_health([]).health is Health.UNKNOWN
    assert rs_health([check(0), check(0, name="http")]).health is Health.ALIVE
    unsettled = rs_health([check(0), check(0, name="http", settled=False)])
    assert unsettled.health is Health.UNKNOWN
    dead = rs_health(
        [
            check(0, changed_at=10.0),
            check(0, name="http", healthy=False, changed_at=20.0, message="http 10.0.0.1:80: 503"),
        ]
    )
    assert (dead.health, dead.last_change, dead.reason) == (Health.DEAD, 20.0, "http 10.0.0.1:80: 503")
    # a dead check decides even while another check has no verdict yet
    assert (
        rs_health([check(0, healthy=False, changed_at=5.0), check(0, name="http", settled=False)]).health is Health.DEAD
    )


class Parked:
    """A checker whose checks never run in the test: the results are given with ``engine.record``."""

    kind = "http"

    async def check(self, target: ProbeTarget) -> ProbeResult:
        raise AssertionError("not called: the first slot is an hour away")


def test_probe_feed_reads_the_real_engine() -> None:
    async def scenario() -> list[tuple[Health, Health, Health]]:
        spec = CheckSpec("web", Parked(), interval=3600.0, rise=2, fall=2)
        engine = ProbeEngine(lambda svc, rs: (spec,) if svc == WEB else (), jitter=lambda: 1.0, clock=lambda: 1000.0)
        engine.sync(TABLE)
        feed = ProbeFeed(lambda: engine.jobs)
        jobs = [engine.jobs[(WEB, k, "web")] for k in KEYS]
        seen = []

        def health() -> tuple[Health, Health, Health]:
            states, _ = probe_states(feed.checks())
            return tuple(states[(WEB, k)].health for k in KEYS)  # type: ignore[return-value]

        seen.append(health())  # no result yet: unknown, though the engine starts every check healthy
        engine.record(jobs[0], ProbeResult(True, "web 10.0.0.1:80: 200", 0.002))
        engine.record(jobs[1], ProbeResult(False, "web 10.0.0.2:80: refused", 0.001))
        seen.append(health())  # one failure of fall 2: no verdict for rs2 yet
        engine.record(jobs[1], ProbeResult(False, "web 10.0.0.2:80: refused", 0.001))
        engine.record(jobs[0], ProbeResult(False, "web 10.0.0.1:80: timeout", 0.5))
        seen.append(health())  # rs2 dead; rs1 stays alive through one failed result
        _, probes = probe_states(feed.checks())
        assert probes[(WEB, KEYS[0])][0].ok is False and probes[(WEB, KEYS[0])][0].latency == 0.5
        assert probes[(WEB, KEYS[0])][0].message == "web 10.0.0.1:80: timeout"
        assert (probes[(WEB, KEYS[0])][0].name, probes[(WEB, KEYS[0])][0].kind) == ("web", "http")
        await engine.stop()
        return seen

    seen = asyncio.run(scenario())
    U, A, D = Health.UNKNOWN, Health.ALIVE, Health.DEAD
    assert seen == [(U, U, U), (A, U, U), (A, D, U)]


# --- holds from the ledger -------------------------------------------------------------------


def write_ledger(path: Path) -> None:
    """A ledger as the actuator leaves it: rs1 quarantined by an alert, rs2 drained by an operator, rs3 restoring."""
    ledger = Ledger.open(str(path))
    t1, t2, t3 = (Target(WEB, k) for k in KEYS)
    ledger.add_hold(
        t1,
        kind="alert",
        holder="f00d",
        source="alertmanager",
        action="quarantine",
        alertname="RealServerDown",
        reason="tcp refused",
    )
    ledger.begin_write(t1, state="out", original=5, expected=0, previous=5)
    ledger.end_write(t1)
    ledger.add_hold(t2, kind="manual", holder="ops", source="api", action="drain", reason="kernel upgrade")
    ledger.begin_write(t2, state="out", original=4, expected=0, previous=4)
    job = ledger.create_job("drain", t2, params={}, actor="api ops")
    ledger.finish_job(job.id, "done", f"{t2} drained: 0 active connections", progress=1.0)
    ledger.begin_write(t3, state="restoring", original=5, expected=2, previous=0)
    ledger.close()


def test_ledger_feed_reads_the_actuators_ledger_read_only(tmp_path: Path) -> None:
    path = tmp_path / "actuator.db"
    write_ledger(path)
    before = path.read_bytes()
    holds = LedgerFeed(str(path)).read()
    assert holds is not None
    rs1, rs2, rs3 = (holds[(WEB, k)] for k in KEYS)
    assert (rs1.hold, rs1.actor, rs1.reason, rs1.original_weight) == (
        Hold.QUARANTINED,
        "alert RealServerDown (f00d)",
        "tcp refused",
        5,
    )
    assert (rs2.hold, rs2.actor, rs2.original_weight) == (Hold.DRAINED, "api ops", 4)
    assert rs2.reason.endswith("drained: 0 active connections")
    assert rs3.hold is Hold.NONE
    assert path.read_bytes() == before


def test_a_running_drain_is_draining() -> None:
    rows = LedgerHolds(
        (BackendRow(str(WEB), str(KEYS[0]), "out", 3, 7.0),),
        (HoldRow(str(WEB), str(KEYS[0]), "manual", "ops", "cli", "", "drain", "move"),),
        (DrainRow(str(WEB), str(KEYS[0]), "running", "cli ops", "", None),),
    )
    held = ledger_holds(rows)[(WEB, KEYS[0])]
    assert (held.hold, held.actor, held.reason, held.since) == (Hold.DRAINING, "cli ops", "move", 7.0)


def test_absent_or_broken_ledger_is_unknown_with_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "lvsguard.exporter.snmp")
    absent = LedgerFeed(str(tmp_path / "none.db"))
    assert absent.read() is None and absent.read() is None
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"not a database at all" * 100)
    feed = LedgerFeed(str(broken))
    assert feed.read() is None and feed.read() is None
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a file with no tables: the actuator never created its schema there
    assert LedgerFeed(str(empty)).read() is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "none.db" in lines[0] and "broken.db" in lines[1] and "empty.db" in lines[2]
    assert not (tmp_path / "none.db").exists()


# --- the director ----------------------------------------------------------------------------


def test_director_role_from_the_instances() -> None:
    assert director_role([]) is Role.UNKNOWN
    assert director_role(["stop"]) is Role.UNKNOWN
    assert director_role(["backup", "backup"]) is Role.BACKUP
    assert director_role(["backup", "master"]) is Role.MASTER
    assert director_role(["master", "fault"]) is Role.FAULT


def test_director_feed_shares_the_fifo_reader_and_finds_owned_vips() -> None:
    fifo = KeepalivedFifo("/nonexistent/never-opened")  # lines are fed as its follower thread would
    now = [100.0]
    feed = DirectorFeed(
        fifo,
        lambda: {"192.0.2.10": "eth0", "127.0.0.1": "lo"},
        configured=[ServiceKey("UDP", "192.0.2.53", 53)],
        clock=lambda: now[0],
    )
    first = feed.read(TABLE)
    assert first.role is Role.UNKNOWN and first.last_role_change is None
    assert [(v.address, v.owned, v.interface) for v in first.vips] == [
        ("192.0.2.10", True, "eth0"),
        ("192.0.2.53", False, ""),
    ]
    now[0] = 200.0
    fifo.feed('INSTANCE "VI_1" MASTER 150\n')
    assert (feed.read(TABLE).role, feed.read(TABLE).last_role_change) == (Role.MASTER, 200.0)
    fifo.feed('INSTANCE "VI_1" BACKUP 100\n')
    assert feed.read(None).role is Role.BACKUP


def test_director_feed_survives_unreadable_addresses(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict[str, str]:
        raise OSError(13, "Permission denied")

    state = DirectorFeed(None, broken).read(TABLE)
    assert [(v.address, v.owned) for v in state.vips] == [("192.0.2.10", False)]
    assert any("local addresses" in r.getMessage() for r in caplog.records)


# --- composed snapshots and what they send ---------------------------------------------------


class Tables:
    """A table provider whose health, holds and role the test moves."""

    def __init__(self) -> None:
        self.checks: list[CheckView] = []
        self.holds: dict | None = {}

    def provider(self) -> FeedingProvider:
        probes = type("Probes", (), {"checks": lambda _self: list(self.checks)})()
        ledger = type("Ledger", (), {"read": lambda _self: self.holds, "path": "test"})()
        names = {WEB: ServiceState(name="web")}
        return FeedingProvider(
            lambda: Snapshot(TABLE, services=names), probes=probes, ledger=ledger, quorum=lambda key, total: 2
        )  # type: ignore[arg-type]


def names_of(notifications) -> list[str]:
    return [n.name for n in notifications]


def test_hold_overrides_reason_and_unknown_ledger_is_marked() -> None:
    health = {(WEB, KEYS[0]): rs_health([check(0, healthy=False, changed_at=50.0, message="refused")])}
    holds = ledger_holds(
        LedgerHolds(
            (BackendRow(str(WEB), str(KEYS[0]), "out", 5, 60.0),),
            (HoldRow(str(WEB), str(KEYS[0]), "alert", "ab", "alertmanager", "Down", "quarantine", "probe"),),
            (),
        )
    )
    snap = compose(
        Snapshot(TABLE), health=health, probes={}, holds=holds, director=None, quorum=lambda key, total: total - 1
    )
    rs1 = snap.real_servers[(WEB, KEYS[0])]
    assert (rs1.health, rs1.hold, rs1.actor, rs1.reason, rs1.original_weight, rs1.last_change) == (
        Health.DEAD,
        Hold.QUARANTINED,
        "alert Down (ab)",
        "probe",
        5,
        60.0,
    )
    assert snap.services[WEB].quorum == 2 and snap.services[FWM].quorum == 0
    assert snap.holds_known
    unknown = compose(Snapshot(TABLE), health=health, probes={}, holds=None, director=None, quorum=None)
    assert not unknown.holds_known and unknown.real_servers[(WEB, KEYS[0])].hold is Hold.NONE


def test_a_fed_failure_sends_health_change_and_quorum_lost_with_their_objects() -> None:
    feed = Tables()
    provide = feed.provider()
    feed.checks = [check(i) for i in range(3)]
    first = provide()
    feed.checks = [
        check(0),
        check(1, healthy=False, changed_at=10.0, message="tcp 10.0.0.2:80: refused"),
        check(2, healthy=False),
    ]
    sent = changes(first, provide(), BASE)
    assert names_of(sent) == ["lvsgRsHealthChange", "lvsgRsHealthChange", "lvsgVsQuorumLost"]
    health = sent[0].objects
    index = layout.real_server_index(layout.service_index(WEB), TABLE.services[0].real_servers[1])
    assert health[0][0][-len(index) :] == index and health[0][2] == "10.0.0.2:80"
    assert [value for _, _, value in health][1:] == [
        Health.DEAD.value,
        5,
        Hold.NONE.value,
        "web",
        1,
        3,
        "tcp 10.0.0.2:80: refused",
    ]


def test_a_restart_while_probes_settle_sends_nothing() -> None:
    """The new process starts with no verdicts; servers already dead, or healthy, are not news again."""
    feed = Tables()
    provide = feed.provider()
    first = provide()  # probes not run yet: every real server unknown
    quiet = quiet_after(first, None)
    feed.checks = [check(0), check(1), check(2, healthy=False, changed_at=5.0)]
    second = provide()
    assert changes(first, second, BASE, quiet) == []  # no "dead" for rs3, no "quorum regained" for web
    quiet = quiet_after(second, quiet)
    assert quiet == {(FWM, RealServerKey("10.0.0.1", 0))}  # the only one still without a verdict (no probe watches it)
    feed.checks = [check(0), check(1, healthy=False, changed_at=9.0), check(2, healthy=False, changed_at=5.0)]
    assert names_of(changes(second, provide(), BASE, quiet)) == ["lvsgRsHealthChange", "lvsgVsQuorumLost"]


def test_a_server_added_later_announces_its_first_dead() -> None:
    first = Snapshot(Table((VirtualService(WEB, "wlc", real_servers=(RealServer(KEYS[0], 1, Forward.MASQ),)),)))
    quiet = quiet_after(first, None)
    grown = Snapshot(TABLE, real_servers={(WEB, KEYS[0]): RealServerState(Health.ALIVE)})
    quiet = quiet_after(grown, quiet)
    dead = Snapshot(
        TABLE,
        real_servers={(WEB, KEYS[0]): RealServerState(Health.ALIVE), (WEB, KEYS[2]): RealServerState(Health.DEAD)},
    )
    assert names_of(changes(grown, dead, BASE, quiet)) == ["lvsgRsHealthChange"]


def test_holds_from_a_ledger_that_comes_back_are_no_news() -> None:
    feed = Tables()
    provide = feed.provider()
    feed.holds = None
    first = provide()
    feed.holds = ledger_holds(LedgerHolds((BackendRow(str(WEB), str(KEYS[0]), "out", 5, 1.0),), (), ()))
    second = provide()
    assert changes(first, second, BASE) == []
    feed.holds = {}
    assert names_of(changes(second, provide(), BASE)) == ["lvsgRsRestored"]


def test_a_reload_that_moves_the_ledger_asks_for_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from lvsguard import config as config_module
    from lvsguard.exporter.main import reloader

    path = tmp_path / "lvsguard.yaml"
    path.write_text(f"snmp: {{communities: [x]}}\nactuator: {{ledger: {tmp_path / 'a.db'}}}\n")
    running = config_module.load(path)
    path.write_text(f"snmp: {{communities: [x]}}\nactuator: {{ledger: {tmp_path / 'b.db'}, min_healthy: 2}}\n")
    with caplog.at_level(logging.WARNING):
        reloader(running, listen="127.0.0.1:0", netns=None)()
    assert "reload_needs_restart keys=actuator.ledger,actuator.quorum" in caplog.text


def test_the_quiet_set_is_seeded_by_the_first_readable_table() -> None:
    assert quiet_after(Snapshot(None), None) is None  # the kernel unreadable at start: nothing seen yet
    seeded = quiet_after(Snapshot(TABLE, real_servers={(WEB, KEYS[0]): RealServerState(Health.ALIVE)}), None)
    assert seeded == {(WEB, KEYS[1]), (WEB, KEYS[2]), (FWM, RealServerKey("10.0.0.1", 0))}
    assert quiet_after(Snapshot(None), seeded) == seeded


def test_the_exporters_provider_reads_the_configured_ledger(tmp_path: Path) -> None:
    from lvsguard import config as config_module
    from lvsguard.exporter.main import snmp_provider

    write_ledger(tmp_path / "actuator.db")
    config = config_module.loads(
        f"snmp: {{communities: [x]}}\nactuator: {{ledger: {tmp_path / 'actuator.db'}, min_healthy: 2}}\n"
    )
    provider = snmp_provider(config, None, probes=None, fifo=None)
    assert provider.ledger is not None and provider.ledger.path == str(tmp_path / "actuator.db")
    assert provider.probes is None and provider.quorum is not None and provider.quorum(WEB, 3) == 2
    holds = provider.ledger.read()
    assert holds is not None and holds[(WEB, KEYS[0])].hold is Hold.QUARANTINED
    without = snmp_provider(config_module.loads("snmp: {communities: [x]}\n"), None, probes=None, fifo=None)
    assert without.quorum is None and without.ledger is not None and without.ledger.path.endswith("actuator.db")


# --- the passive detector ---------------------------------------------------------------------


def test_passive_feed_serves_the_detectors_counters_in_the_real_server_table() -> None:
    """The detector's own metrics object, recorded as its passes do, read into lvsgRsTable's passive columns."""
    now = [100.0]
    metrics = PassiveMetrics(clock=lambda: now[0])
    counts = PassCounts()
    counts.attempts.update({(WEB, KEYS[0]): 9, (WEB, KEYS[1]): 9})
    counts.failures[REFUSED][(WEB, KEYS[0])] = 4
    counts.failures[TIMEOUT][(WEB, KEYS[0])] = 1
    verdict = Verdict(WEB, KEYS[0], REFUSED, 5, 9, 0.55, 0.0, 30.0, now[0])
    metrics.record(counts, [verdict], {(WEB, KEYS[0]): now[0] + 30.0})
    now[0] += 12.5
    provider = FeedingProvider(lambda: Snapshot(TABLE), passive=PassiveFeed(metrics))
    tree = next(
        t
        for t in layout.build_subtrees(provider(), BASE, layout.Uptime(), layout.FirstSeen())
        if t.entry == BASE + layout.RS_ENTRY
    )
    names = [c.name for c in tree.columns]
    columns = ("lvsgRsHandshakeRefused", "lvsgRsHandshakeTimeouts", "lvsgRsPassiveVerdicts", "lvsgRsPassiveHoldDown")

    def passive(rs: int) -> list[int]:
        row = tree.rows[tree.indexes.index(layout.real_server_index(WEB, RealServer(KEYS[rs], 5, Forward.MASQ)))]
        return [row[names.index(c)] for c in columns]

    assert passive(0) == [4, 1, 1, 18]  # 17.5 s left, rounded up
    assert passive(1) == [0, 0, 0, 0]  # seen, clean
    assert passive(2) == [0, 0, 0, 0]  # never seen
    now[0] += 60.0
    assert provider().passive[(WEB, KEYS[0])].holddown == 0.0
    assert FeedingProvider(lambda: Snapshot(TABLE))().passive == {}  # passive detection off
