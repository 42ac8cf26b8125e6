"""The v2c fast path on plain model data: requests built and answers read by pysnmp's codec."""

from __future__ import annotations

import itertools

import pytest
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api

from lvsguard.exporter.snmp import layout
from lvsguard.exporter.snmp.fastpath import MAX_REPETITIONS, AgentStats, V2cResponder
from lvsguard.exporter.snmp.layout import FirstSeen, Uptime, build_subtrees
from lvsguard.exporter.snmp.mibview import MibView
from lvsguard.exporter.snmp.snapshot import Health, Hold, ProbeState, RealServerState, ServiceState, Snapshot
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Stats, SyncDaemon, Table, VirtualService

P = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
BASE = layout.DEFAULT_BASE
WEB = ServiceKey("TCP", "192.0.2.10", 80)
DNS6 = ServiceKey("UDP", "2001:db8::1", 53, family=6)
MARK = ServiceKey("FWM", "", 0, 7)


def real_server(address: str, port: int = 80, weight: int = 1, **kw) -> RealServer:
    family = 6 if ":" in address else 4
    return RealServer(RealServerKey(address, port, family), weight, kw.pop("forward", Forward.MASQ), **kw)


def make_table(web_servers: int = 3) -> Table:
    web = tuple(
        real_server(f"10.0.0.{i + 1}", active_connections=i, stats=Stats(100 + i, 2, 3, 2**40 + i, 5, cps=i))
        for i in range(web_servers)
    )
    return Table(
        (
            VirtualService(WEB, "wlc", stats=Stats(1, 2, 3, 4, 5), real_servers=web),
            VirtualService(DNS6, "rr", real_servers=(real_server("2001:db8::2", 53, 3, forward=Forward.ROUTE),)),
            VirtualService(MARK, "sh", flags=1, timeout=300, netmask=0xFFFFFF00),
        ),
        totals=Stats(9, 8, 7, 6, 5),
        sync_daemons=(SyncDaemon("master", "eth0", 5),),
    )


def make_view(snap: Snapshot, first_seen: FirstSeen | None = None) -> MibView:
    return MibView(
        build_subtrees(snap, BASE, Uptime(start=0.0, clock=lambda: 12.5), first_seen or FirstSeen(lambda: 0.0))
    )


def request(pdu_cls, oids, community: str = "public", version=None, non_repeaters=0, max_repetitions=0) -> bytes:
    pdu = pdu_cls()
    if pdu_cls is P.GetBulkRequestPDU:
        P.apiBulkPDU.set_defaults(pdu)
        P.apiBulkPDU.set_non_repeaters(pdu, non_repeaters)
        P.apiBulkPDU.set_max_repetitions(pdu, max_repetitions)
    else:
        P.apiPDU.set_defaults(pdu)
    P.apiPDU.set_varbinds(pdu, [(oid, P.Null("")) for oid in oids])
    msg = P.Message()
    P.apiMessage.set_defaults(msg)
    if version is not None:
        msg["version"] = version
    P.apiMessage.set_community(msg, community)
    P.apiMessage.set_pdu(msg, pdu)
    return encoder.encode(msg)


def answer(data: bytes) -> tuple[int, int, list[tuple[tuple[int, ...], object]]]:
    msg, rest = decoder.decode(data, asn1Spec=P.Message())
    assert rest == b""
    pdu = P.apiMessage.get_pdu(msg)
    binds = [(tuple(name), value) for name, value in P.apiPDU.get_varbinds(pdu)]
    return int(P.apiPDU.get_error_status(pdu)), int(P.apiPDU.get_error_index(pdu)), binds


@pytest.fixture
def responder() -> V2cResponder:
    return V2cResponder([b"public"], AgentStats(), max_size=65000)  # no answer of these tests is cut


def all_oids(view: MibView) -> list[tuple[int, ...]]:
    """Every served OID, enumerated from the subtrees and sorted here (not by the view)."""
    oids = []
    for tree in view.subtrees:
        for column in tree.columns:
            oids.extend(tree.entry + (column.subid,) + index for index in tree.indexes)
    return sorted(oids)


def walk(responder: V2cResponder, view: MibView, start: tuple[int, ...]) -> list[tuple[tuple[int, ...], object]]:
    out, oid = [], start
    while True:
        _, _, [(name, value)] = answer(responder.respond(request(P.GetNextRequestPDU, [oid]), view))
        if isinstance(value, P.EndOfMibView):
            return out
        assert name > oid
        out.append((name, value))
        oid = name


def test_service_index_is_its_identity() -> None:
    assert layout.service_index(WEB) == (6, 1, 4, 192, 0, 2, 10, 80, 0)
    assert layout.service_index(MARK) == (256, 1, 4, 0, 0, 0, 0, 0, 7)
    assert layout.service_index(DNS6)[:3] == (17, 2, 16)
    rs = real_server("10.0.0.3")
    assert layout.real_server_index(WEB, rs) == (6, 1, 4, 192, 0, 2, 10, 80, 0, 1, 4, 10, 0, 0, 3, 80)


def test_get_values_and_exceptions(responder: V2cResponder) -> None:
    view = make_view(Snapshot(make_table()))
    rs_index = layout.real_server_index(WEB, real_server("10.0.0.3"))
    conns = BASE + layout.RS_ENTRY + (16,) + rs_index
    in_bytes = BASE + layout.RS_ENTRY + (19,) + rs_index
    scheduler = BASE + layout.VS_ENTRY + (7,) + layout.service_index(MARK)
    missing_row = BASE + layout.RS_ENTRY + (16,) + rs_index[:-1] + (81,)
    missing_column = BASE + layout.RS_ENTRY + (99,) + rs_index
    uptime = (1, 3, 6, 1, 2, 1, 1, 3, 0)
    status, index, binds = answer(
        responder.respond(
            request(P.GetRequestPDU, [conns, in_bytes, scheduler, missing_row, missing_column, uptime]), view
        )
    )
    assert (status, index) == (0, 0)
    assert [name for name, _ in binds] == [conns, in_bytes, scheduler, missing_row, missing_column, uptime]
    assert int(binds[0][1]) == 102
    assert int(binds[1][1]) == 2**40 + 2
    assert bytes(binds[2][1]) == b"sh"
    assert isinstance(binds[3][1], P.NoSuchInstance)
    assert isinstance(binds[4][1], P.NoSuchObject)
    assert int(binds[5][1]) == 1250


def test_getnext_walk_visits_every_cell_in_order(responder: V2cResponder) -> None:
    view = make_view(Snapshot(make_table()))
    walked = walk(responder, view, (1, 3))
    assert [name for name, _ in walked] == all_oids(view)
    assert len(walked) == len(view)


@pytest.mark.parametrize(
    "non_repeaters,max_repetitions,starts",
    [
        (0, 10, [BASE]),
        (0, 25, [BASE + layout.RS_ENTRY, BASE + layout.VS_ENTRY]),
        (1, 7, [(1, 3, 6, 1, 2, 1, 1, 1), BASE + layout.RS_ENTRY + (20,)]),
        (2, 3, [(1, 3), BASE, BASE + layout.SYNC_ENTRY]),
        (0, 0, [BASE]),
        (5, 4, [BASE]),
        (0, 50, [BASE + layout.SYNC_ENTRY]),
        (0, 50, [BASE + layout.SYNC_ENTRY, BASE + layout.RS_ENTRY]),
    ],
    ids=[
        "one-repeater",
        "two-repeaters",
        "non-repeater-and-repeater",
        "only-non-repeaters",
        "zero-repetitions",
        "n-over-count",
        "one-repeater-past-the-end",
        "two-repeaters-past-the-end",
    ],
)
def test_getbulk_equals_getnext_steps(responder: V2cResponder, non_repeaters, max_repetitions, starts) -> None:
    """RFC 3416 4.2.3 spelled out with GETNEXT: N single steps, then M rounds over the R repeaters."""
    view = make_view(Snapshot(make_table()))
    _, _, binds = answer(
        responder.respond(
            request(P.GetBulkRequestPDU, starts, non_repeaters=non_repeaters, max_repetitions=max_repetitions), view
        )
    )
    n = min(non_repeaters, len(starts))
    expected = []
    for oid in starts[:n]:
        expected.append(answer(responder.respond(request(P.GetNextRequestPDU, [oid]), view))[2][0])
    cursors = list(starts[n:])
    for _ in range(max_repetitions if cursors else 0):
        round_ = [answer(responder.respond(request(P.GetNextRequestPDU, [oid]), view))[2][0] for oid in cursors]
        expected.extend(round_)
        cursors = [name for name, _ in round_]
        if all(isinstance(value, P.EndOfMibView) for _, value in round_):
            break
    assert [(name, value.prettyPrint()) for name, value in binds] == [(n_, v.prettyPrint()) for n_, v in expected]


def test_getbulk_past_the_end_reports_end_of_mib_view_once_per_repeater(responder: V2cResponder) -> None:
    view = make_view(Snapshot(make_table()))
    last = all_oids(view)[-1]
    _, _, binds = answer(responder.respond(request(P.GetBulkRequestPDU, [last, last], max_repetitions=50), view))
    assert [(name, type(value)) for name, value in binds] == [(last, P.EndOfMibView)] * 2


def test_getbulk_max_repetitions_is_capped_before_the_size_budget() -> None:
    responder = V2cResponder([b"public"], AgentStats(), max_size=65000)
    view = make_view(Snapshot(make_table(web_servers=200)))
    _, _, binds = answer(responder.respond(request(P.GetBulkRequestPDU, [BASE], max_repetitions=5000), view))
    assert len(binds) == MAX_REPETITIONS


def test_getbulk_answer_is_cut_to_the_size_limit() -> None:
    responder = V2cResponder([b"public"], AgentStats(), max_size=1000)
    view = make_view(Snapshot(make_table(web_servers=200)))
    data = responder.respond(request(P.GetBulkRequestPDU, [BASE], max_repetitions=1000), view)
    assert len(data) <= 1000
    _, _, binds = answer(data)
    assert 10 < len(binds) < 1000
    assert [name for name, _ in binds] == [oid for oid in all_oids(view) if oid > BASE][: len(binds)]


def test_get_too_big_answers_too_big() -> None:
    responder = V2cResponder([b"public"], AgentStats(), max_size=484)
    view = make_view(Snapshot(make_table()))
    oids = all_oids(view)[:60]
    status, index, binds = answer(responder.respond(request(P.GetRequestPDU, oids), view))
    assert (status, index, binds) == (1, 0, [])


def test_wrong_community_is_dropped_and_counted(responder: V2cResponder) -> None:
    view = make_view(Snapshot(make_table()))
    assert responder.respond(request(P.GetRequestPDU, [BASE], community="private"), view) is None
    assert responder.stats.bad_community_names == 1
    assert responder.stats.responses == 0


def test_set_is_refused_with_no_access(responder: V2cResponder) -> None:
    view = make_view(Snapshot(make_table()))
    oid = (1, 3, 6, 1, 2, 1, 1, 1, 0)
    status, index, binds = answer(responder.respond(request(P.SetRequestPDU, [oid]), view))
    assert (status, index, [name for name, _ in binds]) == (6, 1, [oid])
    assert responder.stats.bad_community_uses == 1


def test_v1_and_garbage_are_dropped_and_counted(responder: V2cResponder) -> None:
    view = make_view(Snapshot(make_table()))
    assert responder.respond(request(P.GetRequestPDU, [BASE], version=0), view) is None
    assert responder.stats.bad_versions == 1
    good = request(P.GetRequestPDU, [BASE])
    for bad in (b"", b"\x30\x00", good[:-1], good + b"\x00", b"\x04\x03abc"):
        assert responder.respond(bad, view) is None
    assert responder.stats.asn_parse_errors == 5


def test_index_of_a_row_survives_removal_of_others(responder: V2cResponder) -> None:
    """A real server keeps its OID, and its values, when the servers before it are removed."""
    full = make_view(Snapshot(make_table(web_servers=5)))
    table = make_table(web_servers=5)
    web = table.services[0]
    kept = web.real_servers[3]
    shrunk = Table((VirtualService(WEB, "wlc", real_servers=(kept,)),) + table.services[1:], totals=table.totals)
    small = make_view(Snapshot(shrunk))
    oid = BASE + layout.RS_ENTRY + (16,) + layout.real_server_index(WEB, kept)
    before = answer(responder.respond(request(P.GetRequestPDU, [oid]), full))[2]
    after = answer(responder.respond(request(P.GetRequestPDU, [oid]), small))[2]
    assert before == after
    assert int(after[0][1]) == kept.stats.connections


def test_health_holds_probes_and_quorum() -> None:
    table = make_table()
    keys = [rs.key for rs in table.services[0].real_servers]
    snap = Snapshot(
        table,
        services={WEB: ServiceState(name="web", quorum=3)},
        real_servers={
            (WEB, keys[0]): RealServerState(Health.ALIVE, last_change=10.0, name="web-1"),
            (WEB, keys[1]): RealServerState(Health.ALIVE),
            (WEB, keys[2]): RealServerState(Health.DEAD, Hold.QUARANTINED, last_change=11.0),
        },
        probes={(WEB, keys[0]): (ProbeState("http", "http", True, 0.0015),)},
    )
    view = make_view(snap)
    cells = {view.oid(pos): view.cell(pos)[2] for pos in _positions(view)}
    vs = layout.service_index(WEB)
    rs0 = vs + layout.address_index("10.0.0.1") + (80,)
    rs2 = vs + layout.address_index("10.0.0.3") + (80,)
    entry = BASE + layout.VS_ENTRY
    assert [cells[entry + (col,) + vs] for col in (6, 12, 13, 14, 15)] == ["web", 3, 2, 3, 2]
    rs_entry = BASE + layout.RS_ENTRY
    assert [cells[rs_entry + (col,) + rs0] for col in (4, 9, 10, 11)] == ["web-1", 1, 1, 1000]
    assert [cells[rs_entry + (col,) + rs2] for col in (9, 10, 11)] == [2, 2, 1100]
    probe = BASE + layout.PROBE_ENTRY
    suffix = rs0 + (4, *b"http")
    assert [cells[probe + (col,) + suffix] for col in (2, 3, 4, 5)] == [2, 1, 1500, ""]


def test_discontinuity_time_marks_rows_that_came_later() -> None:
    first_seen = FirstSeen(lambda: 100.0)  # the agent started at 0.0 (make_view's Uptime)
    make_view(Snapshot(make_table(web_servers=1)), first_seen)
    view = make_view(Snapshot(make_table(web_servers=2)), first_seen)
    cells = {view.oid(pos): view.cell(pos)[2] for pos in _positions(view)}
    vs = layout.service_index(WEB)
    col = BASE + layout.RS_ENTRY + (12,)
    assert cells[col + vs + layout.address_index("10.0.0.1") + (80,)] == 0
    assert cells[col + vs + layout.address_index("10.0.0.2") + (80,)] == 10000  # hundredths of a second


def test_unreadable_table_serves_unavailable_and_empty_tables() -> None:
    view = make_view(Snapshot(None))
    names = {view.oid(pos) for pos in _positions(view)}
    assert all(oid[: len(BASE) + 2] in {BASE + layout.DIRECTOR} for oid in names if oid[: len(BASE)] == BASE)
    source = BASE + layout.DIRECTOR + (4, 0)
    assert {view.oid(p): view.cell(p)[2] for p in _positions(view)}[source] == layout.SOURCE_UNAVAILABLE


def _positions(view: MibView):
    pos = view.next_position((0, 0))
    while pos is not None:
        yield pos
        pos = view.advance(pos)


def test_duplicate_rows_are_rejected() -> None:
    from lvsguard.exporter.snmp.mibview import Column, Subtree

    with pytest.raises(ValueError, match="duplicate row index 1.2"):
        Subtree((1, 3, 9), [Column(1, "x", "integer")], [((1, 2), [1]), ((1, 2), [2])])


def test_many_requests_share_the_view_without_state(responder: V2cResponder) -> None:
    view = make_view(Snapshot(make_table()))
    first = [
        responder.respond(request(P.GetNextRequestPDU, [oid]), view) for oid in itertools.islice(all_oids(view), 20)
    ]
    again = [
        responder.respond(request(P.GetNextRequestPDU, [oid]), view) for oid in itertools.islice(all_oids(view), 20)
    ]
    strip = [answer(a)[2] for a in first]
    assert strip == [answer(a)[2] for a in again]
