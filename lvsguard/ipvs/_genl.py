"""Generic netlink plumbing: framing, attribute walking and one blocking socket.

This module knows netlink (``linux/netlink.h``, ``linux/genetlink.h``) and
nothing about IPVS; ``lvsguard.ipvs.netlink`` builds on it. pyroute2 only
resolves a family name to its id: its sockets run an asyncio transport that
reads the socket itself, so our own request/dump loop uses a plain
``socket.socket`` opened in the same network namespace.
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import struct
from collections.abc import Iterator

from lvsguard.errors import IPVSUnavailable, KernelError, MalformedReply, NotPermitted

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks do not echo the request back
NETLINK_EXT_ACK = 11  # errors carry the kernel's extack message
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLMSG_MIN_TYPE = 0x10  # types below are control messages

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100  # in an ack: the request was not echoed
NLM_F_ACK_TLVS = 0x200  # in an ack: extack TLVs follow
NLMSGERR_ATTR_MSG = 1

NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
GENL_HDR = struct.Struct("=BBH")  # cmd, version, reserved
NLA_HDR = struct.Struct("=HH")  # len, type
NLMSG_GENL = struct.Struct("=IHHIIBBH")  # both headers, for building requests
HEADER_LEN = NLMSG_HDR.size + GENL_HDR.size
_I32 = struct.Struct("=i")

RECV_SIZE = 1 << 16  # the kernel sends at most ~32 KiB of a dump per datagram
BUFFER_BYTES = 8 << 20  # socket buffers: room for the error replies of a write batch
TIMEOUT = 60.0  # seconds without any reply before we give up on the kernel


class NetlinkErrno(Exception):
    """An errno from the kernel (NLMSG_ERROR or an error in NLMSG_DONE), still untranslated.

    Only ``lvsguard.ipvs`` sees this: it turns it into a typed ``KernelError``
    that names the object the request was about.
    """

    def __init__(self, code: int, message: str = "", seq: int = 0):
        self.errno = code
        self.message = message
        self.seq = seq
        super().__init__(code, message)

    @property
    def reason(self) -> str:
        """``no such process`` or the kernel's extack message when it sent one."""
        text = os.strerror(self.errno).lower() if self.errno else "error"
        return f"{text} ({self.message})" if self.message else text


def malformed(what: str) -> MalformedReply:
    """The error for a reply we cannot decode: names what was wrong and where."""
    return MalformedReply(f"malformed netlink reply: {what}")


def align(n: int) -> int:
    return (n + 3) & ~3


def nla(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    size = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(size, kind) + payload + b"\0" * (align(size) - size)


def message(family: int, cmd: int, flags: int, seq: int, payload: bytes, version: int = 1) -> bytes:
    """A generic netlink request (both headers, then the attributes)."""
    return NLMSG_GENL.pack(HEADER_LEN + len(payload), family, flags, seq, 0, cmd, version, 0) + payload


def attributes(buf: bytes | bytearray | memoryview, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Map attribute type -> (payload start, payload end) for the attributes in buf[start:end].

    The last of repeated types wins (IPVS sends none twice). Raises the
    ``malformed`` KernelError on a length that does not fit.
    """
    found: dict[int, tuple[int, int]] = {}
    pos = start
    while pos + NLA_HDR.size <= end:
        size, kind = NLA_HDR.unpack_from(buf, pos)
        if size < NLA_HDR.size or pos + size > end:
            raise malformed(
                f"attribute type {kind & NLA_TYPE_MASK} at byte {pos} has length {size}, {end - pos} bytes left"
            )
        found[kind & NLA_TYPE_MASK] = (pos + NLA_HDR.size, pos + size)
        pos += align(size)
    if pos < end:
        raise malformed(f"{end - pos} stray bytes at byte {pos}")
    return found


def iter_messages(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (type, flags, seq, start, end) for each netlink message in buf."""
    off, size = 0, len(buf)
    while off < size:
        if size - off < NLMSG_HDR.size:
            raise malformed(f"{size - off} bytes at byte {off} are too short for a netlink header")
        length, kind, flags, seq, _pid = NLMSG_HDR.unpack_from(buf, off)
        if length < NLMSG_HDR.size or off + length > size:
            raise malformed(f"message at byte {off} has length {length}, {size - off} bytes left")
        yield kind, flags, seq, off, off + length
        off += align(length)


def error_of(
    buf: bytes | bytearray | memoryview, kind: int, flags: int, seq: int, start: int, end: int
) -> NetlinkErrno | None:
    """The errno carried by an NLMSG_ERROR/NLMSG_DONE message; None for a plain ack or end.

    NLMSG_ERROR: errno, the echoed request header (only the header with
    NETLINK_CAP_ACK), then extack TLVs. NLMSG_DONE: errno, then TLVs.
    """
    body = start + NLMSG_HDR.size
    if end - body < _I32.size:
        return None  # an old-style DONE without payload
    (code,) = _I32.unpack_from(buf, body)
    if code == 0:
        return None
    text = ""
    if flags & NLM_F_ACK_TLVS:
        tlv = body + _I32.size
        if kind == NLMSG_ERROR and end - tlv >= NLMSG_HDR.size:
            echoed = NLMSG_HDR.size if flags & NLM_F_CAPPED else NLMSG_HDR.unpack_from(buf, tlv)[0]
            tlv += align(echoed)
        if tlv < end:
            span = attributes(buf, tlv, end).get(NLMSGERR_ATTR_MSG)
            if span:
                text = bytes(buf[span[0] : span[1]]).rstrip(b"\0").decode("utf-8", "replace")
    return NetlinkErrno(-code, text, seq)


def resolve_family(name: str) -> int:
    """The generic netlink family id of ``name`` (pyroute2's CTRL_CMD_GETFAMILY)."""
    from pyroute2.netlink import genlmsg
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket

    sock = GenericNetlinkSocket()
    try:
        sock.asyncore.module_err_level = "debug"  # we raise a clear error instead of its log line
        sock.bind(name, genlmsg)
        return int(sock.prid)
    except NetlinkError as exc:
        if exc.code == errno_mod.ENOENT:
            raise IPVSUnavailable(
                f"the kernel has no generic netlink family {name!r} (is the ip_vs module loaded?)", errno=exc.code
            ) from None
        raise KernelError(
            f"cannot resolve generic netlink family {name!r}: {os.strerror(exc.code)}", errno=exc.code
        ) from None
    except OSError as exc:
        raise KernelError(f"cannot open a generic netlink socket: {exc.strerror or exc}", errno=exc.errno) from None
    finally:
        sock.close()


def open_socket() -> socket.socket:
    """A bound, blocking NETLINK_GENERIC socket of the calling thread's namespace (``TIMEOUT`` kept by the kernel)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    except OSError as exc:
        if exc.errno in (errno_mod.EPERM, errno_mod.EACCES):
            raise NotPermitted("cannot open a netlink socket", errno=exc.errno) from None
        raise KernelError(f"cannot open a netlink socket: {exc.strerror}", errno=exc.errno) from None
    try:
        sock.bind((0, 0))
        for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_BYTES)
            except PermissionError:  # without CAP_NET_ADMIN: up to net.core.[rw]mem_max
                sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        # The kernel keeps the timeout (SO_RCVTIMEO), not Python: a socket with a
        # Python timeout polls and reads the clock before every send and receive,
        # two extra system calls per exchange that cost 20-100 us each under UML.
        timeval = struct.pack("@ll", int(TIMEOUT), 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    except OSError as exc:
        sock.close()
        raise KernelError(f"cannot set up the netlink socket: {exc.strerror or exc}", errno=exc.errno) from None
    return sock
