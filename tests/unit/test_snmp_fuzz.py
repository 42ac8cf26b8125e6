"""Property-based tests of the v2c fast path: any bytes are handled, any table walks in order."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="property-based tests need the hypothesis package")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_snmp_fastpath import P, make_table, request

from lvsguard.exporter.snmp import ber, layout
from lvsguard.exporter.snmp.fastpath import AgentStats, V2cResponder, decode_request
from lvsguard.exporter.snmp.layout import FirstSeen, Uptime, build_subtrees
from lvsguard.exporter.snmp.mibview import MibView
from lvsguard.exporter.snmp.snapshot import Snapshot
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Stats, Table, VirtualService

VIEW = MibView(build_subtrees(Snapshot(make_table(5)), layout.DEFAULT_BASE, Uptime(), FirstSeen()))
GOOD = [
    request(P.GetBulkRequestPDU, [layout.DEFAULT_BASE], max_repetitions=20),
    request(P.GetRequestPDU, [(1, 3, 6, 1, 2, 1, 1, 3, 0)]),
    request(P.GetNextRequestPDU, [layout.DEFAULT_BASE + layout.RS_ENTRY]),
]


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_are_answered_or_dropped(data: bytes) -> None:
    responder = V2cResponder([b"public"], AgentStats())
    answer = responder.respond(data, VIEW)
    assert answer is None or decode_request(answer).pdu_type == ber.GET_RESPONSE


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(GOOD), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_requests_are_answered_or_dropped(seed: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for at, byte in edits:
        data[at % len(data)] = byte
    stats = AgentStats()
    answer = V2cResponder([b"public"], stats).respond(bytes(data), VIEW)
    if answer is None:
        assert (
            stats.asn_parse_errors
            + stats.bad_versions
            + stats.bad_community_names
            + stats.unsupported_pdus
            + stats.silent_drops
            == 1
        )
    else:
        assert decode_request(answer).pdu_type == ber.GET_RESPONSE


addresses = st.tuples(st.integers(1, 254), st.integers(0, 255)).map(lambda t: f"10.1.{t[0]}.{t[1]}")
servers = st.lists(st.tuples(addresses, st.integers(1, 65535)), unique=True, max_size=12)


@settings(max_examples=150, deadline=None)
@given(servers, st.integers(1, 30))
def test_bulk_walk_of_any_table_visits_every_cell_once_in_order(rs: list[tuple[str, int]], repetitions: int) -> None:
    real_servers = tuple(
        RealServer(RealServerKey(a, p), p % 7, Forward.ROUTE, stats=Stats(p, 1, 2, 3, 4)) for a, p in rs
    )
    table = Table((VirtualService(ServiceKey("UDP", "192.0.2.1", 53), "rr", real_servers=real_servers),))
    view = MibView(build_subtrees(Snapshot(table), layout.DEFAULT_BASE, Uptime(), FirstSeen()))
    responder = V2cResponder([b"public"], AgentStats())
    walked, oid = [], layout.DEFAULT_BASE
    while True:
        answer = responder.respond(request(P.GetBulkRequestPDU, [oid], max_repetitions=repetitions), view)
        msg = decode_request(answer)
        names = list(msg.oids)
        end = _ends(answer)
        walked += [n for n in names[: len(names) - end] if n[: len(layout.DEFAULT_BASE)] == layout.DEFAULT_BASE]
        if end or names[-1][: len(layout.DEFAULT_BASE)] != layout.DEFAULT_BASE:
            break
        oid = names[-1]
    assert walked == sorted(set(walked))
    rs_cells = [n for n in walked if n[: len(layout.DEFAULT_BASE) + 3] == layout.DEFAULT_BASE + layout.RS_ENTRY]
    assert len(rs_cells) == len(rs) * len(layout.RS_COLUMNS)


def _ends(answer: bytes) -> int:
    """How many endOfMibView values the answer ends with (0 or 1 for one repeater)."""
    return 1 if answer.endswith(b"\x82\x00") else 0
