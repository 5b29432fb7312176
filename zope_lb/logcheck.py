"""The ``[loggers]``, ``[handlers]`` and ``[formatters]`` sections checked as
``logging.config.fileConfig`` will read them, without setting anything up.

fileConfig reads the ini with a parser of its own (keys in lower case,
``%(here)s`` known), resolves handler classes and evaluates ``args`` in the
``logging`` namespace; this does the same, but creates no handler, so no log
file is opened: a log file's directory is checked to exist and be writable.
"""

from __future__ import annotations

import configparser
import logging
import logging.handlers  # so fileConfig's names resolve: handlers.RotatingFileHandler
import os
from collections.abc import Iterable
from typing import Any

from .inifile import IniReport, interpolation_message, parse_problems


def check_logging(report: IniReport, text: str) -> None:
    """``[loggers]`` and what it names, read as ``logging.config.fileConfig`` reads
    it (its own parser, keys in lower case); classes are resolved and ``args``
    evaluated, but no handler is created, so no log file is opened."""
    parser = configparser.ConfigParser({"__file__": report.path,
                                        "here": os.path.dirname(report.path)})
    try:
        parser.read_string(text, source=report.path)
    except configparser.Error as exc:
        parse_problems(report, text, exc)
        return
    if not parser.has_section("loggers"):
        return
    report.logging_sections = {
        s: dict(parser.items(s, raw=True)) for s in parser.sections()
        if s in ("loggers", "handlers", "formatters")
        or s.startswith(("logger_", "handler_", "formatter_"))}
    formatters = _keys(report, parser, "formatters")
    handlers = _keys(report, parser, "handlers")
    loggers = _keys(report, parser, "loggers")
    report.loggers = loggers
    for name in formatters:
        _check_formatter(report, parser, f"formatter_{name}")
    for name in handlers:
        _check_handler(report, parser, f"handler_{name}", formatters)
    if loggers and "root" not in loggers:
        report.add("must list root (and may list more)", "loggers", "keys")
    for name in loggers:
        section = f"logger_{name}"
        if not _has(report, parser, section, "loggers"):
            continue
        _check_level(report, parser, section)
        if name != "root" and not parser.get(section, "qualname", raw=True, fallback=""):
            report.add("is required: the logger's name, e.g. qualname = zope_lb",
                       section, "qualname")
        for handler in _names(parser.get(section, "handlers", raw=True, fallback="")):
            if handler not in handlers:
                report.add(f"{handler!r} is not in [handlers] keys", section, "handlers")


def _keys(report: IniReport, parser: configparser.ConfigParser, section: str) -> list[str]:
    if not parser.has_section(section):
        report.add("is required with [loggers] (keys = ...)", section)
        return []
    return _names(parser.get(section, "keys", raw=True, fallback=""))


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _has(report: IniReport, parser: configparser.ConfigParser, section: str,
         listed_in: str) -> bool:
    if parser.has_section(section):
        return True
    report.add(f"is missing: [{listed_in}] keys names it", section)
    return False


def _check_level(report: IniReport, parser: configparser.ConfigParser, section: str) -> None:
    level = parser.get(section, "level", raw=True, fallback="NOTSET")
    if not isinstance(logging.getLevelName(level), int):
        report.add(f"{level!r}: must be DEBUG, INFO, WARNING, ERROR, CRITICAL or NOTSET",
                   section, "level")


def _check_formatter(report: IniReport, parser: configparser.ConfigParser,
                     section: str) -> None:
    if not _has(report, parser, section, "formatters"):
        return
    fmt = parser.get(section, "format", raw=True, fallback=None)
    style = parser.get(section, "style", raw=True, fallback="%")
    if style not in ("%", "{", "$"):
        report.add(f"{style!r}: must be %, {{ or $", section, "style")
        return
    try:
        logging.Formatter(fmt, parser.get(section, "datefmt", raw=True, fallback=None),
                          style)  # type: ignore[arg-type]
    except (ValueError, TypeError, KeyError) as exc:
        report.add(f"{fmt!r}: {exc}", section, "format")


def _check_handler(report: IniReport, parser: configparser.ConfigParser, section: str,
                   formatters: Iterable[str]) -> None:
    if not _has(report, parser, section, "handlers"):
        return
    names = vars(logging)
    resolved: Any = None
    klass = parser.get(section, "class", raw=True, fallback="")
    if not klass:
        report.add("is required, e.g. class = StreamHandler", section, "class")
    else:
        try:
            resolved = eval(klass, names)  # as fileConfig does
        except Exception:
            resolved = None
        if not isinstance(resolved, type) or not issubclass(resolved, logging.Handler):
            report.add(f"{klass!r} is not a logging handler class (e.g. StreamHandler, "
                       "handlers.RotatingFileHandler)", section, "class")
    given: dict[str, Any] = {}
    for key, kind in (("args", tuple), ("kwargs", dict)):
        try:
            value = parser.get(section, key, fallback="()" if key == "args" else "{}")
        except (configparser.Error, ValueError) as exc:
            report.add(interpolation_message(exc), section, key)
            continue
        try:
            evaluated = eval(value, names)  # as fileConfig does
        except Exception as exc:
            report.add(f"{value!r} is not a Python {kind.__name__}: {exc}", section, key)
            continue
        if not isinstance(evaluated, kind):
            report.add(f"{value!r} must be a {kind.__name__}, e.g. "
                       + ("(sys.stderr,)" if kind is tuple else "{}"), section, key)
            continue
        given[key] = evaluated
    if isinstance(resolved, type) and issubclass(resolved, logging.FileHandler):
        args, kwargs = given.get("args", ()), given.get("kwargs", {})
        filename = args[0] if args else kwargs.get("filename")
        if isinstance(filename, (str, os.PathLike)):
            problem = _unwritable(os.path.abspath(os.fspath(filename)))
            if problem:
                report.add(problem, section, "args" if args else "kwargs")
    if parser.has_option(section, "level"):
        _check_level(report, parser, section)
    formatter = parser.get(section, "formatter", raw=True, fallback="")
    if formatter and formatter not in formatters:
        report.add(f"{formatter!r} is not in [formatters] keys", section, "formatter")


def _unwritable(path: str) -> str:
    """Why a log file cannot be written there, or '' (checked without opening it)."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        return f"the log file's directory {directory} does not exist"
    if os.path.exists(path):
        return "" if os.access(path, os.W_OK) else f"the log file {path} is not writable"
    return "" if os.access(directory, os.W_OK | os.X_OK) else (
        f"the log file cannot be created: {directory} is not writable")
