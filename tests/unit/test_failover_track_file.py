"""keepalived's track file as the actuator writes and reads it: atomic, world-readable, errors naming the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lvsguard.actuator.failover import TrackFileError, read_track_file, write_track_file


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "failover"
    write_track_file(str(path), True)
    assert path.read_bytes() == b"1\n" and read_track_file(str(path)) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # keepalived may run as another user
    write_track_file(str(path), False)
    assert path.read_bytes() == b"0\n" and read_track_file(str(path)) is False
    assert os.listdir(tmp_path) == ["failover"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", False), (b"0", False), (b" 0 \n", False), (b"1\n", True), (b"-1\n", True), (b"\xff\n", True)],
)
def test_what_the_file_says(tmp_path: Path, content: bytes, expected: bool) -> None:
    path = tmp_path / "failover"
    path.write_bytes(content)
    assert read_track_file(str(path)) is expected


def test_a_missing_file_is_unknown(tmp_path: Path) -> None:
    assert read_track_file(str(tmp_path / "missing")) is None


def test_a_file_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no-such-directory" / "failover"
    with pytest.raises(TrackFileError, match="failover track file .*no-such-directory/failover"):
        write_track_file(str(path), True)
