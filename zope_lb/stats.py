"""What the status page shows of a backend's last minute: requests, errors, latency.

Kept per backend in fixed memory: 60 one-second buckets of counts, and the
latencies of the most recent requests. Recording costs a lock and a few list
operations on the request path; percentiles are computed only when read.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

WINDOW = 60  # seconds
SAMPLES = 1024  # latencies kept for the percentiles


class BackendStats:
    __slots__ = ("_clock", "_lock", "_second", "_requests", "_errors", "_latencies")

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._lock = threading.Lock()
        self._second = [0] * WINDOW  # which absolute second each bucket holds
        self._requests = [0] * WINDOW
        self._errors = [0] * WINDOW
        self._latencies: deque[tuple[float, float]] = deque(maxlen=SAMPLES)

    def record(self, ok: bool, seconds: float) -> None:
        """One finished request: whether it went well, and how long the backend took."""
        now = self._clock()
        second = int(now)
        slot = second % WINDOW
        with self._lock:
            if self._second[slot] != second:
                self._second[slot] = second
                self._requests[slot] = 0
                self._errors[slot] = 0
            self._requests[slot] += 1
            if not ok:
                self._errors[slot] += 1
            self._latencies.append((now, seconds))

    def snapshot(self) -> dict[str, float | int | None]:
        """Requests and errors in the last minute, and p50/p95 latency in ms."""
        now = self._clock()
        oldest = int(now) - WINDOW + 1
        with self._lock:
            requests = sum(r for s, r in zip(self._second, self._requests, strict=True)
                           if s >= oldest)
            errors = sum(e for s, e in zip(self._second, self._errors, strict=True)
                         if s >= oldest)
            recent = sorted(t for at, t in self._latencies if at >= now - WINDOW)
        return {
            "requests_1m": requests,
            "errors_1m": errors,
            "p50_ms": _percentile(recent, 0.50),
            "p95_ms": _percentile(recent, 0.95),
        }


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return round(ordered[index] * 1000, 1)
