"""Secret files (the actuator's token file, the console's session key, the probes' token file) must be private.

A file others can read is refused at load with its mode and the fix, not
accepted silently: 0600, or 0640 when root owns it and the group is the
service's (docs/install.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from lvsguard.actuator.auth import TokenFileError, load_tokens
from lvsguard.actuator.settings import from_mapping
from lvsguard.config import PublishConfig
from lvsguard.errors import ConfigError
from lvsguard.exporter.probes.runner import read_token

TOKENS = "am:c3d4e5f6g7h8i9j0k1\n"
SESSION_KEY = "k" * 44 + "\n"


def secret(tmp_path: Path, name: str, text: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666, 0o602], ids=["0644", "0604", "0666", "others-write"])
def test_a_token_file_others_can_read_or_write_is_refused_with_its_mode(tmp_path: Path, mode: int) -> None:
    path = secret(tmp_path, "tokens", TOKENS, mode)
    with pytest.raises(TokenFileError, match=re.escape(f"{path}: open to others (mode {mode:04o})")) as err:
        load_tokens({}, str(path))
    assert f"chmod 600 {path}" in str(err.value)


def test_a_group_readable_token_file_is_refused_unless_root_owns_it(tmp_path: Path) -> None:
    path = secret(tmp_path, "tokens", TOKENS, 0o640)
    if os.geteuid() == 0:  # the documented root:lvsguard 0640 setup is accepted; another owner is not
        assert load_tokens({}, str(path)) == {"am": "c3d4e5f6g7h8i9j0k1"}
        os.chown(path, 65534, -1)
    with pytest.raises(TokenFileError, match=re.escape(f"{path}: open to its group (mode 0640)")):
        load_tokens({}, str(path))


def test_a_private_token_file_is_read(tmp_path: Path) -> None:
    path = secret(tmp_path, "tokens", TOKENS, 0o600)
    assert load_tokens({}, str(path)) == {"am": "c3d4e5f6g7h8i9j0k1"}


def test_a_session_key_others_can_read_is_a_config_error(tmp_path: Path) -> None:
    path = secret(tmp_path, "session.key", SESSION_KEY, 0o644)
    with pytest.raises(ConfigError, match=re.escape(f"session_secret_file: {path}: open to others (mode 0644)")):
        from_mapping({"session_secret_file": str(path)})
    path.chmod(0o600)
    assert from_mapping({"session_secret_file": str(path)}).session_secret == SESSION_KEY.strip().encode()


def test_the_probes_token_file_others_can_read_is_a_config_error(tmp_path: Path) -> None:
    path = secret(tmp_path, "probes.token", "probes:c3d4e5f6g7h8i9j0k1\n", 0o644)
    with pytest.raises(ConfigError, match=re.escape("open to others (mode 0644)")):
        read_token(PublishConfig(mode="actuator", url="http://127.0.0.1:9911", token_file=str(path)))
    path.chmod(0o600)
    assert read_token(PublishConfig(mode="actuator", url="http://127.0.0.1:9911", token_file=str(path))) == (
        "c3d4e5f6g7h8i9j0k1"
    )
