"""One log line per event, as ``event key=value ...`` (logfmt).

The CLI's logging format puts time, level and logger in front; this module
only renders the event and its fields, quoting values that need it, so a line
can be parsed by any logfmt reader and grepped by event name.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TextIO

_CONTROL = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
"""C0, DEL, C1 and the Unicode line and paragraph separators: what a terminal or a log reader acts on."""
_NEEDS_QUOTES = re.compile(r'[ ="\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_ESCAPES = {
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    **{c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _CONTROL},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def logfmt_value(value: object) -> str:
    """``value`` as a logfmt value: bare when it is safe, double-quoted otherwise.

    Every control character is escaped (``\\r``, ``\\x1b``, ``\\u2028``), so a
    request path or a label value cannot end a line, forge another one or
    repaint the terminal that shows the log.
    """
    text = str(value)
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + text.translate(_ESCAPES) + '"'


def event(logger: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log event ``name`` with ``fields`` on one line."""
    if logger.isEnabledFor(level):
        logger.log(level, " ".join([name, *(f"{k}={logfmt_value(v)}" for k, v in fields.items())]))


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def set_levels(spec: str) -> None:
    """Set the levels of ``LOGGER=LEVEL,...`` (``lvsguard.exporter.probes=debug,lvsguard.actuator=warning``).

    A logger is a module's import name or a package above it (``lvsguard.exporter.probes``
    covers ``lvsguard.exporter.probes.engine``); its level overrides the process's
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
