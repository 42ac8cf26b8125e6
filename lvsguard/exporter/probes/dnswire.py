"""A small DNS message codec (RFC 1035): a query out, the rcode and answers back.

Enough for a health check: one question, answers decoded for A, AAAA, CNAME,
NS, PTR, MX and TXT (other types as hex), name compression followed with a
loop guard. Pure functions over bytes, so the tests need no server.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from lvsguard.errors import DNSFormatError

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}
RCODE_NAMES = {v: k for k, v in RCODES.items()}
CLASS_IN = 1
FLAG_RD = 0x0100
FLAG_QR = 0x8000


@dataclass(frozen=True, slots=True)
class Answer:
    name: str
    type: str
    ttl: int
    data: str  # presentation form: an address, a name, TXT strings joined


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    flags: int
    rcode: str
    answers: tuple[Answer, ...]
    question: tuple[str, str] | None = None  # (name, type) of the first question


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not 0 < len(raw) < 64:
            raise DNSFormatError(f"bad label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out) + b"\0"


def encode_query(ident: int, name: str, qtype: str, *, recursion: bool = True) -> bytes:
    header = struct.pack("!HHHHHH", ident, FLAG_RD if recursion else 0, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", TYPES[qtype], CLASS_IN)


def encode_response(query: bytes, rcode: str, answers: list[tuple[str, str, int, bytes]]) -> bytes:
    """A response to ``query`` with answers (name, type, ttl, rdata): the tests' responder uses it."""
    ident, flags = struct.unpack("!HH", query[:4])
    end = _skip_name(query, 12) + 4
    out = (
        struct.pack("!HHHHHH", ident, FLAG_QR | (flags & FLAG_RD) | 0x0080 | RCODES[rcode], 1, len(answers), 0, 0)
        + query[12:end]
    )
    for name, qtype, ttl, rdata in answers:
        out += encode_name(name) + struct.pack("!HHIH", TYPES[qtype], CLASS_IN, ttl, len(rdata)) + rdata
    return out


def decode_name(data: bytes, offset: int) -> tuple[str, int]:
    """(name, offset after it in the message), following compression pointers."""
    labels: list[str] = []
    end = None
    jumps = 0
    while True:
        if offset >= len(data):
            raise DNSFormatError("name runs past the end of the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DNSFormatError("truncated compression pointer")
            if end is None:
                end = offset + 2
            jumps += 1
            if jumps > 32:
                raise DNSFormatError("compression pointer loop")
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length == 0:
            return (".".join(labels) + ".") if labels else ".", end if end is not None else offset + 1
        labels.append(data[offset + 1 : offset + 1 + length].decode("ascii", errors="replace"))
        offset += 1 + length


def _skip_name(data: bytes, offset: int) -> int:
    return decode_name(data, offset)[1]


def _rdata(data: bytes, offset: int, length: int, rtype: int) -> str:
    raw = data[offset : offset + length]
    if rtype == TYPES["A"] and length == 4:
        return str(ipaddress.IPv4Address(raw))
    if rtype == TYPES["AAAA"] and length == 16:
        return str(ipaddress.IPv6Address(raw))
    if rtype in (TYPES["CNAME"], TYPES["NS"], TYPES["PTR"]):
        return decode_name(data, offset)[0]
    if rtype == TYPES["MX"] and length > 2:
        return f"{struct.unpack('!H', raw[:2])[0]} {decode_name(data, offset + 2)[0]}"
    if rtype == TYPES["TXT"]:
        parts, i = [], 0
        while i < len(raw):
            parts.append(raw[i + 1 : i + 1 + raw[i]].decode("utf-8", errors="replace"))
            i += 1 + raw[i]
        return " ".join(parts)
    return raw.hex()


def decode_message(data: bytes) -> Message:
    if len(data) < 12:
        raise DNSFormatError(f"{len(data)} bytes: shorter than a DNS header")
    ident, flags, qdcount, ancount = struct.unpack("!HHHH", data[:8])
    offset = 12
    question = None
    try:
        for i in range(qdcount):
            qname, offset = decode_name(data, offset)
            qtype = struct.unpack("!H", data[offset : offset + 2])[0]
            offset += 4
            if i == 0:
                question = (qname, TYPE_NAMES.get(qtype, str(qtype)))
        answers = []
        for _ in range(ancount):
            name, offset = decode_name(data, offset)
            rtype, _cls, ttl, length = struct.unpack("!HHIH", data[offset : offset + 10])
            offset += 10
            if offset + length > len(data):
                raise DNSFormatError("record data runs past the end of the message")
            answers.append(Answer(name, TYPE_NAMES.get(rtype, str(rtype)), ttl, _rdata(data, offset, length, rtype)))
            offset += length
    except struct.error:
        raise DNSFormatError("truncated message") from None
    rcode = flags & 0x000F
    return Message(ident, flags, RCODE_NAMES.get(rcode, str(rcode)), tuple(answers), question)
