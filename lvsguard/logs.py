"""One log line per event, as ``event key=value ...`` (logfmt).

The CLI's logging format puts time, level and logger in front; this module
only renders the event and its fields, quoting values that need it, so a line
can be parsed by any logfmt reader and grepped by event name.
"""

from __future__ import annotations

import logging


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
