"""A minimal HTTP/1.1 client on asyncio streams, for the http and prometheus checks.

One request per connection (``Connection: close``), so the body ends at EOF,
at Content-Length, or at the last chunk. Only ``max_body`` bytes are kept: a
check reads status and a bounded body, never a whole download. ``request``
is the coroutine (https, prometheus); ``request_bytes`` and
``parse_response`` are shared with the http check's hot path (``http.py``).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from dataclasses import dataclass

from lvsguard.errors import HTTPProtocolError

MAX_BODY = 65536
MAX_HEADER_LINES = 100
MAX_HEAD = 65536  # bytes of status line and headers
READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    body: bytes
    truncated: bool = False  # the body went on past ``max_body``: ``body`` is its beginning


@functools.lru_cache(maxsize=65536)
def request_bytes(
    host: str, port: int, method: str, path: str, host_header: str, extra_headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """The request's bytes (cached: a check sends the same request to the same target every interval)."""
    authority = host_header or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {authority}", "User-Agent: lvsguard-probe", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


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
        writer.write(request_bytes(host, port, method, path, host_header, tuple((extra_headers or {}).items())))
        await writer.drain()
        data = b""
        while True:
            more = await reader.read(READ_SIZE)
            data += more
            answer = parse_response(data, method, max_body, eof=not more)
            if answer is not None:
                return answer
    finally:
        writer.close()


def parse_response(data: bytes, method: str, max_body: int, eof: bool) -> Response | None:
    """The response in ``data`` once it is complete (None: wait for more); raises HTTPProtocolError.

    Complete means: the headers and then Content-Length bytes, the last chunk,
    EOF, or ``max_body`` bytes of body, whichever comes first. One parser for
    both clients: the coroutine below and the engine's plain-http hot path.
    """
    if data[:7] != b"HTTP/1."[: len(data)]:  # said at once: a peer that talks something else may reset next
        line = data.split(b"\n", 1)[0].decode("latin-1").rstrip("\r")
        raise HTTPProtocolError(f"not an HTTP answer: {line[:60]!r}")
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    if crlf < 0 and lf < 0:
        if eof:
            line = data.split(b"\n", 1)[0].decode("latin-1").rstrip("\r")
            raise HTTPProtocolError(
                f"not an HTTP answer: {line[:60]!r}"
                if not line.startswith("HTTP/1.")
                else "the answer ends inside its headers"
            )
        if len(data) > MAX_HEAD:
            raise HTTPProtocolError(f"headers longer than {MAX_HEAD} bytes")
        return None
    end, skip = (crlf, 4) if crlf >= 0 and (lf < 0 or crlf < lf) else (lf, 2)
    lines = data[:end].decode("latin-1").split("\n")
    status_line = lines[0].rstrip("\r")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPProtocolError(f"not an HTTP answer: {status_line[:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1 : MAX_HEADER_LINES + 1]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(parts[1])
    rest = data[end + skip :]
    reason = parts[2].rstrip("\r") if len(parts) > 2 else ""
    truncated = False
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body: bytes | None = b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunked = _dechunk(rest, max_body, eof)
        body, truncated = chunked if chunked is not None else (None, False)
    elif "content-length" in headers and headers["content-length"].isdigit():
        length = int(headers["content-length"])
        want = min(length, max_body)
        body = rest[:want] if len(rest) >= want or eof else None
        truncated = length > max_body
    else:
        body = rest[:max_body] if eof or len(rest) >= max_body else None
        truncated = len(rest) > max_body or (len(rest) == max_body and not eof)
    return None if body is None else Response(status, reason, headers, body, truncated)


def _dechunk(data: bytes, limit: int, eof: bool) -> tuple[bytes, bool] | None:
    """The body of a chunked message and whether it was cut at ``limit``; None while its last chunk has not arrived."""
    out = bytearray()
    pos = 0
    while len(out) < limit:
        line_end = data.find(b"\n", pos)
        if line_end < 0:
            break
        size_text = data[pos:line_end].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HTTPProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            return bytes(out[:limit]), len(out) > limit
        start = line_end + 1
        if len(data) < start + size:
            out += data[start:]
            break
        out += data[start : start + size]
        pos = data.find(b"\n", start + size)
        if pos < 0:
            break
        pos += 1
    if len(out) >= limit or eof:
        return bytes(out[:limit]), len(out) >= limit
    return None
