"""A bounded-cost reader of the IPVS connection table (``/proc/net/ip_vs_conn``).

The kernel prints one line per connection (6.1)::

    Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
    TCP C633640A C552 C000020A 0050 0A000102 1F90 CLOSE            10

IPv4 addresses as eight hex digits, IPv6 ones as eight colon-separated groups
of four; the state is padded to 11 characters and ``Expires`` (seconds left
before the entry goes) to 7. There is no cursor and no event stream, and a
read costs more than the size of the table: the kernel hands out one page
(about 60 entries) per read(), and each read walks the hash table from its
start to the position reached (``ip_vs_conn_array``, 6.1), so a whole pass
is quadratic in the number of entries (measured in the lab VM: 16 ms for
10 000 entries, 6.5 s for 90 000; docs/probes.md). So a pass stops after
``max_entries`` entries: the cost of a pass is bounded by that, and a bigger
table gives an incomplete pass, which counts nothing (``complete`` is False)
and makes the next complete pass a baseline again.

A pass yields, per (service, real server): the connections whose handshake
ended since the last pass (``attempts``; a connection is new when its line,
without state and expiry, was not in the previous pass; one still in SYN_RECV
is counted when it leaves that state or fails, so that an attempt and its
failure fall in the same pass) and the handshakes that failed, each once:

- ``refused``: a connection in CLOSE that was never seen in a state other than
  SYN_RECV. A real server's RST to a SYN (a closed port) puts it there at once
  (NAT, and DR when replies pass the director). The table cannot tell it from a
  connection that opened and was reset between two passes, so clients that
  reset their own connections count here too; the verdict rule's comparison
  with the peers is what keeps those from taking servers out.
- ``timeout``: a connection in SYN_RECV for at least ``handshake_timeout``
  seconds: a blackholed real server, a refused one behind direct routing (the
  RST goes straight to the client), a SYN flood or a client that gave up. Its
  age is the longer of what ``Expires`` says (SYN_RECV lasts ``syn_recv_timeout``,
  60 s in 6.1, restarted by each retransmitted SYN) and the time since this
  reader first saw it.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

from lvsguard.model import RealServerKey, ServiceKey

REFUSED = "refused"
TIMEOUT = "timeout"
REASONS = (REFUSED, TIMEOUT)

SYN_RECV_TIMEOUT = 60.0  # seconds a connection stays in SYN_RECV without a packet (kernel 6.1, not tunable)
DEFAULT_MAX_ENTRIES = 10_000  # entries read per pass at most (16 ms of kernel time in the lab VM)
READ_SIZE = 1 << 16  # bytes asked per read(); the kernel answers one page at most
_TAIL = 20  # " " + state padded to 11 + " " + expires padded to 7: what changes in a line over its life
_KEY = itemgetter(slice(0, -_TAIL))
_SYN_RECV = b" SYN_RECV "
_CLOSE = b" CLOSE "

Backend = tuple[ServiceKey, RealServerKey]


@dataclass(slots=True)
class PassCounts:
    """What one pass over the table found: per (service, real server), new connections and failed handshakes."""

    attempts: Counter[Backend] = field(default_factory=Counter)
    failures: dict[str, Counter[Backend]] = field(default_factory=lambda: {r: Counter() for r in REASONS})
    entries: int = 0  # lines read in this pass
    bytes: int = 0
    complete: bool = True  # False: the table had more than max_entries entries; nothing was counted

    def failed(self, backend: Backend) -> int:
        return sum(c[backend] for c in self.failures.values())


def _address(text: bytes) -> tuple[str, int]:
    """``C633640A`` -> ("198.51.100.10", 4); ``2001:0db8:...`` -> ("2001:db8::...", 6)."""
    if b":" in text:
        return str(ipaddress.IPv6Address(text.decode())), 6
    return str(ipaddress.IPv4Address(int(text, 16))), 4


def parse_backend(key: bytes) -> Backend | None:
    """The service and real server of a line's key (the line without state and expiry); None if not TCP."""
    fields = key.split()
    if len(fields) != 7 or fields[0] != b"TCP":
        return None
    vaddr, vfamily = _address(fields[3])
    daddr, dfamily = _address(fields[5])
    return (
        ServiceKey("TCP", vaddr, int(fields[4], 16), family=vfamily),
        RealServerKey(daddr, int(fields[6], 16), dfamily),
    )


def _lines_with(chunk: bytes, needle: bytes) -> list[bytes]:
    """The lines of ``chunk`` that contain ``needle`` (a search, not a loop over every line)."""
    found = []
    i = chunk.find(needle)
    while i != -1:
        start = chunk.rfind(b"\n", 0, i) + 1
        end = chunk.find(b"\n", i)
        end = len(chunk) if end == -1 else end
        found.append(chunk[start:end])
        i = chunk.find(needle, end)
    return found


class ConnTableReader:
    """Reads the connection table, at most ``max_entries`` of it per pass; ``read_pass`` returns a pass's counts.

    Open it inside the director's network namespace: the file shows the
    connections of the namespace that opened it. ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        path: str = "/proc/thread-self/net/ip_vs_conn",
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        handshake_timeout: float = 3.0,
        syn_recv_timeout: float = SYN_RECV_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        opener: Callable[[str], int] | None = None,
    ) -> None:
        self.path = path
        self.max_entries = max_entries
        self.handshake_timeout = handshake_timeout
        self.syn_recv_timeout = syn_recv_timeout
        self.clock = clock
        self._open = opener or (lambda p: os.open(p, os.O_RDONLY))
        self._reset()

    def _reset(self) -> None:
        """Forget every connection seen: the next complete pass is a baseline."""
        self._rest = b""  # a line cut at the end of the last chunk
        self._header = True
        self._keys: set[bytes] = set()  # every line key of this pass so far
        self._previous: set[bytes] = set()  # of the last complete pass
        self._skipped: set[bytes] = set()  # of the pass before it, missing from the last one (``_finish``)
        self._pending: dict[bytes, float] = {}  # SYN_RECV keys -> when first seen
        self._seen_pending: set[bytes] = set()  # SYN_RECV keys of this pass
        self._counted: set[bytes] = set()  # keys counted as failed (each failure once)
        self._counted_now: set[bytes] = set()
        self._counted_skipped: set[bytes] = set()  # counted, and missing from the last pass
        self._deferred: set[bytes] = set()  # new connections still in their handshake: counted once it ends
        self._counts = PassCounts()
        self._backends: dict[bytes, Backend | None] = {}  # parsed keys, for this pass and the last
        self._primed = False  # the first pass is the baseline: what was already there is not news

    def read_pass(self) -> PassCounts:
        """Read the table once (at most ``max_entries`` entries) and count what is new."""
        fd = self._open(self.path)
        try:
            while True:
                chunk = os.read(fd, READ_SIZE)
                now = self.clock()
                if not chunk:
                    self._lines(self._rest, now)
                    return self._finish()
                data = self._rest + chunk
                cut = data.rfind(b"\n") + 1
                self._rest = data[cut:]
                self._lines(data[:cut], now)
                if self._counts.entries > self.max_entries:
                    return self._truncated()
        finally:
            os.close(fd)

    def _truncated(self) -> PassCounts:
        """Too big a table: forget this pass and the baseline (what the next complete pass sees is not news)."""
        counts = PassCounts(entries=self._counts.entries, bytes=self._counts.bytes, complete=False)
        self._reset()
        return counts

    def _lines(self, data: bytes, now: float) -> None:
        if not data:
            return
        if self._header:
            data = data[data.find(b"\n") + 1 :]
            self._header = False
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        self._counts.entries += len(lines)
        self._counts.bytes += len(data)
        self._keys.update(map(_KEY, lines))
        for line in _lines_with(data, _SYN_RECV):
            self._syn_recv(line, now)
        for line in _lines_with(data, _CLOSE):
            self._close(line)

    def _backend(self, key: bytes) -> Backend | None:
        if key not in self._backends:
            self._backends[key] = parse_backend(key)
        return self._backends[key]

    def _fail(self, key: bytes, reason: str) -> None:
        if key in self._counted or key in self._counted_now or key in self._counted_skipped:
            self._counted_now.add(key)
            return
        backend = self._backend(key)
        if backend is not None:
            self._counts.failures[reason][backend] += 1
            self._counted_now.add(key)

    def _syn_recv(self, line: bytes, now: float) -> None:
        key = _KEY(line)
        self._seen_pending.add(key)
        first = self._pending.setdefault(key, now)
        try:
            expires = float(line[-7:])
        except ValueError:
            return
        age = max(self.syn_recv_timeout - expires - 1.0, now - first)
        if age >= self.handshake_timeout:
            self._fail(key, TIMEOUT)

    def _close(self, line: bytes) -> None:
        key = _KEY(line)
        if key in self._counted or key in self._counted_skipped:
            self._counted_now.add(key)
        elif (key not in self._previous and key not in self._skipped) or key in self._pending:
            self._fail(key, REFUSED)

    def _finish(self) -> PassCounts:
        counts = self._counts
        if not self._primed:  # handshakes already under way were never attempts of ours: never failures either
            self._primed = True
            self._counted_now |= self._seen_pending
            counts = PassCounts(entries=counts.entries, bytes=counts.bytes)
        else:
            self._deferred |= self._keys - self._previous - self._skipped
            for key in [k for k in self._deferred if k in self._counted_now or k not in self._seen_pending]:
                self._deferred.discard(key)
                backend = self._backend(key)
                if backend is not None:
                    counts.attempts[backend] += 1
        self._pending = {k: t for k, t in self._pending.items() if k in self._seen_pending}
        self._backends = {k: b for k, b in self._backends.items() if k in self._keys or k in self._deferred}
        # A pass can miss a line that the next one shows again: the kernel's walk resumes each read() at an
        # offset, and entries removed before it shift the rest (6.1). Missing for one pass, a connection is
        # still known (not new again) and a failure still counted (not again).
        self._skipped = self._previous - self._keys
        self._counted_skipped = self._counted - self._keys
        self._previous, self._keys = self._keys, set()
        self._counted, self._counted_now = self._counted_now, set()
        self._seen_pending = set()
        self._counts = PassCounts()
        self._header = True
        self._rest = b""
        return counts
