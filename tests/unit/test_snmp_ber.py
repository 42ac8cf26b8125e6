"""The BER codec against pyasn1 (an independent encoder) and against malformed input."""

from __future__ import annotations

import random

import pytest
from pyasn1.codec.ber import encoder
from pyasn1.type import univ
from pysnmp.proto import rfc1902

from lvsguard import oid as oids
from lvsguard.exporter.snmp import ber
from lvsguard.exporter.snmp.ber import BerError

INTEGERS = [0, 1, 127, 128, 255, 256, -1, -128, -129, 32767, 32768, 2**31 - 1, -(2**31)]


@pytest.mark.parametrize("value", INTEGERS, ids=str)
def test_integer_matches_pyasn1(value: int) -> None:
    assert ber.encode_integer(value) == encoder.encode(univ.Integer(value))


@pytest.mark.parametrize("value", [0, 1, 127, 128, 2**31, 2**32 - 1, 2**63, 2**64 - 1], ids=str)
def test_counter64_matches_pyasn1(value: int) -> None:
    assert ber.encode_counter64(value) == encoder.encode(rfc1902.Counter64(value))


@pytest.mark.parametrize("value", [0, 5, 2**31, 2**32 - 1], ids=str)
def test_gauge_and_timeticks_match_pyasn1(value: int) -> None:
    assert ber.encode_gauge32(value) == encoder.encode(rfc1902.Gauge32(value))
    assert ber.encode_timeticks(value) == encoder.encode(rfc1902.TimeTicks(value))
    assert ber.encode_counter32(value) == encoder.encode(rfc1902.Counter32(value))


def test_gauges_saturate_instead_of_wrapping() -> None:
    assert ber.encode_gauge32(2**40) == ber.encode_gauge32(2**32 - 1)
    assert ber.encode_gauge32(-3) == ber.encode_gauge32(0)
    assert ber.encode_counter64(2**70) == ber.encode_counter64(2**64 - 1)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 70000], ids=str)
def test_octets_and_lengths_match_pyasn1(size: int) -> None:
    value = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert ber.encode_octets(value) == encoder.encode(univ.OctetString(value))


def _random_oids(count: int) -> list[tuple[int, ...]]:
    rng = random.Random(5)
    out = []
    for _ in range(count):
        first = rng.choice((0, 1, 2))
        second = rng.randrange(40) if first < 2 else rng.randrange(1000)
        rest = [
            rng.choice((rng.randrange(128), rng.randrange(2**14), rng.randrange(2**32)))
            for _ in range(rng.randrange(0, 30))
        ]
        out.append((first, second, *rest))
    return out


def test_oid_encoding_matches_pyasn1_and_round_trips() -> None:
    for oid in _random_oids(2000):
        encoded = ber.encode_oid(oid)
        assert encoded == encoder.encode(univ.ObjectIdentifier(oid)), oid
        tag, start, stop = ber.read_tlv(encoded, 0, len(encoded))
        assert tag == ber.OBJECT_IDENTIFIER
        assert ber.decode_oid(encoded, start, stop) == oid


def test_subids_body_extends_a_prefix() -> None:
    prefix, suffix = (1, 3, 6, 1, 4, 1, 8072), (9999, 0, 200, 2**32 - 1)
    assert ber.oid_body(prefix) + ber.subids_body(suffix) == ber.oid_body(prefix + suffix)


def test_parse_and_format_oid() -> None:
    assert oids.parse_oid(".1.3.6.1.4.1.8072.9999.9999") == (1, 3, 6, 1, 4, 1, 8072, 9999, 9999)
    assert oids.format_oid((1, 3, 6, 1)) == "1.3.6.1"
    for bad in ("", "1", "1.3.x", "3.1", "1.40", "1.3.4294967296"):
        with pytest.raises(ValueError, match="OID"):
            oids.parse_oid(bad)


MALFORMED = {
    "truncated header": b"\x30",
    "indefinite length": b"\x30\x80\x00\x00",
    "length past the end": b"\x30\x05\x02\x01",
    "long form of 5 octets": b"\x30\x85\x00\x00\x00\x00\x01\x00",
    "multi-byte tag": b"\x1f\x01\x00",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_read_tlv_rejects(data: bytes) -> None:
    with pytest.raises(BerError):
        ber.read_tlv(data, 0, len(data))


OIDS_MALFORMED = {
    "empty": b"",
    "non-minimal sub-identifier": b"\x2b\x80\x01",
    "ends inside a sub-identifier": b"\x2b\x86",
    "sub-identifier over 32 bits": b"\x2b\x90\x80\x80\x80\x00",
    "more than 128 arcs": b"\x2b" + b"\x01" * 128,
}


@pytest.mark.parametrize("body", OIDS_MALFORMED.values(), ids=OIDS_MALFORMED.keys())
def test_decode_oid_rejects(body: bytes) -> None:
    with pytest.raises(BerError):
        ber.decode_oid(body, 0, len(body))


def test_decode_integer_rejects_empty_and_huge() -> None:
    with pytest.raises(BerError):
        ber.decode_integer(b"", 0, 0, "x")
    with pytest.raises(BerError):
        ber.decode_integer(b"\x01" * 10, 0, 10, "x")
    assert ber.decode_integer(b"\xff\x7f", 0, 2, "x") == -129
