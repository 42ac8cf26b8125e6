"""lab.cpus: the PM QoS request that keeps the host's CPUs awake during a benchmark."""

from __future__ import annotations

import os
import struct

from lab.cpus import PM_QOS, cpus_awake


def test_disabled_holds_nothing():
    with cpus_awake(False) as held:
        assert held is False


def test_held_request_is_the_kernels_current_target():
    with cpus_awake() as held:
        if not held:  # not root, or no PM QoS device: nothing to check but that it says so
            assert not os.access(PM_QOS, os.W_OK)
            return
        with open(PM_QOS, "rb") as fh:
            (target_us,) = struct.unpack("i", fh.read(4))
        assert target_us == 0
