"""The generic netlink socket: the kernel keeps its timeout, and a timeout reads as one clear error.

Generic netlink exists without IPVS, so this runs on any Linux host.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from lvsguard.errors import TransportError
from lvsguard.ipvs import _genl
from lvsguard.ipvs.netlink import NetlinkIPVS


def test_socket_is_blocking_with_the_timeout_in_the_kernel():
    try:
        sock = _genl.open_socket()
    except Exception as exc:  # a host without generic netlink sockets
        pytest.skip(f"no generic netlink socket here: {exc}")
    with sock:
        assert sock.gettimeout() is None  # Python neither polls nor reads the clock around each call
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            seconds, micros = struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("@ll")))
            assert seconds + micros / 1e6 == _genl.TIMEOUT


@pytest.mark.parametrize(
    "exc", [BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"), TimeoutError("timed out")]
)
def test_a_kernel_that_does_not_answer_is_a_transport_error_that_says_so(exc):
    error = NetlinkIPVS._os_error(exc, "receive")
    assert isinstance(error, TransportError)
    assert str(error).startswith(f"no netlink reply from the kernel within {_genl.TIMEOUT:.0f} s")


def test_other_socket_errors_keep_their_reason():
    error = NetlinkIPVS._os_error(OSError(errno.ECONNREFUSED, "Connection refused"), "send")
    assert "netlink send failed: Connection refused" in str(error)
