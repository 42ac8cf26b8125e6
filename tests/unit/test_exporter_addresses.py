"""The RTM_GETADDR decoder, on a dump recorded from the lab kernel (6.1).

tests/fixtures/rtnetlink/getaddr_dump.bin is ``dump_addresses()`` in a namespace
built with::

    ip link set lo up
    ip link add vip0 type dummy && ip link set vip0 up
    ip addr add 198.51.100.1/24 dev vip0
    ip addr add 192.0.2.10/32 dev vip0 label vip0:web
    ip addr add 2001:db8::10/128 dev vip0 nodad

(vip0 also got an IPv6 link-local address.) The live dump is tested in
tests/integration/test_exporter_kernel.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lvsguard.errors import KernelError
from lvsguard.ipvs.addresses import NLMSG_DONE, NLMSG_ERROR, LocalAddress, parse_addresses

DUMP = (Path(__file__).resolve().parent.parent / "fixtures" / "rtnetlink" / "getaddr_dump.bin").read_bytes()


def test_recorded_dump() -> None:
    found = parse_addresses(DUMP)
    assert found[:5] == [
        LocalAddress("127.0.0.1", 1, "lo"),
        LocalAddress("198.51.100.1", 2, "vip0"),
        LocalAddress("192.0.2.10", 2, "vip0:web"),
        LocalAddress("::1", 1, ""),
        LocalAddress("2001:db8::10", 2, ""),
    ]
    assert len(found) == 6
    assert found[5].address.startswith("fe80::") and found[5].ifindex == 2


def test_a_dump_cut_in_the_middle_is_an_error() -> None:
    with pytest.raises(ValueError, match="bad message length"):
        parse_addresses(DUMP[:-30])


def test_netlink_error_message_raises_kernel_error() -> None:
    error = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    with pytest.raises(KernelError, match="reading local addresses: Operation not permitted") as info:
        parse_addresses(error)
    assert info.value.errno == 1


def test_parsing_stops_at_done() -> None:
    done = struct.pack("=IHHII", 20, NLMSG_DONE, 0, 1, 0) + bytes(4)
    assert parse_addresses(done + DUMP) == []
