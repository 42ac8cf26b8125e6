"""The actuator's ``role_file``: what each content keepalived's notify FIFO or script can leave reads as."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvsguard.keepalived import read_role_file


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"MASTER\n", "master"),
        (b"BACKUP\n", "backup"),
        (b"FAULT\n", "fault"),
        (b"STOP\n", "stop"),
        (b"master", "master"),
        (b'INSTANCE "VI_1" BACKUP 100\n', "backup"),
        # A master that hears a lower-priority advert (a split brain healing) stays master:
        # keepalived 2.2 writes this to its notify FIFO (seen in the lab after a director's reboot).
        (b"MASTER_RX_LOWER_PRI\n", "master"),
        (b'INSTANCE "VI_1" MASTER_RX_LOWER_PRI 150\n', "master"),
        (b"", "unknown"),
        (b"\n", "unknown"),
        (b"DELETED\n", "unknown"),
        (b'GROUP "G1" MASTER\n', "unknown"),
        (b"\xff\xfe MASTER\n", "unknown"),
    ],
)
def test_what_the_file_says(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "state"
    path.write_bytes(content)
    assert read_role_file(str(path)) == expected


def test_a_missing_file_is_unknown(tmp_path: Path) -> None:
    assert read_role_file(str(tmp_path / "absent")) == "unknown"


def test_a_directory_is_unknown(tmp_path: Path) -> None:
    assert read_role_file(str(tmp_path)) == "unknown"
