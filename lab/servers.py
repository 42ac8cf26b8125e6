"""The lab's real servers: one process serves HTTP and a UDP echo in every real-server namespace.

Starting a Python process costs about 0.3 s under User-Mode Linux, so instead of
one server process per namespace this process enters each real server's network
namespace only long enough to create its listening sockets (a socket stays in
the namespace it was created in), then serves all of them from one asyncio loop.

HTTP (any TCP port given): ``GET /`` answers with the real server's name as the
body; ``GET /hold?seconds=N`` sends the headers and the name followed by a
newline at once, then keeps the connection open until the client closes it or N
seconds pass (a long-lived, ESTABLISHED connection for active-connection
counts). UDP: every datagram comes back as ``NAME PAYLOAD``.

Run by lab.topology as ``python -m lab.servers``, before the namespaces exist
(its start-up, about 1 s under UML, overlaps the network set-up): it reads the
spec as one JSON line on stdin, prints ``ready`` once every socket listens, and
exits when its stdin closes (so it never outlives the lab that started it) or
on SIGTERM.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from lvsguard.errors import LvsguardError
from lvsguard.ipvs.netns import entered

BACKLOG = 1024
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request head
MAX_HOLD = 3600.0  # seconds


@dataclass(frozen=True)
class ServerSpec:
    """What to serve: the real servers (name, netns) and the ports each one listens on."""

    servers: tuple[tuple[str, str], ...]  # (name, netns)
    tcp: tuple[int, ...]  # IPv4 TCP ports (HTTP)
    tcp6: tuple[int, ...]  # IPv6 TCP ports (HTTP)
    udp: tuple[int, ...]  # IPv4 UDP ports (echo)

    def to_json(self) -> str:
        return json.dumps({"servers": self.servers, "tcp": self.tcp, "tcp6": self.tcp6, "udp": self.udp})

    @classmethod
    def from_json(cls, text: str) -> ServerSpec:
        data = json.loads(text)
        return cls(
            servers=tuple((str(n), str(ns)) for n, ns in data["servers"]),
            tcp=tuple(int(p) for p in data["tcp"]),
            tcp6=tuple(int(p) for p in data["tcp6"]),
            udp=tuple(int(p) for p in data["udp"]),
        )


class ListenError(OSError):
    """A socket of one real server could not be opened; the message names it."""


def _listener(server: str, family: socket.AddressFamily, kind: socket.SocketKind, port: int) -> socket.socket:
    address = "::" if family == socket.AF_INET6 else "0.0.0.0"
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        where = f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"
        raise ListenError(exc.errno, f"real server {server}: {proto} {where}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def open_sockets(spec: ServerSpec) -> list[tuple[str, socket.socket]]:
    """Create every listening socket inside its real server's namespace: (name, socket)."""
    sockets: list[tuple[str, socket.socket]] = []
    for name, netns in spec.servers:
        with entered(netns):
            sockets += [(name, _listener(name, socket.AF_INET, socket.SOCK_STREAM, p)) for p in spec.tcp]
            sockets += [(name, _listener(name, socket.AF_INET6, socket.SOCK_STREAM, p)) for p in spec.tcp6]
            sockets += [(name, _listener(name, socket.AF_INET, socket.SOCK_DGRAM, p)) for p in spec.udp]
    return sockets


def _response(name: str, body: bytes, *, length: bool) -> bytes:
    head = f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Real-Server: {name}\r\nConnection: close\r\n"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _hold_seconds(query: str) -> float:
    try:
        seconds = float(parse_qs(query).get("seconds", ["60"])[0])
    except ValueError:
        seconds = 60.0
    return min(max(seconds, 0.0), MAX_HOLD)


async def _serve_http(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        target = head.split(b"\r\n", 1)[0].split(b" ")
        url = urlsplit(target[1].decode("latin-1") if len(target) > 1 else "/")
        if url.path == "/hold":
            writer.write(_response(name, name.encode() + b"\n", length=False))
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(), _hold_seconds(url.query))  # b"" when the client closes
            except TimeoutError:
                pass
        else:
            writer.write(_response(name, name.encode(), length=True))
            await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()


class _Echo(asyncio.DatagramProtocol):
    """UDP echo that prefixes the real server's name: ``NAME PAYLOAD``."""

    def __init__(self, name: str) -> None:
        self.prefix = name.encode() + b" "
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport is a DatagramTransport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.prefix + data, addr)


async def serve(spec: ServerSpec) -> None:
    """Serve until stdin closes or SIGTERM arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    servers = []
    for name, sock in open_sockets(spec):
        if sock.type == socket.SOCK_STREAM:
            handler = lambda r, w, name=name: _serve_http(name, r, w)
            servers.append(await asyncio.start_server(handler, sock=sock))
        else:
            await loop.create_datagram_endpoint(functools.partial(_Echo, name), sock=sock)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m lab.servers < SPEC_JSON_LINE", file=sys.stderr)
        return 2
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the lab gave up before sending a spec
    try:
        asyncio.run(serve(ServerSpec.from_json(line)))
    except ListenError as exc:
        print(f"lab.servers: {exc.strerror}", file=sys.stderr)
        return 1
    except (OSError, LvsguardError, ValueError, KeyError) as exc:
        print(f"lab.servers: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
