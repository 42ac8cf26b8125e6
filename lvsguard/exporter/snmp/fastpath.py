"""SNMPv2c GET, GETNEXT and GETBULK answered straight from a ``MibView``, bytes in, bytes out.

pysnmp's generic responder spends about 57 µs per varbind (decoding with
pyasn1, MIB-tree lookups, access checks, re-encoding); an NMS bulk-walking
tens of thousands of real-server cells needs about a tenth of that. This
module reads the request with the strict decoder of ``ber``, checks the
community in constant time, and answers from the view's pre-encoded OID
parts. v3 messages never come here (USM is pysnmp's job, see ``v3``).

What it does with each packet (RFC 3416, RFC 3417; counters as SNMPv2-MIB):
- not BER, or not an SNMP message: dropped, ``asn_parse_errors``;
- version other than v2c: dropped, ``bad_versions``;
- unknown community: dropped, ``bad_community_names`` (no answer, as snmpd);
- SET (or another write) with a read-only community: ``noAccess`` answer, ``bad_community_uses``;
- a PDU type a command responder never receives (Response, Trap, Report...): dropped.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from lvsguard.errors import BerError
from lvsguard.exporter.snmp import ber
from lvsguard.exporter.snmp.mibview import END_OF_MIB_VIEW, NO_SUCH_INSTANCE, NO_SUCH_OBJECT, MibView, exception_varbind
from lvsguard.exporter.snmp.settings import MAX_RESPONSE_SIZE
from lvsguard.oid import Oid

VERSION_V1, VERSION_V2C, VERSION_V3 = 0, 1, 3

NO_ERROR = 0
TOO_BIG = 1
NO_ACCESS = 6

MAX_REQUEST_VARBINDS = 1024
"""More varbinds than any client sends; a larger request is treated as malformed."""


@dataclass
class AgentStats:
    """Counters of the agent; the first six are served as SNMPv2-MIB's snmp group."""

    in_packets: int = 0
    bad_versions: int = 0
    bad_community_names: int = 0
    bad_community_uses: int = 0
    asn_parse_errors: int = 0
    silent_drops: int = 0  # answers too big even as a tooBig error
    unsupported_pdus: int = 0
    responses: int = 0
    v3_messages: int = 0
    v3_rejected: int = 0  # v3 messages pysnmp raised on (malformed in ways its decoder misses)
    internal_errors: int = 0  # exceptions caught around a packet (a bug, logged)


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded v2c request."""

    version: int
    community: bytes
    pdu_type: int
    request_id: int
    non_repeaters: int  # error-status field of non-bulk PDUs
    max_repetitions: int  # error-index field of non-bulk PDUs
    oids: tuple[Oid, ...]


def peek_version(data: bytes) -> int:
    """The msgVersion of a message; BerError when the packet is not an SNMP message."""
    _, start, stop = ber.read_tlv(data, 0, len(data))
    if data[0] != ber.SEQUENCE:
        raise BerError("message is not a SEQUENCE")
    vstart, vstop = ber.expect(data, start, stop, ber.INTEGER, "msgVersion")
    return ber.decode_integer(data, vstart, vstop, "msgVersion")


def decode_request(data: bytes) -> Request:
    """Decode a v1/v2c message (the caller has checked the version); BerError when malformed."""
    end = len(data)
    start, stop = ber.expect(data, 0, end, ber.SEQUENCE, "message")
    if stop != end:
        raise BerError(f"{end - stop} octets after the message")
    vstart, vstop = ber.expect(data, start, stop, ber.INTEGER, "version")
    cstart, cstop = ber.expect(data, vstop, stop, ber.OCTET_STRING, "community")
    pdu_type, pstart, pstop = ber.read_tlv(data, cstop, stop)
    if pstop != stop:
        raise BerError("octets after the PDU")
    fields = []
    pos = pstart
    for what in ("request-id", "error-status", "error-index"):
        s, e = ber.expect(data, pos, pstop, ber.INTEGER, what)
        fields.append(ber.decode_integer(data, s, e, what))
        pos = e
    if not -(2**31) <= fields[0] < 2**31:
        raise BerError("request-id out of range")
    lstart, lstop = ber.expect(data, pos, pstop, ber.SEQUENCE, "variable-bindings")
    if lstop != pstop:
        raise BerError("octets after the variable-bindings")
    oids: list[Oid] = []
    pos = lstart
    while pos < lstop:
        bstart, bstop = ber.expect(data, pos, lstop, ber.SEQUENCE, "VarBind")
        ostart, ostop = ber.expect(data, bstart, bstop, ber.OBJECT_IDENTIFIER, "VarBind name")
        oids.append(ber.decode_oid(data, ostart, ostop))
        _, _, value_end = ber.read_tlv(data, ostop, bstop)
        if value_end != bstop:
            raise BerError("octets after a VarBind value")
        if len(oids) > MAX_REQUEST_VARBINDS:
            raise BerError(f"more than {MAX_REQUEST_VARBINDS} variable bindings")
        pos = bstop
    version = ber.decode_integer(data, vstart, vstop, "version")
    return Request(version, bytes(data[cstart:cstop]), pdu_type, fields[0], fields[1], fields[2], tuple(oids))


def encode_response(
    community: bytes, request_id: int, error_status: int, error_index: int, varbinds: Iterable[bytes]
) -> bytes:
    """A v2c Response-PDU message."""
    pdu = (
        ber.encode_integer(request_id)
        + ber.encode_integer(error_status)
        + ber.encode_integer(error_index)
        + ber.tlv(ber.SEQUENCE, b"".join(varbinds))
    )
    body = b"\x02\x01\x01" + ber.tlv(ber.OCTET_STRING, community) + ber.tlv(ber.GET_RESPONSE, pdu)
    return ber.tlv(ber.SEQUENCE, body)


_NULL_VALUE = b"\x05\x00"
_ENVELOPE = 64
MAX_REPETITIONS = 256
"""A GETBULK's max-repetitions is cut to this before any work (the size budget stops the answer anyway)."""
"""Upper bound of the message, PDU and list headers around the varbinds, beyond the community."""


class V2cResponder:
    """Answers v2c read requests for a set of read-only communities."""

    def __init__(self, communities: Iterable[bytes], stats: AgentStats, max_size: int = MAX_RESPONSE_SIZE) -> None:
        self._communities = tuple(communities)
        self.stats = stats
        self.max_size = max_size

    def community_ok(self, community: bytes) -> bool:
        ok = False
        for known in self._communities:
            ok |= hmac.compare_digest(known, community)
        return ok

    def respond(self, data: bytes, view: MibView) -> bytes | None:
        """The answer to one v1/v2c datagram, or None when it is to be dropped (and counted)."""
        stats = self.stats
        try:
            request = decode_request(data)
        except BerError:
            stats.asn_parse_errors += 1
            return None
        if request.version != VERSION_V2C:
            stats.bad_versions += 1
            return None
        if not self.community_ok(request.community):
            stats.bad_community_names += 1
            return None
        budget = self.max_size - _ENVELOPE - len(request.community)
        kind = request.pdu_type
        if kind == ber.GET_REQUEST:
            varbinds = [self._get(view, oid) for oid in request.oids]
        elif kind == ber.GET_NEXT_REQUEST:
            varbinds = [self._next(view, oid) for oid in request.oids]
        elif kind == ber.GET_BULK_REQUEST:
            varbinds = self._bulk(view, request, budget)
        elif kind == ber.SET_REQUEST:
            stats.bad_community_uses += 1
            echoed = [ber.tlv(ber.SEQUENCE, ber.encode_oid(oid) + _NULL_VALUE) for oid in request.oids]
            return self._finish(request, NO_ACCESS, 1 if request.oids else 0, echoed, budget)
        else:
            stats.unsupported_pdus += 1
            return None
        return self._finish(request, NO_ERROR, 0, varbinds, budget)

    def _finish(self, request: Request, status: int, index: int, varbinds: list[bytes], budget: int) -> bytes | None:
        if sum(len(v) for v in varbinds) > budget:
            varbinds, status, index = [], TOO_BIG, 0
            if budget < 0:
                self.stats.silent_drops += 1
                return None
        self.stats.responses += 1
        return encode_response(request.community, request.request_id, status, index, varbinds)

    @staticmethod
    def _get(view: MibView, oid: Oid) -> bytes:
        pos = view.find(oid)
        if pos is None:
            return exception_varbind(oid, NO_SUCH_OBJECT)
        if pos is False:
            return exception_varbind(oid, NO_SUCH_INSTANCE)
        return view.varbind(pos)

    @staticmethod
    def _next(view: MibView, oid: Oid) -> bytes:
        pos = view.next_position(oid)
        if pos is None:
            return exception_varbind(oid, END_OF_MIB_VIEW)
        return view.varbind(pos)

    def _bulk(self, view: MibView, request: Request, budget: int) -> list[bytes]:
        """RFC 3416 4.2.3, stopping at the size budget (a GETBULK answer may be truncated)."""
        oids = request.oids
        n = min(max(request.non_repeaters, 0), len(oids))
        m = min(max(request.max_repetitions, 0), MAX_REPETITIONS)
        out = [self._next(view, oid) for oid in oids[:n]]
        used = sum(len(v) for v in out)
        cursors: list[tuple[Oid, tuple[int, int, int] | None]] = [(oid, None) for oid in oids[n:]]
        if not cursors:
            return out
        if len(cursors) == 1:
            return self._walk(view, cursors[0][0], m, out, used, budget)
        for repetition in range(m):
            all_ended = True
            for i, (last, pos) in enumerate(cursors):
                if repetition == 0:
                    pos = view.next_position(last)
                elif pos is not None:
                    previous = pos
                    pos = view.advance(pos)
                    if pos is None:
                        last = view.oid(previous)
                if pos is None:
                    varbind = exception_varbind(last, END_OF_MIB_VIEW)
                else:
                    varbind = view.varbind(pos)
                    all_ended = False
                used += len(varbind)
                if used > budget:
                    return out
                out.append(varbind)
                cursors[i] = (last, pos)
            if all_ended:
                break
        return out

    @staticmethod
    def _walk(view: MibView, start: Oid, m: int, out: list[bytes], used: int, budget: int) -> list[bytes]:
        """One repeater (every bulk walk): whole slices of the encoded columns, no cursor per varbind."""
        pos = view.next_position(start)
        last = start
        left = m
        while left > 0 and pos is not None:
            i, c, r = pos
            column = view.subtrees[i].column(c)
            chunk = column[r : r + left]
            size = sum(map(len, chunk))
            if used + size > budget:
                for varbind in chunk:
                    used += len(varbind)
                    if used > budget:
                        return out
                    out.append(varbind)
            out.extend(chunk)
            used += size
            left -= len(chunk)
            end = (i, c, r + len(chunk) - 1)
            pos = view.advance(end)
            if pos is None:
                last = view.oid(end)
        if left > 0 and pos is None:
            varbind = exception_varbind(last, END_OF_MIB_VIEW)
            if used + len(varbind) <= budget:
                out.append(varbind)
        return out
