"""One log line per event, as ``event key=value ...`` (logfmt).

The CLI's logging format puts time, level and logger in front; this module
only renders the event and its fields, quoting values that need it, so a line
can be parsed by any logfmt reader and grepped by event name.
"""

from __future__ import annotations

import logging
import os
from typing import TextIO


def logfmt_value(value: object) -> str:
    """``value`` as a logfmt value: bare when it is safe, double-quoted otherwise."""
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def event(logger: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log event ``name`` with ``fields`` on one line."""
    if logger.isEnabledFor(level):
        logger.log(level, " ".join([name, *(f"{k}={logfmt_value(v)}" for k, v in fields.items())]))


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def set_levels(spec: str) -> None:
    """Set the levels of ``LOGGER=LEVEL,...`` (``exporter.probes=debug,actuator=warning``).

    A logger is a module's import name or a package above it (``exporter.probes``
    covers ``exporter.probes.engine``); its level overrides the process's
    ``--log-level`` for it. A malformed entry is logged and skipped: a logging
    setting never stops a service.
    """
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, _, level = (piece.strip() for piece in entry.partition("="))
        if not name or level.lower() not in LEVELS:
            event(
                logging.getLogger(__name__), logging.WARNING, "log_level_ignored", entry=entry, expected="LOGGER=LEVEL"
            )
            continue
        logging.getLogger(name).setLevel(LEVELS[level.lower()])


class LineHandler(logging.Handler):
    """Writes each formatted record with one ``write`` system call and no lock.

    ``logging.StreamHandler`` takes its lock for every record, and on Python
    3.11 a lock acquisition reads the monotonic clock: under UML (the lab VM)
    that is a system call of 20-100 us, and the actuator logs two lines per
    webhook request. One ``os.write`` of a whole line needs no lock: the
    kernel keeps concurrent writes to one descriptor whole (a pipe up to
    ``PIPE_BUF`` bytes, a file opened for appending always). A stream without
    a descriptor (a test's capture) is written and flushed instead.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            self.fd = None

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self.fd is None:
                self.stream.write(line)
                self.stream.flush()
                return
            data = line.encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(self.fd, data) :]
        except Exception:
            self.handleError(record)
