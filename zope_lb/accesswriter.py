"""Writes the access log's lines from a thread of its own, a batch at a time.

Why: the line used to be formatted and written by the request's worker thread
after the last byte went out, before waitress let that connection's next
request in. Writing it there meant a system call, which hands the GIL to
another thread; getting it back took 0.8 ms on average under load (15 ms at
the 99th percentile; 17 us and 59 us with this writer), and the client's next
request waited all that time. With two 20 ms backends that was about 1 % of
the requests a second (``benchmarks/handoffs.py``, ``benchmarks/README.md``).

Theory of operation
-------------------
The worker only appends ``(write, args)`` to a deque: no lock, no system call,
no thread woken, except the first line of a batch, which sets an Event. The
writer thread wakes on that Event, waits ``interval`` for the rest of the batch
to gather, and calls each ``write`` in order. An idle balancer's writer sleeps
without a timeout.

Nothing is dropped. When ``limit`` lines are waiting (the log's disk stalls),
``put`` refuses and the caller writes the line itself, as it would without a
writer: memory stays bounded and a stalled log slows requests down, as it
always did. ``close()`` writes what is waiting; a line put after it is written
by the thread that puts it. Only a process killed outright (SIGKILL, a crash)
loses the lines of its last ``interval``.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Lines that may wait for the writer; past it, request threads write their own.
PENDING_LIMIT = 10_000


class LineWriter:
    """Calls the ``write`` callables handed to :meth:`put` in a thread of its own,
    in the order they came, within ``interval`` seconds."""

    def __init__(self, interval: float, *, limit: int = PENDING_LIMIT,
                 name: str = "zope_lb access log"):
        self.interval = interval
        self.limit = limit
        self._pending: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque())
        self._wake = threading.Event()  # set by the first line of a batch
        self._stop = threading.Event()
        self._closed = False
        self._draining = threading.Lock()  # one drain at a time keeps the order
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, write: Callable[..., None], *args: Any) -> bool:
        """Have ``write(*args)`` called soon. False (nothing queued) when the
        writer is full or closed: the caller then writes the line itself."""
        pending = self._pending
        if self._closed or len(pending) >= self.limit:
            return False
        pending.append((write, args))
        if not self._wake.is_set():  # a plain read; the lock only once per batch
            self._wake.set()
        if self._closed:  # closed meanwhile, after its last drain: write it now
            self.drain()
        return True

    @property
    def waiting(self) -> int:
        """Lines put and not yet written."""
        return len(self._pending)

    def drain(self) -> None:
        """Write every line waiting now, in order (the writer thread, close, tests)."""
        with self._draining:
            pending = self._pending
            while pending:
                write, args = pending.popleft()
                try:
                    write(*args)
                except Exception:  # a line must never end the writer
                    log.exception("access log line could not be written")

    def close(self, timeout: float = 5.0) -> None:
        """Write what is waiting and stop the thread. Safe to call twice."""
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.drain()

    def _run(self) -> None:
        wake, stop = self._wake, self._stop
        while not stop.is_set():
            wake.wait()
            stop.wait(self.interval)  # let the batch gather; at once on close
            wake.clear()  # before the drain: a line put during it wakes us again
            self.drain()
