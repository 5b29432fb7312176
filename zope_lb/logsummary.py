"""Warnings that repeat per request, logged once and then summarised.

Theory of operation
-------------------
During an outage every request meets the same trouble ("backend b1:
connection refused"), and a line per request floods the log (issue 10: 180
lines a second). Each such warning carries a *key* naming the trouble
(what happened, to which backend object: two balancers in one process never
share a key), not the request. The first occurrence of a
key is logged in full and opens a window of ``window`` seconds; further
occurrences in the window are only counted. When the window ends with a
count, one line says so: the latest message and "... and 912 more in the
last 10 s", and a new window opens, so a trouble that lasts writes one line
per key per window. A window that ends without further occurrences closes
quietly; the next occurrence is logged in full again.

A window is closed either by the next occurrence of any key after its end
(no thread needed while requests come) or by a timer (one ``threading.Timer``
per summariser at most, armed only while some count is pending), so the last
count of an outage is reported within about one window even when no request
follows. The clock is injected for tests; ``flush()`` closes due windows.
The access log is unaffected: it still has every request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

#: Seconds over which a repeating warning is summarised.
WINDOW = 10.0


class _Window:
    __slots__ = ("start", "count", "level", "msg", "args")

    def __init__(self, start: float, level: int, msg: str, args: tuple[Any, ...]):
        self.start = start
        self.count = 0  # occurrences counted (not logged) in this window
        self.level = level
        self.msg = msg
        self.args = args


class Summariser:
    """Logs the first occurrence of a key, then one summary line per window."""

    def __init__(self, logger: logging.Logger, window: float = WINDOW, *,
                 clock: Callable[[], float] = time.monotonic, timer: bool = True):
        self.logger = logger
        self.window = window
        self.clock = clock
        self._timer_enabled = timer
        self._timer: threading.Timer | None = None
        self._windows: dict[Hashable, _Window] = {}
        self._lock = threading.Lock()

    def warning(self, key: Hashable, msg: str, *args: Any) -> None:
        """A WARNING that may repeat per request, summarised by ``key``."""
        self.log(logging.WARNING, key, msg, *args)

    def info(self, key: Hashable, msg: str, *args: Any) -> None:
        """An INFO line that may repeat per request, summarised by ``key``."""
        self.log(logging.INFO, key, msg, *args)

    def log(self, level: int, key: Hashable, msg: str, *args: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        with self._lock:
            due = self._due(now) if self._windows else []
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(now, logging.NOTSET, msg, args)
                emit: list[tuple[int, str, tuple[Any, ...]]] = [(level, msg, args)]
            else:
                window.count += 1
                window.msg, window.args = msg, args  # the summary shows the latest
                if level > window.level:
                    window.level = level
                emit = []
                self._arm(now)
        for line in (*due, *emit):
            self.logger.log(line[0], line[1], *line[2])

    def flush(self) -> None:
        """Close every window that has ended: its summary line, if it counted any."""
        with self._lock:
            self._timer = None
            due = self._due(self.clock())
            if any(w.count for w in self._windows.values()):
                self._arm(self.clock())
        for level, msg, args in due:
            self.logger.log(level, msg, *args)

    def _due(self, now: float) -> list[tuple[int, str, tuple[Any, ...]]]:
        """Summary lines for windows ended by ``now``, at the highest level their
        events had; called with the lock held."""
        lines = []
        for key, window in list(self._windows.items()):
            elapsed = now - window.start
            if elapsed < self.window:
                continue
            if window.count:
                lines.append((window.level, window.msg + " ... and %d more in the last %g s",
                              (*window.args, window.count, round(elapsed, 1))))
                window.start = now
                window.count = 0
                window.level = logging.NOTSET
            else:
                del self._windows[key]
        return lines

    def _arm(self, now: float) -> None:
        """Start the timer that closes pending windows, unless one runs; lock held."""
        if not self._timer_enabled or self._timer is not None:
            return
        first = min(w.start for w in self._windows.values() if w.count)
        timer = threading.Timer(max(0.0, first + self.window - now) + 0.01, self.flush)
        timer.daemon = True
        timer.name = "zope_lb-logsummary"
        self._timer = timer
        timer.start()

    def close(self) -> None:
        """Cancel the timer (pending counts are dropped)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
