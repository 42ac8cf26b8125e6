"""The connection-table reader: new connections and failed handshakes per real server, each counted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvsguard.exporter.passive import conntable
from lvsguard.exporter.passive.conntable import REFUSED, TIMEOUT, ConnTableReader, PassCounts, parse_backend
from lvsguard.model import RealServerKey, ServiceKey

HEADER = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
NAT = ServiceKey.parse("TCP 192.0.2.10:80")
RS1, RS2 = RealServerKey.parse("10.0.1.2:8080"), RealServerKey.parse("10.0.1.3:8080")


def line(cport: int, state: str, expires: int, dest: str = "0A000102") -> str:
    """A connection of client 198.51.100.10:cport to 192.0.2.10:80 on dest:8080, as kernel 6.1 prints it."""
    return f"TCP C633640A {cport:04X} C000020A 0050 {dest} 1F90 {state:<11} {expires:7d}\n"


class Table:
    """The table file, rewritten between passes; the reader reads it like the kernel's."""

    def __init__(self, tmp_path: Path, max_entries: int = 1000) -> None:
        self.path = tmp_path / "ip_vs_conn"
        self.now = 1000.0
        self.path.write_text(HEADER)
        self.reader = ConnTableReader(
            str(self.path), max_entries=max_entries, handshake_timeout=3.0, clock=lambda: self.now
        )

    def read(self, *lines: str, after: float = 1.0) -> PassCounts:
        self.now += after
        self.path.write_text(HEADER + "".join(lines))
        return self.reader.read_pass()


def failures(c: PassCounts) -> dict[tuple[str, RealServerKey], int]:
    return {(reason, rs): n for reason, counter in c.failures.items() for (_, rs), n in counter.items() if n}


def test_the_first_pass_is_the_baseline(tmp_path: Path) -> None:
    t = Table(tmp_path)
    first = t.read(line(1, "CLOSE", 9), line(2, "SYN_RECV", 40), line(3, "ESTABLISHED", 900))
    assert (first.entries, failures(first), dict(first.attempts)) == (3, {}, {})


def test_refused_counted_once_and_attempts_are_new_connections(tmp_path: Path) -> None:
    t = Table(tmp_path)
    t.read(line(1, "ESTABLISHED", 900))
    c = t.read(line(1, "ESTABLISHED", 899), line(2, "CLOSE", 10), line(3, "TIME_WAIT", 119, dest="0A000103"))
    assert failures(c) == {(REFUSED, RS1): 1}
    assert dict(c.attempts) == {(NAT, RS1): 1, (NAT, RS2): 1}
    again = t.read(line(1, "ESTABLISHED", 898), line(2, "CLOSE", 9))
    assert (failures(again), dict(again.attempts)) == ({}, {})


def test_a_reset_after_established_is_no_handshake_failure(tmp_path: Path) -> None:
    t = Table(tmp_path)
    t.read()
    t.read(line(5, "ESTABLISHED", 900))
    assert failures(t.read(line(5, "CLOSE", 10))) == {}


def test_a_refusal_after_a_slow_syn_recv_is_refused(tmp_path: Path) -> None:
    t = Table(tmp_path)
    t.read()
    t.read(line(6, "SYN_RECV", 59))
    assert failures(t.read(line(6, "CLOSE", 10))) == {(REFUSED, RS1): 1}


@pytest.mark.parametrize(
    ("expires", "failed"),
    [(59, False), (58, False), (57, False), (56, True), (10, True)],
    ids=["new", "1s", "2s", "3s-the-timeout", "50s"],
)
def test_syn_recv_past_the_handshake_timeout(tmp_path: Path, expires: int, failed: bool) -> None:
    t = Table(tmp_path)
    t.read()
    c = t.read(line(7, "SYN_RECV", expires))
    assert failures(c) == ({(TIMEOUT, RS1): 1} if failed else {})


def test_retransmitted_syns_do_not_hide_the_age(tmp_path: Path) -> None:
    """Each SYN restarts the entry's 60 s: the age is also the time since the reader first saw it."""
    t = Table(tmp_path)
    t.read()
    assert failures(t.read(line(8, "SYN_RECV", 59))) == {}
    assert failures(t.read(line(8, "SYN_RECV", 59), after=2.0)) == {}
    assert failures(t.read(line(8, "SYN_RECV", 59), after=1.5)) == {(TIMEOUT, RS1): 1}
    assert failures(t.read(line(8, "SYN_RECV", 58))) == {}


@pytest.mark.parametrize("size", [40, 97, 1 << 16])
def test_lines_cut_between_reads_count_the_same(tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel hands out a page per read(); a line cut between two reads is joined again."""
    monkeypatch.setattr(conntable, "READ_SIZE", size)
    t = Table(tmp_path)
    t.read(line(1, "ESTABLISHED", 900))
    c = t.read(*(line(10 + i, "CLOSE", 10) for i in range(5)), line(1, "ESTABLISHED", 900), line(20, "SYN_RECV", 30))
    assert failures(c) == {(REFUSED, RS1): 5, (TIMEOUT, RS1): 1}
    assert dict(c.attempts) == {(NAT, RS1): 6}
    assert c.entries == 7


def test_a_table_over_max_entries_counts_nothing_and_starts_a_new_baseline(tmp_path: Path) -> None:
    t = Table(tmp_path, max_entries=3)
    t.read()
    big = t.read(*(line(10 + i, "CLOSE", 10) for i in range(5)))
    assert (big.complete, failures(big), dict(big.attempts)) == (False, {}, {})
    assert big.entries > 3
    baseline = t.read(line(10, "CLOSE", 9), line(11, "CLOSE", 9))
    assert (baseline.complete, failures(baseline)) == (True, {})
    assert failures(t.read(line(10, "CLOSE", 8), line(12, "CLOSE", 10))) == {(REFUSED, RS1): 1}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            b"TCP C633640A C552 C000020A 0050 0A000102 1F90",
            (NAT, RS1),
        ),
        (
            b"TCP 2001:0db8:000c:0000:0000:0000:0000:0010 9C40 2001:0db8:0000:0000:0000:0000:0000:0010 0050 "
            b"2001:0db8:0001:0000:0000:0000:0000:0002 1F90",
            (ServiceKey.parse("TCP [2001:db8::10]:80"), RealServerKey.parse("[2001:db8:1::2]:8080")),
        ),
        (b"UDP C633640A C552 C000020A 0035 0A000102 0035", None),
    ],
    ids=["ipv4", "ipv6", "udp-ignored"],
)
def test_parse_backend(key: bytes, expected: object) -> None:
    assert parse_backend(key) == expected


def test_a_handshake_in_progress_is_counted_when_it_ends(tmp_path: Path) -> None:
    """An attempt and its timeout fall in the same pass, so a share never compares old attempts with new failures."""
    t = Table(tmp_path)
    t.read()
    young = t.read(line(30, "SYN_RECV", 59), line(31, "SYN_RECV", 59))
    assert (dict(young.attempts), failures(young)) == ({}, {})
    ended = t.read(line(30, "SYN_RECV", 56), line(31, "ESTABLISHED", 900), after=3.0)
    assert dict(ended.attempts) == {(NAT, RS1): 2}
    assert failures(ended) == {(TIMEOUT, RS1): 1}


def test_a_handshake_under_way_at_the_baseline_never_counts(tmp_path: Path) -> None:
    """Its attempt was never counted (it predates the detector), so its timeout is not a failure either."""
    t = Table(tmp_path)
    t.read(line(40, "SYN_RECV", 59))
    c = t.read(line(40, "SYN_RECV", 50), after=9.0)
    assert (failures(c), dict(c.attempts)) == ({}, {})


def test_a_line_missing_from_one_pass_is_not_new_again(tmp_path: Path) -> None:
    """The kernel's walk can skip a line when entries before it go; back in the next pass, it is counted once."""
    t = Table(tmp_path)
    t.read(line(9, "ESTABLISHED", 900))
    flooded = line(1, "SYN_RECV", 50)  # 9 s old: timed out
    closed = line(2, "CLOSE", 9)
    first = t.read(flooded, closed, line(9, "ESTABLISHED", 899))
    assert failures(first) == {(TIMEOUT, RS1): 1, (REFUSED, RS1): 1}
    assert dict(first.attempts) == {(NAT, RS1): 2}
    skipped = t.read(line(9, "ESTABLISHED", 898))  # both lines missed by this pass
    back = t.read(line(1, "SYN_RECV", 48), line(2, "CLOSE", 7), line(9, "ESTABLISHED", 897))
    assert (failures(skipped), failures(back), dict(back.attempts)) == ({}, {}, {})
