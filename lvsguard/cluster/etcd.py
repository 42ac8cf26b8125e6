"""A small etcd v3 client over etcd's JSON gateway (``/v3/kv/*``, ``/v3/watch``, ``/v3/lease/grant``).

The standard library's ``http.client`` carries it: no new dependency, and the
measured put round trip is the same as etcd3gw's and aetcd's (docs/cluster.md,
"Why the JSON gateway"). Keys and values are base64 in the JSON, text here.

Endpoints are tried in order: a request that cannot reach one member (refused,
timed out, TLS failure, a 5xx) goes to the next, and the one that answered is
tried first from then on. When none answers, :class:`ClusterStoreError` names
every endpoint and what it said. A 4xx (a request etcd refuses) is not retried.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lvsguard.errors import ClusterStoreError

DEFAULT_TIMEOUT = 5.0  # seconds per request and endpoint


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(b64: str) -> str:
    return base64.b64decode(b64).decode()


def _b64_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return base64.b64encode(b"\0").decode()
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd returned it; revisions are the cluster's (``mod_revision``: its last change)."""

    key: str
    value: str
    mod_revision: int
    create_revision: int = 0
    lease: int = 0

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(
            key=_text(kv.get("key", "")),
            value=_text(kv.get("value", "")),
            mod_revision=int(kv.get("mod_revision", 0)),
            create_revision=int(kv.get("create_revision", 0)),
            lease=int(kv.get("lease", 0)),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: ``kind`` is ``put`` or ``delete``."""

    kind: str
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: the ``target`` (``mod``, ``version``, ``create``, ``value``) of ``key``."""

    key: str
    target: str
    result: str  # "=", "!=", "<", ">"
    value: int | str

    def to_json(self) -> dict[str, Any]:
        results = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}
        fields = {"mod": "mod_revision", "version": "version", "create": "create_revision", "value": "value"}
        value = _b64(str(self.value)) if self.target == "value" else str(self.value)
        return {
            "key": _b64(self.key),
            "target": self.target.upper(),
            "result": results[self.result],
            fields[self.target]: value,
        }


def put_op(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def delete_op(key: str, *, prefix: bool = False) -> dict[str, Any]:
    request = {"key": _b64(key)}
    if prefix:
        request["range_end"] = _b64_end(key)
    return {"request_delete_range": request}


@dataclass(frozen=True, slots=True)
class _Endpoint:
    url: str
    https: bool
    host: str
    port: int


def _parse_endpoint(url: str) -> _Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClusterStoreError(f"etcd endpoint {url!r}: not an http:// or https:// URL", endpoint=url)
    return _Endpoint(url.rstrip("/"), parts.scheme == "https", parts.hostname, parts.port or 2379)


class EtcdClient:
    """Unary calls share one connection per endpoint under a lock; each ``watch`` opens its own."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        timeout: float = DEFAULT_TIMEOUT,
    ):
        if not endpoints:
            raise ClusterStoreError("no etcd endpoint configured")
        self.endpoints = tuple(_parse_endpoint(e) for e in endpoints)
        self.timeout = timeout
        self._tls: ssl.SSLContext | None = None
        if any(e.https for e in self.endpoints) or ca_file or cert_file:
            try:
                self._tls = ssl.create_default_context(cafile=ca_file or None)
                if cert_file:
                    self._tls.load_cert_chain(cert_file, key_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ClusterStoreError(f"etcd TLS files (ca {ca_file!r}, cert {cert_file!r}): {exc}") from None
        self._lock = threading.Lock()
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._first = 0  # the endpoint that answered last

    @property
    def endpoint(self) -> str:
        """The endpoint tried first (the one that answered last)."""
        return self.endpoints[self._first].url

    def _connect(self, ep: _Endpoint, timeout: float) -> http.client.HTTPConnection:
        if ep.https:
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout, context=self._tls)
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._first + i) % n for i in range(n)]

    def call(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>``, failing over between endpoints; the JSON reply."""
        payload = json.dumps(body).encode()
        errors: list[str] = []
        sent = False
        with self._lock:
            for index in self._order():
                ep = self.endpoints[index]
                try:
                    reply = self._post(ep, path, payload, timeout or self.timeout)
                except _Unreachable as exc:
                    errors.append(f"{ep.url}: {exc}")
                    sent = sent or exc.sent
                    continue
                self._first = index
                return reply
        raise ClusterStoreError(
            f"no etcd endpoint answered /v3/{path}: " + "; ".join(errors),
            endpoint=self.endpoints[-1].url,
            maybe_applied=sent,
        )

    def _post(self, ep: _Endpoint, path: str, payload: bytes, timeout: float) -> dict[str, Any]:
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more on a new one
            conn = self._conns.get(ep.url)
            fresh = conn is None
            if conn is None:
                conn = self._conns[ep.url] = self._connect(ep, timeout)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            requested = False
            try:
                conn.request("POST", f"/v3/{path}", payload, {"Content-Type": "application/json"})
                requested = True
                response = conn.getresponse()
                text = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(ep)
                if fresh or attempt == 2:
                    raise _Unreachable(str(exc) or type(exc).__name__, sent=requested) from None
                continue
            except (OSError, http.client.HTTPException) as exc:
                self._drop(ep)
                raise _Unreachable(_describe(exc), sent=requested) from None
            return self._reply(ep, path, response.status, text)
        raise AssertionError("unreachable")

    def _drop(self, ep: _Endpoint) -> None:
        conn = self._conns.pop(ep.url, None)
        if conn is not None:
            conn.close()

    @staticmethod
    def _reply(ep: _Endpoint, path: str, status: int, text: bytes) -> dict[str, Any]:
        try:
            reply = json.loads(text) if text else {}
        except ValueError:
            reply = {"message": text[:200].decode(errors="replace")}
        if not isinstance(reply, dict):
            raise ClusterStoreError(f"etcd {ep.url}/v3/{path}: not a JSON object", endpoint=ep.url, status=status)
        if status >= 500:
            raise _Unreachable(f"HTTP {status}: {reply.get('message') or reply.get('error') or ''}".strip(), sent=True)
        if status >= 400:
            raise ClusterStoreError(
                f"etcd {ep.url}/v3/{path}: HTTP {status}: {reply.get('message') or reply.get('error') or ''}",
                endpoint=ep.url,
                status=status,
            )
        return reply

    def close(self) -> None:
        with self._lock:
            for url in list(self._conns):
                self._conns.pop(url).close()

    # --- the key-value API -----------------------------------------------------------

    def put(self, key: str, value: str, *, lease: int = 0) -> int:
        """Set ``key``; the cluster's revision after the put."""
        return _revision(self.call("kv/put", put_op(key, value, lease)["request_put"]))

    def get(self, key: str, *, serializable: bool = False, revision: int = 0) -> KeyValue | None:
        """``key``'s value; ``serializable``: the answering member's own copy (no Raft round; may be behind).

        ``revision``: as it was at that revision of the cluster (etcd keeps
        old revisions until it compacts them; then ClusterStoreError).
        """
        body: dict[str, Any] = {"key": _b64(key)}
        if serializable:
            body["serializable"] = True
        if revision:
            body["revision"] = str(revision)
        kvs = self.call("kv/range", body).get("kvs", [])
        return KeyValue.from_json(kvs[0]) if kvs else None

    def get_many(self, keys: Sequence[str], *, revision: int = 0) -> dict[str, KeyValue]:
        """The keys of ``keys`` that exist (at ``revision``, as :meth:`get`), in one read-only transaction."""
        ranges: list[dict[str, Any]] = []
        for key in keys:
            request: dict[str, Any] = {"key": _b64(key)}
            if revision:
                request["revision"] = str(revision)
            ranges.append({"request_range": request})
        reply = self.call("kv/txn", {"compare": [], "success": ranges, "failure": []})
        found = [
            KeyValue.from_json(kv)
            for r in reply.get("responses", [])
            for kv in r.get("response_range", {}).get("kvs", [])
        ]
        return {kv.key: kv for kv in found}

    def range(
        self, prefix: str, *, serializable: bool = False, exact: bool = False, keys_only: bool = False
    ) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the revision it was read at; linearizable unless ``serializable``.

        ``exact``: the key ``prefix`` alone; ``keys_only``: without their values.
        """
        body: dict[str, Any] = {"key": _b64(prefix)}
        if not exact:
            body["range_end"] = _b64_end(prefix)
        if serializable:
            body["serializable"] = True
        if keys_only:
            body["keys_only"] = True
        reply = self.call("kv/range", body)
        return [KeyValue.from_json(kv) for kv in reply.get("kvs", [])], _revision(reply)

    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); how many were deleted."""
        reply = self.call("kv/deleterange", delete_op(key, prefix=prefix)["request_delete_range"])
        return int(reply.get("deleted", 0))

    def txn(
        self, compare: Sequence[Compare], success: Sequence[dict[str, Any]], failure: Sequence[dict[str, Any]] = ()
    ) -> tuple[bool, int]:
        """If every ``compare`` holds, apply ``success``, else ``failure``; (whether it held, the revision)."""
        reply = self.call(
            "kv/txn",
            {"compare": [c.to_json() for c in compare], "success": list(success), "failure": list(failure)},
        )
        return bool(reply.get("succeeded", False)), _revision(reply)

    def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        return int(self.call("lease/grant", {"TTL": str(ttl)}).get("ID", 0))

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; its TTL in seconds, 0 when it is gone (expired or revoked).

        One request and one reply through the gateway's stream (the leader
        renews it in memory: no Raft write, unlike a grant or a put).
        """
        return int(self.call("lease/keepalive", {"ID": str(lease)}).get("result", {}).get("TTL", 0))

    def status(self) -> dict[str, Any]:
        """The answering member's status (``header``, ``leader``, ``version``)."""
        return self.call("maintenance/status", {})

    # --- watch ----------------------------------------------------------------------

    def watch(
        self, prefix: str, start_revision: int, *, idle_timeout: float = 10.0, exact: bool = False
    ) -> Iterator[list[Event]]:
        """Yield the events under ``prefix`` (``exact``: of that key alone) from ``start_revision`` on, a batch per etcd message.

        Blocks between batches. Raises ClusterStoreError when no endpoint
        accepts the watch, when the stream breaks, or when it is silent for
        ``idle_timeout`` seconds (a partition leaves a TCP stream open and
        mute: the caller re-reads and watches again). An empty batch is etcd's
        confirmation that the watch is in place.
        """
        create: dict[str, Any] = {"key": _b64(prefix), "start_revision": str(start_revision), "progress_notify": True}
        if not exact:
            create["range_end"] = _b64_end(prefix)
        body = json.dumps({"create_request": create}).encode()
        errors: list[str] = []
        for index in self._order():
            ep = self.endpoints[index]
            conn = self._connect(ep, self.timeout)
            try:
                conn.request("POST", "/v3/watch", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                if response.status != 200:
                    errors.append(f"{ep.url}: HTTP {response.status}")
                    conn.close()
                    continue
                if conn.sock is not None:
                    conn.sock.settimeout(idle_timeout)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                errors.append(f"{ep.url}: {_describe(exc)}")
                continue
            try:
                yield from _stream(ep, response)
            finally:
                conn.close()
            return
        raise ClusterStoreError("no etcd endpoint accepted a watch: " + "; ".join(errors))


class _Unreachable(Exception):
    """This endpoint did not answer usefully: try the next one. ``sent``: it may have received the request."""

    def __init__(self, message: str, *, sent: bool):
        self.sent = sent
        super().__init__(message)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _revision(reply: dict[str, Any]) -> int:
    return int(reply.get("header", {}).get("revision", 0))


def _stream(ep: _Endpoint, response: http.client.HTTPResponse) -> Iterator[list[Event]]:
    """Decode the gateway's stream: one JSON object per message, ``{"result": {...}}`` or ``{"error": ...}``."""
    decoder = json.JSONDecoder()
    buffer = ""
    while True:
        try:
            chunk = response.read1(65536)
        except (OSError, http.client.HTTPException) as exc:
            raise ClusterStoreError(f"etcd watch on {ep.url}: {_describe(exc)}", endpoint=ep.url) from None
        if not chunk:
            raise ClusterStoreError(f"etcd watch on {ep.url}: the stream ended", endpoint=ep.url)
        buffer += chunk.decode()
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                message, end = decoder.raw_decode(buffer)
            except ValueError:
                break  # an incomplete message: wait for the rest
            buffer = buffer[end:]
            if "error" in message:
                raise ClusterStoreError(f"etcd watch on {ep.url}: {message['error']}", endpoint=ep.url)
            result = message.get("result", {})
            if result.get("canceled"):
                reason = result.get("cancel_reason") or "canceled"
                raise ClusterStoreError(f"etcd watch on {ep.url}: {reason}", endpoint=ep.url)
            yield [
                Event("delete" if e.get("type") == "DELETE" else "put", KeyValue.from_json(e.get("kv", {})))
                for e in result.get("events", [])
            ]
