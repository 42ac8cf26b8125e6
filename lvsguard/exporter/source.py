"""The exporter's reader of the IPVS table: it opens late and opens again.

An exporter must start and keep serving while IPVS is not there yet (module
not loaded, namespace not created by keepalived yet): ``ipvs_up 0`` says so.
So the kernel reader is opened on the first scrape, not at start, and opened
again on a later scrape after a failure that a new socket can cure. In
``auto`` mode, a netlink read refused for lack of CAP_NET_ADMIN switches to
procfs for good (``lvsguard.ipvs.open_reader`` does the same when the refusal
comes at open).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lvsguard.errors import IPVSUnavailable, NamespaceError, NotPermitted
from lvsguard.ipvs import SOURCES, TableReader, open_reader
from lvsguard.logs import event
from lvsguard.model import Table

log = logging.getLogger(__name__)

Opener = Callable[[str | None, str], TableReader]


class ExporterReader:
    """A ``TableReader`` for the exporter: ``mode`` is auto, netlink or procfs (as config ``exporter.ipvs_source``)."""

    def __init__(self, netns: str | None = None, mode: str = "auto", *, opener: Opener = open_reader):
        if mode not in SOURCES:
            raise ValueError(f"unknown IPVS source {mode!r} (one of {', '.join(SOURCES)})")
        self.netns = netns
        self.mode = mode
        self.source = "" if mode == "auto" else mode  # the source in use; "" before the first open in auto mode
        self._opener = opener
        self._reader: TableReader | None = None
        self._lock = threading.Lock()

    def read(self) -> Table:
        with self._lock:
            if self._reader is None:
                self._reader = self._opener(self.netns, self.mode)
                self.source = self._reader.source
            reader = self._reader
            try:
                return reader.read()
            except NotPermitted as exc:
                if self.mode != "auto" or reader.source == "procfs":
                    raise
                event(log, logging.WARNING, "ipvs_source_fallback", source="procfs", reason=str(exc))
                self._reader = None
                reader.close()
                self._reader = self._opener(self.netns, "procfs")
                self.source = self._reader.source
                return self._reader.read()
            except (IPVSUnavailable, NamespaceError):
                self._reader = None  # the next scrape opens a new socket (module loaded, namespace back)
                reader.close()
                raise

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
