"""Logging for a process that serves an ini: its ``[loggers]`` sections, as
pserve reads them, else INFO to stderr. A module of its own because both
``zope-lb serve`` (:mod:`zope_lb.cli`) and ``zope-lb demo``
(:mod:`zope_lb.demo`) set it up, and the CLI imports the demo.
"""

from __future__ import annotations

import configparser
import logging
import logging.config
import os
import time

#: ``zope-lb serve``'s log format when the ini has no ``[loggers]``.
LOG_FORMAT = "%(asctime)s %(levelname)-5.5s [%(name)s] %(message)s"


class SecondFormatter(logging.Formatter):
    """logging's Formatter, the date and time text made once a second, not once
    a line: with the access log on, every request writes a line, and
    ``localtime`` + ``strftime`` were a third of its formatting. The text is
    the same to the character (``2026-12-01 06:30:35,579``)."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or self.converter is not time.localtime:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second  # one tuple, swapped whole: threads see a pair that belongs
        if cached[0] != second:
            cached = (second, time.strftime(self.default_time_format, time.localtime(second)))
            self._second = cached
        if not self.default_msec_format:
            return cached[1]
        return self.default_msec_format % (cached[1], record.msecs)


def setup_logging(ini_path: str) -> str | None:
    """Logging from the ini's ``[loggers]`` sections (as pserve does), else INFO
    to stderr. waitress's per-queued-request warning is quieted either way.

    Returns the problem, in one line, when the sections cannot be used (INFO to
    stderr is set up instead): never a traceback for a broken ``[handler_*]``."""
    problem = None
    parser = configparser.ConfigParser()
    try:
        parser.read(ini_path, encoding="utf-8")
        if parser.has_section("loggers"):
            here = os.path.dirname(ini_path)
            logging.config.fileConfig(
                ini_path, {"__file__": ini_path, "here": here}, disable_existing_loggers=False,
                encoding="utf-8",
            )
    except Exception as exc:  # fileConfig raises whatever the sections make it raise
        problem = f"{ini_path}: [loggers] logging cannot be set up: {type(exc).__name__}: {exc}"
        parser = configparser.ConfigParser()
    if not parser.has_section("loggers"):
        handler = logging.StreamHandler()
        handler.setFormatter(SecondFormatter(LOG_FORMAT))
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    queue_logger = logging.getLogger("waitress.queue")
    if queue_logger.level == logging.NOTSET:
        queue_logger.setLevel(logging.ERROR)
    return problem
