"""The netlink decoder on dump bytes recorded from a real kernel, and the request encoders.

tests/fixtures/netlink/ holds what a 6.1 kernel sent for GET_SERVICE, GET_DEST
(one dump per service) and GET_DAEMON; expected.json is pyroute2's reading of
the same bytes, checked by record.py against the ipvsadm recipe and against
``ipvsadm -Ln --stats --exact``. The variants a host kernel or an older one
would send (no alignment padding, no STATS64) and broken buffers are derived
from those bytes here.
"""

from __future__ import annotations

import errno
import gzip
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import pytest

from lvsguard.errors import (
    AlreadyExists,
    InvalidRequest,
    KernelError,
    MalformedReply,
    NoSuchDestination,
    NoSuchService,
    NotPermitted,
)
from lvsguard.ipvs import _genl, netlink
from lvsguard.ipvs._genl import NetlinkErrno
from lvsguard.ipvs.netlink import (
    ATTR_DEST,
    ATTR_SERVICE,
    DEST_ADDR_FAMILY,
    DEST_FWD_METHOD,
    DEST_STATS,
    DEST_STATS64,
    DEST_WEIGHT,
    SVC_STATS,
    SVC_STATS64,
    DestDecoder,
    dest_attrs,
    parse_daemons,
    parse_dests,
    parse_services,
    service_attrs,
    translate,
)
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Stats, SyncDaemon, VirtualService

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "netlink"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
STATS_PAD = 11  # IPVS_STATS_ATTR_PAD: the 64-bit alignment padding a kernel without efficient unaligned access adds

SERVICES = EXPECTED["services"]
REAL_SERVERS = [(svc, rs) for svc in SERVICES for rs in svc["real_servers"]]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def dests_of(svc: dict[str, Any]) -> bytes:
    return fixture(svc["dests_file"])


def family(svc: dict[str, Any]) -> int:
    return int(svc["family"])


def stats_dict(stats: Stats) -> dict[str, int]:
    return {name: getattr(stats, name) for name in Stats.__slots__}


def real_server_dict(rs: RealServer) -> dict[str, Any]:
    return {
        "key": str(rs.key),
        "family": rs.key.family,
        "weight": rs.weight,
        "forward": rs.forward.label,
        "upper_threshold": rs.upper_threshold,
        "lower_threshold": rs.lower_threshold,
        "active_connections": rs.active_connections,
        "inactive_connections": rs.inactive_connections,
        "persistent_connections": rs.persistent_connections,
        "tunnel_type": rs.tunnel_type,
        "tunnel_port": rs.tunnel_port,
        "tunnel_flags": rs.tunnel_flags,
        "stats": stats_dict(rs.stats),
    }


# -- rewriting recorded messages -------------------------------------------------------------

Tree = list[tuple[int, Union[bytes, "Tree"]]]
NESTED: dict[int, Any] = {
    ATTR_SERVICE: {SVC_STATS: {}, SVC_STATS64: {}},
    ATTR_DEST: {DEST_STATS: {}, DEST_STATS64: {}},
}


def to_tree(buf: bytes, start: int, end: int, nested: dict[int, Any]) -> Tree:
    """The attributes in order (repeated pads included); types in ``nested`` become subtrees.

    ``nested`` maps a type to the nested types of its own children.
    """
    tree: Tree = []
    pos = start
    while pos < end:
        size, kind = _genl.NLA_HDR.unpack_from(buf, pos)
        payload = buf[pos + 4 : pos + size]
        tree.append((kind, to_tree(buf, pos + 4, pos + size, nested[kind]) if kind in nested else payload))
        pos += _genl.align(size)
    return tree


def from_tree(tree: Tree) -> bytes:
    return b"".join(_genl.nla(kind, from_tree(value) if isinstance(value, list) else value) for kind, value in tree)


def rewrite(dump: bytes, edit: Callable[[Tree], Tree]) -> bytes:
    """Every data message of ``dump`` with its inner attributes passed through ``edit``; control messages as they were."""
    out = []
    for kind, _flags, _seq, start, end in _genl.iter_messages(dump):
        if kind < _genl.NLMSG_MIN_TYPE:
            out.append(dump[start:end])
            continue
        top = to_tree(dump, start + _genl.HEADER_LEN, end, NESTED)
        top = [(k, edit(v) if isinstance(v, list) else v) for k, v in top]
        body = from_tree(top)
        header = bytearray(dump[start : start + _genl.HEADER_LEN])
        struct.pack_into("=I", header, 0, _genl.HEADER_LEN + len(body))
        out.append(bytes(header) + body)
    return b"".join(out)


def without(*kinds: int) -> Callable[[Tree], Tree]:
    """Drop attributes of these types from a service or real server (not from inside its stats)."""

    def edit(tree: Tree) -> Tree:
        return [(k, v) for k, v in tree if k not in kinds]

    return edit


def without_padding(tree: Tree) -> Tree:
    """Drop IPVS_STATS_ATTR_PAD from inside the stats nests."""
    return [(k, [(ik, iv) for ik, iv in v if ik != STATS_PAD] if isinstance(v, list) else v) for k, v in tree]


def data_messages(dump: bytes) -> list[bytes]:
    return [dump[s:e] for kind, _f, _q, s, e in _genl.iter_messages(dump) if kind >= _genl.NLMSG_MIN_TYPE]


def done(code: int = 0, seq: int = 1) -> bytes:
    return _genl.NLMSG_HDR.pack(20, _genl.NLMSG_DONE, _genl.NLM_F_MULTI, seq, 0) + struct.pack("=i", code)


def stats64_offsets(message: bytes) -> dict[int, int]:
    """IPVS_STATS_ATTR_* -> byte offset of its value in the STATS64 nest of one real-server message."""
    dest = _genl.attributes(message, _genl.HEADER_LEN, len(message))[ATTR_DEST]
    nest = _genl.attributes(message, *dest)[DEST_STATS64]
    return {kind: start for kind, (start, _end) in _genl.attributes(message, *nest).items() if kind != STATS_PAD}


# -- the recorded dumps ------------------------------------------------------------------------


def test_fixtures_are_padded_like_the_kernel_that_made_them() -> None:
    """The padded layout is what the UML kernel sends; the no-padding tests below cover x86-64 hosts."""
    assert any(msg != rewrite(msg, without_padding) for msg in data_messages(dests_of(SERVICES[1])))


def test_services_in_dump_order() -> None:
    services = parse_services(fixture("services.bin"))
    assert [str(s.key) for s in services] == [s["key"] for s in SERVICES]
    assert all(s.real_servers == () for s in services)


@pytest.mark.parametrize("expected", SERVICES, ids=[s["key"] for s in SERVICES])
def test_service_fields(expected: dict[str, Any]) -> None:
    (svc,) = [s for s in parse_services(fixture("services.bin")) if str(s.key) == expected["key"]]
    assert svc.key.family == expected["family"]
    assert (svc.scheduler, svc.flags, svc.timeout, svc.netmask, svc.pe_name) == (
        expected["scheduler"],
        expected["flags"],
        expected["timeout"],
        expected["netmask"],
        expected["pe_name"],
    )
    assert stats_dict(svc.stats) == expected["stats"]


def test_service_key_details() -> None:
    by_key = {str(s.key): s.key for s in parse_services(fixture("services.bin"))}
    assert by_key["FWM 2 IPv6"] == ServiceKey("FWM", "", 0, 2, 6)
    assert by_key["TCP [2001:db8::10]:80"] == ServiceKey("TCP", "2001:db8::10", 80, 0, 6)
    assert by_key["SCTP 192.0.2.11:3868"] == ServiceKey("SCTP", "192.0.2.11", 3868, 0, 4)


@pytest.mark.parametrize("svc", SERVICES, ids=[s["key"] for s in SERVICES])
def test_real_servers_of_each_service(svc: dict[str, Any]) -> None:
    assert [str(rs.key) for rs in parse_dests(dests_of(svc), family(svc))] == [rs["key"] for rs in svc["real_servers"]]


@pytest.mark.parametrize("svc, expected", REAL_SERVERS, ids=[f"{s['key']} -> {r['key']}" for s, r in REAL_SERVERS])
def test_real_server_fields(svc: dict[str, Any], expected: dict[str, Any]) -> None:
    (rs,) = [rs for rs in parse_dests(dests_of(svc), family(svc)) if str(rs.key) == expected["key"]]
    assert real_server_dict(rs) == expected


def test_traffic_was_recorded() -> None:
    """Guards the fixture: counters of zero would let a decoder that reads the wrong field pass."""
    busy = [rs for _svc, rs in REAL_SERVERS if rs["stats"]["connections"] and rs["stats"]["incoming_bytes"]]
    assert len(busy) >= 4


@pytest.mark.parametrize("expected", EXPECTED["daemons"], ids=[d["role"] for d in EXPECTED["daemons"]])
def test_sync_daemon_fields(expected: dict[str, Any]) -> None:
    (daemon,) = [d for d in parse_daemons(fixture("daemons.bin")) if d.role == expected["role"]]
    assert daemon == SyncDaemon(**expected)


def test_an_empty_dump_has_no_real_servers() -> None:
    out: list[RealServer] = []
    assert DestDecoder().decode(fixture(SERVICES[0]["dests_file"]), out) is True
    assert out == []


def test_dump_end_is_reported_only_at_nlmsg_done() -> None:
    dump = dests_of(SERVICES[1])
    body = b"".join(data_messages(dump))
    decoder = DestDecoder()
    out: list[RealServer] = []
    assert decoder.decode(body, out) is False
    assert decoder.decode(done(), out) is True
    assert len(out) == len(SERVICES[1]["real_servers"])


def test_keys_are_reused_across_reads() -> None:
    decoder = DestDecoder()
    first: list[RealServer] = []
    second: list[RealServer] = []
    decoder.decode(dests_of(SERVICES[1]), first)
    decoder.decode(dests_of(SERVICES[1]), second)
    assert all(a.key is b.key for a, b in zip(first, second, strict=True))


# -- what other kernels send ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "svc", [s for s in SERVICES if s["real_servers"]], ids=[s["key"] for s in SERVICES if s["real_servers"]]
)
def test_unpadded_layout_decodes_the_same(svc: dict[str, Any]) -> None:
    """An x86-64 kernel (efficient unaligned access) sends no IPVS_STATS_ATTR_PAD."""
    unpadded = rewrite(dests_of(svc), without_padding)
    assert len(unpadded) < len(dests_of(svc))
    assert parse_dests(unpadded, family(svc)) == parse_dests(dests_of(svc), family(svc))


def test_stats_without_stats64_for_real_servers() -> None:
    """Kernels before 4.1 send only the 32-bit STATS nest."""
    svc = SERVICES[1]
    old = rewrite(dests_of(svc), without(DEST_STATS64))
    assert [real_server_dict(rs) for rs in parse_dests(old, family(svc))] == svc["real_servers"]


def test_stats_without_stats64_for_services() -> None:
    old = rewrite(fixture("services.bin"), without(SVC_STATS64))
    assert [stats_dict(s.stats) for s in parse_services(old)] == [s["stats"] for s in SERVICES]


def test_no_stats_at_all_gives_zero_counters() -> None:
    svc = SERVICES[1]
    bare = parse_dests(rewrite(dests_of(svc), without(DEST_STATS, DEST_STATS64)), family(svc))
    assert [rs.stats for rs in bare] == [Stats(0, 0, 0, 0, 0)] * len(svc["real_servers"])
    assert [rs.weight for rs in bare] == [rs["weight"] for rs in svc["real_servers"]]


@pytest.mark.parametrize("key", ["TCP 192.0.2.10:80", "FWM 2 IPv6"])
def test_kernels_without_address_family_use_the_services(key: str) -> None:
    """Before 3.18 the kernel did not send IPVS_DEST_ATTR_ADDR_FAMILY (nor mix families)."""
    svc = next(s for s in SERVICES if s["key"] == key)
    old = rewrite(dests_of(svc), without(DEST_ADDR_FAMILY))
    assert [real_server_dict(rs) for rs in parse_dests(old, family(svc))] == svc["real_servers"]


def test_one_layout_is_compiled_for_a_whole_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    """10 000 real servers, one walk of the attributes: the rest go through the compiled layout."""
    calls = []
    compile_layout = netlink.compile_layout

    def counting(*args: Any) -> Any:
        calls.append(args[1])
        return compile_layout(*args)

    monkeypatch.setattr(netlink, "compile_layout", counting)
    decoded = parse_dests(gzip.decompress(fixture("dests-10000.bin.gz")))
    assert len(decoded) == 10_000
    assert len({rs.key for rs in decoded}) == 10_000
    assert calls == [0]


def test_two_layouts_interleaved() -> None:
    """Padded and unpadded messages in one buffer: each is checked and the decoder switches layouts."""
    svc = SERVICES[1]
    padded = data_messages(dests_of(svc))
    unpadded = data_messages(rewrite(dests_of(svc), without_padding))
    mixed = padded[0] + unpadded[1] + padded[1] + unpadded[0] + done()
    keys = [str(rs.key) for rs in parse_dests(mixed)]
    assert keys == [svc["real_servers"][i]["key"] for i in (0, 1, 1, 0)]


def test_same_length_other_order_is_not_taken_for_the_compiled_layout() -> None:
    """Swapping two equal-size attributes keeps the length; the header check must notice."""
    svc = next(s for s in SERVICES if s["key"] == "TCP 192.0.2.12:443")  # weights 65535 and 1, route (3)

    def swap(tree: Tree) -> Tree:
        i = next(n for n, (k, _v) in enumerate(tree) if k == DEST_FWD_METHOD)
        j = next(n for n, (k, _v) in enumerate(tree) if k == DEST_WEIGHT)
        tree = list(tree)
        tree[i], tree[j] = tree[j], tree[i]
        return tree

    original = data_messages(dests_of(svc))
    swapped = data_messages(rewrite(dests_of(svc), swap))
    assert len(swapped[0]) == len(original[0])
    decoded = parse_dests(original[0] + swapped[0] + done())
    assert decoded[0] == decoded[1]
    assert (decoded[1].weight, decoded[1].forward) == (svc["real_servers"][0]["weight"], Forward.ROUTE)


@pytest.mark.parametrize("value", [2**32, 2**53 + 1, 2**64 - 1], ids=["2^32", "2^53+1", "2^64-1"])
def test_big_counters_are_exact(value: int) -> None:
    dump = bytearray(dests_of(SERVICES[1]))
    first = data_messages(bytes(dump))[0]
    offsets = stats64_offsets(first)
    for kind, offset in offsets.items():
        struct.pack_into("=Q", dump, offset, value - kind)
    stats = parse_dests(bytes(dump))[0].stats
    assert list(stats_dict(stats).values()) == [value - kind for kind in sorted(offsets)]


def test_ipv4_real_server_of_an_ipv6_service() -> None:
    svc = next(s for s in SERVICES if s["key"] == "TCP [2001:db8::10]:80")
    decoded = {str(rs.key): rs.key for rs in parse_dests(dests_of(svc), 6)}
    assert decoded["10.0.3.5:80"] == RealServerKey("10.0.3.5", 80, 4)
    assert decoded["[2001:db8:1::2]:8080"] == RealServerKey("2001:db8:1::2", 8080, 6)


# -- broken buffers ---------------------------------------------------------------------------------


def cut_points() -> list[tuple[str, int]]:
    dump = dests_of(SERVICES[1])
    first = len(data_messages(dump)[0])
    return [
        ("in-netlink-header", 7),
        ("in-genl-header", 18),
        ("in-address", 30),
        ("in-stats64", first - 9),
        ("in-second-message", first + 100),
    ]


@pytest.mark.parametrize("cut", [c for _n, c in cut_points()], ids=[n for n, _c in cut_points()])
def test_truncated_dump_is_a_clear_error(cut: int) -> None:
    with pytest.raises(MalformedReply, match=r"^malformed netlink reply: .*byte"):
        parse_dests(dests_of(SERVICES[1])[:cut])


def test_truncated_dump_is_a_kernel_error() -> None:
    with pytest.raises(KernelError):
        parse_dests(dests_of(SERVICES[1])[:30])


def garble(offset_of: Callable[[bytes], int], value: bytes) -> bytes:
    dump = bytearray(dests_of(SERVICES[1]))
    at = offset_of(bytes(dump))
    dump[at : at + len(value)] = value
    return bytes(dump)


def weight_attr(dump: bytes) -> int:
    """Byte offset of the first real server's weight attribute header."""
    dest = _genl.attributes(dump, _genl.HEADER_LEN, len(data_messages(dump)[0]))[ATTR_DEST]
    return _genl.attributes(dump, *dest)[DEST_WEIGHT][0] - 4


@pytest.mark.parametrize(
    "broken, message",
    [
        (lambda: garble(weight_attr, struct.pack("=H", 2)), r"length 2"),
        (lambda: garble(weight_attr, struct.pack("=H", 4000)), r"length 4000"),
        (lambda: garble(weight_attr, struct.pack("=H", 6)), r"weight has 2 bytes, expected 4"),
        (lambda: garble(lambda d: weight_attr(d) - 4, struct.pack("=I", 7)), r"unknown forwarding method 7"),
        (lambda: garble(lambda d: 0, struct.pack("=I", 3)), r"length 3"),
        (lambda: garble(lambda d: 22, struct.pack("=H", 99)), r"real-server message without addr, port, fwd, weight"),
    ],
    ids=[
        "attribute-too-short",
        "attribute-past-the-end",
        "scalar-of-wrong-size",
        "forwarding-method",
        "message-length",
        "not-a-real-server",
    ],
)
def test_garbled_dump_is_a_clear_error(broken: Callable[[], bytes], message: str) -> None:
    with pytest.raises(MalformedReply, match=message):
        parse_dests(broken())


def test_garbled_services_dump_is_a_clear_error() -> None:
    with pytest.raises(MalformedReply, match="malformed netlink reply"):
        parse_services(fixture("services.bin")[:100])


def test_error_in_nlmsg_done_is_raised_with_its_errno() -> None:
    with pytest.raises(NetlinkErrno) as info:
        parse_dests(done(-errno.EPERM))
    assert info.value.errno == errno.EPERM


def test_nlmsg_error_carries_the_kernel_message() -> None:
    text = _genl.nla(_genl.NLMSGERR_ATTR_MSG, b"Attribute failed policy validation\0")
    body = struct.pack("=i", -errno.EINVAL) + _genl.NLMSG_HDR.pack(36, 0x1D, 5, 9, 0) + text
    flags = _genl.NLM_F_CAPPED | _genl.NLM_F_ACK_TLVS
    reply = _genl.NLMSG_HDR.pack(16 + len(body), _genl.NLMSG_ERROR, flags, 9, 0) + body
    with pytest.raises(NetlinkErrno) as info:
        parse_services(reply)
    assert (info.value.errno, info.value.message) == (errno.EINVAL, "Attribute failed policy validation")
    assert info.value.reason == "invalid argument (Attribute failed policy validation)"


# -- requests: what we send decodes back to what we meant -------------------------------------------


def as_reply(kind: int, attrs: bytes, cmd: int) -> bytes:
    return _genl.message(0x1D, cmd, _genl.NLM_F_MULTI, 1, _genl.nla(kind, attrs)) + done()


@pytest.mark.parametrize(
    "svc",
    [
        VirtualService(ServiceKey.parse("TCP 192.0.2.10:80"), "wrr", netmask=0xFFFFFFFF),
        VirtualService(
            ServiceKey.parse("UDP 192.0.2.13:5060"), "rr", flags=1, timeout=60, netmask=0xFFFFFF00, pe_name="sip"
        ),
        VirtualService(ServiceKey.parse("SCTP [2001:db8::1]:3868"), "sh", flags=0x18, netmask=64),
        VirtualService(ServiceKey.parse("FWM 7 IPv6"), "mh", flags=0x11, timeout=30, netmask=128),
    ],
    ids=["tcp", "udp-sip", "sctp-ipv6", "fwmark-ipv6"],
)
def test_service_encoding_round_trips(svc: VirtualService) -> None:
    assert parse_services(as_reply(ATTR_SERVICE, service_attrs(svc), 1)) == [svc]


def test_service_encoding_drops_hashed_and_fills_the_netmask() -> None:
    """The kernel refuses to hash a service that claims to be hashed; netmask 0 would merge all clients."""
    (sent,) = parse_services(
        as_reply(ATTR_SERVICE, service_attrs(VirtualService(ServiceKey.parse("TCP 192.0.2.10:80"), "rr", flags=0x3)), 1)
    )
    assert (sent.flags, sent.netmask) == (0x1, 0xFFFFFFFF)


@pytest.mark.parametrize(
    "rs",
    [
        RealServer(RealServerKey.parse("10.0.1.2:8080"), 3, Forward.MASQ, 100, 10),
        RealServer(RealServerKey.parse("[2001:db8:1::2]:80"), 0, Forward.ROUTE),
        RealServer(
            RealServerKey.parse("10.0.3.3:3868"), 4, Forward.TUNNEL, tunnel_type=1, tunnel_port=6080, tunnel_flags=2
        ),
    ],
    ids=["masq-thresholds", "ipv6-weight-0", "gue-tunnel"],
)
def test_real_server_encoding_round_trips(rs: RealServer) -> None:
    assert parse_dests(as_reply(ATTR_DEST, dest_attrs(rs), 5)) == (rs,)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: service_attrs(VirtualService(ServiceKey("TCP", "300.1.1.1", 80), "rr")),
            "'300.1.1.1' is not an IPv4 address",
        ),
        (
            lambda: service_attrs(VirtualService(ServiceKey("ICMP", "192.0.2.1", 80), "rr")),
            "protocol must be TCP, UDP, SCTP or FWM",
        ),
        (
            lambda: dest_attrs(RealServer(RealServerKey("10.0.0.1", 70000), 1, Forward.ROUTE)),
            "port 70000 is out of range",
        ),
        (lambda: dest_attrs(RealServer(RealServerKey("10.0.0.1", 80), -1, Forward.ROUTE)), "weight -1 is out of range"),
    ],
    ids=["bad-address", "bad-protocol", "bad-port", "negative-weight"],
)
def test_encoding_refuses_what_the_kernel_cannot_take(make: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# -- errno -> typed errors ----------------------------------------------------------------------------

SVC = ServiceKey.parse("TCP 192.0.2.10:80")
RS = RealServerKey.parse("10.0.1.2:80")


@pytest.mark.parametrize(
    "code, op, kwargs, cls, message",
    [
        (
            errno.ENOENT,
            "dest",
            {"service": SVC, "real_server": RS},
            NoSuchDestination,
            "real server 10.0.1.2:80 of TCP 192.0.2.10:80: no such destination",
        ),
        (
            errno.ESRCH,
            "dest",
            {"service": SVC, "real_server": RS},
            NoSuchService,
            "service TCP 192.0.2.10:80: no such service",
        ),
        (
            errno.EEXIST,
            "dest",
            {"service": SVC, "real_server": RS},
            AlreadyExists,
            "real server 10.0.1.2:80 of TCP 192.0.2.10:80: already exists",
        ),
        (errno.EEXIST, "service", {"service": SVC}, AlreadyExists, "service TCP 192.0.2.10:80: already exists"),
        (
            errno.ENOENT,
            "service",
            {"service": SVC, "hint": "no scheduler 'xyz' in this kernel"},
            InvalidRequest,
            "service TCP 192.0.2.10:80: no scheduler 'xyz' in this kernel",
        ),
        (errno.EPERM, "read", {}, NotPermitted, "operation not permitted (IPVS over netlink needs CAP_NET_ADMIN)"),
        (
            errno.EINVAL,
            "dest",
            {"service": SVC, "real_server": RS},
            InvalidRequest,
            "real server 10.0.1.2:80 of TCP 192.0.2.10:80: invalid argument",
        ),
        (
            errno.EEXIST,
            "daemon",
            {"subject": "sync daemon master"},
            AlreadyExists,
            "sync daemon master: already running",
        ),
        (errno.ESRCH, "daemon", {"subject": "sync daemon backup"}, KernelError, "sync daemon backup: not running"),
        (errno.ENOMEM, "read", {}, KernelError, "cannot allocate memory"),
    ],
    ids=[
        "no-destination",
        "no-service",
        "destination-exists",
        "service-exists",
        "no-scheduler",
        "not-permitted",
        "invalid",
        "daemon-running",
        "daemon-not-running",
        "other",
    ],
)
def test_errno_becomes_a_typed_error_naming_the_object(
    code: int, op: str, kwargs: dict[str, Any], cls: type[KernelError], message: str
) -> None:
    exc = translate(NetlinkErrno(code), op, **kwargs)
    assert type(exc) is cls
    assert str(exc) == message
    assert exc.errno == code
