"""A ``[server:NAME]`` checked as waitress will read it, without listening.

waitress's own converters (``Adjustments``) check each key on its own, so every
bad key is named (with "did you mean" for a misspelt one), then the keys
together for the combinations waitress refuses (``listen`` with ``port``).
Also refused: what waitress accepts but cannot serve with (``threads = 0``, a
port over 65535 that it would wrap round, non-ASCII digits). A server that is
not waitress is listed as it is, unchecked.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from .inifile import IniReport, ServerConf, find_section, load_context
from .settings import format_value


def check_server(report: IniReport, loader: Any, object_type: Any, name: str) -> None:
    section = find_section(report, loader, object_type, name, top=False)
    if section is None:
        return
    use = loader.parser.get(section, "use", fallback="")
    context = load_context(report, loader, object_type, name, section, use)
    if context is None:
        return
    local_conf = {str(k): str(v) for k, v in context.local_conf.items()}
    server = ServerConf(section, use, local_conf)
    report.servers.append(server)
    try:
        from waitress import serve_paste
    except ImportError:  # pragma: no cover - waitress is a dependency
        return
    from .server import server_factory  # egg:zope_lb#server: waitress, with our defaults

    if getattr(context, "object", None) in (serve_paste, server_factory):
        server.waitress = True
        server.values = check_waitress(report, section, local_conf)


def check_waitress(report: IniReport, section: str, local_conf: Mapping[str, str]
                   ) -> dict[str, str]:
    """waitress's own checks (``Adjustments``), key by key and then together, plus
    the values it accepts but cannot serve with; the converted values."""
    from waitress.adjustments import Adjustments

    known = [name for name, _ in Adjustments._params]
    before = len(report.problems)
    values: dict[str, str] = {}
    for key, value in local_conf.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, 1)
            hint = f"did you mean {close[0]}?" if close else (
                "see waitress's documentation (Arguments to waitress.serve)")
            report.add(f"not a waitress setting; {hint}", section, key)
            continue
        convert = Adjustments._param_map[key]
        try:
            if convert is int and not re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
                raise ValueError("must be a whole number (ASCII digits)")
            converted = convert(value)
            if key == "listen":  # parsed (and resolved) by the constructor only
                Adjustments(listen=value)
        except Exception as exc:  # waitress raises ValueError, or worse for odd text
            report.add(f"{value!r}: {exc}", section, key)
            continue
        problem = _unservable(key, value, converted)
        if problem:
            report.add(problem, section, key)
            continue
        values[key] = (" ".join(value.split()) if key in ("listen", "host", "sockets")
                       else _server_value(converted))
    if len(report.problems) == before:
        try:
            Adjustments(**dict(local_conf))
        except Exception as exc:
            report.add(f"{exc}", section, next(iter(local_conf), ""))
    return values


def _server_value(value: object) -> str:
    """A converted waitress setting as ini text."""
    if isinstance(value, (set, frozenset, list, tuple)):
        return " ".join(sorted(str(item) for item in value))
    return format_value(value)


def _unservable(key: str, value: str, converted: Any) -> str:
    """What waitress accepts but cannot serve with (issue: threads = 0 starts a
    server that answers nothing; a port over 65535 silently wraps around)."""
    if key == "threads" and converted < 1:
        return f"{value!r}: must be 1 or more (waitress would answer no request)"
    ports: list[str] = []
    if key == "port":
        ports = [value.strip()]
    elif key == "listen":
        for item in value.split():
            host_part, sep, port = item.rpartition(":")
            if sep and "]" not in port and port:
                ports.append(port)
    for port in ports:
        if not port.isascii() or not port.isdigit() or int(port) > 65535:
            return f"{value!r}: port {port!r} must be a number from 0 to 65535"
    return ""
