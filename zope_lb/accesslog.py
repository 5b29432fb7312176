"""The access log: one line per request on the logger ``zope_lb.access``.

Theory of operation
-------------------
``LoadBalancer.__call__`` opens an :class:`Entry` when the request arrives
(only if the logger would write it), the proxy fills in the pool, backend,
queue wait and time to first byte, and the line is written when the response
iterable is closed: only then are the bytes sent known, and whether the
client stayed to the end. ``end`` says in one word how the request ended
(:data:`ENDS`).

Formats: ``combined`` is Apache's combined format, with the zope_lb fields
after it as ``key=value`` words, so log tools still parse it; ``json`` is one
object per line with the same fields. Every value a client controls (request
line, Referer, User-Agent) is escaped the way Apache escapes it (``\\"``,
``\\\\``, ``\\xhh``), so no line can forge another.

The request's thread only times the request and hands the entry to the
balancer's :class:`~zope_lb.accesswriter.LineWriter`, whose thread builds and
writes the line within ``access_log.flush`` (20 ms): waitress reads a
connection's next request only once the previous one's thread is done, so
that thread must not wait for the log's disk, nor for the GIL after it. With
``access_log.flush = 0`` (or the writer full) the request's thread writes the
line itself. Either way the line is built cheaply: one f-string, a time stamp
cached per second, and a ``LogRecord`` built directly (``Logger.info`` would
look up the caller's file and line on every call, which is of no use here).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .accesswriter import LineWriter
from .headers import Network, client_address, upstream_target

ACCESS = logging.getLogger("zope_lb.access")

FORMATS = ("combined", "json", "off")

#: How a request can end, one word each.
ENDS = {
    "answered": "a backend answered, and the client got the whole answer",
    "retried": "answered, after a failure on another backend",
    "client_gone": "the client went away before the end of the answer",
    "timeout": "the backend did not answer within timeout.read (504)",
    "queue_full": "refused: every slot busy and the queue full (503)",
    "queue_timeout": "refused: waited queue.timeout for a slot (503)",
    "no_backend": "no backend was available or could be reached (503)",
    "backend_error": "the backend failed: refused, broke off, bad answer (502)",
    "bad_request": "zope_lb refused the request itself (400, 405)",
    "local": "zope_lb answered itself (health, admin, 404, the wrapped app)",
    "error": "zope_lb failed unexpectedly (500 from the server)",
}

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# What may stand unescaped in a quoted field: printable ASCII except '"' and '\'.
_PLAIN = re.compile(r'[ !#-\[\]-~]*').fullmatch


def escape(value: str) -> str:
    """``value`` safe inside a quoted log field (Apache's escaping)."""
    if _PLAIN(value):
        return value
    try:
        data = value.encode("latin-1")  # WSGI strings are bytes decoded as latin-1
    except UnicodeEncodeError:
        data = value.encode("utf-8", "surrogateescape")
    out = []
    for byte in data:
        if byte == 0x22:
            out.append('\\"')
        elif byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def _ms(seconds: float) -> int:
    return int(seconds * 1000 + 0.5)


class Entry:
    """One request's line, filled in as it goes; written once, at :meth:`finish`."""

    __slots__ = ("log", "environ", "start", "status", "sent", "backend", "pool", "wait",
                 "ttfb", "end", "_done")

    def __init__(self, log: AccessLog, environ: dict[str, Any], start: float):
        self.log = log
        self.environ = environ
        self.start = start
        self.status = 0
        self.sent = 0  # body bytes handed to the server for the client
        self.backend = "-"
        self.pool = "-"
        self.wait = 0.0  # seconds in the queue, over all attempts
        self.ttfb = -1.0  # seconds from sending to the backend's first byte; -1: none
        self.end = "local"
        self._done = False

    def body_closed(self, sent: int, complete: bool) -> None:
        """The backend's answer was closed after ``sent`` bytes: write the line."""
        self.sent = sent
        if not complete and self.end in ("answered", "retried"):
            self.end = "client_gone"
        self.finish()

    def finish(self) -> None:
        """Write the line (once)."""
        if not self._done:
            self._done = True
            self.log.emit(self)


class AccessLog:
    """Formats and writes the access log lines of one balancer."""

    def __init__(self, fmt: str = "combined", trusted: Sequence[Network] = (), *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 logger: logging.Logger = ACCESS,
                 writer: LineWriter | None = None):
        if fmt not in ("combined", "json"):
            raise ValueError(f"access log format {fmt!r}: use combined or json")
        self.trusted = tuple(trusted)
        self.clock = clock
        self.wall_clock = wall_clock
        self.logger = logger
        self.writer = writer  # None: the request's thread writes its line
        self._line = self._combined if fmt == "combined" else self._json
        self._stamp: tuple[int, str] = (-1, "")
        self._iso_stamp: tuple[int, str] = (-1, "")

    def open(self, environ: dict[str, Any]) -> Entry | None:
        """An entry for this request, or None when the logger would drop it."""
        if not self.logger.isEnabledFor(logging.INFO):
            return None
        return Entry(self, environ, self.clock())

    def emit(self, entry: Entry) -> None:
        """The request ended now: time it, and have its line written (by the
        writer thread, or here when there is none or it is full)."""
        total = self.clock() - entry.start
        received = self.wall_clock() - total
        writer = self.writer
        if writer is None or not writer.put(self.write, entry, received, total):
            self.write(entry, received, total)

    def write(self, entry: Entry, received: float, total: float) -> None:
        """Format ``entry``'s line and hand it to the logger's handlers."""
        logger = self.logger
        try:
            line = self._line(entry, received, total)
        except Exception:  # never let a log line break a response
            logger.exception("access log line could not be built")
            return
        logger.handle(logger.makeRecord(logger.name, logging.INFO, "(access)", 0, line, (),
                                        None))

    def _time(self, received: float) -> str:
        """``01/Dec/2026:00:35:42 +0000`` (local time, as Apache), cached per second."""
        second = int(received)
        cached = self._stamp
        if cached[0] == second:
            return cached[1]
        t = time.localtime(second)
        offset = t.tm_gmtoff // 60
        sign = "-" if offset < 0 else "+"
        offset = abs(offset)
        text = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:"
                f"{t.tm_min:02d}:{t.tm_sec:02d} {sign}{offset // 60:02d}{offset % 60:02d}")
        self._stamp = (second, text)
        return text

    def _iso_time(self, received: float) -> str:
        """``2026-12-01T00:35:42+0000`` (local time), cached per second."""
        second = int(received)
        cached = self._iso_stamp
        if cached[0] == second:
            return cached[1]
        text = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
        self._iso_stamp = (second, text)
        return text

    def _combined(self, entry: Entry, received: float, total: float) -> str:
        environ = entry.environ
        get = environ.get
        client = client_address(environ, self.trusted) or "-"
        request = (f'{get("REQUEST_METHOD", "-")} {get("REQUEST_URI") or upstream_target(environ)} '
                   f'{get("SERVER_PROTOCOL", "-")}')
        referer = get("HTTP_REFERER", "-")
        agent = get("HTTP_USER_AGENT", "-")
        if not _PLAIN(f"{client}{request}{referer}{agent}"):  # one check for the usual case
            client, request = escape(client), escape(request)
            referer, agent = escape(referer), escape(agent)
        ttfb = entry.ttfb
        return (
            f'{client} - - [{self._time(received)}] "{request}" {entry.status} '
            f'{entry.sent or "-"} "{referer}" "{agent}" pool={entry.pool} '
            f"backend={entry.backend} wait_ms={_ms(entry.wait)} "
            f"ttfb_ms={_ms(ttfb) if ttfb >= 0 else '-'} "
            f"total_ms={_ms(total)} end={entry.end}"
        )

    def _json(self, entry: Entry, received: float, total: float) -> str:
        environ = entry.environ
        ttfb = entry.ttfb
        return json.dumps({
            "time": self._iso_time(received),
            "client": client_address(environ, self.trusted) or None,
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("REQUEST_URI") or upstream_target(environ),
            "protocol": environ.get("SERVER_PROTOCOL"),
            "status": entry.status,
            "bytes": entry.sent,
            "referer": environ.get("HTTP_REFERER"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "pool": None if entry.pool == "-" else entry.pool,
            "backend": None if entry.backend == "-" else entry.backend,
            "wait_ms": _ms(entry.wait),
            "ttfb_ms": _ms(ttfb) if ttfb >= 0 else None,
            "total_ms": _ms(total),
            "end": entry.end,
        }, ensure_ascii=True)


class LoggedBody:
    """Wraps an answer zope_lb (or the wrapped app) gave itself: counts its bytes
    and writes the entry at ``close()``."""

    __slots__ = ("_body", "_entry", "_sent")

    def __init__(self, body: Iterable[bytes], entry: Entry):
        self._body = body
        self._entry = entry
        self._sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._entry.sent = self._sent
            self._entry.finish()


class LoggedList(list):  # type: ignore[type-arg]
    """A list answer (it keeps ``len()``, so the server can set Content-Length),
    whose ``close()`` writes the entry."""

    def __init__(self, body: list[bytes], entry: Entry):
        super().__init__(body)
        self.entry = entry
        entry.sent = sum(len(chunk) for chunk in body)

    def close(self) -> None:
        self.entry.finish()
