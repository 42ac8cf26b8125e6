"""lvsguard agent: replies from load, maintenance and drain files, over a real socket."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from exporter.probes.agent import AgentChecker
from exporter.probes.result import ProbeResult, Target
from lvsguard.agent import Agent, AgentError, AgentOptions, CPUIdle, command_reply, percent_from_loadavg, request_drain, serve


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
    assert err == ["lvsguard: --drain and --undrain need --drain-file (the file the serving agent watches)",
                   "lvsguard: --listen 'nowhere': expected HOST:PORT, [IPv6]:PORT or :PORT"]  # fmt: skip


def test_cli_serves_agent_checks(tmp_path: Path) -> None:
    """``lvsguard agent`` as a process: the director's check reads its reply."""
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lvsguard.cli", "agent", "--listen", f"127.0.0.1:{port}", "--load", "command",
                             "--command", f"{sys.executable} -c 'print(40)'"])  # fmt: skip
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
