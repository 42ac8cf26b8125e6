"""``lvsguard agent``: the agent-check answerer that runs on a real server.

The director's ``agent`` check connects; the agent writes one line and
closes (HAProxy's agent-check protocol):

- ``maint`` while the maintenance file exists;
- ``drain`` while the drain file exists (``lvsguard agent --drain`` is just
  ``touch`` of that file);
- otherwise ``up NN%``, the share of the configured weight this server should
  carry, from its load: ``loadavg`` (1 - load1 / CPUs), ``cpu`` (idle share of
  /proc/stat between two answers) or ``command`` (the first line the command
  prints: a number, or a whole reply such as ``down`` or ``50%``).

Pure Python, no extra library. Where each load source comes from:

- ``loadavg``: ``os.getloadavg()`` (Linux, FreeBSD, macOS); Windows has none;
- ``cpu``: ``/proc/stat`` (Linux), ``sysctl -n kern.cp_time`` (FreeBSD, where
  /proc is usually not mounted), ``GetSystemTimes`` through ctypes (Windows);
- ``command``: anywhere.

A source the platform lacks is found at start and refused with an error that
names the ones that work there; a source that fails later (a read error, a
sysctl that stops answering) makes the agent answer a bare ``up``: the server
stays in rotation with the weight it has, and the failure is logged once.
The director damps the weights it derives (``probes``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lvsguard.errors import AgentError
from lvsguard.logs import event

log = logging.getLogger(__name__)

LOAD_SOURCES = ("loadavg", "cpu", "command")
COMMAND_TIMEOUT = 2.0
MIN_PERCENT = 1  # an up server never reports 0% (that is drain's job)


@dataclass(frozen=True, slots=True)
class AgentOptions:
    load: str = "loadavg"
    command: tuple[str, ...] = ()
    maint_file: str = ""
    drain_file: str = ""


def percent_from_loadavg(load1: float, cpus: int) -> int:
    """100% idle to MIN_PERCENT when the run queue is as long as the CPU count or longer."""
    return max(MIN_PERCENT, min(100, round(100 * (1 - load1 / max(cpus, 1)))))


def read_cpu_times(path: str = "/proc/stat") -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat's first line (Linux)."""
    with open(path, encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields)


def parse_cp_time(text: str) -> tuple[int, int]:
    """(idle, total) ticks from FreeBSD's ``kern.cp_time``: user nice sys intr idle."""
    fields = [int(x) for x in text.split()]
    if len(fields) != 5:
        raise ValueError(f"kern.cp_time: expected 5 numbers, got {text.strip()[:60]!r}")
    return fields[4], sum(fields)


def read_cp_time() -> tuple[int, int]:
    """(idle, total) ticks from ``sysctl -n kern.cp_time`` (FreeBSD)."""
    try:
        done = subprocess.run(
            ["sysctl", "-n", "kern.cp_time"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise OSError("sysctl kern.cp_time did not answer") from None
    if done.returncode != 0:
        raise OSError(f"sysctl kern.cp_time: exit {done.returncode}")
    return parse_cp_time(done.stdout)


def read_system_times() -> tuple[int, int]:
    """(idle, total) 100 ns units from Windows' ``GetSystemTimes`` (kernel time includes idle)."""
    import ctypes

    idle, kernel, user = ctypes.c_ulonglong(), ctypes.c_ulonglong(), ctypes.c_ulonglong()
    windll = getattr(ctypes, "windll", None)
    if windll is None or not windll.kernel32.GetSystemTimes(
        ctypes.byref(idle), ctypes.byref(kernel), ctypes.byref(user)
    ):
        raise OSError("GetSystemTimes failed")
    return idle.value, kernel.value + user.value


def cpu_time_readers(
    platform: str = sys.platform, proc_stat: str = "/proc/stat"
) -> list[tuple[str, Callable[[], tuple[int, int]]]]:
    """The CPU time sources worth trying on ``platform``, best first."""
    readers: list[tuple[str, Callable[[], tuple[int, int]]]] = [(proc_stat, lambda: read_cpu_times(proc_stat))]
    if platform.startswith("freebsd"):
        readers.append(("sysctl kern.cp_time", read_cp_time))
    if platform == "win32":
        readers.append(("GetSystemTimes", read_system_times))
    return readers


def first_working(
    readers: list[tuple[str, Callable[[], tuple[int, int]]]],
) -> tuple[str, Callable[[], tuple[int, int]]] | None:
    """The first reader that answers now, or None when none does."""
    for name, read in readers:
        try:
            read()
        except (OSError, ValueError, IndexError):
            continue
        return name, read
    return None


def system_loadavg() -> Callable[[], float] | None:
    """``os.getloadavg``'s 1-minute value, or None where the platform has none (Windows)."""
    getloadavg = getattr(os, "getloadavg", None)
    if getloadavg is None:
        return None
    try:
        getloadavg()
    except OSError:
        return None
    return lambda: getloadavg()[0]


class CPUIdle:
    """Idle share of the CPUs since the previous call (the first call: since boot)."""

    def __init__(self, read: Callable[[], tuple[int, int]] = read_cpu_times):
        self._read = read
        self._last = (0, 0)

    def percent(self) -> int:
        idle, total = self._read()
        d_idle, d_total = idle - self._last[0], total - self._last[1]
        self._last = (idle, total)
        return max(MIN_PERCENT, min(100, round(100 * d_idle / d_total))) if d_total > 0 else 100


def command_reply(argv: tuple[str, ...]) -> str:
    """The reply from a command's first output line: a bare number becomes ``up N%``."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"down #command failed: {exc}"
    line = (done.stdout.strip().splitlines() or [""])[0].strip()
    if done.returncode != 0 or not line:
        return f"down #command exit {done.returncode}"
    try:
        return f"up {max(0, min(100, round(float(line.rstrip('%')))))}%"
    except ValueError:
        return line


class Agent:
    """Computes the reply line for each connection.

    ``loadavg`` and ``cpu_times`` default to what this platform has
    (``system_loadavg()``, the first working of ``cpu_time_readers()``); pass
    None-returning stand-ins to see how the agent behaves where they are absent.
    """

    def __init__(
        self,
        options: AgentOptions,
        *,
        loadavg: Callable[[], float] | None = None,
        cpu_times: Callable[[], tuple[int, int]] | None = None,
        cpus: int | None = None,
        platform: str = sys.platform,
        proc_stat: str = "/proc/stat",
    ):
        if options.load not in LOAD_SOURCES:
            raise AgentError(f"unknown load source {options.load!r} (one of {', '.join(LOAD_SOURCES)})")
        if options.load == "command" and not options.command:
            raise AgentError("load source 'command' needs a command")
        self.options = options
        self._cpus = cpus or os.cpu_count() or 1
        self._loadavg: Callable[[], float] | None = None
        self._cpu: CPUIdle | None = None
        self._failing = ""
        if options.load == "loadavg":
            self._loadavg = loadavg if loadavg is not None else system_loadavg()
            if self._loadavg is None:
                raise AgentError(
                    f"load source 'loadavg' is not available on {platform} (no os.getloadavg): use --load cpu or --load command"
                )
        elif options.load == "cpu":
            if cpu_times is None:
                found = first_working(cpu_time_readers(platform, proc_stat))
                if found is None:
                    tried = ", ".join(name for name, _ in cpu_time_readers(platform, proc_stat))
                    raise AgentError(
                        f"load source 'cpu' is not available on {platform} (tried {tried}): use --load loadavg or --load command"
                    )
                cpu_times = found[1]
            self._cpu = CPUIdle(cpu_times)

    def reply(self) -> str:
        o = self.options
        if o.maint_file and Path(o.maint_file).exists():
            return "maint"
        if o.drain_file and Path(o.drain_file).exists():
            return "drain"
        if o.load == "command":
            return command_reply(o.command)
        try:
            percent = self._percent()
        except (OSError, ValueError, IndexError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if reason != self._failing:
                event(log, logging.WARNING, "agent_load_unreadable", load=o.load, reason=reason)
            self._failing = reason
            return "up"  # no load figure: stay in rotation with the weight the director already has
        if self._failing:
            event(log, logging.INFO, "agent_load_readable", load=o.load)
            self._failing = ""
        return f"up {percent}%"

    def _percent(self) -> int:
        if self._cpu is not None:
            return self._cpu.percent()
        if self._loadavg is None:
            raise ValueError("no load source")
        return percent_from_loadavg(self._loadavg(), self._cpus)


async def serve(agent: Agent, host: str, port: int, ready: Callable[[int], None] | None = None) -> None:
    """Answer agent checks on host:port until cancelled; ``ready`` gets the bound port."""
    loop = asyncio.get_running_loop()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await loop.run_in_executor(None, agent.reply) if agent.options.load == "command" else agent.reply()
            writer.write(line.encode() + b"\n")
            await writer.drain()
        except OSError:
            pass  # the director went away: nothing to answer
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(answer, host or None, port)
    except OSError as exc:
        raise AgentError(f"cannot listen on {host or '*'}:{port}: {exc.strerror}") from None
    bound = server.sockets[0].getsockname()[1]
    event(log, logging.INFO, "agent_started", listen=f"{host or '*'}:{bound}", load=agent.options.load)
    if ready is not None:
        ready(bound)
    async with server:
        await server.serve_forever()


def request_drain(drain_file: str, on: bool) -> None:
    """``--drain`` / ``--undrain``: create or remove the drain file."""
    path = Path(drain_file)
    try:
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise AgentError(f"{drain_file}: {exc.strerror}") from None


def parse_listen(listen: str) -> tuple[str, int]:
    """``:5555``, ``0.0.0.0:5555``, ``[::]:5555`` -> (host, port); "" host = every address."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise AgentError(f"--listen {listen!r}: expected HOST:PORT, [IPv6]:PORT or :PORT")
    return host.strip("[]"), int(port)


def run(listen: str, options: AgentOptions, *, drain: bool | None = None) -> int:
    """``lvsguard agent``: with ``drain`` True/False only set or clear the drain request; else serve until interrupted."""
    if drain is not None:
        if not options.drain_file:
            raise AgentError("--drain and --undrain need --drain-file (the file the serving agent watches)")
        request_drain(options.drain_file, drain)
        return 0
    host, port = parse_listen(listen)
    agent = Agent(options)
    try:
        asyncio.run(serve(agent, host, port))
    except KeyboardInterrupt:
        pass
    return 0
