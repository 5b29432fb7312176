"""The live set of backends, and how it changes without dropping requests.

Readers (every request) take ``pool.backends``, an immutable tuple swapped
whole by :meth:`BackendPool.reconfigure`, so they never need a lock and never
see a half-applied change. A backend removed by a reconfiguration drains: it
takes no new requests, the ones in flight finish on its open connections, and
its connection pool is closed when the last one is released.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from urllib3 import HTTPConnectionPool

from .backend import Backend, State
from .settings import BackendSpec, Settings

log = logging.getLogger(__name__)


class BackendPool:
    def __init__(
        self,
        settings: Settings,
        *,
        pool_factory: Callable[..., Any] = HTTPConnectionPool,
    ):
        self._pool_factory = pool_factory
        self._lock = threading.Lock()
        self.settings = settings
        self.backends: tuple[Backend, ...] = tuple(
            self._build(spec, settings) for spec in settings.backends
        )

    def _build(self, spec: BackendSpec, settings: Settings) -> Backend:
        return Backend(
            spec,
            maxconn=settings.maxconn_of(spec),
            timeout_connect=settings.timeout_connect,
            timeout_read=settings.timeout_read,
            fall=settings.passive_fall,
            cooldown=settings.passive_cooldown,
            on_change=self._log_change,
            pool_factory=self._pool_factory,
        )

    def candidates(self, now: float) -> list[Backend]:
        """Backends that may take a request now: primaries, or else backups."""
        backends = self.backends
        primaries = [b for b in backends if not b.backup and b.available(now)]
        if primaries:
            return primaries
        return [b for b in backends if b.backup and b.available(now)]

    def healthy_primaries(self) -> int:
        return sum(1 for b in self.backends if not b.backup and b.state is State.UP)

    def reconfigure(self, settings: Settings) -> None:
        """Apply a new, already validated backend list at once.

        Backends whose line did not change keep their connections, counters
        and state; new ones start taking requests; removed ones drain.
        """
        with self._lock:
            old = {(b.spec, b.maxconn): b for b in self.backends}
            kept: list[Backend] = []
            for spec in settings.backends:
                backend = old.pop((spec, settings.maxconn_of(spec)), None)
                kept.append(backend or self._build(spec, settings))
            self.backends = tuple(kept)
            self.settings = settings
        for backend in old.values():
            backend.drain()
        log.info(
            "backends reconfigured: %d in use, %d draining; %s",
            len(kept), len(old), ", ".join(b.address for b in kept) or "none",
        )

    def close(self) -> None:
        for backend in self.backends:
            backend.close()

    def _log_change(self, backend: Backend, old: State, new: State, reason: str) -> None:
        healthy = self.healthy_primaries()
        total = sum(1 for b in self.backends if not b.backup)
        level = logging.WARNING if new is State.DOWN else logging.INFO
        log.log(
            level,
            "backend %s (%s) %s -> %s: %s; %d of %d primaries up",
            backend.id, backend.address, old.value, new.value, reason, healthy, total,
        )

