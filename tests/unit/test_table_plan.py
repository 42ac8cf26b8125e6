"""The plan edits in place, prunes by policy, drains before it removes, and lets holds win; apply names failures."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lvsguard.errors import InvalidRequest
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, VirtualService
from lvsguard.table.apply import apply
from lvsguard.table.desired import DesiredTable, make_real_server, make_service
from lvsguard.table.plan import Op, changed, plan
from tests.fakes import FakeKernel

WEB = ServiceKey.parse("TCP 192.0.2.10:80")
DNS = ServiceKey.parse("UDP 192.0.2.10:53")
OLD = ServiceKey.parse("TCP 192.0.2.99:80")
RS1, RS2, RS3 = (RealServerKey.parse(f"10.0.1.{i}:80") for i in (1, 2, 3))


def rs(key: RealServerKey, weight: int = 1, **kw: object) -> RealServer:
    return make_real_server(key, Forward.MASQ, weight, **kw)  # type: ignore[arg-type]


def web(*servers: RealServer, **kw: object) -> VirtualService:
    return make_service(WEB, "wlc", real_servers=servers, **kw)  # type: ignore[arg-type]


def ops(p: object) -> list[tuple[str, str, str]]:
    return [(s.op.name, str(s.service), str(getattr(s, "real_server", ""))) for s in p.steps]  # type: ignore[attr-defined]


def converged(desired: DesiredTable, kernel: FakeKernel, **kw: object) -> None:
    result = apply(plan(desired, kernel.read(), **kw), kernel)  # type: ignore[arg-type]
    assert result.ok, str(result)
    assert plan(desired, kernel.read(), **kw).empty  # type: ignore[arg-type]


def test_empty_kernel_gets_services_then_real_servers() -> None:
    desired = DesiredTable((web(rs(RS1), rs(RS2)),))
    p = plan(desired, ())
    assert ops(p) == [
        ("ADD_SERVICE", "TCP 192.0.2.10:80", ""),
        ("ADD_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.1:80"),
        ("ADD_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.2:80"),
    ]
    kernel = FakeKernel()
    converged(desired, kernel)
    assert [w[0] for w in kernel.writes] == ["add_service", "add_real_server", "add_real_server"]


def test_scheduler_and_persistence_change_is_one_edit_never_a_replacement() -> None:
    kernel = FakeKernel([web(rs(RS1))])
    desired = DesiredTable((make_service(WEB, "mh", persistence=300, real_servers=(rs(RS1),)),))
    p = plan(desired, kernel.read())
    assert ops(p) == [("EDIT_SERVICE", "TCP 192.0.2.10:80", "")]
    assert "~ TCP 192.0.2.10:80: scheduler wlc → mh; persistent no → 300 s" in str(p)
    converged(desired, kernel)
    assert [w[0] for w in kernel.writes] == ["edit_service"]


@pytest.mark.parametrize(
    "change",
    [
        {"weight": 7},
        {"forward": Forward.ROUTE},
        {"upper_threshold": 100, "lower_threshold": 10},
        {"forward": Forward.TUNNEL, "tunnel_type": 1, "tunnel_port": 6080, "tunnel_flags": 1},
    ],
    ids=["weight", "forwarding", "thresholds", "tunnel-gue"],
)
def test_real_server_setting_change_is_an_edit_in_place(change: dict[str, object]) -> None:
    kernel = FakeKernel([web(rs(RS1))])
    new = make_real_server(RS1, **{"forward": Forward.MASQ, "weight": 1, **change})  # type: ignore[arg-type]
    desired = DesiredTable((web(new),))
    assert ops(plan(desired, kernel.read())) == [("EDIT_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.1:80")]
    converged(desired, kernel)
    assert [w[0] for w in kernel.writes] == ["edit_real_server"]


def test_kernel_bookkeeping_is_not_a_difference() -> None:
    """HASHED, a zero netmask and tunnel fields of an untunnelled server are what the kernel shows of the same."""
    kernel_view = replace(web(rs(RS1)), flags=0x2, netmask=0xFFFFFFFF)
    kernel_view = replace(kernel_view, real_servers=(replace(rs(RS1), tunnel_port=9, active_connections=4),))
    assert plan(DesiredTable((web(rs(RS1)),)), [kernel_view]).empty


def test_prune_owned_removes_only_what_lvsguard_created() -> None:
    kernel = FakeKernel(
        [
            web(rs(RS1), rs(RS2), rs(RS3)),
            make_service(OLD, real_servers=(rs(RS1),)),
            make_service(DNS, real_servers=(rs(RS1),)),
        ]
    )
    desired = DesiredTable((web(rs(RS1)),))
    owned = {OLD, (WEB, RS2)}
    p = plan(desired, kernel.read(), prune="owned", owned=owned)
    assert ops(p) == [
        ("REMOVE_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.2:80"),
        ("REMOVE_SERVICE", "TCP 192.0.2.99:80", ""),
    ]
    assert set(p.left_alone) == {(WEB, RS3), DNS}
    assert "2 kernel entries not in the config and not lvsguard's: left alone." in str(p)


def test_prune_exact_removes_everything_not_desired_services_last() -> None:
    kernel = FakeKernel([make_service(OLD, real_servers=(rs(RS1),)), web(rs(RS1), rs(RS2))])
    desired = DesiredTable((web(rs(RS1)),))
    p = plan(desired, kernel.read(), prune="exact")
    assert ops(p) == [
        ("REMOVE_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.2:80"),
        ("REMOVE_SERVICE", "TCP 192.0.2.99:80", ""),
    ]
    assert "- TCP 192.0.2.99:80: remove, with 1 real server" in str(p)
    converged(desired, kernel, prune="exact")


def test_busy_real_server_is_drained_then_removed_once_idle() -> None:
    kernel = FakeKernel([web(rs(RS1), rs(RS2, 5))])
    kernel.set_connections(WEB, RS2, active=3)
    desired = DesiredTable((web(rs(RS1)),))
    p = plan(desired, kernel.read(), prune="exact")
    assert ops(p) == [("DRAIN_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.2:80")]
    assert "- 10.0.1.2:80: drain, weight 5 → 0 (3 active connections)" in str(p)
    apply(p, kernel)
    assert kernel.weight(WEB, RS2) == 0
    waiting = plan(desired, kernel.read(), prune="exact")
    assert [s.op for s in waiting.steps] == [Op.DRAINING] and not waiting.operations and not waiting.empty
    kernel.set_connections(WEB, RS2, active=0)
    assert ops(plan(desired, kernel.read(), prune="exact")) == [
        ("REMOVE_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.2:80")
    ]
    assert ops(plan(desired, kernel.read(), prune="exact", drain=False)) == ops(
        plan(desired, kernel.read(), prune="exact")
    )


def test_service_with_busy_real_servers_waits_and_takes_no_new_connections() -> None:
    kernel = FakeKernel([make_service(OLD, real_servers=(rs(RS1, 4), rs(RS2, 4)))])
    kernel.set_connections(OLD, RS1, active=2)
    p = plan(DesiredTable(), kernel.read(), prune="exact")
    assert ops(p) == [
        ("DRAIN_REAL_SERVER", "TCP 192.0.2.99:80", "10.0.1.1:80"),
        ("DRAIN_REAL_SERVER", "TCP 192.0.2.99:80", "10.0.1.2:80"),
    ]
    assert ops(plan(DesiredTable(), kernel.read(), prune="exact", drain=False)) == [
        ("REMOVE_SERVICE", "TCP 192.0.2.99:80", "")
    ]


def test_holds_win_over_the_config_weight() -> None:
    kernel = FakeKernel([web(rs(RS1, 0), rs(RS2, 5))])
    desired = DesiredTable((web(rs(RS1, 10), rs(RS2, 10), rs(RS3, 10)),))
    held = {(WEB, RS1): 0, (WEB, RS3): 0}
    p = plan(desired, kernel.read(), weights=held)
    assert ops(p) == [
        ("ADD_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.3:80"),
        ("EDIT_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.2:80"),
    ]
    assert "+ 10.0.1.3:80: masq, weight 0 (held; the config says 10)" in str(p)
    apply(p, kernel)
    assert (kernel.weight(WEB, RS1), kernel.weight(WEB, RS2), kernel.weight(WEB, RS3)) == (0, 10, 0)


def test_summary_counts_each_kind() -> None:
    kernel = FakeKernel([web(rs(RS1), rs(RS2)), make_service(OLD)])
    desired = DesiredTable((web(rs(RS1, 3), rs(RS3)), make_service(DNS, "rr", real_servers=(rs(RS1),))))
    p = plan(desired, kernel.read(), prune="exact")
    assert p.summary() == ("1 service to add, 1 to remove; 2 real servers to add, 1 to change, 1 to remove")
    assert str(plan(desired, [])).endswith("Plan: 2 services to add; 3 real servers to add.\n")


def test_unknown_prune_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="prune must be one of owned, exact"):
        plan(DesiredTable(), (), prune="all")


def test_apply_goes_on_after_a_refusal_and_names_each_failure() -> None:
    class Refusing(FakeKernel):
        def add_service(self, svc: VirtualService) -> None:
            if svc.scheduler == "nosuch":
                raise InvalidRequest("no scheduler 'nosuch' in this kernel", service=svc.key)
            super().add_service(svc)

    kernel = Refusing()
    desired = DesiredTable((make_service(DNS, "nosuch", real_servers=(rs(RS1),)), web(rs(RS1))))
    result = apply(plan(desired, ()), kernel)
    assert len(result.applied) == 2 and len(result.failures) == 2
    assert [str(f) for f in result.failures] == [
        "service UDP 192.0.2.10:53: no scheduler 'nosuch' in this kernel",
        "service UDP 192.0.2.10:53: no scheduler 'nosuch' in this kernel",
    ]
    assert [type(f.step).__name__ for f in result.failures] == ["ServiceStep", "RealServerStep"]
    assert kernel.read().service(WEB) is not None
    assert "2 operations applied, 2 failed" in str(result)


def test_apply_twice_is_harmless_for_removals() -> None:
    kernel = FakeKernel([web(rs(RS1), rs(RS2))])
    p = plan(DesiredTable((web(rs(RS1)),)), kernel.read(), prune="exact")
    assert apply(p, kernel).ok
    assert apply(p, kernel).ok  # already gone counts as done


def test_a_reload_plans_only_the_services_that_changed() -> None:
    """Work proportional to the change: two configs compared first, then only those services read and planned."""
    before = DesiredTable((web(rs(RS1), rs(RS2)), make_service(DNS, "rr", real_servers=(rs(RS1),))))
    after = DesiredTable((web(rs(RS1), rs(RS2, 9)), make_service(DNS, "rr", real_servers=(rs(RS1),))))
    kernel = FakeKernel(before.services)
    keys = changed(before, after)
    assert keys == {WEB}
    partial = [kernel.read_service(key) for key in keys]
    p = plan(after, partial, prune="exact", only=keys)
    assert ops(p) == [("EDIT_REAL_SERVER", "TCP 192.0.2.10:80", "10.0.1.2:80")]
    assert p == plan(after, kernel.read(), prune="exact")  # the same as a full plan
    gone = DesiredTable((after.services[0],))
    assert changed(after, gone) == {DNS}
    assert ops(plan(gone, [kernel.read_service(DNS)], prune="exact", only={DNS})) == [
        ("REMOVE_SERVICE", "UDP 192.0.2.10:53", "")
    ]


def test_the_services_a_reload_kept_are_the_same_objects_and_unchanged() -> None:
    """A reload's unchanged services are the last load's objects (lvsguard.config.reuse), moved or not."""
    a, b, c = web(rs(RS1)), make_service(DNS, "rr"), make_service(ServiceKey.parse("TCP 192.0.2.20:80"), "rr")
    before = DesiredTable((a, b, c))
    assert changed(before, DesiredTable((a, b, c))) == set()
    assert changed(before, DesiredTable((b, a, c))) == set(), "moved, not changed"
    assert changed(before, DesiredTable((a, c))) == {DNS}
    edited = make_service(DNS, "wrr")
    assert changed(before, DesiredTable((a, edited, c))) == {DNS}
    assert changed(DesiredTable((a, c)), before) == {DNS}
