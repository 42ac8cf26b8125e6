"""lab.actuator.serving: a WSGI app served over waitress in a thread stops for good, leaving no thread or file behind."""

from __future__ import annotations

import os
import threading
import urllib.request

import pytest

from lab.actuator import serving


def app(environ: dict, start_response):  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_stopping_right_after_answers_leaves_no_thread_socket_or_pipe() -> None:
    """Stopping races the workers' trigger pulls after their last response: each stop must leave nothing behind."""
    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = open_fds()
    for _ in range(20):
        with serving(app, threads=2) as url:
            for _ in range(3):
                with urllib.request.urlopen(url + "/", timeout=5) as reply:
                    assert reply.read() == b"ok"
    leftover = [t.name for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
    assert leftover == []
    assert open_fds() - fds_before == set()


def test_a_stopped_server_refuses_connections() -> None:
    with serving(app) as url:
        pass
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/", timeout=2)
