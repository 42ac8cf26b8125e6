"""The console's keys of the ``actuator`` section: exporter_url, exporter_timeout, session_secret_file.

Checked through the config loader, so each problem is reported at its file, line and column.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lvsguard import config
from lvsguard.errors import ConfigError


def load(section: str) -> config.Config:
    return config.loads("actuator:\n" + section, "a.yaml")


def test_defaults_read_no_exporter_and_sign_with_a_random_key() -> None:
    settings = load("  dry_run: false\n").actuator
    assert settings is not None
    assert (settings.exporter_url, settings.exporter_timeout, settings.session_secret, settings.secure_cookie) == (
        "",
        2.0,
        b"",
        False,
    )
    assert load("  secure_cookie: true\n").actuator.secure_cookie is True  # type: ignore[union-attr]


def test_keys_are_read(tmp_path: Path) -> None:
    secret = tmp_path / "session.key"
    secret.write_bytes(b"  " + b"s" * 44 + b"\n")
    secret.chmod(0o600)  # a session key others can read is refused
    settings = load(
        f"  exporter_url: http://127.0.0.1:9910/metrics\n  exporter_timeout: 500ms\n  session_secret_file: {secret}\n"
    ).actuator
    assert settings is not None
    assert (settings.exporter_url, settings.exporter_timeout, settings.session_secret) == (
        "http://127.0.0.1:9910/metrics",
        0.5,
        b"s" * 44,
    )
    assert "sss" not in repr(settings)  # the secret stays out of every log line that prints the settings


@pytest.mark.parametrize(
    "section, expected",
    [
        ("  exporter_url: 127.0.0.1:9910\n", "a.yaml:2:17: actuator.exporter_url: must be an http:// or https:// URL"),
        ("  exporter_url: ftp://x/metrics\n", "a.yaml:2:17: actuator.exporter_url: must be an http:// or https:// URL"),
        (
            "  exporter_timeout: 0\n",
            "a.yaml:2:21: actuator.exporter_timeout: must be more than 0 and at most 60 seconds",
        ),
        ("  exporter_timeout: soon\n", "a.yaml:2:21: actuator.exporter_timeout: must be a duration"),
        (
            "  session_secret_file: /nonexistent/session.key\n",
            "a.yaml:2:24: actuator.session_secret_file: /nonexistent/session.key: cannot read the session secret: No such file or directory",
        ),
        (
            "  session_secret_file: 12\n",
            "a.yaml:2:24: actuator.session_secret_file: must be a string, got an integer '12'",
        ),
        ("  session_secret: abc\n", "a.yaml:2:3: actuator.session_secret: unknown key"),
    ],
    ids=[
        "url-without-scheme",
        "url-ftp",
        "timeout-zero",
        "timeout-words",
        "secret-missing",
        "secret-not-a-path",
        "secret-inline",
    ],
)
def test_problems_name_file_line_column_and_key(section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(section)
    assert str(info.value).startswith(expected), str(info.value)


def test_a_short_session_secret_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "session.key"
    secret.write_text("too-short\n")
    secret.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load(f"  session_secret_file: {secret}\n")
    assert str(info.value).startswith(
        f"a.yaml:2:24: actuator.session_secret_file: {secret}: the session secret must be at least 32 bytes, got 9"
    )
