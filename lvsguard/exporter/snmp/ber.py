"""The part of BER (X.690) that SNMP messages use, encoder and strict decoder.

The agent answers v2c requests without pysnmp's generic machinery (about ten
times slower per varbind), so it needs its own codec: encoders that turn a
Python int, bytes or OID tuple into a TLV, and a decoder that reads exactly
what an SNMP request may contain and rejects anything else with
``BerError`` (the packet is then counted as malformed and dropped).
"""

from __future__ import annotations

from collections.abc import Callable

from lvsguard.errors import BerError
from lvsguard.oid import MAX_SUBID, Oid, format_oid

INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
SEQUENCE = 0x30
IP_ADDRESS = 0x40
COUNTER32 = 0x41
GAUGE32 = 0x42
TIMETICKS = 0x43
OPAQUE = 0x44
COUNTER64 = 0x46
NO_SUCH_OBJECT = 0x80
NO_SUCH_INSTANCE = 0x81
END_OF_MIB_VIEW = 0x82

GET_REQUEST = 0xA0
GET_NEXT_REQUEST = 0xA1
GET_RESPONSE = 0xA2
SET_REQUEST = 0xA3
GET_BULK_REQUEST = 0xA5
INFORM_REQUEST = 0xA6
SNMPV2_TRAP = 0xA7
REPORT = 0xA8

MAX_OID_LENGTH = 128  # RFC 2578 section 3.5: at most 128 sub-identifiers
MAX_UINT32 = 0xFFFFFFFF
MAX_UINT64 = 0xFFFFFFFFFFFFFFFF


# --- encoding ---------------------------------------------------------------


def encode_length(n: int) -> bytes:
    """Definite length: short form below 128, else long form."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    """One tag-length-value."""
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    return bytes((tag,)) + encode_length(n) + body


def _int_body(value: int) -> bytes:
    """Two's-complement content octets, minimal length."""
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def _uint_body(value: int) -> bytes:
    """Content octets of an unsigned application type (a leading 0 when the top bit is set)."""
    return value.to_bytes(value.bit_length() // 8 + 1, "big")


def encode_integer(value: int) -> bytes:
    """INTEGER / Integer32 / enumeration / TruthValue."""
    body = _int_body(value)
    return bytes((INTEGER, len(body))) + body


def _unsigned(tag: int, limit: int) -> Callable[[int], bytes]:
    def encode(value: int) -> bytes:
        if value > limit:
            value = limit
        elif value < 0:
            value = 0
        body = _uint_body(value)
        return bytes((tag, len(body))) + body

    encode.__doc__ = f"Application type 0x{tag:02x}, clamped to 0..{limit} (a gauge saturates)."
    return encode


encode_gauge32 = _unsigned(GAUGE32, MAX_UINT32)  # also Unsigned32: same tag
encode_counter32 = _unsigned(COUNTER32, MAX_UINT32)
encode_timeticks = _unsigned(TIMETICKS, MAX_UINT32)
encode_counter64 = _unsigned(COUNTER64, MAX_UINT64)


def encode_octets(value: bytes) -> bytes:
    """OCTET STRING."""
    return tlv(OCTET_STRING, value)


def encode_text(value: str) -> bytes:
    """SnmpAdminString / DisplayString: UTF-8 octets."""
    return tlv(OCTET_STRING, value.encode("utf-8"))


def encode_null(_: object = None) -> bytes:
    return b"\x05\x00"


def oid_body(oid: Oid) -> bytes:
    """Content octets of an OBJECT IDENTIFIER (first two arcs folded into one)."""
    if len(oid) < 2:
        raise BerError(f"OID {format_oid(oid)} has fewer than two arcs")
    return _encode_subid(oid[0] * 40 + oid[1]) + subids_body(oid[2:])


def _encode_subid(sub: int) -> bytes:
    """Base-128 big-endian with continuation bits (X.690 8.19.2)."""
    if sub < 0x80:
        return bytes((sub,))
    chunk = bytearray((sub & 0x7F,))
    sub >>= 7
    while sub:
        chunk.append(0x80 | (sub & 0x7F))
        sub >>= 7
    chunk.reverse()
    return bytes(chunk)


_SUBID = [_encode_subid(i) for i in range(1 << 14)]
"""Encoded sub-identifiers below 16384: index suffixes (addresses, ports) are built from these."""


def subids_body(subids: Oid) -> bytes:
    """Content octets of sub-identifiers past the first two arcs (an index suffix, a column)."""
    table = _SUBID
    return b"".join([table[s] if s < 16384 else _encode_subid(s) for s in subids])


def encode_oid(oid: Oid) -> bytes:
    """OBJECT IDENTIFIER TLV."""
    return tlv(OBJECT_IDENTIFIER, oid_body(oid))


# --- decoding ---------------------------------------------------------------


def read_tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read a header at ``pos``; return (tag, content start, content end). Rejects what SNMP never sends."""
    if pos + 2 > end:
        raise BerError(f"truncated header at offset {pos}")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise BerError(f"multi-byte tag at offset {pos}")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise BerError(f"indefinite length at offset {pos - 1}")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > end:
            raise BerError(f"bad long-form length at offset {pos - 1}")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    if pos + length > end:
        raise BerError(f"length {length} at offset {pos} runs past the enclosing value")
    return tag, pos, pos + length


def expect(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Read a TLV that must carry ``tag``; return its content span."""
    got, start, stop = read_tlv(buf, pos, end)
    if got != tag:
        raise BerError(f"{what}: expected tag 0x{tag:02x}, got 0x{got:02x} at offset {pos}")
    return start, stop


def decode_integer(buf: bytes, start: int, stop: int, what: str) -> int:
    """Signed INTEGER content of at most 8 octets (SNMP never sends more)."""
    if stop == start or stop - start > 9:
        raise BerError(f"{what}: integer of {stop - start} octets at offset {start}")
    return int.from_bytes(buf[start:stop], "big", signed=True)


def decode_oid(buf: bytes, start: int, stop: int) -> Oid:
    """OBJECT IDENTIFIER content -> tuple, at most 128 sub-identifiers of 32 bits."""
    if start == stop:
        raise BerError(f"empty OID at offset {start}")
    subids: list[int] = []
    value = 0
    pending = False
    for i in range(start, stop):
        byte = buf[i]
        if not pending and byte == 0x80:
            raise BerError(f"non-minimal OID sub-identifier at offset {i}")
        value = (value << 7) | (byte & 0x7F)
        if byte & 0x80:
            pending = True
            if value > MAX_SUBID:
                raise BerError(f"OID sub-identifier too large at offset {i}")
            continue
        pending = False
        subids.append(value)
        value = 0
    if pending:
        raise BerError(f"OID ends inside a sub-identifier at offset {stop}")
    first = subids[0]
    head = (first // 40, first % 40) if first < 80 else (2, first - 80)
    oid = head + tuple(subids[1:])
    if len(oid) > MAX_OID_LENGTH or oid[-1] > MAX_SUBID or head[1] > MAX_SUBID:
        raise BerError(f"OID too long or out of range at offset {start}")
    return oid
