"""Bulk-walk benchmark: lvsguard's SNMP agent vs net-snmp's snmpd vs a stock pysnmp responder.

One run, one client: net-snmp's ``snmpbulkwalk -v2c`` (numeric output, no MIB
loaded, so the client's own cost is the same for all three). Each agent
listens on the loopback:

- lvsguard: ``SnmpAgent`` serving a table of N real servers built from plain
  model data (the agent's cost does not depend on where the table came from);
  the walk covers ``lvsgRsTable`` (25 columns per real server).
- snmpd: net-snmp's agent with a minimal config, walking tables it serves
  natively: nsModuleTable (its in-memory registry of MIB handlers, the
  cheapest table it has), hrSWRunTable (processes, read from /proc), and
  everything it serves.
- pysnmp: a stock pysnmp 7 command responder whose MIB tree holds the same
  number of cells as lvsgRsTable (Counter64 values), as a pysnmp user would
  write it (``MibScalar`` columns with ``MibScalarInstance`` rows).

For each: the median wall time of ``--runs`` walks, the varbinds walked, the
time per 1000 varbinds, and the same with the client's fixed cost taken out
("net": the median walk of an empty subtree, start-up of snmpbulkwalk
included); then the ratio of the net figure to snmpd's nsModuleTable. Not a
test: the figures depend on the machine; compare only numbers from one run.

usage: python bench/snmp_walk.py [--real-servers 400] [--runs 7] [--repetitions 10 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lvsguard.exporter.snmp import layout
from lvsguard.exporter.snmp.agent import SnmpAgent
from lvsguard.exporter.snmp.settings import build_settings
from lvsguard.exporter.snmp.snapshot import Snapshot
from lvsguard.model import Forward, RealServer, RealServerKey, ServiceKey, Stats, Table, VirtualService

COMMUNITY = "bench"
RS_COLUMNS = len(layout.RS_COLUMNS)
PYSNMP_BASE = (1, 3, 6, 1, 4, 1, 8072, 9999, 9998, 1)


SNMPD_TABLES = (
    ("snmpd nsModuleTable", ".1.3.6.1.4.1.8072.1.2"),
    ("snmpd hrSWRunTable", ".1.3.6.1.2.1.25.4.2"),
    ("snmpd whole view", ".1.3.6.1"),
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIN_VARBINDS = 60000
EMPTY_SUBTREE = ".1.3.6.1.4.1.8072.9999.9997"


@dataclass
class Walk:
    agent: str
    repetitions: int
    varbinds: int
    seconds: float  # median of the runs
    fixed: float  # median walk of an empty subtree: the client's own start-up and one request
    agent_cpu: float  # the agent process's CPU seconds per walk (utime + stime, mean)
    client_cpu: float  # snmpbulkwalk's CPU seconds per walk (mean)

    @property
    def ms_per_1000(self) -> float:
        return self.seconds * 1000 / self.varbinds * 1000

    @property
    def cpu_ms_per_1000(self) -> float:
        return self.agent_cpu * 1000 / self.varbinds * 1000

    @property
    def client_ms_per_1000(self) -> float:
        return self.client_cpu * 1000 / self.varbinds * 1000

    @property
    def net_ms_per_1000(self) -> float:
        return (self.seconds - self.fixed) * 1000 / self.varbinds * 1000


def make_table(real_servers: int) -> Table:
    servers = tuple(
        RealServer(
            RealServerKey(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8080),
            weight=1 + i % 100,
            forward=Forward.MASQ,
            active_connections=i,
            inactive_connections=i // 2,
            stats=Stats(10**6 + i, 10**9 + i, 10**9 + 2 * i, 10**12 + i, 10**12 + 3 * i, cps=i, incoming_bps=10**7),
        )
        for i in range(real_servers)
    )
    service = VirtualService(ServiceKey("TCP", "192.0.2.10", 80), "wlc", real_servers=servers)
    return Table((service,), totals=Stats(1, 2, 3, 4, 5))


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def walk_once(port: int, oid: str, repetitions: int) -> tuple[int, float]:
    cmd = ["snmpbulkwalk", "-v2c", "-c", COMMUNITY, "-m", "", "-On", "-Oq", f"-Cr{repetitions}", "-t", "5", "-r", "0"]
    start = time.perf_counter()
    out = subprocess.run([*cmd, f"127.0.0.1:{port}", oid], capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - start
    lines = [line for line in out.splitlines() if line.startswith(".")]
    return len(lines), elapsed


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, proc: subprocess.Popen, port: int, oid: str, repetitions: int, runs: int) -> Walk:
    """At least ``runs`` walks, and enough of them to walk MIN_VARBINDS (CPU time is counted in 10 ms ticks)."""
    varbinds, _ = walk_once(port, oid, repetitions)  # warm-up (first snapshot, caches)
    runs = max(runs, -(-MIN_VARBINDS // max(varbinds, 1)))
    cpu_before, client_before = cpu_seconds(proc.pid), client_cpu_seconds()
    results = [walk_once(port, oid, repetitions) for _ in range(runs)]
    cpu, client = cpu_seconds(proc.pid) - cpu_before, client_cpu_seconds() - client_before
    fixed = statistics.median(walk_once(port, EMPTY_SUBTREE, repetitions)[1] for _ in range(min(runs, 20)))
    seconds = statistics.median(t for _, t in results)
    return Walk(name, repetitions, results[0][0], seconds, fixed, cpu / runs, client / runs)


def wait_until_answers(port: int, oid: str, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["snmpgetnext", "-v2c", "-c", COMMUNITY, "-m", "", "-t", "0.5", "-r", "0", f"127.0.0.1:{port}", oid],
            capture_output=True,
            check=False,
        )
        if result.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"snmp_walk: {what} on 127.0.0.1:{port} did not answer within 60 s")


# --- the three agents -----------------------------------------------------------------


def start_lvsguard(real_servers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--lvsguard-agent", str(port), str(real_servers)])
    wait_until_answers(port, ".1.3.6.1.2.1.1", "lvsguard agent")
    return proc, port


def run_lvsguard_agent(port: int, real_servers: int) -> None:
    """The agent alone in its process (so that its CPU time can be read like the others')."""
    table = make_table(real_servers)
    settings = build_settings(  # answers as large as snmpd's, so -Cr means the same to both agents
        listen=f"127.0.0.1:{port}", communities=(COMMUNITY,), max_age=3600.0, max_response_size=65000
    )

    async def serve() -> None:
        agent = SnmpAgent(settings, lambda: Snapshot(table))
        await agent.start()
        await asyncio.Event().wait()

    asyncio.run(serve())


def start_snmpd(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = workdir / "bench-snmpd.conf"  # not snmpd.conf: that name is snmpd's own persistent file
    conf.write_text(f"rocommunity {COMMUNITY} 127.0.0.1\n")
    (workdir / "persistent").mkdir()
    proc = subprocess.Popen(
        ["snmpd", "-f", "-Lo", "-C", "-c", str(conf), "-p", str(workdir / "snmpd.pid"), f"udp:127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SNMP_PERSISTENT_DIR": str(workdir / "persistent"), "MIBS": ""},
    )
    wait_until_answers(port, ".1.3.6.1.2.1.1", "snmpd")
    return proc, port


def start_pysnmp(cells: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--pysnmp-responder", str(port), str(cells)])
    wait_until_answers(port, ".".join(map(str, PYSNMP_BASE)), "stock pysnmp responder")
    return proc, port


def run_pysnmp_responder(port: int, cells: int) -> None:
    """A stock pysnmp 7 responder: MibScalar columns, one MibScalarInstance per cell."""
    from pysnmp.carrier.asyncio.dgram import udp
    from pysnmp.entity import config, engine
    from pysnmp.entity.rfc3413 import cmdrsp, context
    from pysnmp.proto.api import v2c

    snmp_engine = engine.SnmpEngine()
    config.add_transport(snmp_engine, udp.DOMAIN_NAME, udp.UdpTransport().open_server_mode(("127.0.0.1", port)))
    config.add_v1_system(snmp_engine, "bench-area", COMMUNITY)
    config.add_vacm_user(snmp_engine, 2, "bench-area", "noAuthNoPriv", (1, 3, 6))
    snmp_context = context.SnmpContext(snmp_engine)
    builder = snmp_context.get_mib_instrum().get_mib_builder()
    (MibScalar, MibScalarInstance) = builder.import_symbols("SNMPv2-SMI", "MibScalar", "MibScalarInstance")
    rows = max(cells // RS_COLUMNS, 1)
    symbols = {}
    for col in range(1, RS_COLUMNS + 1):
        column_oid = PYSNMP_BASE + (col,)
        symbols[f"col{col}"] = MibScalar(column_oid, v2c.Counter64()).setMaxAccess("read-only")
        for row in range(1, rows + 1):
            symbols[f"cell{col}x{row}"] = MibScalarInstance(column_oid, (row,), v2c.Counter64(10**12 + row))
    builder.export_symbols("__BENCH-MIB", **symbols)
    cmdrsp.GetCommandResponder(snmp_engine, snmp_context)
    cmdrsp.NextCommandResponder(snmp_engine, snmp_context)
    cmdrsp.BulkCommandResponder(snmp_engine, snmp_context)
    snmp_engine.transport_dispatcher.job_started(1)
    snmp_engine.open_dispatcher()


# --- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-servers", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--repetitions", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--pysnmp-responder", nargs=2, type=int, metavar=("PORT", "CELLS"), help=argparse.SUPPRESS)
    parser.add_argument("--lvsguard-agent", nargs=2, type=int, metavar=("PORT", "REAL_SERVERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pysnmp_responder:
        run_pysnmp_responder(*args.pysnmp_responder)
        return
    if args.lvsguard_agent:
        run_lvsguard_agent(*args.lvsguard_agent)
        return
    for tool in ("snmpbulkwalk", "snmpd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"snmp_walk: {tool} not found (Debian packages snmp, snmpd)")

    rs_table = ".".join(map(str, layout.DEFAULT_BASE + layout.RS_ENTRY[:-1]))
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_port = start_lvsguard(args.real_servers)
        snmpd, snmpd_port = start_snmpd(Path(tmp))
        pysnmp_proc, pysnmp_port = start_pysnmp(args.real_servers * RS_COLUMNS)
        try:
            walks = []
            for reps in args.repetitions:
                walks.append(measure("lvsguard lvsgRsTable", ours, ours_port, rs_table, reps, args.runs))
                for name, oid in SNMPD_TABLES:
                    walks.append(measure(name, snmpd, snmpd_port, oid, reps, args.runs))
                pysnmp_oid = ".".join(map(str, PYSNMP_BASE))
                walks.append(measure("pysnmp stock", pysnmp_proc, pysnmp_port, pysnmp_oid, reps, args.runs))
        finally:
            for proc in (ours, snmpd, pysnmp_proc):
                proc.terminate()
                proc.wait(10)
    print(
        f"bulk walk with snmpbulkwalk -v2c, {args.runs} runs each, median; lvsguard: {args.real_servers} real servers"
    )
    header = (
        f"{'agent':22} {'-Cr':>4} {'varbinds':>9} {'walk ms':>8} {'ms/1000':>8} {'net/1000':>9}"
        f" {'client cpu':>10} {'agent cpu':>9}"
    )
    print(header + "  x best snmpd (net, cpu)")
    for reps in args.repetitions:
        group = [w for w in walks if w.repetitions == reps]
        snmpd = [w for w in group if w.agent.startswith("snmpd")]
        best_net = min(w.net_ms_per_1000 for w in snmpd)
        best_cpu = min(w.cpu_ms_per_1000 for w in snmpd)
        for w in group:
            print(
                f"{w.agent:22} {reps:>4} {w.varbinds:>9} {w.seconds * 1000:>8.1f} {w.ms_per_1000:>8.2f}"
                f" {w.net_ms_per_1000:>9.2f} {w.client_ms_per_1000:>10.2f} {w.cpu_ms_per_1000:>9.2f}"
                f"  {w.net_ms_per_1000 / best_net:5.2f} {w.cpu_ms_per_1000 / best_cpu:5.2f}"
            )
    print(
        "per 1000 varbinds, ms: ms/1000 the whole walk; net/1000 minus the client's fixed cost; client cpu and\n"
        "agent cpu: CPU time of snmpbulkwalk and of the agent process. x best snmpd: ratios to the snmpd table\n"
        "with the lowest figure"
    )


if __name__ == "__main__":
    main()
