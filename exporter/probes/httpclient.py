"""A minimal HTTP/1.1 client on asyncio streams, for the http and prometheus checks.

One request per connection (``Connection: close``), so the body ends at EOF,
at Content-Length, or at the last chunk. Only ``max_body`` bytes are kept: a
check reads status and a bounded body, never a whole download.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

MAX_BODY = 65536
MAX_HEADER_LINES = 100


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    body: bytes


class HTTPProtocolError(ValueError):
    """The peer's answer is not HTTP/1.x."""


async def request(
    host: str,
    port: int,
    *,
    method: str = "GET",
    path: str = "/",
    host_header: str = "",
    tls: ssl.SSLContext | None = None,
    sni: str | None = None,
    max_body: int = MAX_BODY,
    extra_headers: dict[str, str] | None = None,
) -> Response:
    """Send one request to ``host:port`` and read the answer (raises OSError or HTTPProtocolError)."""
    server_hostname = (sni or host_header.split(":")[0] or host) if tls is not None else None
    reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=server_hostname)
    try:
        authority = host_header or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {authority}", "User-Agent: lvsguard-probe", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (extra_headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        return await _read_response(reader, method, max_body)
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader, method: str, max_body: int) -> Response:
    status_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPProtocolError(f"not an HTTP answer: {status_line[:60]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(parts[1])
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _chunked(reader, max_body)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = await reader.read(min(int(headers["content-length"]), max_body))
    else:
        body = await _until_eof(reader, max_body)
    return Response(status, parts[2] if len(parts) > 2 else "", headers, body)


async def _until_eof(reader: asyncio.StreamReader, limit: int) -> bytes:
    out = bytearray()
    while len(out) < limit:
        data = await reader.read(limit - len(out))
        if not data:
            break
        out += data
    return bytes(out)


async def _chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    out = bytearray()
    while len(out) < limit:
        size_line = (await reader.readline()).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise HTTPProtocolError(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            break
        out += await reader.readexactly(size)
        await reader.readline()
    return bytes(out[:limit])
