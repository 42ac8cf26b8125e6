"""``lvsguard keepalived snippet``: keepalived lines that match the config, and that keepalived accepts.

Debian's keepalived (``keepalived --config-test``) is the judge of the syntax;
without it the tests that need it skip on a development box and fail under CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvsguard import config, keepalived
from lvsguard.cli import main
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
director:
  keepalived_fifo: /run/lvsguard/exporter.fifo
services:
  - {name: web, service: "TCP 192.0.2.10:80"}
  - {name: web-tls, service: "TCP 192.0.2.10:443"}
  - {name: dns, service: "UDP 192.0.2.20:53"}
  - {name: web6, service: "TCP [2001:db8::10]:80"}
  - {name: marked, service: FWM 7}
actuator:
  failover_track_file: /run/lvsguard/failover
  role_file: /run/keepalived/state
"""


def config_test(text: str, tmp_path: Path) -> tuple[int, str]:
    """``keepalived --config-test`` of ``text``: (exit status, what it logged)."""
    binary = shutil.which("keepalived") or ("/usr/sbin/keepalived" if os.path.exists("/usr/sbin/keepalived") else None)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("keepalived is not installed (apt-get install keepalived)")
        pytest.skip("keepalived is not installed (apt-get install keepalived)")
    conf, log = tmp_path / "keepalived.conf", tmp_path / "config-test.log"
    conf.write_text(text)
    done = subprocess.run([binary, f"--config-test={log}", "-f", str(conf)], capture_output=True, text=True, timeout=60)
    return done.returncode, (log.read_text() if log.exists() else "") + done.stderr


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    path = tmp_path / "lvsguard.yaml"
    path.write_text(CONFIG)
    return config.load(path)


def test_the_snippet_says_what_lvsguard_reads_and_writes(cfg: config.Config) -> None:
    text = keepalived.snippet(cfg, keepalived.SnippetOptions(interface="bond0", priority=150))
    assert "    vrrp_notify_fifo /run/lvsguard/exporter.fifo\n" in text
    assert "    lvs_sync_daemon bond0 VI_1 id 51\n" in text
    assert re.search(r"track_file lvsguard_failover \{\n    file /run/lvsguard/failover\n    weight 0\n\}", text)
    assert re.search(r"    track_file \{\n        lvsguard_failover\n    \}", text)
    assert "    priority 150\n" in text
    assert "    notify_fifo /run/keepalived/lvsguard-role.fifo\n" in text
    follow = "/opt/lvsguard/bin/lvsguard keepalived follow --role-file /run/keepalived/state --instance VI_1"
    assert f'    notify_fifo_script "{follow}"\n' in text
    v4 = re.search(r"    virtual_ipaddress \{\n(.*?)    \}", text, re.S)
    v6 = re.search(r"    virtual_ipaddress_excluded \{\n(.*?)    \}", text, re.S)
    assert v4 and v4.group(1).split("\n")[:-1] == ["        192.0.2.10/32 dev bond0", "        192.0.2.20/32 dev bond0"]
    assert v6 and v6.group(1) == "        2001:db8::10/128 dev bond0\n"


def test_keepalived_accepts_the_snippet(cfg: config.Config, tmp_path: Path) -> None:
    status, log = config_test(keepalived.snippet(cfg), tmp_path)
    assert status == 0, log


def test_keepalived_accepts_the_snippet_of_no_config_and_vips_given(tmp_path: Path) -> None:
    options = keepalived.SnippetOptions(extra_vips=("198.51.100.1/24", "2001:db8::10"))
    text = keepalived.snippet(config.Config(), options)
    assert "track_file lvsguard_failover" not in text and "    vrrp_notify_fifo" not in text
    assert "    notify_fifo" not in text
    assert "        198.51.100.1/24 dev eth0\n" in text and "        2001:db8::10/128 dev eth0\n" in text
    status, log = config_test(text, tmp_path)
    assert status == 0, log


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [],
            "lvsguard: the defaults (no config file): no service with an address, so no VIP to move: give them with --vip ADDRESS",
        ),
        (["--vip", "director1"], "lvsguard: --vip 'director1': not an IP address (ADDRESS or ADDRESS/PREFIX)"),
    ],
    ids=["no-vip", "not-an-address"],
)
def test_no_vip_is_a_clear_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keepalived", "snippet", *argv]) == 1
    assert capsys.readouterr().err.strip() == message


def test_the_config_test_can_fail(cfg: config.Config, tmp_path: Path) -> None:
    status, log = config_test(keepalived.snippet(cfg).replace("    weight 0\n", "    wieght 0\n"), tmp_path)
    assert status != 0 and "wieght" in log


def test_the_cli_prints_the_snippet(cfg: config.Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keepalived", "snippet", "--config", cfg.file, "--virtual-router-id", "7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# keepalived lines for the lvsguard config {cfg.file}\n")
    assert "    virtual_router_id 7\n" in out and "    lvs_sync_daemon eth0 VI_1 id 7\n" in out


def test_a_router_id_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["keepalived", "snippet", "--virtual-router-id", "300"])
    assert info.value.code == 2 and "--virtual-router-id" in capsys.readouterr().err


def track_file_weights(text: str) -> list[str]:
    """The weight of every ``track_file NAME { ... }`` definition in ``text``."""
    return re.findall(r"track_file\s+\w+\s*\{[^}]*?\bweight\s+(-?\d+)", text)


@pytest.mark.parametrize(
    "path",
    [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "lvsguard" / "actuator" / "failover.py"],
    ids=lambda p: p.name,
)
def test_every_doc_gives_the_track_file_the_snippets_weight(path: Path) -> None:
    """One truth: weight 0 (FAULT), never a negative weight that a nopreempt backup would ignore."""
    weights = track_file_weights(path.read_text())
    assert set(weights) <= {str(keepalived.TRACK_FILE_WEIGHT)}, f"{path.name}: track_file weights {weights}"


def test_a_negative_track_file_weight_is_found() -> None:
    assert track_file_weights("track_file lvsguard_failover {\n    file /run/x\n    weight -100\n}") == ["-100"]


@pytest.mark.parametrize(
    "line, instance, state",
    [
        ('INSTANCE "VI_1" MASTER 150', "", "MASTER"),
        ('INSTANCE "VI_1" FAULT 150', "VI_1", "FAULT"),
        ('INSTANCE "VI_2" BACKUP 100', "VI_1", ""),
        ('INSTANCE "VI_1" MASTER_RX_LOWER_PRI 150', "", ""),
        ('GROUP "G1" BACKUP', "", ""),
        ("garbage", "", ""),
    ],
    ids=["any-instance", "this-instance", "other-instance", "event-not-state", "group", "garbage"],
)
def test_instance_state(line: str, instance: str, state: str) -> None:
    assert keepalived.instance_state(line + "\n", instance) == state


def test_follow_copies_each_state_in_order(tmp_path: Path) -> None:
    """The follower as keepalived runs it: a process on the FIFO, ended with SIGTERM."""
    fifo, role = tmp_path / "role.fifo", tmp_path / "state"
    os.mkfifo(fifo)
    argv = [sys.executable, "-m", "lvsguard.cli", "keepalived", "follow", "--role-file", str(role), "--instance"]
    proc = subprocess.Popen([*argv, "VI_1", str(fifo)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        with open(fifo, "w") as writer:
            for line in ('INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_2" FAULT 100', 'INSTANCE "VI_1" MASTER 100'):
                writer.write(line + "\n")
                writer.flush()
        wait_for(lambda: role.exists() and role.read_text() == "MASTER\n", "the role file to say MASTER")
        with open(fifo, "w") as writer:  # keepalived restarted: the follower still reads
            writer.write('INSTANCE "VI_1" BACKUP 100\n')
        wait_for(lambda: role.read_text() == "BACKUP\n", "the role file to say BACKUP")
    finally:
        proc.terminate()
        proc.wait(10)


def test_follow_without_the_fifo_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.fifo"
    assert main(["keepalived", "follow", "--role-file", str(tmp_path / "state"), str(missing)]) == 1
    assert capsys.readouterr().err == f"lvsguard: keepalived notify FIFO {missing}: No such file or directory\n"
