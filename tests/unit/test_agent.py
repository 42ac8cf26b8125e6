"""lvsguard agent: replies from load, maintenance and drain files, over a real socket."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from lvsguard.agent import (
    Agent,
    AgentError,
    AgentOptions,
    CPUIdle,
    command_reply,
    percent_from_loadavg,
    request_drain,
    serve,
)
from lvsguard.exporter.probes.agent import AgentChecker
from lvsguard.exporter.probes.result import ProbeResult, Target


def test_percent_from_loadavg() -> None:
    assert [percent_from_loadavg(load, 4) for load in (0.0, 1.0, 2.0, 4.0, 9.0)] == [100, 75, 50, 1, 1]


def test_cpu_idle_between_answers() -> None:
    samples = iter([(100, 200), (150, 300), (150, 400)])
    cpu = CPUIdle(lambda: next(samples))
    assert [cpu.percent(), cpu.percent(), cpu.percent()] == [50, 50, 1]


def test_command_reply() -> None:
    assert command_reply((sys.executable, "-c", "print('42.4')")) == "up 42%"
    assert command_reply((sys.executable, "-c", "print('drain')")) == "drain"
    assert command_reply((sys.executable, "-c", "import sys; sys.exit(3)")).startswith("down #command exit 3")
    assert command_reply(("/nonexistent/load",)).startswith("down #command failed")


def test_files_override_load(tmp_path: Path) -> None:
    maint, drain = tmp_path / "maint", tmp_path / "drain"
    agent = Agent(AgentOptions(maint_file=str(maint), drain_file=str(drain)), loadavg=lambda: 1.0, cpus=2)
    assert agent.reply() == "up 50%"
    request_drain(str(drain), True)
    assert agent.reply() == "drain"
    maint.touch()
    assert agent.reply() == "maint"
    maint.unlink()
    request_drain(str(drain), False)
    assert agent.reply() == "up 50%"


def test_bad_options() -> None:
    with pytest.raises(AgentError, match="unknown load source 'disk'"):
        Agent(AgentOptions(load="disk"))
    with pytest.raises(AgentError, match="needs a command"):
        Agent(AgentOptions(load="command"))


def test_the_director_check_reads_the_agent(tmp_path: Path) -> None:
    maint = tmp_path / "maint"
    agent = Agent(AgentOptions(maint_file=str(maint)), loadavg=lambda: 3.0, cpus=4)

    async def body() -> tuple[ProbeResult, ProbeResult]:
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(agent, "127.0.0.1", 0, ready=bound.set_result))
        port = await bound
        up = await AgentChecker().check(Target("127.0.0.1", port))
        maint.touch()
        down = await AgentChecker().check(Target("127.0.0.1", port))
        task.cancel()
        return up, down

    up, down = asyncio.run(body())
    assert (up.ok, up.weight_percent) == (True, 25.0)
    assert (down.ok, down.error) == (False, "AgentMaint")


def test_port_in_use_is_a_clear_error() -> None:
    async def body() -> None:
        holder = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = holder.sockets[0].getsockname()[1]
        try:
            await serve(Agent(AgentOptions(), loadavg=lambda: 0.0), "127.0.0.1", port)
        finally:
            holder.close()

    with pytest.raises(AgentError, match="cannot listen on 127.0.0.1:"):
        asyncio.run(body())


def test_cli_drain_and_undrain(tmp_path: Path) -> None:
    from lvsguard.cli import main

    drain = tmp_path / "drain"
    assert main(["agent", "--drain-file", str(drain), "--drain"]) == 0 and drain.exists()
    assert main(["agent", "--drain-file", str(drain), "--undrain"]) == 0 and not drain.exists()


def test_cli_errors_are_plain(capsys: pytest.CaptureFixture[str]) -> None:
    from lvsguard.cli import main

    assert main(["agent", "--drain"]) == 1
    assert main(["agent", "--listen", "nowhere"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "lvsguard: --drain and --undrain need --drain-file (the file the serving agent watches)",
        "lvsguard: --listen 'nowhere': expected HOST:PORT, [IPv6]:PORT or :PORT",
    ]


def test_cli_serves_agent_checks(tmp_path: Path) -> None:
    """``lvsguard agent`` as a process: the director's check reads its reply."""
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lvsguard.cli",
            "agent",
            "--listen",
            f"127.0.0.1:{port}",
            "--load",
            "command",
            "--command",
            f"{sys.executable} -c 'print(40)'",
        ]
    )
    try:
        result = None
        for _ in range(100):
            result = asyncio.run(AgentChecker().check(Target("127.0.0.1", port)))
            if result.ok:
                break
            time.sleep(0.05)
        assert result is not None and (result.ok, result.weight_percent) == (True, 40.0), result
    finally:
        proc.terminate()
        proc.wait(5)


# --- platforms without a source: FreeBSD (no /proc), Windows (no getloadavg, no /proc) ---------


def test_freebsd_cp_time_parsed() -> None:
    from lvsguard.agent import parse_cp_time

    assert parse_cp_time("10 0 30 0 60\n") == (60, 100)
    with pytest.raises(ValueError, match="kern.cp_time: expected 5 numbers"):
        parse_cp_time("10 20")


def test_cpu_sources_per_platform(tmp_path: Path) -> None:
    from lvsguard.agent import cpu_time_readers

    missing = str(tmp_path / "no-proc" / "stat")
    assert [n for n, _ in cpu_time_readers("linux", missing)] == [missing]
    assert [n for n, _ in cpu_time_readers("freebsd14", missing)] == [missing, "sysctl kern.cp_time"]
    assert [n for n, _ in cpu_time_readers("win32", missing)] == [missing, "GetSystemTimes"]


def test_cpu_source_without_proc_is_refused_with_the_alternatives(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-proc" / "stat")
    with pytest.raises(
        AgentError,
        match=r"load source 'cpu' is not available on linux \(tried .*no-proc/stat\): use --load loadavg or --load command",
    ):
        Agent(AgentOptions(load="cpu"), platform="linux", proc_stat=missing)


def test_cpu_source_on_windows_without_getsystemtimes_is_refused(tmp_path: Path) -> None:
    """On Linux ctypes has no windll: the Windows reader fails as it would where the call fails."""
    missing = str(tmp_path / "no-proc" / "stat")
    with pytest.raises(AgentError, match=r"not available on win32 \(tried .*, GetSystemTimes\)"):
        Agent(AgentOptions(load="cpu"), platform="win32", proc_stat=missing)


def test_cpu_source_falls_back_past_a_missing_proc(tmp_path: Path) -> None:
    from lvsguard.agent import first_working, read_cpu_times

    missing = str(tmp_path / "no-proc" / "stat")
    samples = iter([(0, 0), (50, 100), (80, 200)])
    found = first_working([(missing, lambda: read_cpu_times(missing)), ("sysctl", lambda: next(samples))])
    assert found is not None and found[0] == "sysctl"
    agent = Agent(AgentOptions(load="cpu"), cpu_times=found[1])
    assert [agent.reply(), agent.reply()] == ["up 50%", "up 30%"]


def test_loadavg_missing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows: os has no getloadavg."""
    from lvsguard.agent import system_loadavg

    monkeypatch.delattr("os.getloadavg")
    assert system_loadavg() is None
    with pytest.raises(
        AgentError,
        match=r"load source 'loadavg' is not available on win32 \(no os.getloadavg\): use --load cpu or --load command",
    ):
        Agent(AgentOptions(load="loadavg"), platform="win32")


def test_loadavg_unobtainable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Platforms where getloadavg exists but raises OSError ("Load averages are unobtainable")."""

    def unobtainable() -> tuple[float, float, float]:
        raise OSError("Load averages are unobtainable")

    monkeypatch.setattr("os.getloadavg", unobtainable)
    with pytest.raises(AgentError, match="'loadavg' is not available"):
        Agent(AgentOptions(load="loadavg"))


def test_command_source_needs_no_platform_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr("os.getloadavg")
    agent = Agent(
        AgentOptions(load="command", command=(sys.executable, "-c", "print(70)")),
        platform="win32",
        proc_stat=str(tmp_path / "none"),
    )
    assert agent.reply() == "up 70%"


def test_a_source_failing_later_answers_bare_up(caplog: pytest.LogCaptureFixture) -> None:
    """A read error after start keeps the server in rotation at its weight, logged once, and recovers."""
    state = {"fail": True}

    def cp_time() -> tuple[int, int]:
        if state["fail"]:
            raise OSError("sysctl kern.cp_time: exit 1")
        return (50, 100)

    agent = Agent(AgentOptions(load="cpu"), cpu_times=cp_time)
    with caplog.at_level("INFO", logger="lvsguard.agent"):
        assert [agent.reply(), agent.reply()] == ["up", "up"]
        state["fail"] = False
        assert agent.reply() == "up 50%"
    events = [r.getMessage() for r in caplog.records]
    assert sum("agent_load_unreadable" in m for m in events) == 1
    assert sum("agent_load_readable" in m for m in events) == 1


def test_bare_up_keeps_the_directors_weight() -> None:
    from lvsguard.exporter.probes.agent import parse_reply

    reply = parse_reply("up")
    assert (reply.state, reply.percent) == ("up", None)


def test_windows_system_times_fail_cleanly_off_windows() -> None:
    from lvsguard.agent import read_system_times

    if sys.platform == "win32":
        idle, total = read_system_times()
        assert 0 <= idle <= total
    else:
        with pytest.raises(OSError, match="GetSystemTimes failed"):
            read_system_times()
