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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvsguard.exporter.passive import ctevents
from lvsguard.exporter.passive.conntable import REFUSED, TIMEOUT
from lvsguard.exporter.passive.ctevents import (
    ANSWERED,
    NEW,
    REFUSED_EVENT,
    ConntrackEvents,
    Event,
    EventDecoder,
    parse_event,
    read_event,
)
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


def test_the_compiled_layouts_read_every_recorded_event_as_the_walk_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path against its oracle: each message learns or uses a layout, and reads as ``read_event`` does.

    The second round goes through the layouts learnt in the first one alone.
    """
    decoder = EventDecoder()
    recorded = messages()
    walked = [read_event(m) for m in recorded]
    assert [decoder.decode(m, 0, len(m)) for m in recorded] == walked
    assert decoder.layouts() == 20  # NEW, answer, refusal per family: 6; the states and destroys not counted: 14
    monkeypatch.setattr(ctevents, "compile_layout", lambda _: pytest.fail("a layout learnt twice"))
    assert [decoder.decode(m, 0, len(m)) for m in recorded] == walked


def test_a_layout_is_not_taken_for_a_message_of_another_kind() -> None:
    """An answer and a NEW of the same length and attributes: the state byte and flags tell them apart."""
    decoder = EventDecoder()
    recorded = messages()
    new, answered = recorded[4], recorded[5]
    assert len(new) == len(answered) and read_event(new) is not None and read_event(answered) is not None
    decoder.decode(new, 0, len(new))
    for m in (answered, new, answered):
        assert decoder.decode(m, 0, len(m)) == read_event(m)
    state = bytearray(new)
    state[_state_at(new)] = ctevents.SYN_RECV  # a NEW in SYN_RECV is not counted
    assert read_event(bytes(state)) is None and decoder.decode(bytes(state), 0, len(state)) is None


def _state_at(message: bytes) -> int:
    """Where the TCP state byte of a recorded message is."""
    at = 20
    while at < len(message):
        length, kind = struct.unpack_from("=HH", message, at)
        if kind & 0x3FFF == ctevents.CTA_PROTOINFO:
            return at + 12
        at += (length + 3) & ~3
    raise AssertionError("no CTA_PROTOINFO")


def _outcome(read: Callable[[bytes], object], message: bytes) -> object:
    try:
        return read(message)
    except Exception as exc:  # the walk's own failures on broken bytes: both paths must fail alike
        return type(exc)


def _one_of_each_layout() -> list[bytes]:
    decoder, out = EventDecoder(), []
    for m in messages():
        before = decoder.layouts()
        decoder.decode(m, 0, len(m))
        if decoder.layouts() > before:
            out.append(m)
    return out


def test_every_bit_flipped_reads_alike_through_layouts_and_the_walk() -> None:
    """One message of each layout, each of its bits flipped in turn: the layouts read it as the walk, or pass it on.

    A byte the mask left out that the walk looks at (a state, a flag, a
    protocol, an attribute header) shows here as a difference.
    """
    seeds = _one_of_each_layout()
    decoder = EventDecoder()
    for m in seeds:
        decoder.decode(m, 0, len(m))
    for m in seeds:
        for at in range(len(m)):
            for bit in range(8):
                edited = bytearray(m)
                edited[at] ^= 1 << bit
                message = bytes(edited)
                length = struct.unpack_from("=I", message)[0]
                if 16 <= length <= len(message):
                    fast = _outcome(lambda b: decoder.decode(b, 0, length), message)
                    assert fast == _outcome(read_event, message), (messages().index(m), at, bit)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(93)),
    st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_edited_events_read_alike_through_layouts_and_the_walk(index: int, edits: list[tuple[int, int]]) -> None:
    """Any byte changed in a recorded event: a learnt layout reads it as the walk does, or does not take it."""
    decoder = EventDecoder()
    recorded = messages()
    for m in recorded:
        decoder.decode(m, 0, len(m))
    edited = bytearray(recorded[index])
    for at, byte in edits:
        edited[at % len(edited)] = byte
    message = bytes(edited)
    length = struct.unpack_from("=I", message)[0]
    if not 16 <= length <= len(message):
        return  # the reader does not hand such a message on
    assert _outcome(lambda m: decoder.decode(m, 0, length), message) == _outcome(read_event, message)


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


class SplitFeed(Feed):
    """As ``Feed``, with refusals on a socket of their own (the DESTROY group), as the detector opens them."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals, self.theirs_refusals = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.refusals.setblocking(False)
        self.source = ConntrackEvents(self.ours, refusals=self.refusals, handshake_timeout=2.0, clock=lambda: self.now)

    def send(self, *indices: int) -> None:
        recorded = messages()
        for i in indices:
            to = self.theirs_refusals if parse_event(recorded[i]) and recorded[i][4] == 2 else self.theirs
            to.send(recorded[i])

    def close(self) -> None:
        super().close()
        self.refusals.close()
        self.theirs_refusals.close()


@pytest.fixture
def split() -> Iterator[SplitFeed]:
    f = SplitFeed()
    yield f
    f.close()


def test_a_refusal_wakes_the_reader_after_the_handshakes_before_it(split: SplitFeed) -> None:
    """The handshakes' socket is read first: rs2's answer falls in the pass before rs2's refusal, judged alone."""
    split.send(4, 5)  # rs2: NEW, answered
    split.theirs.send(_with_backend(messages()[0], RS2))  # rs2: NEW ...
    split.theirs_refusals.send(_with_backend(messages()[1], RS2))  # ... refused
    waited: list[float] = []
    split.source.collect(split.now + 60.0, lambda s: waited.append(s) or False)
    assert waited == []  # at once
    passes = split.source.read_passes()
    assert [(dict(p.attempts), dict(p.failures[REFUSED])) for p in passes] == [
        ({(NAT, RS2): 1}, {}),
        ({(NAT, RS2): 1}, {(NAT, RS2): 1}),
    ]
    assert passes[-1].entries == 0


def test_a_refusal_read_before_its_new_is_not_a_timeout_later(split: SplitFeed) -> None:
    """The NEW reached its socket after that socket was read, the refusal was read first: the NEW is not followed."""
    split.theirs_refusals.send(messages()[1])  # rs1's refusal ...
    assert dict(split.source.read_pass().failures[REFUSED]) == {(NAT, RS1): 1}
    split.theirs.send(messages()[0])  # ... then its NEW
    assert split.source.read_pass().entries == 0
    split.now += 5.0
    counts = split.source.read_pass()
    assert not counts.failures[TIMEOUT] and not counts.attempts
