"""What makes the webhook fast keeps it right: the shared view of a big service, the per-thread ledger connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from lvsguard.actuator.actions import VIEW_CACHE_MIN, VIEW_TTL
from lvsguard.actuator.app import ActuatorState, create_app
from lvsguard.actuator.ledger import Ledger, get_ledger
from lvsguard.actuator.settings import ActuatorSettings
from lvsguard.errors import InvalidRequest, NotPermitted
from lvsguard.model import RealServer, RealServerKey, ServiceKey, VirtualService
from tests.fakes import FakeKernel, am_alert, am_payload, service

TOKEN = "am-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG = ServiceKey.parse("TCP 192.0.2.20:80")
SMALL = ServiceKey.parse("TCP 192.0.2.10:80")


class CountingKernel(FakeKernel):
    """The fake kernel, counting the reads of each service."""

    def __init__(self, *services: VirtualService):
        super().__init__(services)
        self.reads: dict[ServiceKey, int] = {}

    def read_service(self, key: ServiceKey) -> VirtualService:
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().read_service(key)


def rs_of(index: int, key: ServiceKey = BIG) -> str:
    return f"10.0.2.{index}:80" if key == BIG else f"10.0.1.{index}:80"


def make_app(tmp_path: Path) -> tuple[Flask, CountingKernel]:
    kernel = CountingKernel(
        service(str(BIG), *((rs_of(i), 5) for i in range(1, VIEW_CACHE_MIN + 2))),
        service(str(SMALL), *((rs_of(i, SMALL), 5) for i in range(1, 5))),
    )
    settings = ActuatorSettings(tokens={"alertmanager": TOKEN}, hold_down=0.0)
    return create_app(settings, kernel=kernel, ledger_path=str(tmp_path / "ledger.db")), kernel


def fire(client: FlaskClient, fingerprint: str, key: ServiceKey, index: int, status: str = "firing") -> dict[str, Any]:
    alert = am_alert(
        fingerprint, status=status, service=str(key), real_server=rs_of(index, key), lvsguard_action="quarantine"
    )
    reply = client.post("/webhook/alertmanager", json=am_payload(alert), headers=AUTH)
    assert reply.status_code == 200, reply.json
    result: dict[str, Any] = reply.json["results"][0]  # type: ignore[index]
    return result


def test_webhook_requests_share_one_read_of_a_big_service_and_see_each_others_writes(tmp_path: Path) -> None:
    app, kernel = make_app(tmp_path)
    client = app.test_client()
    assert fire(client, "a1", BIG, 1)["result"] == "applied"
    assert fire(client, "a2", BIG, 2)["result"] == "applied"
    assert kernel.reads[BIG] == 1
    view = app.extensions["lvsguard"].actions.views.get(BIG)
    assert view.healthy == VIEW_CACHE_MIN + 1 - 2  # both writes are in the shared view
    assert fire(client, "a1", BIG, 1, "resolved")["weight"] == 5
    assert kernel.weight(BIG, RealServerKey.parse(rs_of(1))) == 5


def test_a_small_service_is_read_afresh_by_every_request(tmp_path: Path) -> None:
    app, kernel = make_app(tmp_path)
    client = app.test_client()
    fire(client, "s1", SMALL, 1)
    fire(client, "s1", SMALL, 1, "resolved")
    assert kernel.reads[SMALL] == 2
    assert SMALL not in app.extensions["lvsguard"].actions.views


def test_a_failed_kernel_write_drops_the_shared_view(tmp_path: Path) -> None:
    app, kernel = make_app(tmp_path)
    client = app.test_client()
    fire(client, "a1", BIG, 1)
    kernel.fail_writes = NotPermitted("operation not permitted")
    assert fire(client, "a2", BIG, 2)["result"] == "error"
    kernel.fail_writes = None
    assert BIG not in app.extensions["lvsguard"].actions.views
    assert fire(client, "a3", BIG, 3)["result"] == "applied"
    assert kernel.reads[BIG] == 2
    assert kernel.weight(BIG, RealServerKey.parse(rs_of(2))) == 5


def quarantined_then_changed_by_hand(tmp_path: Path) -> tuple[Flask, CountingKernel, ActuatorState]:
    """An app whose webhook quarantined real server 1 of BIG (its view now shared), then whose weight was set to 3 by hand."""
    app, kernel = make_app(tmp_path)
    fire(app.test_client(), "a1", BIG, 1)
    kernel.set_weight_by_hand(BIG, RealServerKey.parse(rs_of(1)), 3)
    return app, kernel, app.extensions["lvsguard"]


def test_the_reconciliation_reads_afresh_and_reports_a_hand_change_the_shared_view_missed(tmp_path: Path) -> None:
    app, _kernel, state = quarantined_then_changed_by_hand(tmp_path)
    with app.app_context():
        outcomes = state.actions.reconcile(get_ledger())
    assert [o.result for o in outcomes] == ["drift"]
    assert state.actions.views.get(BIG).real_server(RealServerKey.parse(rs_of(1))).weight == 3


def test_the_retry_loops_rounds_use_a_fresh_shared_view_and_report_a_hand_change_once_it_has_aged(
    tmp_path: Path,
) -> None:
    app, kernel, state = quarantined_then_changed_by_hand(tmp_path)
    with app.app_context():
        assert state.actions.reconcile(get_ledger(), cached=True) == []  # the webhook's view, read just now: no read
        assert state.actions.retry_pending(get_ledger(), cached=True) == []
        assert kernel.reads[BIG] == 1
        views = state.actions.views
        now = views.clock
        views.clock = lambda: now() + VIEW_TTL  # the view ages: the next round reads afresh
        outcomes = state.actions.reconcile(get_ledger(), cached=True)
    assert [o.result for o in outcomes] == ["drift"]
    assert kernel.reads[BIG] == 2


def test_a_serving_thread_keeps_its_ledger_connection_and_no_transaction_survives_a_request(tmp_path: Path) -> None:
    app, _kernel = make_app(tmp_path)
    with app.test_request_context():
        first = get_ledger()
        first.begin()  # a request that failed inside a transaction
    with app.test_request_context():
        second = get_ledger()
        assert second is first
        assert not second.in_transaction
    client = app.test_client()
    assert fire(client, "s1", SMALL, 1)["result"] == "applied"


class RefusingKernel(CountingKernel):
    """The fake kernel, refusing every write to one real server."""

    def __init__(self, refused: RealServerKey, *services: VirtualService):
        super().__init__(*services)
        self.refused = refused

    def edit_real_server(self, service: ServiceKey, rs: RealServer) -> None:
        if rs.key == self.refused:
            raise InvalidRequest("invalid argument", service=service, real_server=rs.key)
        super().edit_real_server(service, rs)


def test_a_batch_sends_each_real_server_once_and_a_refused_one_fails_alone(tmp_path: Path) -> None:
    refused = RealServerKey.parse(rs_of(2, SMALL))
    kernel = RefusingKernel(refused, service(str(SMALL), *((rs_of(i, SMALL), 5) for i in range(1, 5))))
    app = create_app(
        ActuatorSettings(tokens={"alertmanager": TOKEN}, hold_down=0.0),
        kernel=kernel,
        ledger_path=str(tmp_path / "ledger.db"),
    )
    alerts = [
        am_alert(f"b{i}", service=str(SMALL), real_server=rs_of(i, SMALL), lvsguard_action="quarantine")
        for i in (1, 2, 3)
    ]
    alerts.append(
        am_alert("b1", status="resolved", service=str(SMALL), real_server=rs_of(1, SMALL), lvsguard_action="quarantine")
    )
    reply = app.test_client().post("/webhook/alertmanager", json=am_payload(*alerts), headers=AUTH)
    assert [r["result"] for r in reply.json["results"]] == ["applied", "error", "applied", "applied"]  # type: ignore[index]
    assert kernel.writes == [
        ("edit_real_server", str(SMALL), rs_of(1, SMALL), 5),
        ("edit_real_server", str(SMALL), rs_of(3, SMALL), 0),
    ]
    ledger = Ledger.open(str(tmp_path / "ledger.db"))
    assert [str(b.target.real_server) for b in ledger.backends()] == [
        rs_of(3, SMALL)
    ]  # the refused one's intent is undone
    assert all(not b.write_pending for b in ledger.backends())
    assert len(ledger.active_holds()) == 2  # b2 still asks: a retry applies it
