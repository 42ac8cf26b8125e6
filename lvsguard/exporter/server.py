"""The exporter's HTTP server: ``/metrics``, ``/probes.json``, ``/`` and ``/-/healthy``.

The standard library's threading HTTP server is enough: a scrape is one
request, and the work is rendering, not connection handling. ``/metrics``
streams the fast exposition as HTTP/1.1 chunks (gzip-compressed when the
scraper accepts it), so a 165 MB scrape is never held in memory at once. A
table that cannot be read is not an HTTP error: the scrape answers 200 with
``ipvs_up 0``, and the exporter keeps serving. ``/probes.json`` is the
health checks' state as JSON (``ProbeMetrics.report``), for the actuator's
console: the probes alone, not the whole table.

SIGHUP reloads what a config may change without a restart (names,
``backend_labels``, the ``services`` allow-list): the new settings get a new
collector over the same reader, so the kernel socket stays open and no scrape
sees half of each. A reload that fails is logged and the old settings stay.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from lvsguard import __version__
from lvsguard.errors import ListenError, LvsguardError
from lvsguard.exporter.collector import BACKEND_LABELS, ExtraFamilies, IPVSCollector, Names
from lvsguard.exporter.exposition import CONTENT_TYPE, Exposition, encoded, gzipped
from lvsguard.exporter.probes.metrics import Report, no_report
from lvsguard.ipvs import TableReader
from lvsguard.logs import event
from lvsguard.model import ServiceKey
from lvsguard.webconfig import NO_WEB_CONFIG, WebConfig

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0
"""Seconds one read or write may wait: a request that does not come, an idle keep-alive, a stalled scraper.

A scraper whose interval is longer simply opens a new connection for its next scrape."""
MAX_CONNECTIONS = 64
"""Connections served at once (one thread each); more are answered 503 and closed at once."""
MAX_PER_CLIENT = 8
"""Connections one client address may hold, so that one host cannot take every slot (a scraper needs one)."""
BUSY_REPLY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

INDEX_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>lvsguard exporter</title></head>
<body><h1>lvsguard exporter</h1>
<p>IPVS metrics of this director, version {version}.</p>
<ul><li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="/probes.json">/probes.json</a>: the health checks' state (JSON)</li>
<li><a href="/-/healthy">/-/healthy</a>: liveness</li></ul>
</body></html>
"""


def parse_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:9910``, ``[::1]:9910``, ``:9910`` (every IPv4 address) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ListenError(listen, "expected HOST:PORT, [IPv6]:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ListenError(listen, "write an IPv6 address in brackets: [::1]:9910")
    return host, int(port)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (``gzip``, ``gzip;q=0.5``; not ``gzip;q=0``)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            q = params.strip().lower()
            return not (q.startswith("q=") and _q_is_zero(q[2:]))
    return False


def _q_is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Reloadable:
    """What a reload changes: the labels, the allow-list and the names of the metrics."""

    backend_labels: str | Iterable[str] = BACKEND_LABELS
    services: Collection[ServiceKey] | None = None
    names: Names | None = None


class ExporterServer(ThreadingHTTPServer):
    """Serves ``exposition`` on ``listen``; ``url`` is where it listens (port 0 picks a free port)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen backlog: a burst of connections is accepted (and refused), not dropped as SYNs

    def __init__(
        self,
        listen: str,
        exposition: Exposition,
        probe_report: Callable[[], Report] = no_report,
        web: WebConfig = NO_WEB_CONFIG,
    ):
        host, port = parse_listen(listen)
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.exposition = exposition
        self.probe_report = probe_report
        self.listen = listen
        self.web = web
        self.process = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.process)  # process_*: CPU, memory, open files, start time
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise ListenError(listen, exc.strerror or str(exc)) from None
        bound_host, bound_port = self.socket.getsockname()[:2]
        scheme = web.scheme
        self.url = (
            f"{scheme}://[{bound_host}]:{bound_port}" if ":" in bound_host else f"{scheme}://{bound_host}:{bound_port}"
        )
        self._reload_lock = threading.Lock()
        self._slots_lock = threading.Lock()
        self._open: dict[str, int] = {}  # client address -> connections being served
        self._refused = 0
        self._refused_logged = 0.0

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, within MAX_CONNECTIONS and MAX_PER_CLIENT; beyond them a 503 and close."""
        client = client_address[0]
        with self._slots_lock:
            busy = self._open.get(client, 0)
            admitted = busy < MAX_PER_CLIENT and sum(self._open.values()) < MAX_CONNECTIONS
            if admitted:
                self._open[client] = busy + 1
        if admitted:
            super().process_request(request, client_address)
            return
        self._refuse(request, client)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """With TLS, the handshake runs here, in the connection's own thread, within ``IDLE_TIMEOUT``."""
        tls = self.web.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(IDLE_TIMEOUT)
        try:
            wrapped = tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            event(log, logging.DEBUG, "tls_handshake_failed", client=client_address[0], reason=str(exc))
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            try:
                wrapped.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            wrapped.close()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._slots_lock:
                left = self._open.pop(client_address[0]) - 1
                if left:
                    self._open[client_address[0]] = left

    def _refuse(self, request: socket.socket, client: str) -> None:
        try:
            request.setblocking(False)  # the accepting thread never waits on a client
            request.send(BUSY_REPLY)
        except OSError:
            pass
        self.shutdown_request(request)
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 10:  # one line per 10 s under a flood, with the count
            self._refused_logged = now
            event(
                log,
                logging.WARNING,
                "connections_refused",
                client=client,
                refused=self._refused,
                limits=f"{MAX_PER_CLIENT} per client, {MAX_CONNECTIONS} in all",
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is not an error; anything else is one log line (the traceback at debug)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            event(log, logging.DEBUG, "client_gone", client=client_address[0], reason=type(exc).__name__)
            return
        event(log, logging.ERROR, "request_failed", client=client_address[0], reason=f"{type(exc).__name__}: {exc}")
        log.debug("request_failed traceback", exc_info=exc)

    def reconfigure(self, options: Reloadable) -> None:
        """Serve with ``options`` from the next scrape on: a new collector and exposition over the same reader."""
        old = self.exposition.collector
        collector = IPVSCollector(
            old.reader,
            backend_labels=options.backend_labels,
            services=options.services,
            names=options.names,
            addresses=old._addresses,
            version=old.version,
            logger=old.logger,
            clock=old.clock,
            probes=old.probes,  # the running health checks and their series are kept
        )
        self.exposition = Exposition(collector)  # one assignment: a scrape uses the old or the new, never a mix

    def reload_web(self, load: Callable[[], WebConfig]) -> bool:
        """Take a new web config: users and headers from the next request, the certificate from the next connection.

        A file that does not load, or that turns TLS on or off (the URL's scheme), is logged and the running one stays.
        """
        with self._reload_lock:
            try:
                new = load()
                if (new.tls is None) != (self.web.tls is None):
                    raise LvsguardError(f"{new.path}: turning TLS {'off' if new.tls is None else 'on'} needs a restart")
            except LvsguardError as exc:
                event(log, logging.ERROR, "reload_failed", reason=str(exc), kept="the running web config")
                return False
            self.web = new  # one assignment: a connection takes the old or the new context
            event(
                log, logging.INFO, "web_config_reloaded", web_config=new.path, basic_auth="on" if new.users else "off"
            )
            return True

    def reload(self, load: Callable[[], Reloadable]) -> bool:
        """Apply ``load()``; when it raises an LvsguardError (a bad config) log why and keep serving as before."""
        with self._reload_lock:
            try:
                options = load()
                self.reconfigure(options)
            except LvsguardError as exc:
                for line in str(exc).splitlines():
                    event(log, logging.ERROR, "reload_failed", reason=line, kept="the running config")
                return False
            collector = self.exposition.collector
            event(
                log,
                logging.INFO,
                "reload_done",
                backend_labels=",".join(collector.backend_labels),
                services="all" if collector.services is None else len(collector.services),
            )
            return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"lvsguard-exporter/{__version__}"
    timeout = IDLE_TIMEOUT
    server: ExporterServer

    def end_headers(self) -> None:
        for name, value in self.server.web.headers.items():  # http_server_config.headers of the web config
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:
        if not self.server.web.authorized(self.headers.get("Authorization")):
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", 'Basic realm="lvsguard exporter", charset="UTF-8"')
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            body = b"Unauthorized\n"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            event(log, logging.DEBUG, "http_unauthorized", client=self.client_address[0], path=self.path)
            return
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._metrics()
        elif path == "/probes.json":
            report = json.dumps(self.server.probe_report(), separators=(",", ":")).encode()
            self._reply(HTTPStatus.OK, "application/json", report)
        elif path == "/":
            self._reply(HTTPStatus.OK, "text/html; charset=utf-8", INDEX_HTML.format(version=__version__).encode())
        elif path == "/-/healthy":
            self._reply(HTTPStatus.OK, "text/plain; charset=utf-8", b"OK\n")
        else:
            self._reply(
                HTTPStatus.NOT_FOUND,
                "text/plain; charset=utf-8",
                f"{path}: not found; metrics are on /metrics\n".encode(),
            )

    def _reply(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _metrics(self) -> None:
        started = time.perf_counter()
        gzip = accepts_gzip(self.headers.get("Accept-Encoding", ""))
        chunked = self.request_version == "HTTP/1.1"
        rendered = encoded(self._families())
        body = gzipped(rendered) if gzip else rendered
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Vary", "Accept-Encoding")
        if gzip:
            self.send_header("Content-Encoding", "gzip")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True  # HTTP/1.0: the end of the body is the end of the connection
        self.end_headers()
        try:
            sent = self._stream(body, chunked)
        finally:
            body.close()
            rendered.close()  # a scraper that went away stops the rendering here
        event(
            log,
            logging.DEBUG,
            "scrape_served",
            client=self.client_address[0],
            bytes=sent,
            gzip=gzip,
            seconds=f"{time.perf_counter() - started:.3f}",
        )

    def _families(self) -> Iterator[str]:
        """The exposition, then the process_* families (``yield from``: closing the stream stops the rendering)."""
        yield from self.server.exposition.chunks()
        yield generate_latest(self.server.process).decode()

    def _stream(self, body: Iterable[bytes], chunked: bool) -> int:
        sent = 0
        try:
            for part in body:
                if part:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                    sent += len(part)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            self.close_connection = True
            event(
                log,
                logging.DEBUG,
                "scrape_aborted",
                client=self.client_address[0],
                reason=type(exc).__name__,
                bytes=sent,
            )
        except Exception as exc:
            self.close_connection = True
            event(
                log,
                logging.ERROR,
                "scrape_failed",
                client=self.client_address[0],
                reason=f"{type(exc).__name__}: {exc}",
            )
            log.debug("scrape_failed traceback", exc_info=exc)
        return sent

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        event(log, logging.DEBUG, "http_request", client=self.client_address[0], request=self.requestline, status=code)

    def log_error(self, format: str, *args: object) -> None:
        event(log, logging.DEBUG, "http_error", client=self.client_address[0], reason=format % args)


def run(
    reader_factory: Callable[[], TableReader],
    listen: str,
    *,
    backend_labels: str | Iterable[str] = BACKEND_LABELS,
    services: Collection[ServiceKey] | None = None,
    names: Names | None = None,
    addresses: Callable[[], Mapping[str, str]] | None = None,
    ready: Callable[[ExporterServer], None] | None = None,
    reload: Callable[[], Reloadable] | None = None,
    probes: ExtraFamilies | None = None,
    probe_report: Callable[[], Report] = no_report,
    web: WebConfig = NO_WEB_CONFIG,
    reload_web: Callable[[], WebConfig] | None = None,
) -> None:
    """Serve the IPVS metrics on ``listen`` until SIGTERM or SIGINT (or ``server.shutdown()``).

    ``ready`` is called with the listening server (tests use it to learn the port
    and to stop it). ``reload`` (on SIGHUP) returns the new settings, or raises
    an LvsguardError to keep the running ones. ``probes`` adds the health-check
    series (``exporter.probes.metrics.ProbeMetrics``), ``probe_report`` their
    state for ``/probes.json`` (``ProbeMetrics.report``). ``web`` is the
    ``--web.config.file`` (TLS, basic auth, headers: ``lvsguard.webconfig``),
    ``reload_web`` reads it again on SIGHUP.
    """
    collector = IPVSCollector(
        reader_factory(),
        backend_labels=backend_labels,
        services=services,
        names=names,
        addresses=addresses,
        probes=probes,
    )
    try:
        server = ExporterServer(listen, Exposition(collector), probe_report, web)
    except ListenError:
        collector.reader.close()
        raise
    restore = _stop_on_signals(server, reload, reload_web)
    event(
        log,
        logging.INFO,
        "exporter_started",
        url=server.url,
        version=__version__,
        web_config=web.path or "-",
        basic_auth="on" if web.users else "off",
        backend_labels=",".join(collector.backend_labels),
        services="all" if services is None else len(collector.services or ()),
    )
    try:
        if ready is not None:
            ready(server)
        server.serve_forever()
    finally:
        restore()
        server.server_close()
        collector.reader.close()
        event(log, logging.INFO, "exporter_stopped", url=server.url)


def _stop_on_signals(
    server: ExporterServer,
    reload: Callable[[], Reloadable] | None = None,
    reload_web: Callable[[], WebConfig] | None = None,
) -> Callable[[], None]:
    """SIGTERM/SIGINT stop ``serve_forever`` (from another thread: shutdown() waits for the loop); SIGHUP reloads."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, _frame: object) -> None:
        event(log, logging.INFO, "exporter_stopping", signal=signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, name="exporter-shutdown", daemon=True).start()

    def hup(_signum: int, _frame: object) -> None:
        if reload_web is not None:
            threading.Thread(target=server.reload_web, args=(reload_web,), name="exporter-web", daemon=True).start()
        if reload is None:
            if reload_web is None:
                event(log, logging.WARNING, "reload_skipped", reason="started without --config: nothing to reload")
            return
        threading.Thread(target=server.reload, args=(reload,), name="exporter-reload", daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hup)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
