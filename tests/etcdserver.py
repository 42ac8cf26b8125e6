"""A real etcd (Debian's ``etcd-server``) on the host's loopback, in a temporary directory, for tests.

One member on two free ports (clients, peers), optionally with TLS and client
certificates (tests/tlsfiles.py). ``running_etcd`` yields it once its
``/health`` answers and kills it afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tlsfiles import TLSFiles

ETCD = "/usr/bin/etcd"
READY_TIMEOUT = 30.0


def require_etcd() -> None:
    """Skip without etcd on a developer's machine; fail in CI, where ``make setup`` installs it."""
    if not os.access(ETCD, os.X_OK):
        message = f"needs {ETCD} (Debian package etcd-server; make setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class EtcdServer:
    url: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again, with its data: an outage that ends) and return once it serves."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _wait_ready(self, offset)

    def kill(self) -> None:
        """SIGKILL: an outage (its data stays for ``start``)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 10) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_etcd(directory: Path, *, tls: TLSFiles | None = None) -> Iterator[EtcdServer]:
    """An etcd member on 127.0.0.1 with its data in ``directory``; with ``tls``, https and client certificates."""
    require_etcd()
    client, peer = free_port(), free_port()
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{client}"
    argv = [
        ETCD,
        "--name",
        "test",
        "--data-dir",
        str(directory / "data"),
        "--listen-client-urls",
        url,
        "--advertise-client-urls",
        url,
        "--listen-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-cluster",
        f"test=http://127.0.0.1:{peer}",
        "--logger",
        "zap",
    ]
    if tls:
        argv += [
            "--cert-file",
            str(tls.cert),
            "--key-file",
            str(tls.key),
            "--client-cert-auth",
            "--trusted-ca-file",
            str(tls.ca),
        ]
    server = EtcdServer(url, argv, directory / "etcd.log")
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory / "data", ignore_errors=True)


def _wait_ready(server: EtcdServer, offset: int) -> None:
    """Until this start's log (from ``offset``) says it serves clients."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if server.process is None or server.process.poll() is not None:
            raise RuntimeError(f"etcd exited: {server.log_tail()}")
        with open(server.log, "rb") as f:
            f.seek(offset)
            if b"serving client traffic" in f.read():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"etcd not ready after {READY_TIMEOUT:g} s: {server.log_tail()}")
        time.sleep(0.05)
