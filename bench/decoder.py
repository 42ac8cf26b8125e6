"""The real-server dump decoder alone: µs per real server, ours against pyroute2's, same bytes.

    .venv/bin/python bench/decoder.py [--repeat N] [--sizes 1000,10000,100000]

The bytes are a GET_DEST dump of 10 000 real servers recorded from a real
kernel (tests/fixtures/netlink/dests-10000.bin.gz, see record.py there). Their
counters were zero when recorded; this script writes random 40-bit values into
every counter and rate first, so that neither decoder profits from Python's
cached small ints. The N-real-server case is the first N messages plus the
dump's NLMSG_DONE; past 10 000 the recorded messages repeat.

Ours: bytes -> lvsguard.model.RealServer objects (keys, Stats, everything).
"cold": a fresh decoder (layout compile and key creation included); "warm": a
decoder that has seen the dump before, as a reader is from its second scrape
on, with the previous result still alive as in an exporter; "warm, GC paused":
the same with Python's cycle collector held off, as NetlinkIPVS.read() runs it
(see ``cyclic_gc_paused``).

pyroute2 gets the dump cut into datagrams of at most 32 KiB, as its socket
would, and is measured twice: ``Marshal.parse`` alone (its message objects;
pyroute2 decodes attributes lazily, so this reads none of them), and parse plus
reading every attribute of every real server, stats64 included, which is what
a reader needs (not run past 10 000 real servers: over a minute).

Reported: CPU time (time.process_time) per real server, the best of
``--repeat`` samples of at least 0.2 s each.
"""

from __future__ import annotations

import argparse
import gzip
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path

from pyroute2.netlink.generic.ipvs import ipvsmsg
from pyroute2.netlink.marshal import Marshal

from lvsguard.ipvs import _genl
from lvsguard.ipvs.netlink import ATTR_DEST, DEST_STATS, DEST_STATS64, DestDecoder, cyclic_gc_paused, parse_dests
from lvsguard.model import RealServer

DUMP = Path(__file__).resolve().parent.parent / "tests/fixtures/netlink/dests-10000.bin.gz"
PYROUTE2_READ_MAX = 10_000  # pyroute2 reading every field of 100 000 real servers takes over a minute


def with_random_counters(dump: bytes, seed: int = 1) -> bytes:
    """The dump with every STATS/STATS64 value replaced by a random 40-bit (32-bit where the field is) value."""
    rng = random.Random(seed)
    out = bytearray(dump)
    for kind, _flags, _seq, start, end in _genl.iter_messages(dump):
        if kind < _genl.NLMSG_MIN_TYPE:
            continue
        dest = _genl.attributes(dump, start + _genl.HEADER_LEN, end)[ATTR_DEST]
        attrs = _genl.attributes(dump, *dest)
        for nest in (DEST_STATS, DEST_STATS64):
            for lo, hi in _genl.attributes(dump, *attrs[nest]).values():
                if hi - lo == 8:
                    struct.pack_into("=Q", out, lo, rng.getrandbits(40))
                elif hi - lo == 4:
                    struct.pack_into("=I", out, lo, rng.getrandbits(32))
    return bytes(out)


def first(dump: bytes, count: int) -> bytes:
    """``count`` real-server messages (the recorded ones, repeated past 10 000) and the dump's NLMSG_DONE; past 10 000 the recorded messages repeat."""
    messages = list(_genl.iter_messages(dump))
    data = [dump[m[3] : m[4]] for m in messages if m[0] >= _genl.NLMSG_MIN_TYPE]
    done = next(m for m in messages if m[0] == _genl.NLMSG_DONE)
    return b"".join(data[i % len(data)] for i in range(count)) + dump[done[3] : done[4]]


def best(fn: Callable[[], object], repeat: int, sample: float = 0.2) -> float:
    """Seconds of CPU per call: the best of ``repeat`` samples, each at least ``sample`` s of calls.

    CPU time, not wall time, so that other work on the machine does not count;
    whole samples because the CPU clock can be as coarse as a jiffy (10 ms in UML).
    """
    times = []
    for _ in range(repeat):
        calls, start = 0, time.process_time()
        while True:
            fn()
            calls += 1
            elapsed = time.process_time() - start
            if elapsed >= sample:
                break
        times.append(elapsed / calls)
    return min(times)


def datagrams(dump: bytes, limit: int = 32768) -> list[bytes]:
    """The dump cut at message boundaries into pieces of at most ``limit`` bytes, like the kernel's datagrams."""
    pieces, start = [], 0
    for _kind, _flags, _seq, lo, hi in _genl.iter_messages(dump):
        if hi - start > limit:
            pieces.append(dump[start:lo])
            start = lo
    pieces.append(dump[start:])
    return pieces


def pyroute2_reader(marshal: Marshal, family: int, pieces: list[bytes], read: bool) -> Callable[[], object]:
    def parse() -> object:
        return [m for piece in pieces for m in marshal.parse(piece)]

    def parse_and_read() -> object:
        rows = []
        for piece in pieces:
            for msg in marshal.parse(piece):
                if msg["header"]["type"] == family:
                    dest = msg.get("IPVS_CMD_ATTR_DEST")
                    rows.append((dict(dest["attrs"]), dict(dest.get("IPVS_DEST_ATTR_STATS64")["attrs"])))
        return rows

    return parse_and_read if read else parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure; the best is reported (default 7)")
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="real servers per dump, comma-separated (default 1000,10000,100000)",
    )
    args = parser.parse_args()

    full = with_random_counters(gzip.decompress(DUMP.read_bytes()))
    family = next(kind for kind, *_ in _genl.iter_messages(full) if kind >= _genl.NLMSG_MIN_TYPE)
    marshal = Marshal()
    marshal.msg_map[family] = ipvsmsg

    print("µs per real server (CPU time, best run)")
    print(
        f"{'real servers':>12} {'ours cold':>10} {'ours warm':>10} {'warm, GC paused':>16} {'pyroute2 parse':>15} {'pyroute2 parse+read':>20} {'ratio':>7}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        dump = first(full, size)
        decoded = parse_dests(dump)
        if len(decoded) != size:
            raise SystemExit(f"decoded {len(decoded)} real servers, expected {size}")
        del decoded
        warm = DestDecoder()
        table: list[list[RealServer]] = [[]]  # the previous read stays alive, as in an exporter

        def warm_read(pause: bool) -> None:
            table[0] = []
            if pause:
                with cyclic_gc_paused():
                    warm.decode(dump, table[0])
            else:
                warm.decode(dump, table[0])

        warm_read(False)
        cold = best(lambda: parse_dests(dump), args.repeat) / size * 1e6
        ours = best(lambda: warm_read(False), args.repeat) / size * 1e6
        paused = best(lambda: warm_read(True), args.repeat) / size * 1e6
        pieces = datagrams(dump)
        parse = best(pyroute2_reader(marshal, family, pieces, False), args.repeat) / size * 1e6
        if size <= PYROUTE2_READ_MAX:
            read = best(pyroute2_reader(marshal, family, pieces, True), max(1, args.repeat // 4), 0) / size * 1e6
            tail = f"{read:>20.1f} {read / ours:>6.0f}x"
        else:
            tail = f"{'(not run)':>20} {'':>7}"
        print(f"{size:>12} {cold:>10.2f} {ours:>10.2f} {paused:>16.2f} {parse:>15.1f} {tail}")
    print("ratio: pyroute2 parse+read / ours warm")


if __name__ == "__main__":
    main()
