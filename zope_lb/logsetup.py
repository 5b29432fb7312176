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
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)-5.5s [%(name)s] %(message)s"
        )
    queue_logger = logging.getLogger("waitress.queue")
    if queue_logger.level == logging.NOTSET:
        queue_logger.setLevel(logging.ERROR)
    return problem
