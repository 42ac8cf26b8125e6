"""Failed handshakes from conntrack events (ctnetlink), filtered in the kernel: the NAT source that scales.

With ``net.ipv4.vs.conntrack=1`` IPVS keeps a conntrack entry per connection,
and for a NAT service it rewrites the entry's reply tuple to the real server
(``ip_vs_update_conntrack``), so an event names the service (the original
tuple's destination) and the real server (the reply tuple's source). Measured
in the lab VM (6.1), the events of one TCP connection through the NAT
service are::

    NEW     SYN_SENT     status CONFIRMED              the client's SYN
    UPDATE  SYN_RECV     status + SEEN_REPLY           the real server's SYN-ACK
    UPDATE  ESTABLISHED, FIN_WAIT, LAST_ACK, TIME_WAIT  (or CLOSE for a reset)
    DESTROY              when the entry expires, seconds to minutes later

and of one the real server refuses (its RST to the SYN)::

    NEW     SYN_SENT
    DESTROY CLOSE        status without SEEN_REPLY     at once: the kernel kills an
                                                       entry whose only reply is a RST
                                                       (``tcp_packet``, "If only reply is a RST")

A blackholed real server gives the NEW and then nothing. So a handshake
ends, for this source, in one of three ways:

- answered: an UPDATE to SYN_RECV. What the client does next (a request, a
  reset, nothing) is not the server's doing and is not counted as a failure;
- ``refused``: a DESTROY in CLOSE without SEEN_REPLY;
- ``timeout``: no answer ``handshake_timeout`` seconds after the NEW.

A classic BPF filter on the socket (``socket_filter``) keeps exactly these
events, using the kernel's netlink attribute lookups (``SKF_AD_NLATTR``,
``SKF_AD_NLATTR_NEST``, as libnetfilter_conntrack's filters do): TCP entries,
NEW in SYN_SENT, UPDATE to SYN_RECV, DESTROY in CLOSE without SEEN_REPLY. Two
events of the six or more of a connection reach user space, and the FIN,
TIME_WAIT and timer-driven destroys of every connection stay in the kernel.

Direct routing and tunnelling leave the reply tuple alone (the VIP), so their
events name no real server; they are dropped here (``unattributed``) and
those services need the connection-table source. Conntrack must track the
director's traffic: on 6.1 the sysctl alone creates no entries, a namespace
tracks connections only once some rule needs conntrack (``-m conntrack`` for
IPv4 and for IPv6, or NAT rules). docs/probes.md has the comparison.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from lvsguard.exporter.passive.conntable import REFUSED, TIMEOUT, Backend, PassCounts
from lvsguard.model import RealServerKey, ServiceKey

NETLINK_NETFILTER = 12
GROUP_NEW, GROUP_UPDATE, GROUP_DESTROY = 1, 2, 4  # nl_groups bits of NFNLGRP_CONNTRACK_NEW/UPDATE/DESTROY
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE = 0, 2
NLM_F_CREATE = 0x400
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
ATTRS_AT = 20  # after the netlink header (16) and nfgenmsg (4)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
IPS_SEEN_REPLY = 1 << 1
SYN_SENT, SYN_RECV, CLOSE = 1, 2, 8  # enum tcp_conntrack
NEW, ANSWERED, REFUSED_EVENT = "new", "answered", "refused"

RCVBUF = 8 << 20  # bytes: about 40 000 filtered events; more than one second of 10 000 new connections/s
BATCH = 0.01  # seconds between two drains of the socket while events flow: a failure waits at most this long
MAX_PENDING = 200_000  # handshakes followed at once; beyond, new ones are not followed (a flood's SYNs)
LATE = 60.0  # seconds a timed-out handshake is remembered, so that a late answer is not a second attempt

_ATTR = struct.Struct("=HH")
_PORT = struct.Struct("!H")
_STATUS = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Event:
    """One filtered conntrack event: what happened to the handshake of ``key`` (the original tuple's bytes)."""

    kind: str  # NEW, ANSWERED or REFUSED_EVENT
    key: bytes
    backend: Backend | None  # None: the reply tuple names no real server (direct routing, tunnelling)


def _attrs(buf: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """The attributes of ``buf[start:end]``: type -> (payload start, payload end)."""
    out = {}
    while start + 4 <= end:
        length, kind = _ATTR.unpack_from(buf, start)
        if length < 4:
            break
        out[kind & 0x3FFF] = (start + 4, min(start + length, end))
        start += (length + 3) & ~3
    return out


def _tuple(buf: bytes, span: tuple[int, int]) -> tuple[str, int, str, int, int] | None:
    """(source, source port, destination, destination port, family) of a CTA_TUPLE_*; None if not TCP."""
    parts = _attrs(buf, *span)
    if CTA_TUPLE_IP not in parts or CTA_TUPLE_PROTO not in parts:
        return None
    proto = _attrs(buf, *parts[CTA_TUPLE_PROTO])
    if CTA_PROTO_NUM not in proto or buf[proto[CTA_PROTO_NUM][0]] != socket.IPPROTO_TCP:
        return None
    ip = _attrs(buf, *parts[CTA_TUPLE_IP])
    if CTA_IP_V4_SRC in ip and CTA_IP_V4_DST in ip:
        (s0, s1), (d0, d1), family = ip[CTA_IP_V4_SRC], ip[CTA_IP_V4_DST], 4
        src, dst = str(ipaddress.IPv4Address(buf[s0:s1])), str(ipaddress.IPv4Address(buf[d0:d1]))
    elif CTA_IP_V6_SRC in ip and CTA_IP_V6_DST in ip:
        (s0, s1), (d0, d1), family = ip[CTA_IP_V6_SRC], ip[CTA_IP_V6_DST], 6
        src, dst = str(ipaddress.IPv6Address(buf[s0:s1])), str(ipaddress.IPv6Address(buf[d0:d1]))
    else:
        return None
    sport = _PORT.unpack_from(buf, proto[CTA_PROTO_SRC_PORT][0])[0] if CTA_PROTO_SRC_PORT in proto else 0
    dport = _PORT.unpack_from(buf, proto[CTA_PROTO_DST_PORT][0])[0] if CTA_PROTO_DST_PORT in proto else 0
    return src, sport, dst, dport, family


def _tcp_state(buf: bytes, top: dict[int, tuple[int, int]]) -> int | None:
    if CTA_PROTOINFO not in top:
        return None
    tcp = _attrs(buf, *top[CTA_PROTOINFO]).get(CTA_PROTOINFO_TCP)
    if tcp is None:
        return None
    state = _attrs(buf, *tcp).get(CTA_PROTOINFO_TCP_STATE)
    return buf[state[0]] if state is not None else None


def parse_event(buf: bytes, start: int = 0) -> Event | None:
    """The event of the netlink message at ``buf[start:]``; None for one this source does not count.

    The same test as the socket filter, so that an unfiltered socket (tests,
    a kernel that refused the filter) counts the same.
    """
    length, kind, flags, _, _ = NLMSG_HDR.unpack_from(buf, start)
    end = start + length
    top = _attrs(buf, start + ATTRS_AT, end)
    if CTA_TUPLE_ORIG not in top or CTA_TUPLE_REPLY not in top:
        return None
    state = _tcp_state(buf, top)
    message = kind & 0xFF
    if message == IPCTNL_MSG_CT_DELETE:
        status = _STATUS.unpack_from(buf, top[CTA_STATUS][0])[0] if CTA_STATUS in top else IPS_SEEN_REPLY
        if state != CLOSE or status & IPS_SEEN_REPLY:
            return None
        what = REFUSED_EVENT
    elif message == IPCTNL_MSG_CT_NEW and state == SYN_SENT and flags & NLM_F_CREATE:
        what = NEW
    elif message == IPCTNL_MSG_CT_NEW and state == SYN_RECV and not flags & NLM_F_CREATE:
        what = ANSWERED
    else:
        return None
    orig = _tuple(buf, top[CTA_TUPLE_ORIG])
    reply = _tuple(buf, top[CTA_TUPLE_REPLY])
    if orig is None or reply is None:
        return None
    key = buf[top[CTA_TUPLE_ORIG][0] : top[CTA_TUPLE_ORIG][1]]
    _, _, vip, vport, family = orig
    rip, rport, _, _, _ = reply
    if (rip, rport) == (vip, vport):  # not rewritten: direct routing, tunnelling, or no IPVS at all
        return Event(what, key, None)
    return Event(what, key, (ServiceKey("TCP", vip, vport, family=family), RealServerKey(rip, rport, family)))


# --- the socket filter (classic BPF) ------------------------------------------------------------------------------

_LD_W_ABS, _LD_B_ABS, _LD_IMM, _LDX_IMM = 0x20, 0x30, 0x00, 0x01
_LD_W_IND, _LD_B_IND, _TAX, _ST, _LD_MEM = 0x40, 0x50, 0x07, 0x02, 0x60
_JEQ, _JSET, _JA, _RET = 0x15, 0x45, 0x05, 0x06
_SKF_AD_OFF, _SKF_AD_NLATTR, _SKF_AD_NLATTR_NEST = -0x1000, 12, 16
_NLATTR = (_SKF_AD_OFF + _SKF_AD_NLATTR) & 0xFFFFFFFF
_NLATTR_NEST = (_SKF_AD_OFF + _SKF_AD_NLATTR_NEST) & 0xFFFFFFFF
_KEEP, _DROP = "keep", "drop"
Insn = tuple[object, object, object, int]  # code (or a label), jump if true, jump if false (labels or 0), k


def _find(path: tuple[int, ...]) -> list[Insn]:
    """A = the offset of the attribute at ``path`` (top level first), or drop the message if it is absent."""
    out: list[Insn] = [(_LD_IMM, 0, 0, ATTRS_AT), (_LDX_IMM, 0, 0, path[0]), (_LD_W_ABS, 0, 0, _NLATTR)]
    out.append((_JEQ, _DROP, 0, 0))
    for kind in path[1:]:
        out += [(_LDX_IMM, 0, 0, kind), (_LD_W_ABS, 0, 0, _NLATTR_NEST), (_JEQ, _DROP, 0, 0)]
    return out


def _program() -> list[Insn]:
    """The filter, with symbolic jump targets: TCP; NEW in SYN_SENT, UPDATE to SYN_RECV, DESTROY in CLOSE unanswered."""
    little = sys.byteorder == "little"
    type_byte, flags_high = (4, 7) if little else (5, 6)  # nlmsg_type's low byte, nlmsg_flags' high byte
    p: list[Insn] = []
    p += _find((CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, CTA_PROTO_NUM))
    p += [(_TAX, 0, 0, 0), (_LD_B_IND, 0, 0, 4), (_JEQ, 0, _DROP, socket.IPPROTO_TCP)]
    p += _find((CTA_PROTOINFO, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE))
    p += [(_TAX, 0, 0, 0), (_LD_B_IND, 0, 0, 4), (_ST, 0, 0, 0)]  # M[0] = the TCP state
    p += [(_LD_B_ABS, 0, 0, type_byte), (_JEQ, "destroy", 0, IPCTNL_MSG_CT_DELETE), (_JEQ, 0, _DROP, 0)]
    p += [(_LD_B_ABS, 0, 0, flags_high), (_JSET, "new", 0, NLM_F_CREATE >> 8)]
    p += [(_LD_MEM, 0, 0, 0), (_JEQ, _KEEP, _DROP, SYN_RECV)]
    p += [("new", 0, 0, 0), (_LD_MEM, 0, 0, 0), (_JEQ, _KEEP, _DROP, SYN_SENT)]
    p += [("destroy", 0, 0, 0), (_LD_MEM, 0, 0, 0), (_JEQ, 0, _DROP, CLOSE)]
    p += _find((CTA_STATUS,))
    p += [(_TAX, 0, 0, 0), (_LD_W_IND, 0, 0, 4), (_JSET, _DROP, _KEEP, IPS_SEEN_REPLY)]
    p += [(_KEEP, 0, 0, 0), (_RET, 0, 0, 0xFFFF), (_DROP, 0, 0, 0), (_RET, 0, 0, 0)]
    return p


def socket_filter() -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions: labels resolved to forward offsets."""
    at: dict[object, int] = {}
    out: list[tuple[int, object, object, int]] = []
    for code, jt, jf, k in _program():
        if isinstance(code, int):
            out.append((code, jt, jf, k))
        else:
            at[code] = len(out)

    def jump(target: object, i: int) -> int:
        return 0 if target == 0 else at[target] - i - 1

    return [(c, jump(t, i), jump(f, i), k) for i, (c, t, f, k) in enumerate(out)]


SO_ATTACH_FILTER = 26


def attach_filter(sock: socket.socket) -> None:
    """Attach ``socket_filter`` to ``sock`` (SO_ATTACH_FILTER: a struct sock_fprog pointing at the program)."""
    program = socket_filter()
    code = b"".join(struct.pack("=HBBI", c, t, f, k) for c, t, f, k in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("=HxxxxxxQ" if struct.calcsize("P") == 8 else "=HxxI", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_socket(kernel_filter: bool = True) -> socket.socket:
    """A non-blocking ctnetlink socket on the NEW, UPDATE and DESTROY groups, in this thread's namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE: past rmem_max, needs CAP_NET_ADMIN
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        if kernel_filter:
            attach_filter(sock)
        sock.bind((0, GROUP_NEW | GROUP_UPDATE | GROUP_DESTROY))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ConntrackEvents:
    """Counts handshakes from a ctnetlink socket; ``read_pass`` returns what ended since the last call.

    ``collect`` waits for events (or a handshake's timeout) and returns early
    when a failure is counted, so that the caller judges at once. ``clock`` is
    monotonic seconds. ``lost`` counts the times the kernel dropped events
    (ENOBUFS): the handshakes followed then are forgotten, not judged.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        handshake_timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sock = sock
        self.handshake_timeout = handshake_timeout
        self.clock = clock
        self.path = "conntrack events"  # what the detector names in its log
        self.max_entries = MAX_PENDING
        self.lost = 0
        self.unattributed = 0  # events of connections whose reply tuple names no real server
        self._pending: dict[bytes, tuple[Backend, float]] = {}  # handshakes under way, oldest first
        self._late: dict[bytes, float] = {}  # timed out: a late answer is not counted again
        self._counts = PassCounts()
        self._buf = bytearray(1 << 16)

    def close(self) -> None:
        self.sock.close()

    def _drain(self) -> None:
        view = memoryview(self._buf)
        while True:
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.lost += 1
                self._pending.clear()  # an answer may be among the lost events: no timeout from these
                continue
            data = bytes(view[:n])
            start = 0
            while start + NLMSG_HDR.size <= n:
                length = NLMSG_HDR.unpack_from(data, start)[0]
                if length < NLMSG_HDR.size:
                    break
                event = parse_event(data, start)
                if event is not None:
                    self._count(event, self.clock())
                start += (length + 3) & ~3

    def _count(self, event: Event, now: float) -> None:
        counts = self._counts
        if event.backend is None:
            self.unattributed += 1
            return
        if event.kind == NEW:
            if len(self._pending) < MAX_PENDING:
                self._pending[event.key] = (event.backend, now)
            return
        self._pending.pop(event.key, None)
        if event.kind == ANSWERED:
            if self._late.pop(event.key, None) is None:
                counts.attempts[event.backend] += 1
        else:
            counts.attempts[event.backend] += 1
            counts.failures[REFUSED][event.backend] += 1

    def _expire(self, now: float) -> None:
        """Count the handshakes unanswered for ``handshake_timeout`` as failed (``timeout``)."""
        limit = now - self.handshake_timeout
        pending = self._pending
        while pending:
            key = next(iter(pending))
            backend, at = pending[key]
            if at > limit:
                break
            del pending[key]
            self._counts.attempts[backend] += 1
            self._counts.failures[TIMEOUT][backend] += 1
            self._late[key] = now
        late = self._late
        while late:
            key = next(iter(late))
            if late[key] > now - LATE:
                break
            del late[key]

    def _failed(self) -> bool:
        return any(self._counts.failures[r] for r in self._counts.failures)

    def next_timeout(self) -> float | None:
        """When the oldest handshake followed times out (the clock's seconds); None when none is followed."""
        if not self._pending:
            return None
        return next(iter(self._pending.values()))[1] + self.handshake_timeout

    def collect(self, until: float, stop: Callable[[float], bool] = lambda _: False) -> None:
        """Read events until ``until`` (the clock's seconds) or until a handshake failed, whichever is first.

        ``stop(seconds)`` waits between two drains and says whether to stop
        (the detector's stop event); a failure waits at most ``BATCH``.
        """
        while True:
            now = self.clock()
            self._expire(now)
            if self._failed() or now >= until:
                return
            wake = until
            deadline = self.next_timeout()
            if deadline is not None:
                wake = min(wake, deadline)
            ready, _, _ = select.select([self.sock], [], [], max(0.0, wake - now))
            if ready:
                self._drain()
                if not self._failed() and stop(BATCH):
                    return

    def read_pass(self) -> PassCounts:
        """The handshakes that ended since the last call (drains the socket first)."""
        self._drain()
        self._expire(self.clock())
        counts, self._counts = self._counts, PassCounts()
        counts.entries = len(self._pending)
        return counts

    def following(self) -> int:
        """Handshakes under way now."""
        return len(self._pending)


def conntrack_enabled(read: Callable[[str], str] | None = None) -> bool:
    """Whether ``net.ipv4.vs.conntrack`` is 1 in this thread's namespace (False when IPVS is not loaded)."""
    path = "/proc/sys/net/ipv4/vs/conntrack"
    try:
        if read is not None:
            text = read(path)
        else:
            with open(path) as f:
                text = f.read()
    except OSError:
        return False
    return text.strip() == "1"
