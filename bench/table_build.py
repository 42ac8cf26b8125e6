"""An empty table to S services × R real servers, and one real server changed in it: lvsguard vs ipvsadm -R vs keepalived.

Runs inside the lab VM (``lab/vm.sh --mem 1024 .venv/bin/python bench/table_build.py
--services 1000``). The same table three ways, each in a fresh network
namespace:

- lvsguard: the config's services loaded, planned against the empty kernel
  table, applied through netlink (``lvsguard.table``): plan and apply timed
  apart;
- ``ipvsadm -R`` fed the equivalent ``ipvsadm-save`` text;
- Debian's keepalived (checker only, ``--check``) started on the equivalent
  keepalived.conf (real servers without checkers count as up): the time from
  its start until the kernel holds every rule, read with lvsguard's netlink
  reader every 50 ms.

Then, on lvsguard's table, one real server's weight is changed in the config,
twice: planned against the whole kernel table (read included) and applied;
and as a reload does it, the two configs compared first and only the
changed service read, planned and applied.

Services are ``TCP 10.A.B.C:80`` NAT, ``wrr``, real servers
``172.16.X.Y:80`` with weights 1..10. Not a test: compare only numbers of one run.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsguard.ipvs.netlink import NetlinkIPVS
from lvsguard.model import Forward, RealServerKey, ServiceKey
from lvsguard.table.apply import apply
from lvsguard.table.desired import DesiredTable, make_real_server, make_service
from lvsguard.table.plan import changed as changed_services
from lvsguard.table.plan import plan

KEEPALIVED = "/usr/sbin/keepalived"
NETNS = "lvsg-bench-table"


def vip(i: int) -> str:
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.0.0.1")) + i))


def rip(i: int, j: int) -> str:
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("172.16.0.1")) + i * 16 + j))


def desired_table(services: int, reals: int) -> DesiredTable:
    return DesiredTable(
        tuple(
            make_service(
                ServiceKey("TCP", vip(i), 80),
                "wrr",
                real_servers=[
                    make_real_server(RealServerKey(rip(i, j), 80), Forward.MASQ, 1 + (i + j) % 10) for j in range(reals)
                ],
            )
            for i in range(services)
        )
    )


def ipvsadm_rules(services: int, reals: int) -> str:
    lines = []
    for i in range(services):
        lines.append(f"-A -t {vip(i)}:80 -s wrr")
        lines += [f"-a -t {vip(i)}:80 -r {rip(i, j)}:80 -m -w {1 + (i + j) % 10}" for j in range(reals)]
    return "\n".join(lines) + "\n"


def keepalived_conf(services: int, reals: int) -> str:
    out = []
    for i in range(services):
        out.append(f"virtual_server {vip(i)} 80 {{\n    lb_algo wrr\n    lb_kind NAT\n    protocol TCP")
        out += [f"    real_server {rip(i, j)} 80 {{\n        weight {1 + (i + j) % 10}\n    }}" for j in range(reals)]
        out.append("}")
    return "\n".join(out) + "\n"


def fresh_netns() -> None:
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)


def rules_in(ipvs: NetlinkIPVS) -> int:
    table = ipvs.read()
    return len(table.services) + table.real_server_count


def bench_lvsguard(services: int, reals: int) -> dict[str, float]:
    fresh_netns()
    desired = desired_table(services, reals)
    with NetlinkIPVS(NETNS) as ipvs:
        t0 = time.perf_counter()
        steps = plan(desired, ipvs.read(), prune="exact")
        t1 = time.perf_counter()
        result = apply(steps, ipvs)
        t2 = time.perf_counter()
        assert result.ok, str(result)
        assert rules_in(ipvs) == services * (reals + 1)
        changed = list(desired.services)
        first = changed[0]
        changed[0] = replace(first, real_servers=(replace(first.real_servers[0], weight=42), *first.real_servers[1:]))
        new = DesiredTable(tuple(changed))
        t3 = time.perf_counter()
        one = plan(new, ipvs.read(), prune="exact")
        t4 = time.perf_counter()
        assert apply(one, ipvs).ok and len(one.operations) == 1
        t5 = time.perf_counter()
        back = replace(first, real_servers=(replace(first.real_servers[0], weight=7), *first.real_servers[1:]))
        again = DesiredTable((back, *changed[1:]))
        t6 = time.perf_counter()  # a reload: the two configs compared, only what changed read and planned
        keys = changed_services(new, again)
        partial = plan(again, [ipvs.read_service(key) for key in keys], prune="exact", only=keys)
        assert apply(partial, ipvs).ok and len(partial.operations) == 1
        t7 = time.perf_counter()
    return {
        "plan": t1 - t0,
        "apply": t2 - t1,
        "build": t2 - t0,
        "change_plan": t4 - t3,
        "change_total": t5 - t3,
        "change_incremental": t7 - t6,
    }


def bench_ipvsadm(services: int, reals: int) -> float:
    fresh_netns()
    text = ipvsadm_rules(services, reals)
    t0 = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", NETNS, "ipvsadm", "-R"], input=text, text=True, check=True)
    elapsed = time.perf_counter() - t0
    with NetlinkIPVS(NETNS) as ipvs:
        assert rules_in(ipvs) == services * (reals + 1)
    return elapsed


def bench_keepalived(services: int, reals: int, timeout: float) -> float | None:
    if not os.access(KEEPALIVED, os.X_OK):
        return None
    fresh_netns()
    want = services * (reals + 1)
    with tempfile.TemporaryDirectory(prefix="lvsg-bench-") as tmp:
        conf = Path(tmp) / "keepalived.conf"
        conf.write_text(keepalived_conf(services, reals))
        argv = ["ip", "netns", "exec", NETNS, KEEPALIVED, "--check", "--dont-fork", "-f", str(conf)]
        argv += ["-p", f"{tmp}/k.pid", "-c", f"{tmp}/c.pid", "-r", f"{tmp}/v.pid"]
        with NetlinkIPVS(NETNS) as ipvs:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while time.perf_counter() - t0 < timeout:
                    if rules_in(ipvs) >= want:
                        return time.perf_counter() - t0
                    time.sleep(0.05)
                return None
            finally:
                proc.terminate()
                proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--reals", type=int, default=10, help="real servers per service")
    parser.add_argument("--skip-ipvsadm", action="store_true")
    parser.add_argument("--skip-keepalived", action="store_true")
    parser.add_argument("--keepalived-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    s, r = args.services, args.reals
    print(f"table: {s} services x {r} real servers = {s * r} real servers")
    ours = bench_lvsguard(s, r)
    print(
        f"lvsguard   build {ours['build']:.2f} s (plan {ours['plan']:.2f} s, apply {ours['apply']:.2f} s); "
        f"one real server changed: whole table read, planned, applied {ours['change_total'] * 1000:.0f} ms "
        f"(read and plan {ours['change_plan'] * 1000:.0f} ms); configs compared, only the changed service read, "
        f"planned, applied {ours['change_incremental'] * 1000:.0f} ms"
    )
    if not args.skip_ipvsadm:
        restore = bench_ipvsadm(s, r)
        print(f"ipvsadm -R build {restore:.2f} s ({restore / ours['build']:.1f}x lvsguard)")
    if not args.skip_keepalived:
        peer = bench_keepalived(s, r, args.keepalived_timeout)
        if peer is None:
            print("keepalived did not build the table (not installed, or timeout)")
        else:
            print(f"keepalived build {peer:.2f} s ({peer / ours['build']:.1f}x lvsguard)")
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
