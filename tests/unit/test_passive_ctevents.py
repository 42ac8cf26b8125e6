"""The conntrack event source: what a recorded event stream means, and the socket filter the kernel accepts.

``conntrack_events.bin`` is what an unfiltered ctnetlink socket on the lab
director received (kernel 6.1, ``net.ipv4.vs.conntrack=1``, a ``-m conntrack``
rule for each family), in this order: through the NAT service (IPv4, then
IPv6) a request, a client's reset after the handshake, three requests while
rs1 refused them (its RST to the SYN) and three while rs1 dropped them; then
the same through the DR service. The first IPv4 request and reset are
missing (the kernel loaded ctnetlink on the socket's bind). 93 messages.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvsguard.exporter.passive import ctevents
from lvsguard.exporter.passive.conntable import REFUSED, TIMEOUT
from lvsguard.exporter.passive.ctevents import ANSWERED, NEW, REFUSED_EVENT, ConntrackEvents, Event, parse_event
from lvsguard.model import RealServerKey, ServiceKey

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "netlink" / "conntrack_events.bin"
NAT, NAT6 = ServiceKey.parse("TCP 192.0.2.10:80"), ServiceKey.parse("TCP [2001:db8::10]:80")
RS1, RS2, RS3 = (RealServerKey.parse(f"10.0.1.{i}:8080") for i in (2, 3, 4))
RS1_6 = RealServerKey.parse("[2001:db8:1::2]:8080")


def messages() -> list[bytes]:
    data = FIXTURE.read_bytes()
    out, i = [], 0
    while i < len(data):
        length = struct.unpack_from("=I", data, i)[0]
        out.append(data[i : i + length])
        i += (length + 3) & ~3
    return out


def events() -> list[Event]:
    return [e for e in map(parse_event, messages()) if e is not None]


def test_the_recording_has_every_event_of_every_connection() -> None:
    assert len(messages()) == 93


def test_only_handshake_events_are_kept() -> None:
    """Of 93 events, 40: the NEW of each connection, its answer (SYN_RECV) or its refusal; no FIN, no TIME_WAIT.

    22 connections: 13 answered, 5 refused, 4 dropped (a NEW and nothing else).
    """
    kinds = [e.kind for e in events()]
    assert (len(kinds), kinds.count(NEW), kinds.count(ANSWERED), kinds.count(REFUSED_EVENT)) == (40, 22, 13, 5)


def test_refusals_name_the_refusing_real_server_for_nat() -> None:
    refused = [e.backend for e in events() if e.kind == REFUSED_EVENT]
    assert refused[:4] == [(NAT, RS1), (NAT, RS1), (NAT6, RS1_6), (NAT6, RS1_6)]


def test_answers_name_the_real_server_that_answered() -> None:
    answered = {e.backend for e in events() if e.kind == ANSWERED and e.backend is not None}
    assert answered == {
        (NAT, RS2),
        (NAT, RS3),
        (NAT6, RealServerKey.parse("[2001:db8:1::3]:8080")),
        (NAT6, RealServerKey.parse("[2001:db8:1::4]:8080")),
    }


def test_direct_routing_names_no_real_server() -> None:
    """The reply tuple of a DR connection is the VIP's: the events are there, the real server is not."""
    dr = events()[-15:]
    assert {e.backend for e in dr} == {None} and [e.kind for e in dr].count(REFUSED_EVENT) == 1


def test_a_truncated_or_foreign_message_is_no_event() -> None:
    done = struct.pack("=IHHII", 20, 3, 0, 0, 0) + b"\0" * 4  # NLMSG_DONE with an empty body
    assert parse_event(done) is None


def test_the_filter_jumps_forward_and_ends_in_returns() -> None:
    program = ctevents.socket_filter()
    assert program[-2:] == [(0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
    for i, (_, jt, jf, _) in enumerate(program):
        assert 0 <= jt < len(program) - i and 0 <= jf < len(program) - i


def test_the_kernel_accepts_the_filter() -> None:
    """SO_ATTACH_FILTER checks the program (bpf_check_classic); no privilege needed for that."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ctevents.NETLINK_NETFILTER)
    except OSError as exc:
        pytest.skip(f"no netlink netfilter socket here: {exc}")
    with sock:
        ctevents.attach_filter(sock)


class Feed:
    """The recorded messages sent, one datagram each, to a socket the source reads; a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.source = ConntrackEvents(self.ours, handshake_timeout=2.0, clock=lambda: self.now)

    def send(self, *indices: int) -> None:
        recorded = messages()
        for i in indices:
            self.theirs.send(recorded[i])

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def feed() -> Iterator[Feed]:
    f = Feed()
    yield f
    f.close()


def test_a_refusal_is_an_attempt_and_a_failure(feed: Feed) -> None:
    feed.send(0, 1, 4, 5)  # rs1: NEW, refused; rs2: NEW, answered
    counts = feed.source.read_pass()
    assert dict(counts.attempts) == {(NAT, RS1): 1, (NAT, RS2): 1}
    assert dict(counts.failures[REFUSED]) == {(NAT, RS1): 1} and not counts.failures[TIMEOUT]
    assert counts.entries == 0  # no handshake left under way


def test_an_unanswered_handshake_times_out_once(feed: Feed) -> None:
    feed.send(11)  # rs1: NEW, never answered (dropped)
    assert feed.source.read_pass().entries == 1
    feed.now += 1.9
    assert not feed.source.read_pass().failures[TIMEOUT]
    feed.now += 0.2
    counts = feed.source.read_pass()
    assert dict(counts.failures[TIMEOUT]) == {(NAT, RS1): 1} and dict(counts.attempts) == {(NAT, RS1): 1}
    feed.now += 5.0
    assert not feed.source.read_pass().failures[TIMEOUT]


def test_a_late_answer_is_not_a_second_attempt(feed: Feed) -> None:
    feed.send(4)  # rs2: NEW
    feed.source.read_pass()
    feed.now += 3.0
    assert dict(feed.source.read_pass().failures[TIMEOUT]) == {(NAT, RS2): 1}
    feed.send(5)  # its SYN_RECV, after the timeout
    assert not feed.source.read_pass().attempts


def test_collect_returns_at_once_on_a_failure(feed: Feed) -> None:
    feed.send(0, 1)
    waited: list[float] = []
    feed.source.collect(feed.now + 60.0, lambda s: waited.append(s) or False)
    assert waited == [] and feed.source.read_pass().failures[REFUSED]


def test_collect_returns_at_the_deadline_without_failures(feed: Feed) -> None:
    feed.send(4, 5)
    feed.source.collect(feed.now, lambda s: False)
    assert dict(feed.source.read_pass().attempts) == {(NAT, RS2): 1}


def test_direct_routing_events_are_counted_as_unattributed(feed: Feed) -> None:
    feed.send(*range(53, 93))
    counts = feed.source.read_pass()
    assert not counts.attempts and feed.source.unattributed == 15


def test_no_timeout_while_events_wait_unread(feed: Feed, monkeypatch: pytest.MonkeyPatch) -> None:
    """A detector that fell behind reads its backlog before it calls a handshake unanswered."""
    feed.send(4)  # rs2: NEW
    feed.source.read_pass()
    feed.now += 3.0
    monkeypatch.setattr(ctevents, "MAX_DRAIN", 1)
    monkeypatch.setattr(ctevents, "VLEN", 1)  # one message a drain: the answer stays behind the filler
    feed.send(12, 5)  # rs3's NEW, then rs2's answer
    first = feed.source.read_pass()
    assert not first.failures[TIMEOUT]
    second = feed.source.read_pass()
    assert dict(second.attempts) == {(NAT, RS2): 1} and not second.failures[TIMEOUT]


def test_a_refusal_after_answers_starts_a_pass_of_its_own(feed: Feed) -> None:
    """rs2 answered a handshake, then refused one: the refusal is judged alone, not diluted; a timeout is not split."""
    feed.send(4, 5, 0, 1)  # rs2: NEW, answered; rs1: NEW, refused
    feed.source.read_passes()
    refused = _with_backend(messages()[1], RS2)
    feed.send(4, 5)
    feed.theirs.send(_with_backend(messages()[0], RS2))
    feed.theirs.send(refused)
    passes = feed.source.read_passes()
    assert [(dict(p.attempts), dict(p.failures[REFUSED])) for p in passes] == [
        ({(NAT, RS2): 1}, {}),
        ({(NAT, RS2): 1}, {(NAT, RS2): 1}),
    ]
    feed.send(18)  # rs2: NEW, never answered here
    feed.source.read_passes()
    feed.now += 3.0
    feed.send(4, 5)
    assert len(feed.source.read_passes()) == 1


def _with_backend(message: bytes, rs: RealServerKey) -> bytes:
    """The recorded event of rs1 (10.0.1.2) rewritten to name ``rs`` instead."""
    return message.replace(bytes([10, 0, 1, 2]), bytes(int(x) for x in rs.address.split(".")))
