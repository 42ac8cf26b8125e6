"""``lvsguard doctor`` on the host: the checks that read files, the helpers, the report and its exit status.

The kernel's checks (ip_vs, netlink, capabilities of running servers, the sync
daemon) and every planted fault are in tests/integration/test_doctor_kernel.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lvsguard import config
from lvsguard.doctor import Doctor, Result, exit_status, has_net_admin, lvsguard_command, render, split_listen


def doctor_for(tmp_path: Path, text: str, **kwargs: object) -> Doctor:
    path = tmp_path / "lvsguard.yaml"
    path.write_text(text)
    doctor = Doctor(config_path=str(path), **kwargs)  # type: ignore[arg-type]
    assert doctor.check_config().status in ("ok", "fail")
    return doctor


def test_a_bad_config_fails_with_its_line_and_the_rest_runs_on_the_defaults(tmp_path: Path) -> None:
    doctor = doctor_for(tmp_path, "director:\n  netnss: x\n")
    result = doctor.check_config()
    assert result.status == "fail" and "lvsguard.yaml:2" in result.detail and "netnss" in result.detail
    assert result.fix == f"lvsguard config check {tmp_path / 'lvsguard.yaml'} lists every problem with its line"
    assert doctor.config == config.Config()


def test_the_fifo_and_the_role_file(tmp_path: Path) -> None:
    fifo, role = tmp_path / "notify.fifo", tmp_path / "state"
    doctor = doctor_for(tmp_path, f"director:\n  keepalived_fifo: {fifo}\nactuator:\n  role_file: {role}\n")
    assert doctor.check_keepalived_fifo().status == "fail"
    os.mkfifo(fifo)
    assert doctor.check_keepalived_fifo().status == "ok"
    assert doctor.check_vrrp_state().status == "fail"
    role.write_text('INSTANCE "VI_1" BACKUP 100\n')
    assert doctor.check_vrrp_state() == Result("vrrp state", "ok", f"backup ({role})")


def test_nothing_configured_is_skipped(tmp_path: Path) -> None:
    doctor = doctor_for(tmp_path, "")
    for check in (doctor.check_keepalived_fifo, doctor.check_vrrp_state, doctor.check_sync_daemon, doctor.check_peer):
        assert check().status == "skip"


@pytest.mark.parametrize(
    "mode, status", [(0o600, "ok"), (0o640, "ok"), (0o644, "fail"), (0o604, "fail")], ids=["600", "640", "644", "604"]
)
def test_token_file_modes(tmp_path: Path, mode: int, status: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("am:0123456789abcdef0123\n")
    tokens.chmod(mode)
    doctor = doctor_for(tmp_path, "", token_file=str(tokens))
    if os.geteuid() != 0 and mode == 0o640:
        status = "fail"  # group permissions pass only when root owns the file
    assert doctor.check_tokens().status == status


def test_the_ledger_directory_and_mode(tmp_path: Path) -> None:
    ledger = tmp_path / "lib" / "actuator.db"
    doctor = doctor_for(tmp_path, "", ledger=str(ledger))
    result = doctor.check_ledger()
    assert result.status == "fail" and result.fix.startswith(
        f"install -d -o lvsguard -g lvsguard -m 0750 {ledger.parent}"
    )
    ledger.parent.mkdir(mode=0o750)
    ledger.write_text("")
    ledger.chmod(0o640)
    assert doctor.check_ledger().status == "ok"
    ledger.chmod(0o644)
    assert doctor.check_ledger().detail == f"{ledger} is open to others (mode 0644): holds, jobs and the audit"


def test_a_listen_address_on_loopback_fails(tmp_path: Path) -> None:
    doctor = doctor_for(tmp_path, 'exporter:\n  listen: "[::1]:9910"\n', proc=tmp_path)
    result = doctor.check_exporter_listen()
    assert result.status == "fail" and "[::1]:9910 is loopback only" in result.detail


@pytest.mark.parametrize(
    "listen, expected",
    [
        ("127.0.0.1:9910", ("127.0.0.1", 9910)),
        ("0.0.0.0:9910", ("", 9910)),
        (":9911", ("", 9911)),
        ("[::1]:9910", ("::1", 9910)),
        ("[::]:9910", ("", 9910)),
        ("localhost:9910", ("127.0.0.1", 9910)),
    ],
)
def test_split_listen(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize(
    "argv, command",
    [
        (["/opt/lvsguard/bin/python", "/opt/lvsguard/bin/lvsguard", "exporter", "--config", "x"], "exporter"),
        (["python3", "-m", "lvsguard.cli", "--log-level", "info", "actuator"], "actuator"),
        (["/opt/lvsguard/bin/lvsguard", "doctor"], ""),
        (["vim", "exporter"], ""),
    ],
    ids=["unit-exporter", "module-actuator", "doctor-itself", "not-lvsguard"],
)
def test_lvsguard_command(argv: list[str], command: str) -> None:
    assert lvsguard_command(argv) == command


def test_capabilities_from_proc_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")  # bit 12
    assert has_net_admin(status)
    status.write_text("Name:\tx\nCapEff:\t0000000000200000\n")  # CAP_SYS_ADMIN only
    assert not has_net_admin(status)


def test_the_report_and_the_exit_status() -> None:
    results = [
        Result("ip_vs", "ok", "the ip_vs module is loaded"),
        Result("tokens", "fail", "/etc/lvsguard/tokens: open to others", "chmod 640 /etc/lvsguard/tokens"),
        Result("peer", "skip", "actuator.failover_peer_url is not set"),
    ]
    assert render(results) == (
        "OK    ip_vs   the ip_vs module is loaded\n"
        "FAIL  tokens  /etc/lvsguard/tokens: open to others\n"
        "              fix: chmod 640 /etc/lvsguard/tokens\n"
        "SKIP  peer    actuator.failover_peer_url is not set\n"
        "1 failed, 1 ok, 1 skipped\n"
    )
    assert exit_status(results) == 1
    assert exit_status([r for r in results if r.status != "fail"]) == 0
