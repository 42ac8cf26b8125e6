"""Hold the host's CPUs out of their sleep states while a benchmark runs (PM QoS on ``/dev/cpu_dma_latency``).

On a host whose idle CPUs halt and are slow to wake (a VM under a hypervisor,
where a halt is an exit), a process that blocks and wakes often pays for the
wake-ups: in wall time, and partly in the CPU time booked to it. Measured on
this project's CI machine (the same run for both sides): the probe
engine's CPU per tcp probe was 0.117 ms with the CPUs free to sleep and
0.089 ms with them held awake; blackbox_exporter's 0.716 and 0.623 ms.
``lab/vm.sh`` holds the same request for the lab VM, where the effect is larger.

A request of 0 us makes idle CPUs poll instead of halting until the descriptor
closes. It costs power, not CPU time. It needs root; without it nothing is held.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

PM_QOS = "/dev/cpu_dma_latency"


@contextmanager
def cpus_awake(enabled: bool = True) -> Iterator[bool]:
    """Hold the request while the block runs; yields whether it is held."""
    if not enabled:
        yield False
        return
    try:
        fd = os.open(PM_QOS, os.O_WRONLY)
    except OSError:
        yield False
        return
    try:
        os.write(fd, struct.pack("i", 0))
        yield True
    finally:
        os.close(fd)
