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

What does reach user space is read through layouts compiled from the first
message of each shape (``EventDecoder``, as the IPVS dump decoder does): one
mask comparison and a few slices a message instead of an attribute walk
(``read_event``, which stays as the path for a shape it cannot compile and
as the decoder's test oracle). Between two passes the counts are kept by the
raw bytes of the service and real server; their keys are built once a pass.

Direct routing and tunnelling leave the reply tuple alone (the VIP), so their
events name no real server; they are dropped here (``unattributed``) and
those services need the connection-table source. Conntrack must track the
director's traffic: on 6.1 the sysctl alone creates no entries, a namespace
tracks connections only once some rule needs conntrack (``-m conntrack`` for
IPv4 and for IPv6, or NAT rules). docs/probes.md has the comparison.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from lvsguard.exporter.passive.conntable import REASONS, REFUSED, TIMEOUT, Backend, PassCounts
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
QUIET = 0.1  # seconds between two reads of the handshakes when refusals have a socket of their own
MAX_PENDING = 200_000  # handshakes followed at once; beyond, new ones are not followed (a flood's SYNs)
LATE = 60.0  # seconds a timed-out handshake is remembered, so that a late answer is not a second attempt

_ATTR = struct.Struct("=HH")
_LENGTH = struct.Struct("=I")
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


def _tuple(buf: bytes, start: int, end: int) -> tuple[bytes, bytes, bytes, bytes] | None:
    """The raw (source address, source port, destination address, destination port) of a TCP CTA_TUPLE_*."""
    src = dst = sport = dport = b""
    tcp = False
    unpack = _ATTR.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4:
            return None
        inner, stop = start + 4, min(start + length, end)
        kind &= 0x3FFF
        while inner + 4 <= stop:
            n, k = unpack(buf, inner)
            if n < 4:
                return None
            value = buf[inner + 4 : inner + n]
            if kind == CTA_TUPLE_IP:
                if k in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = value
                elif k in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = value
            elif kind == CTA_TUPLE_PROTO:
                if k == CTA_PROTO_NUM:
                    tcp = value[:1] == b"\x06"
                elif k == CTA_PROTO_SRC_PORT:
                    sport = value[:2]
                elif k == CTA_PROTO_DST_PORT:
                    dport = value[:2]
            inner += (n + 3) & ~3
        start += (length + 3) & ~3
    if not tcp or len(src) not in (4, 16) or len(dst) != len(src) or len(sport) != 2 or len(dport) != 2:
        return None
    return src, sport, dst, dport


def _tcp_state(buf: bytes, start: int, end: int) -> int | None:
    """CTA_PROTOINFO_TCP_STATE in a CTA_PROTOINFO: the kernel puts CTA_PROTOINFO_TCP first and the state first in it."""
    if start + 9 > end:
        return None
    outer, inner = _ATTR.unpack_from(buf, start), _ATTR.unpack_from(buf, start + 4)
    if outer[1] & 0x3FFF == CTA_PROTOINFO_TCP and inner[1] & 0x3FFF == CTA_PROTOINFO_TCP_STATE and inner[0] >= 5:
        return buf[start + 8]
    tcp = _attrs(buf, start, end).get(CTA_PROTOINFO_TCP)
    state = _attrs(buf, *tcp).get(CTA_PROTOINFO_TCP_STATE) if tcp is not None else None
    return buf[state[0]] if state is not None else None


_BACKENDS: dict[bytes, Backend | None] = {}  # raw VIP, port, real server, port -> the keys (the same few, parsed once)
MAX_BACKENDS = 100_000


def backend_of(raw: bytes) -> Backend | None:
    """The service and real server of ``raw``: VIP, port, real server, port as the kernel sends them.

    None when the reply tuple was not rewritten (direct routing, tunnelling,
    or no IPVS at all): the event names no real server. The keys of a raw
    backend are built once.
    """
    if raw in _BACKENDS:
        return _BACKENDS[raw]
    size = (len(raw) - 4) // 2
    vip, vport, rip, rport = raw[:size], raw[size : size + 2], raw[size + 2 : 2 * size + 2], raw[2 * size + 2 :]
    backend: Backend | None = None
    if rip != vip or rport != vport:
        family = 4 if size == 4 else 6
        address = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        backend = (
            ServiceKey("TCP", str(address(vip)), _PORT.unpack(vport)[0], family=family),
            RealServerKey(str(address(rip)), _PORT.unpack(rport)[0], family),
        )
    if len(_BACKENDS) >= MAX_BACKENDS:
        _BACKENDS.clear()
    _BACKENDS[raw] = backend
    return backend


Found = tuple[str, bytes, bytes]
"""An event as the counting reads it: its kind, its key (the original tuple's bytes), its raw backend."""


def read_event(buf: bytes, start: int = 0) -> Found | None:
    """The event of the netlink message at ``buf[start:]``, walking its attributes; None for one not counted.

    The same test as the socket filter, so that an unfiltered socket (tests,
    a kernel that refused the filter) counts the same. This is the general
    path, about 10 µs a message on the host; ``EventDecoder`` is the fast one
    and this walk its test oracle.
    """
    length, kind, flags, _, _ = NLMSG_HDR.unpack_from(buf, start)
    end = start + length
    orig = reply = status = protoinfo = None
    at = start + ATTRS_AT
    unpack = _ATTR.unpack_from
    while at + 4 <= end:
        n, k = unpack(buf, at)
        if n < 4:
            return None
        k &= 0x3FFF
        if k == CTA_TUPLE_ORIG:
            orig = (at + 4, min(at + n, end))
        elif k == CTA_TUPLE_REPLY:
            reply = (at + 4, min(at + n, end))
        elif k == CTA_STATUS:
            status = _STATUS.unpack_from(buf, at + 4)[0]
        elif k == CTA_PROTOINFO:
            protoinfo = (at + 4, min(at + n, end))
        at += (n + 3) & ~3
    if orig is None or reply is None or protoinfo is None:
        return None
    state = _tcp_state(buf, *protoinfo)
    message = kind & 0xFF
    if message == IPCTNL_MSG_CT_DELETE:
        if state != CLOSE or status is None or status & IPS_SEEN_REPLY:
            return None
        what = REFUSED_EVENT
    elif message == IPCTNL_MSG_CT_NEW and state == SYN_SENT and flags & NLM_F_CREATE:
        what = NEW
    elif message == IPCTNL_MSG_CT_NEW and state == SYN_RECV and not flags & NLM_F_CREATE:
        what = ANSWERED
    else:
        return None
    forward = _tuple(buf, *orig)
    backward = _tuple(buf, *reply)
    if forward is None or backward is None:
        return None
    _, _, vip, vport = forward
    rip, rport, _, _ = backward
    return what, buf[orig[0] : orig[1]], vip + vport + rip + rport


def parse_event(buf: bytes, start: int = 0) -> Event | None:
    """The event of the netlink message at ``buf[start:]`` with its keys (``read_event``); None for one not counted."""
    found = read_event(buf, start)
    if found is None:
        return None
    what, key, raw = found
    return Event(what, key, backend_of(raw))


# --- the fast path: compiled layouts ----------------------------------------------------------------------------------


class Layout:
    """A compiled event layout: every message with the same structure bytes reads the same way.

    The kernel writes every event of one kind (NEW, UPDATE, DESTROY; IPv4,
    IPv6) with the same attributes in the same order. ``mask`` has 0xFF on
    every byte that decides what ``read_event`` answers: the netlink length,
    type and flags, the length and type of every attribute it looks at, the
    protocol byte of both tuples, the TCP state byte and the SEEN_REPLY bit
    of the status. A message has this layout when
    ``int.from_bytes(message) & mask == expected``; its event is then
    ``kind`` (None: not counted), its key and raw backend the bytes at the
    offsets ``key`` and ``backend``.
    """

    __slots__ = ("mask", "expected", "kind", "key", "backend")

    def __init__(
        self,
        message: bytes,
        structure: bytes,
        kind: str | None,
        key: tuple[int, int],
        backend: tuple[tuple[int, int], ...],
    ) -> None:
        self.mask = int.from_bytes(structure, "little")
        self.expected = int.from_bytes(message, "little") & self.mask
        self.kind = kind
        self.key = key
        self.backend = backend

    def read(self, buf: bytes, start: int) -> Found | None:
        if self.kind is None:
            return None
        (a, b), (c, d), (e, f), (g, h) = self.backend
        raw = buf[start + a : start + b] + buf[start + c : start + d] + buf[start + e : start + f]
        return self.kind, buf[start + self.key[0] : start + self.key[1]], raw + buf[start + g : start + h]


def _walk(message: bytes, start: int, end: int, structure: bytearray) -> list[tuple[int, int, int]]:
    """The attributes of ``message[start:end]`` as (type, payload start, payload end), their headers marked."""
    out = []
    while start + 4 <= end:
        structure[start : start + 4] = b"\xff\xff\xff\xff"
        length, kind = _ATTR.unpack_from(message, start)
        if length < 4:
            raise ValueError(f"attribute of length {length} at byte {start}")
        out.append((kind & 0x3FFF, start + 4, min(start + length, end)))
        start += (length + 3) & ~3
    return out


def _last(attrs: list[tuple[int, int, int]]) -> dict[int, tuple[int, int]]:
    """Type -> (payload start, end) of the last attribute of each type, as the walk of ``read_event`` keeps."""
    return {kind: (start, end) for kind, start, end in attrs}


def _tuple_spans(message: bytes, span: tuple[int, int], structure: bytearray) -> dict[str, tuple[int, int]]:
    """Where a CTA_TUPLE_*'s addresses and ports are; its protocol byte marked as structure.

    ``_tuple`` reads the attributes inside every nest of the tuple: all their
    headers are marked.
    """
    out = {}
    for kind, start, end in _walk(message, *span, structure):
        inner = _last(_walk(message, start, end, structure))
        names: tuple[tuple[str, tuple[int, ...]], ...]
        if kind == CTA_TUPLE_IP:
            names = (("src", (CTA_IP_V4_SRC, CTA_IP_V6_SRC)), ("dst", (CTA_IP_V4_DST, CTA_IP_V6_DST)))
        elif kind == CTA_TUPLE_PROTO:
            names = (("sport", (CTA_PROTO_SRC_PORT,)), ("dport", (CTA_PROTO_DST_PORT,)), ("num", (CTA_PROTO_NUM,)))
        else:
            continue
        for name, kinds in names:
            found = [inner[k] for k in kinds if k in inner]
            if found:
                out[name] = max(found)  # the later one, as the walk keeps the last
    number = out.get("num")
    if number is not None and number[1] > number[0]:
        structure[number[0]] = 0xFF
    return out


def _state_at(buf: bytes, start: int, end: int) -> int | None:
    """Where ``_tcp_state`` reads the TCP state of a CTA_PROTOINFO (the byte's offset)."""
    if start + 9 > end:
        return None
    outer, inner = _ATTR.unpack_from(buf, start), _ATTR.unpack_from(buf, start + 4)
    if outer[1] & 0x3FFF == CTA_PROTOINFO_TCP and inner[1] & 0x3FFF == CTA_PROTOINFO_TCP_STATE and inner[0] >= 5:
        return start + 8
    tcp = _attrs(buf, start, end).get(CTA_PROTOINFO_TCP)
    state = _attrs(buf, *tcp).get(CTA_PROTOINFO_TCP_STATE) if tcp is not None else None
    return state[0] if state is not None else None


def compile_layout(message: bytes) -> Layout | None:
    """The Layout that reads every message like ``message`` (one whole netlink message); None when there is none.

    A message whose walk does not reach a TCP state (a broken attribute, a
    nest missing) gets no layout: ``read_event`` reads each such message.
    """
    structure = bytearray(len(message))
    structure[0:8] = b"\xff" * 8  # nlmsg_len, nlmsg_type, nlmsg_flags
    try:
        top = _last(_walk(message, ATTRS_AT, len(message), structure))
        orig, reply, protoinfo = top[CTA_TUPLE_ORIG], top[CTA_TUPLE_REPLY], top[CTA_PROTOINFO]
        forward = _tuple_spans(message, orig, structure)
        backward = _tuple_spans(message, reply, structure)
        for _, start, end in _walk(message, *protoinfo, structure):
            _walk(message, start, end, structure)
        state = _state_at(message, *protoinfo)
    except (KeyError, ValueError, struct.error):
        return None
    if state is None or state >= len(message):
        return None
    structure[state] = 0xFF
    if CTA_STATUS in top:
        at = top[CTA_STATUS][0]
        if at + 4 > len(message):
            return None
        structure[at + 3] |= IPS_SEEN_REPLY  # big-endian: the low byte is the last
    found = read_event(message)
    if found is None:
        return Layout(message, bytes(structure), None, (0, 0), ())
    spans = [forward.get("dst"), forward.get("dport"), backward.get("src"), backward.get("sport")]
    backend = tuple(s for s in spans if s is not None)
    if len(backend) != 4:
        return None
    layout = Layout(message, bytes(structure), found[0], orig, backend)
    return layout if layout.read(message, 0) == found else None  # a layout that reads otherwise than the walk: none


class EventDecoder:
    """Reads events through compiled layouts (``Layout``), and through ``read_event``'s walk where none fits.

    About 2 µs a message on the host against 10 µs for the walk: a filtered
    socket sees a handful of layouts (NEW, UPDATE and DESTROY, per address
    family), each learnt from its first message.
    """

    MAX_LAYOUTS = 64  # the bound keeps an unfiltered socket's variety from piling up

    def __init__(self) -> None:
        self._layouts: dict[bytes, list[Layout]] = {}  # by the first 8 bytes: length, type and flags
        self._size = 0

    def decode(self, buf: bytes, start: int, length: int) -> Found | None:
        """The event of the message at ``buf[start:start + length]``: what ``read_event`` answers."""
        layouts = self._layouts.get(buf[start : start + 8])
        if layouts is not None:
            value = int.from_bytes(buf[start : start + length], "little")
            for layout in layouts:
                if value & layout.mask == layout.expected:
                    return layout.read(buf, start)
        return self._learn(buf, start, length)

    def layouts(self) -> int:
        """Layouts learnt so far."""
        return self._size

    def _learn(self, buf: bytes, start: int, length: int) -> Found | None:
        message = buf[start : start + length]
        layout = compile_layout(message) if len(message) == length else None
        if layout is None:
            return read_event(buf, start)
        if self._size >= self.MAX_LAYOUTS:
            self._layouts.clear()
            self._size = 0
        self._layouts.setdefault(message[:8], []).append(layout)
        self._size += 1
        return layout.read(message, 0)


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


ALL_GROUPS = GROUP_NEW | GROUP_UPDATE | GROUP_DESTROY


def open_socket(kernel_filter: bool = True, groups: int = ALL_GROUPS) -> socket.socket:
    """A non-blocking ctnetlink socket on ``groups`` (NEW, UPDATE and DESTROY), in this thread's namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE: past rmem_max, needs CAP_NET_ADMIN
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        if kernel_filter:
            attach_filter(sock)
        sock.bind((0, groups))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


SLOT = 4096  # bytes per message received: an event is 200-300
VLEN = 64  # messages per recvmmsg(2)
MAX_DRAIN = 64  # recvmmsg(2) calls per drain at most (4 096 events)
MSG_DONTWAIT, MSG_TRUNC = 0x40, 0x20
_FLAGS_AT = _Mmsghdr.msg_hdr.offset + _Msghdr.msg_flags.offset
_MMSG_SIZE = ctypes.sizeof(_Mmsghdr)
_MMSG_HEAD = struct.Struct(f"={_FLAGS_AT}xi{_Mmsghdr.msg_len.offset - _FLAGS_AT - 4}xI")  # msg_flags, msg_len


class Receiver:
    """Up to ``VLEN`` netlink messages per system call (recvmmsg(2) through libc); ``recv`` without it.

    Each event is a datagram of its own, and a system call costs tens of
    microseconds under UML: one call for a batch instead of one per event.
    Each message is copied out of the receive buffer on its own (the buffer
    is 256 KiB; a batch holds a few KiB of events).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = ctypes.create_string_buffer(SLOT * VLEN)
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._recvmmsg = getattr(libc, "recvmmsg", None)
        self._size = VLEN
        self._vec = (_Mmsghdr * VLEN)()
        self._iov = (_Iovec * VLEN)()
        self._base = ctypes.addressof(self.buf)
        for i in range(VLEN):
            self._iov[i].iov_base = self._base + i * SLOT
            self._iov[i].iov_len = SLOT
            self._vec[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
            self._vec[i].msg_hdr.msg_iovlen = 1

    def receive(self) -> list[bytes]:
        """The messages waiting, at most ``VLEN``; [] when none. Raises OSError (ENOBUFS: events were lost)."""
        if self._recvmmsg is None:
            try:
                return [self.sock.recv(SLOT)]
            except BlockingIOError:
                return []
        n = self._recvmmsg(self.sock.fileno(), self._vec, min(VLEN, self._size), MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            raise OSError(err, os.strerror(err))
        string_at, base, head, vec = ctypes.string_at, self._base, _MMSG_HEAD.unpack_from, self._vec
        out = []
        for i in range(n):
            flags, size = head(vec, i * _MMSG_SIZE)
            if not flags & MSG_TRUNC:
                out.append(string_at(base + i * SLOT, size))
        return out


class ConntrackEvents:
    """Counts handshakes from a ctnetlink socket; ``read_pass`` returns what ended since the last call.

    ``collect`` waits for events (or a handshake's timeout) and returns early
    when a failure is counted, so that the caller judges at once. ``clock`` is
    monotonic seconds. ``lost`` counts the times the kernel dropped events
    (ENOBUFS): the handshakes followed then are forgotten, not judged.

    Between two passes the counts are kept by raw backend (``backend_of``'s
    bytes, as the events carry them): a pass's ``PassCounts`` gets the keys
    once per real server, not once per event.

    With ``refusals``, a socket of its own on the DESTROY group, only a
    refusal wakes the reader: the handshakes' socket (NEW and UPDATE) is read
    every ``QUIET`` seconds, and at once before each refusal. A wake-up costs
    the reading thread about 100 µs on a virtual machine (the timer and the
    scheduler), more than the events it reads at 1 000 handshakes a second;
    a refusal is judged as fast as with one socket.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        refusals: socket.socket | None = None,
        handshake_timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sock = sock
        self.refusals = refusals
        self.handshake_timeout = handshake_timeout
        self.clock = clock
        self.path = "conntrack events"  # what the detector names in its log
        self.max_entries = MAX_PENDING
        self.lost = 0
        self.unattributed = 0  # events of connections whose reply tuple names no real server
        self._pending: dict[
            bytes, tuple[bytes, float]
        ] = {}  # handshakes under way: key -> raw backend, when; oldest first
        self._late: dict[bytes, float] = {}  # timed out: a late answer is not counted again
        self._closed: dict[bytes, float] = {}  # refused before their NEW was read (two sockets): the NEW is not news
        self._attempts: dict[bytes, int] = {}  # this pass, per raw backend: handshakes that ended
        self._failures: dict[str, dict[bytes, int]] = {r: {} for r in REASONS}  # this pass: of them, those that failed
        self._receivers = [Receiver(sock)] + ([Receiver(refusals)] if refusals is not None else [])
        self._decoder = EventDecoder()
        self._done: list[PassCounts] = []  # passes cut before a failure (``_fail``), oldest first
        self._behind = True  # events may wait unread: set by each drain

    def close(self) -> None:
        self.sock.close()
        if self.refusals is not None:
            self.refusals.close()

    def _drain(self) -> None:
        """Read and count what is waiting, the handshakes' socket first (a refusal's NEW comes before it)."""
        now = self.clock()  # one reading per drain: a clock read is a system call under UML
        behind = False
        for receiver in self._receivers:
            behind = self._drain_one(receiver, now) or behind
        self._behind = behind

    def _drain_one(self, receiver: Receiver, now: float) -> bool:
        """Read one socket, at most ``MAX_DRAIN`` batches (a flood must not starve the judging); True when more wait."""
        receive, decode = receiver.receive, self._decoder.decode
        pending, late, closed = self._pending, self._late, self._closed
        split = self.refusals is not None
        for _ in range(MAX_DRAIN):
            try:
                batch = receive()
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.lost += 1
                pending.clear()  # an answer may be among the lost events: no timeout from these
                continue
            if not batch:
                return False
            for data in batch:
                start, n = 0, len(data)
                while start + NLMSG_HDR.size <= n:
                    length = _LENGTH.unpack_from(data, start)[0]
                    if length < NLMSG_HDR.size or start + length > n:
                        break
                    found = decode(data, start, length)
                    start += (length + 3) & ~3
                    if found is None:
                        continue
                    kind, key, raw = found
                    if backend_of(raw) is None:
                        self.unattributed += 1
                    elif kind == NEW:
                        if closed and closed.pop(key, None) is not None:
                            continue  # refused already: read from the other socket first
                        if len(pending) < MAX_PENDING:
                            pending[key] = (raw, now)
                    elif kind == REFUSED_EVENT:
                        if pending.pop(key, None) is None and split:
                            closed[key] = now
                        self._fail(raw, REFUSED)
                    else:
                        pending.pop(key, None)
                        if not late or late.pop(key, None) is None:
                            attempts = self._attempts
                            attempts[raw] = attempts.get(raw, 0) + 1
        return True

    def _fail(self, raw: bytes, reason: str) -> None:
        """Count a failed handshake; a refusal in a pass of its own when the current one holds answers of ``raw``.

        A pass is judged by its failure share: the real server's answers
        before it died must not dilute its first refusal, which is its own
        doing. Timeouts are not split off: clients cause them too (a SYN
        flood's unanswered SYNs time out in bursts), and a burst cut out of
        its pass would look like a dead server.
        """
        if reason == REFUSED and self._attempts.get(raw, 0) > sum(f.get(raw, 0) for f in self._failures.values()):
            self._done.append(self._cut())
        self._attempts[raw] = self._attempts.get(raw, 0) + 1
        failures = self._failures[reason]
        failures[raw] = failures.get(raw, 0) + 1

    def _cut(self) -> PassCounts:
        """The current pass as counts by real server; the next events start a new one."""
        counts = PassCounts()
        keys = {raw: backend_of(raw) for raw in self._attempts}  # failures are attempts too
        counts.attempts.update({keys[raw]: n for raw, n in self._attempts.items()})  # type: ignore[misc]  # only attributed events are counted
        for reason, found in self._failures.items():
            counts.failures[reason].update({keys[raw]: n for raw, n in found.items()})  # type: ignore[misc]  # as above
        self._attempts = {}
        self._failures = {r: {} for r in REASONS}
        return counts

    def _expire(self, now: float) -> None:
        """Count the handshakes unanswered for ``handshake_timeout`` as failed (``timeout``).

        Not while events wait unread: their answers may be among them (a
        detector that fell behind would otherwise count every handshake of the
        backlog as timed out).
        """
        if self._behind:
            return
        limit = now - self.handshake_timeout
        pending = self._pending
        while pending:
            key = next(iter(pending))
            raw, at = pending[key]
            if at > limit:
                break
            del pending[key]
            self._fail(raw, TIMEOUT)
            self._late[key] = now
        for late in (self._late, self._closed):
            while late:
                key = next(iter(late))
                if late[key] > now - LATE:
                    break
                del late[key]

    def _failed(self) -> bool:
        return any(self._failures.values())

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
            self._drain()
            now = self.clock()
            self._expire(now)
            if self._failed() or now >= until:
                return
            if self._behind:
                continue
            wake = until
            deadline = self.next_timeout()
            if deadline is not None:
                wake = min(wake, deadline)
            if self.refusals is not None:  # only a refusal wakes the reader; the handshakes are read now and then
                wake = min(wake, now + QUIET)
            ready, _, _ = select.select([self.refusals or self.sock], [], [], max(0.0, wake - now))
            if ready:
                self._drain()
                if not self._failed() and stop(BATCH):
                    return

    def read_passes(self) -> list[PassCounts]:
        """The handshakes that ended since the last call (drains the socket first), in one pass or more.

        More when a real server's first failure came after answered
        handshakes of it: the failure starts a pass of its own (``_fail``).
        """
        self._drain()
        self._expire(self.clock())
        passes = [*self._done, self._cut()]
        self._done = []
        for counts in passes:
            counts.entries = len(self._pending)
        return passes

    def read_pass(self) -> PassCounts:
        """All the handshakes that ended since the last call, in one pass."""
        passes = self.read_passes()
        total = passes[-1]
        for counts in passes[:-1]:
            total.attempts.update(counts.attempts)
            for reason, counter in counts.failures.items():
                total.failures[reason].update(counter)
        return total

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
