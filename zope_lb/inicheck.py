"""``check_ini``: everything ``zope-lb serve`` would read from an ini, checked.

The steps live below it: :mod:`inifile` (the text, the parser, the app and
filter sections, the report), :mod:`servercheck` (``[server:*]``) and
:mod:`logcheck` (``[loggers]``). This module only runs them in order, so
imports flow one way: from here down to them, and from them down to inifile.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .inifile import (
    IniReport,
    check_interpolation,
    key_lines,
    parse,
    read_text,
    section_loop,
    walk_sections,
)
from .logcheck import check_logging
from .servercheck import check_server


def check_ini(path: str, app_name: str = "main", server_name: str | None = "main",
              also: Sequence[str] = ()) -> IniReport:
    """Everything ``zope-lb serve`` would read from ``path``, checked; never raises
    for a bad ini (an unexpected error becomes a problem too)."""
    path = os.path.abspath(path)
    report = IniReport(path)
    try:
        _check(report, app_name, server_name, also)
    except Exception as exc:  # the checker must name, never crash: last resort
        report.add(f"cannot be checked: {type(exc).__name__}: {exc}")
    return report


def _check(report: IniReport, app_name: str, server_name: str | None,
           also: Sequence[str]) -> None:
    text = read_text(report)
    if text is None:
        return
    report.lines = key_lines(text)
    parser = parse(report, text)
    if parser is None:
        return
    broken = check_interpolation(report, parser)
    from paste.deploy.loadwsgi import APP, SERVER, ConfigLoader

    try:
        loader = ConfigLoader(report.path)
    except Exception as exc:  # same text as above, so only an OS error is left
        report.add(f"cannot be read: {exc}")
        return
    for section, key in broken:  # reported: read them literally to check the rest
        raw = loader.parser.get(section, key, raw=True)
        loader.parser.set(section, key, raw.replace("%", "%%"))
    for name in (app_name, *also):
        loop = section_loop(loader, APP, name)
        if loop:  # PasteDeploy would recurse until Python gives up
            report.add(f"is part of itself: {' -> '.join(f'[{s}]' for s in loop)}", loop[-2])
            continue
        walk_sections(report, loader, APP, name, top=True)
    for name in ([server_name] if server_name else []) + list(also):
        check_server(report, loader, SERVER, name)
    check_logging(report, text)
