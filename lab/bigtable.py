"""A big IPVS table, built fast in its own namespace, for the scale tests and the benchmarks.

No traffic: only the kernel's table matters (1000 services x 100 real servers =
100 000 real servers for the benchmark, 10 000 for the kernel test). The table
is deterministic, so a test can compare what it reads with ``plan()``:

- service i: TCP 198.18.0.1 + i, port 80 (RFC 2544 benchmarking range), scheduler wrr
- real server j of service i: 10.a.b.c:8080, a distinct address per real server
  (10.0.0.1 + i * per_service + j), weight 1 + j % 7, masquerading for even i,
  direct routing for odd i

Two ways to fill it: ``netlink`` (lvsguard's NetlinkIPVS.add_real_servers,
pipelined requests; the default) and ``ipvsadm`` (one ``ipvsadm -R``, the
reference tool, about 100 s for 100 000 real servers under UML).

Command line (inside the lab VM): ``python -m lab.bigtable --services 1000 --per-service 100``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from lab import ipvsadm
from lvsguard.errors import LvsguardError
from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.ipvs.netns import NETNS_RUN_DIR
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, VirtualService

DEFAULT_NETNS = "lvs-big"
SERVICE_BASE = int(ipaddress.IPv4Address("198.18.0.1"))
REAL_SERVER_BASE = int(ipaddress.IPv4Address("10.0.0.1"))
MAX_SERVICES = 2 * 65536 - 2  # 198.18.0.0/15
MAX_REAL_SERVERS = 2**24 - 2  # 10.0.0.0/8
METHODS = ("netlink", "ipvsadm")


@dataclass(frozen=True)
class BigTable:
    """What was built, where, how, and how long it took."""

    netns: str
    services: tuple[VirtualService, ...]
    method: str
    seconds: float

    @property
    def real_server_count(self) -> int:
        return sum(len(s.real_servers) for s in self.services)


def plan(services: int, per_service: int) -> tuple[VirtualService, ...]:
    """The table's services and real servers, as configured (see the module docstring)."""
    if not 1 <= services <= MAX_SERVICES:
        raise ValueError(f"services must be 1..{MAX_SERVICES}, got {services}")
    if not per_service >= 0 or services * per_service > MAX_REAL_SERVERS:
        raise ValueError(f"services x per_service must be 0..{MAX_REAL_SERVERS}, got {services} x {per_service}")
    table = []
    for i in range(services):
        key = ServiceKey("TCP", str(ipaddress.IPv4Address(SERVICE_BASE + i)), 80)
        forward = Forward.MASQ if i % 2 == 0 else Forward.ROUTE
        real_servers = tuple(
            RealServer(
                RealServerKey(str(ipaddress.IPv4Address(REAL_SERVER_BASE + i * per_service + j)), 8080),
                1 + j % 7,
                forward,
            )
            for j in range(per_service)
        )
        table.append(VirtualService(key, "wrr", real_servers=real_servers))
    return tuple(table)


def _fill_netlink(table: tuple[VirtualService, ...], netns: str, say: Callable[[str], None]) -> None:
    with NetlinkIPVS(netns) as kernel:
        for i, svc in enumerate(table, 1):
            kernel.add_service(svc)
            kernel.add_real_servers(svc.key, svc.real_servers)
            if i % 100 == 0 or i == len(table):
                say(f"  {i}/{len(table)} services")


def _fill_ipvsadm(table: tuple[VirtualService, ...], netns: str, say: Callable[[str], None]) -> None:
    say(f"  ipvsadm -R with {len(table) + sum(len(s.real_servers) for s in table)} rules")
    ipvsadm.restore(table, netns=netns)


def build(
    services: int = 1000,
    per_service: int = 100,
    *,
    netns: str = DEFAULT_NETNS,
    method: str = "netlink",
    progress: Callable[[str], None] | None = None,
) -> BigTable:
    """Create ``netns`` afresh and fill its IPVS table with ``plan(services, per_service)``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    say = progress or (lambda _msg: None)
    table = plan(services, per_service)
    destroy(netns)
    ipvsadm.run(["ip", "netns", "add", netns])
    ipvsadm.run(["ip", "link", "set", "lo", "up"], netns=netns)  # IPVS needs lo up for NAT real servers
    say(f"filling {netns} with {services} services x {per_service} real servers ({method})")
    t0 = time.monotonic()
    (_fill_netlink if method == "netlink" else _fill_ipvsadm)(table, netns, say)
    return BigTable(netns, table, method, time.monotonic() - t0)


def destroy(netns: str = DEFAULT_NETNS) -> None:
    """Delete the namespace and with it its table (nothing happens when it does not exist)."""
    if os.path.exists(os.path.join(NETNS_RUN_DIR, netns)):
        ipvsadm.run(["ip", "netns", "del", netns])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bigtable", description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--per-service", type=int, default=100)
    parser.add_argument("--netns", default=DEFAULT_NETNS)
    parser.add_argument("--method", choices=METHODS, default="netlink")
    parser.add_argument("--keep", action="store_true", help="leave the namespace and its table in place")
    args = parser.parse_args(argv)
    if os.environ.get("IPVS_VM_GUEST") != "1" and os.environ.get("FORCE") != "1":
        print("lab.bigtable: run it inside lab/vm.sh (or set FORCE=1 on a disposable host)", file=sys.stderr)
        return 2
    try:
        big = build(
            args.services,
            args.per_service,
            netns=args.netns,
            method=args.method,
            progress=lambda msg: print(msg, flush=True),
        )
        print(
            f"{big.real_server_count} real servers in {len(big.services)} services: {big.seconds:.1f} s "
            f"({big.seconds / max(big.real_server_count, 1) * 1e6:.0f} µs per real server, {big.method})"
        )
    except (ValueError, ipvsadm.IpvsadmError, LvsguardError) as exc:
        print(f"lab.bigtable: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            destroy(args.netns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
