"""Real client traffic from the lab's client namespace, counted exactly.

The functions run in the caller's process: they enter the client namespace on
the calling thread just long enough to create and use their sockets, so a test
pays no process start. Each HTTP request and each UDP exchange is a new
connection for IPVS (a new TCP connection, or a new UDP source port), so the
kernel's connection counters must move by exactly what these return.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from lvsguard.ipvs.netns import entered


class TrafficError(RuntimeError):
    """A request through the lab failed; the message names the address and what happened."""


class _HasClient(Protocol):
    @property
    def client(self) -> _Node: ...


class _Node(Protocol):
    @property
    def netns(self) -> str: ...


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _connect(address: str, port: int, timeout: float) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
    except OSError as exc:
        sock.close()
        raise TrafficError(f"connect to {_endpoint(address, port)}: {exc.strerror or exc}") from None
    return sock


def _request(sock: socket.socket, path: str) -> None:
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n".encode())


def _read_until(sock: socket.socket, done: Callable[[bytes], bool] | None, what: str) -> bytes:
    """Read until ``done(data)`` holds (None: until the server closes)."""
    data = b""
    while done is None or not done(data):
        try:
            chunk = sock.recv(65536)
        except OSError as exc:
            raise TrafficError(f"{what}: {exc.strerror or exc} after {len(data)} bytes") from None
        if not chunk:
            break
        data += chunk
    return data


def _real_server_name(response: bytes, what: str) -> str:
    head, sep, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not sep or not status.startswith(b"HTTP/1.0 200"):
        raise TrafficError(f"{what}: unexpected response {response[:80]!r}")
    return body.decode().strip()


def http_get(
    lab: _HasClient, address: str, port: int, n: int, *, path: str = "/", timeout: float = 5.0
) -> Counter[str]:
    """Make ``n`` HTTP requests, one new TCP connection each; count the real servers that answered."""
    seen: Counter[str] = Counter()
    what = f"GET http://{_endpoint(address, port)}{path}"
    with entered(lab.client.netns):
        for _ in range(n):
            with _connect(address, port, timeout) as sock:
                _request(sock, path)
                seen[_real_server_name(_read_until(sock, None, what), what)] += 1
    return seen


def _named(data: bytes) -> bool:
    """A /hold response has arrived up to the newline after the real server's name."""
    _, sep, body = data.partition(b"\r\n\r\n")
    return bool(sep) and b"\n" in body


@contextmanager
def hold_connections(
    lab: _HasClient, address: str, port: int, n: int, *, seconds: float = 300.0, timeout: float = 5.0
) -> Iterator[Counter[str]]:
    """Open ``n`` long-lived HTTP connections (``/hold``) and keep them ESTABLISHED inside the block.

    Yields the count of real servers holding them; the connections close when
    the block ends (or after ``seconds``, when the servers give up).
    """
    socks: list[socket.socket] = []
    held: Counter[str] = Counter()
    what = f"GET http://{_endpoint(address, port)}/hold"
    try:
        with entered(lab.client.netns):
            for _ in range(n):
                sock = _connect(address, port, timeout)
                socks.append(sock)
                _request(sock, f"/hold?seconds={seconds:g}")
                response = _read_until(sock, _named, what)
                if not _named(response):
                    raise TrafficError(f"{what}: closed before the real server named itself: {response[:80]!r}")
                held[_real_server_name(response, what)] += 1
        yield held
    finally:
        for sock in socks:
            sock.close()


def udp_exchange(
    lab: _HasClient, address: str, port: int, n: int, *, payload: bytes = b"lvsguard", timeout: float = 5.0
) -> Counter[str]:
    """Send ``n`` datagrams, each from a new source port, and count the real servers that echoed them."""
    seen: Counter[str] = Counter()
    where = f"UDP {_endpoint(address, port)}"
    with entered(lab.client.netns):
        for i in range(n):
            with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                message = payload + b" %d" % i
                try:
                    sock.sendto(message, (address, port))
                    reply, _ = sock.recvfrom(65536)
                except OSError as exc:
                    raise TrafficError(f"{where}: exchange {i + 1} of {n}: {exc.strerror or exc}") from None
                name, _, echoed = reply.partition(b" ")
                if echoed != message:
                    raise TrafficError(f"{where}: sent {message!r}, the echo was {reply!r}")
                seen[name.decode()] += 1
    return seen
