"""This director's local IP addresses, from one rtnetlink RTM_GETADDR dump.

The exporter compares them with the virtual service addresses of the IPVS
table to say which VIPs this director holds (``lvs_director_vip_owned``). The
dump is a few hundred bytes on a director, so a raw netlink socket and a
``struct`` decoder do it in well under a millisecond, in the director's network
namespace, with no dependency. ``dump_addresses`` does the socket I/O and
``parse_addresses`` is pure, so it is tested on recorded dump bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from lvsguard.errors import KernelError
from lvsguard.ipvs.netns import entered

RTM_NEWADDR = 20
RTM_GETADDR = 22
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
IFA_ADDRESS = 1  # the peer on point-to-point links, else the local address
IFA_LOCAL = 2  # the local address (present on IPv4 links)
IFA_LABEL = 3  # IPv4 only: the interface name or alias label ("eth0:1")

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, ifindex
_RTATTR = struct.Struct("=HH")  # len, type
_NLMSGERR = struct.Struct("=i")  # -errno


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """One address configured on an interface."""

    address: str  # compressed IP text, as in the model
    ifindex: int
    label: str  # IFA_LABEL (IPv4), "" for IPv6


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_addresses(data: bytes) -> list[LocalAddress]:
    """Decode the RTM_NEWADDR messages of a dump (stops at NLMSG_DONE)."""
    out: list[LocalAddress] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise ValueError(f"rtnetlink address dump: bad message length {length} at offset {offset}")
        if msg_type == NLMSG_DONE:
            break
        if msg_type == NLMSG_ERROR:
            (neg_errno,) = _NLMSGERR.unpack_from(data, offset + _NLMSGHDR.size)
            if neg_errno:
                raise KernelError(f"reading local addresses: {os.strerror(-neg_errno)}", errno=-neg_errno)
        elif msg_type == RTM_NEWADDR:
            out.append(_parse_newaddr(data[offset + _NLMSGHDR.size : offset + length]))
        offset += _align(length)
    return out


def _parse_newaddr(body: bytes) -> LocalAddress:
    family, _prefixlen, _flags, _scope, ifindex = _IFADDRMSG.unpack_from(body)
    attrs: dict[int, bytes] = {}
    offset = _IFADDRMSG.size
    while offset + _RTATTR.size <= len(body):
        length, attr_type = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size:
            break
        attrs[attr_type] = body[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS, b"")
    size = 4 if family == socket.AF_INET else 16
    address = ipaddress.ip_address(raw[:size]).compressed if len(raw) >= size else ""
    label = attrs.get(IFA_LABEL, b"").split(b"\0", 1)[0].decode(errors="replace")
    return LocalAddress(address, ifindex, label)


def dump_addresses() -> bytes:
    """The raw RTM_GETADDR dump of this thread's network namespace."""
    request = _NLMSGHDR.pack(_NLMSGHDR.size + _IFADDRMSG.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    request += _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
            sock.settimeout(5.0)
            sock.sendall(request)
            while True:
                data = sock.recv(65536)
                chunks.append(data)
                if not data or _ends_dump(data):
                    break
    except OSError as exc:
        raise KernelError(f"reading local addresses: {exc.strerror or exc}", errno=exc.errno or errno.EIO) from None
    return b"".join(chunks)


def _ends_dump(data: bytes) -> bool:
    """Whether the last message of one recv() is NLMSG_DONE or an error (a dump ends with it)."""
    offset = 0
    last = -1
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, *_ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        last = msg_type
        offset += _align(length)
    return last in (NLMSG_DONE, NLMSG_ERROR)


def local_addresses(netns: str | None = None) -> dict[str, str]:
    """Every address of the namespace -> the name of its interface (first one wins)."""
    with entered(netns):
        found = parse_addresses(dump_addresses())
        names = {a.ifindex: _interface_name(a) for a in found}
    result: dict[str, str] = {}
    for a in found:
        if a.address:
            result.setdefault(a.address, names[a.ifindex])
    return result


def _interface_name(addr: LocalAddress) -> str:
    """The interface's name (inside the namespace), or its IPv4 label if it just vanished."""
    try:
        return socket.if_indextoname(addr.ifindex)
    except OSError:
        return addr.label.split(":", 1)[0] or str(addr.ifindex)
