"""The log line format and the lock-free line handler the CLI installs."""

from __future__ import annotations

import io
import logging
import os
import threading

from lvsguard.logs import LineHandler, event, logfmt_value, set_levels


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_logfmt_quotes_only_what_needs_it():
    assert logfmt_value("plain") == "plain"
    assert logfmt_value("two words") == '"two words"'
    assert logfmt_value('say "hi"\n') == '"say \\"hi\\"\\n"'
    assert logfmt_value("") == '""'


def test_line_handler_writes_whole_lines_to_a_descriptor_from_many_threads():
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        logger = _logger(LineHandler(stream), "test.logs.fd")
        assert logger.handlers[0].fd == write_end

        def burst(n: int) -> None:
            for i in range(50):
                event(logger, logging.INFO, "tick", thread=n, i=i, pad="x" * 200)

        threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with os.fdopen(read_end) as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 200
    assert all(line.startswith("INFO tick thread=") and line.endswith("x" * 200) for line in lines)  # none torn


def test_line_handler_falls_back_to_a_stream_without_descriptor_and_honours_filters():
    stream = io.StringIO()
    handler = LineHandler(stream)
    assert handler.fd is None
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    logger = _logger(handler, "test.logs.stream")
    event(logger, logging.INFO, "request", path="/api/v1/services", status=200)
    event(logger, logging.INFO, "request", path="/secret")
    assert stream.getvalue() == "INFO request path=/api/v1/services status=200\n"


def test_set_levels_raises_one_package_and_skips_a_malformed_entry(caplog):
    engine, other = logging.getLogger("test.levels.pkg.engine"), logging.getLogger("test.levels.other")
    try:
        set_levels(" test.levels.pkg = DEBUG ,test.levels.other=warning, nonsense, test.levels.x=loud")
        assert engine.getEffectiveLevel() == logging.DEBUG  # a package's level reaches its modules
        assert other.getEffectiveLevel() == logging.WARNING
        assert [r.getMessage() for r in caplog.records if r.name == "lvsguard.logs"] == [
            'log_level_ignored entry=nonsense expected="LOGGER=LEVEL"',
            'log_level_ignored entry="test.levels.x=loud" expected="LOGGER=LEVEL"',
        ]
    finally:
        for name in ("test.levels.pkg", "test.levels.other"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_a_module_raised_to_debug_reaches_the_root_handler_under_an_info_root():
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        set_levels("test.levels.loud=debug")
        logging.getLogger("test.levels.loud.module").debug("seen")
        logging.getLogger("test.levels.quiet").debug("not seen")
        assert stream.getvalue() == "DEBUG test.levels.loud.module seen\n"
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("test.levels.loud").setLevel(logging.NOTSET)


def test_logfmt_escapes_every_control_character_so_a_value_cannot_forge_or_repaint_a_line():
    forged = "/x\r2026-01-01 INFO request path=/ok\x1b[2K\x00\x07\x7f\x85\u2028\u2029\x9b"
    text = logfmt_value(forged)
    assert text == ('"/x\\r2026-01-01 INFO request path=/ok\\x1b[2K\\x00\\x07\\x7f\\x85\\u2028\\u2029\\x9b"')
    assert all(c.isprintable() for c in text)
    assert logfmt_value("a\x1bb") == '"a\\x1bb"'  # no space, quote or equals sign: quoted all the same
