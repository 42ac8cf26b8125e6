"""Fast Prometheus text exposition of an ``IPVSCollector`` scrape.

prometheus_client's ``generate_latest`` builds a ``Sample`` per series, sorts
and escapes its labels and formats its value as a float: about 10 µs per
sample, 8 s for the 900 000 samples of 100 000 real servers, and counters
above 2**53 lose their last digits. This module is the exporter's one path to
``/metrics``: it renders the same samples from the same metric definitions
(``exporter.collector``), differently, and the tests hold its text to
prometheus_client's rendering (``tests/exposition_oracle.py``):

- the label string of each service and real server (``{local_address="...",...}``)
  is rendered once and cached by model key; entries whose key left the table
  are dropped on the next scrape;
- values are Python ints written with ``str``: exact at any size;
- each family is its HELP/TYPE lines then its samples, joined from prebuilt
  pieces in batches, and the output is a stream of chunks (about 90 KB each),
  so a scrape never holds the whole text (about 165 MB at 100 000 real
  servers) in memory, and the same few blocks of memory are reused from one
  chunk to the next instead of being mapped and faulted in again (page faults
  are what costs most in a VM such as the lab's);
- ``gzipped`` compresses the stream on the fly when the scraper asks for it.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass

from lvsguard.exporter.collector import (
    BACKEND_METRICS,
    SERVICE_INFO,
    SERVICE_LABELS,
    SERVICE_METRICS,
    Family,
    IPVSCollector,
    MetricDef,
    Scrape,
    group,
    service_info_values,
    service_label_values,
    summed,
)
from lvsguard.model import RealServer, RealServerKey, ServiceKey, Table, VirtualService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_ROWS = 512  # samples per chunk of a large family: ~90 KB of text, below malloc's mmap threshold (128 KB)
GZIP_LEVEL = 1  # the text is repetitive: level 1 already shrinks it ~30x, at ~200 MB/s


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:  # rare (names only): the scan is cheaper than three replaces
        return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
    return value


def label_pairs(names: Sequence[str], values: Sequence[str]) -> str:
    """``a="1",b="2"`` (no braces)."""
    return ",".join([f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values)])


def label_string(names: Sequence[str], values: Sequence[str]) -> str:
    """``{a="1",b="2"}``, or "" for no labels."""
    return "{" + label_pairs(names, values) + "}" if names else ""


def format_value(value: int | float) -> str:
    """Ints exactly (counters above 2**53 included); floats in Python's shortest round-trip form."""
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def header(metric: MetricDef) -> str:
    text = metric.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {metric.name} {text}\n# TYPE {metric.name} {metric.type}\n"


def render_family(fam: Family) -> str:
    """A small family (a handful of series) in one piece; "" when it has no samples."""
    if not fam.rows:
        return ""
    lines = [
        f"{fam.metric.name}{label_string(fam.labels, values)} {format_value(value)}\n" for values, value in fam.rows
    ]
    return header(fam.metric) + "".join(lines)


def _samples(name: str, labels: Sequence[str], values: Sequence[int], batch: int) -> Iterator[str]:
    for start in range(0, len(labels), batch):
        end = start + batch
        yield "".join([f"{name}{lab} {val}\n" for lab, val in zip(labels[start:end], values[start:end])])


@dataclass(slots=True)
class _ServiceEntry:
    """Cached label text of one service and of its real servers."""

    pairs: str  # SERVICE_LABELS as a="1",b="2"
    backends: dict[RealServerKey, str]  # real server -> rendered backend label string


@dataclass(frozen=True, slots=True)
class _Frame:
    """One scrape's services and real servers beside their cached label strings."""

    services: list[VirtualService]
    service_pairs: list[str]
    servers: list[RealServer]
    server_labels: list[str]


class Exposition:
    """Renders scrapes of ``collector`` as Prometheus text, caching label strings between scrapes.

    Safe to use from several threads: the cache is updated under a lock, and
    rendering works on that scrape's own lists.
    """

    def __init__(self, collector: IPVSCollector, *, batch: int = BATCH_ROWS):
        self.collector = collector
        self._batch = batch
        self._cache: dict[ServiceKey, _ServiceEntry] = {}
        self._lock = threading.Lock()

    @property
    def cached_real_servers(self) -> int:
        """Number of cached real-server label strings (tests check that stale ones go)."""
        return sum(len(e.backends) for e in self._cache.values())

    def render(self) -> str:
        """One scrape as a single string (tests and small tables; the server streams ``chunks``)."""
        return "".join(self.chunks())

    def chunks(self) -> Iterator[str]:
        """One scrape, as text chunks in exposition order (the same as ``IPVSCollector.collect``)."""
        scrape = self.collector.scrape()
        for fam in scrape.head():
            yield render_family(fam)
        table = scrape.table
        if table is not None and table.services:
            with self._lock:
                frame = self._frame(table)
            yield from self._service_families(scrape, frame)
            if frame.servers:
                yield from self._families(scrape, BACKEND_METRICS, frame.server_labels, frame.servers)
        for fam in scrape.tail():
            yield render_family(fam)
        if self.collector.probes is not None:
            yield from self.collector.probes.chunks()
        yield render_family(scrape.duration())

    def _frame(self, table: Table) -> _Frame:
        cache = self._cache
        services = list(table.services)
        entries: list[_ServiceEntry] = []
        servers: list[RealServer] = []
        server_labels: list[str] = []
        for svc in services:
            entry = cache.get(svc.key)
            if entry is None:
                entry = cache[svc.key] = self._service_entry(svc.key)
            entries.append(entry)
            real_servers = svc.real_servers
            known = entry.backends
            get = known.get
            labels = [get(rs.key) for rs in real_servers]
            if None in labels:  # real servers new to the cache
                for i, rs in enumerate(real_servers):
                    if labels[i] is None:
                        labels[i] = known[rs.key] = self._backend_labels(svc.key, rs.key)
            if len(known) > len(real_servers):  # some left the table: keep only the current ones
                entry.backends = dict(zip((rs.key for rs in real_servers), labels))  # type: ignore[arg-type]  # no None left: filled above
            servers += real_servers
            server_labels += labels  # type: ignore[arg-type]  # no None left: filled above
        if len(cache) > len(services):  # services left the table
            self._cache = {svc.key: entry for svc, entry in zip(services, entries)}
        return _Frame(services, [e.pairs for e in entries], servers, server_labels)

    def _service_entry(self, key: ServiceKey) -> _ServiceEntry:
        values = service_label_values(key, self.collector.names.service_name(key))
        return _ServiceEntry(label_pairs(SERVICE_LABELS, values), {})

    def _backend_labels(self, service: ServiceKey, key: RealServerKey) -> str:
        return label_string(self.collector.backend_labels, self.collector.backend_values(service, key))

    def _service_families(self, scrape: Scrape, frame: _Frame) -> Iterator[str]:
        info = dict.fromkeys(
            f"{SERVICE_INFO.name}{{{pairs},{label_pairs(('scheduler', 'persistent', 'forward'), service_info_values(svc))}}} 1\n"
            for pairs, svc in zip(frame.service_pairs, frame.services)
        )
        yield header(SERVICE_INFO) + "".join(info)
        labels = ["{" + pairs + "}" for pairs in frame.service_pairs]
        yield from self._families(scrape, SERVICE_METRICS, labels, frame.services)

    def _families(
        self, scrape: Scrape, metrics: Sequence[MetricDef], labels: list[str], objects: Sequence[object]
    ) -> Iterator[str]:
        grouped = group(labels, objects)
        for metric in metrics:
            if not scrape.wants(metric):
                continue
            yield header(metric)
            if grouped is None:
                values = list(map(metric.value, objects))
                yield from _samples(metric.name, labels, values, self._batch)
            else:
                yield from _samples(metric.name, grouped[0], summed(metric, grouped[1]), self._batch)


def encoded(chunks: Iterable[str]) -> Generator[bytes, None, None]:
    """The text stream as UTF-8 (names from the config may be any text)."""
    for chunk in chunks:
        if chunk:
            yield chunk.encode()


def gzipped(chunks: Iterable[bytes], level: int = GZIP_LEVEL) -> Generator[bytes, None, None]:
    """A gzip stream of ``chunks``, compressed as they come."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()
