"""The live set of backends: slots, the wait queue, and changes without dropped requests.

Theory of operation
-------------------
Zope clients have few worker threads, so each backend has ``maxconn`` slots
(0: unlimited) and never has more requests in flight through this balancer.
:meth:`BackendPool.acquire` takes a slot on the backend the strategy picks;
:meth:`BackendPool.release` gives it back when the response iterable is
closed, which is when the backend is really free.

When every available backend is full, the request waits in one bounded FIFO
queue (``queue.size``) for at most ``queue.timeout`` seconds, then gets a 503.
A freed slot is handed to the oldest waiter that can use it (a waiter pinned
to one backend by its affinity cookie waits for that backend's slot), so a
newcomer never overtakes a waiting request. When the last available backend
goes away, the waiters get their 503 at once instead of at their timeout.

Backups take a request at once, in the same request, when no primary can:
every primary is down, or has just failed for this very request (it is in
``avoid``), or the request found the queue full or waited ``queue.timeout``
in it while a backup has a free slot. Only then: while a primary can take
requests, backups get none.

All slot counts and the queue are guarded by one lock per pool, so "find a
free backend and take its slot" is atomic. Readers of ``pool.backends`` (the
admin pages, the health checker) need no lock: the tuple is swapped whole by
:meth:`reconfigure`. A backend removed by a reconfiguration drains: no new
requests; the ones in flight finish; then its connections are closed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .backend import Backend, BackendConnectionPool, State
from .backendlines import BackendSpec
from .errors import NoBackendAvailable
from .settings import Settings
from .strategies import Strategy

log = logging.getLogger(__name__)


def affinity_token(backend_id: str) -> str:
    """The affinity cookie's value for a backend: stable across restarts (it
    depends only on the configured id), and not the backend's address."""
    return hashlib.sha256(f"zope_lb:{backend_id}".encode()).hexdigest()[:16]


def _label(backends: tuple[Backend, ...]) -> None:
    """Give each backend the name pages show: its ``id=``, else ``backend N`` by
    its place in the list (never its address)."""
    for number, backend in enumerate(backends, 1):
        spec = backend.spec
        backend.label = spec.id if spec.id != spec.address else f"backend {number}"


class _Waiter:
    __slots__ = ("strategy", "environ", "avoid", "prefer", "event", "backend", "error")

    def __init__(self, strategy: Strategy, environ: Mapping[str, Any],
                 avoid: Collection[Backend], prefer: Backend | None):
        self.strategy = strategy
        self.environ = environ
        self.avoid = avoid
        self.prefer = prefer
        self.event = threading.Event()
        self.backend: Backend | None = None
        self.error: NoBackendAvailable | None = None


class BackendPool:
    def __init__(
        self,
        settings: Settings,
        specs: tuple[BackendSpec, ...] | None = None,
        *,
        name: str = "default",
        clock: Callable[[], float] = time.monotonic,
        pool_factory: Callable[..., Any] = BackendConnectionPool,
        listener: Callable[[BackendPool, Backend, State, State, str], None] | None = None,
    ):
        self.name = name
        self.listener = listener
        self.clock = clock
        self._pool_factory = pool_factory
        self._lock = threading.RLock()  # RLock: a state change may call back in
        self._waiters: deque[_Waiter] = deque()
        self._handing_over = False
        self.settings = settings
        specs = settings.backends if specs is None else specs
        self.backends: tuple[Backend, ...] = tuple(self._build(s, settings) for s in specs)
        self._tokens = {b.token: b for b in self.backends}
        _label(self.backends)

    def _build(self, spec: BackendSpec, settings: Settings) -> Backend:
        backend = Backend(
            spec,
            maxconn=settings.maxconn_of(spec),
            timeout_connect=settings.timeout_connect,
            timeout_read=settings.timeout_read,
            fall=settings.passive_fall,
            cooldown=settings.passive_cooldown,
            rise=settings.health_rise,
            probe_fall=settings.health_fall,
            slowstart=settings.slowstart,
            auto_recover=not settings.health_interval,
            clock=self.clock,
            on_change=self._state_changed,
            pool_factory=self._pool_factory,
        )
        backend.token = affinity_token(spec.id)
        backend.pool_name = self.name
        return backend

    # -- choosing ---------------------------------------------------------------------

    def candidates(self, now: float, avoid: Collection[Backend] = ()) -> list[Backend]:
        """Backends that may take requests now: primaries, or else backups.
        A backend of weight 0 takes no new requests, so it is not one: a
        pool whose only primary has weight 0 goes to its backups. A primary
        in ``avoid`` (it just failed this request) does not count: when every
        primary is down or avoided, the backups are the candidates."""
        backends = self.backends
        up = State.UP
        primaries = [b for b in backends if not b.backup and b.base_weight > 0
                     and (b.state is up or b.available(now))]
        if primaries and (not avoid or any(b not in avoid for b in primaries)):
            return primaries
        return self._backups(backends, now)

    @staticmethod
    def _backups(backends: tuple[Backend, ...], now: float) -> list[Backend]:
        """Backups that may take requests now (up or available, weight above 0)."""
        up = State.UP
        return [b for b in backends if b.backup and b.base_weight > 0
                and (b.state is up or b.available(now))]

    def backup_next(self, failed: Backend, avoid: Collection[Backend]) -> bool:
        """Whether, after ``failed`` (a primary) and ``avoid`` failed this request,
        a backup would take it: then it is tried even when ``retries`` are spent."""
        if failed.backup:
            return False
        tried = [*avoid, failed]
        return any(b.backup for b in self.candidates(self.clock(), tried)
                   if b not in tried)

    def _spare_backup(self, strategy: Strategy, environ: Mapping[str, Any],
                      avoid: Collection[Backend]) -> Backend | None:
        """A backup with a free slot, for a request the full primaries cannot
        take in time; its slot is taken. Called with the lock held."""
        spare = [b for b in self._backups(self.backends, self.clock())
                 if b not in avoid and (not b.maxconn or b.active < b.maxconn)]
        if not spare:
            return None
        backend = strategy.pick(spare, environ, avoid)
        if backend is not None:
            backend.active += 1
            backend.requests += 1
        return backend

    def by_token(self, token: str | None) -> Backend | None:
        """The backend an affinity cookie names, if it is still configured."""
        return self._tokens.get(token) if token else None

    @staticmethod
    def _choose(strategy: Strategy, candidates: list[Backend], environ: Mapping[str, Any],
                avoid: Collection[Backend], prefer: Backend | None) -> Backend | None:
        if prefer is not None and prefer in candidates and prefer not in avoid:
            # Pinned: this backend or nothing (wait for its slot).
            return prefer if (not prefer.maxconn or prefer.active < prefer.maxconn) else None
        return strategy.pick(candidates, environ, avoid)

    def acquire(
        self,
        strategy: Strategy,
        environ: Mapping[str, Any],
        avoid: Collection[Backend] = (),
        prefer: Backend | None = None,
    ) -> Backend:
        """Take a slot on a backend, waiting in the queue if all are full.

        Raises NoBackendAvailable when none is available, the queue is full, or
        the wait timed out.
        """
        settings = self.settings
        with self._lock:
            candidates = self.candidates(self.clock(), avoid)
            if not candidates or (avoid and all(b in avoid for b in candidates)):
                raise NoBackendAvailable("no backend is available")
            if not self._waiters:
                backend = self._choose(strategy, candidates, environ, avoid, prefer)
                if backend is not None:
                    backend.active += 1
                    backend.requests += 1
                    return backend
            if len(self._waiters) >= settings.queue_size:
                backend = self._spare_backup(strategy, environ, avoid)
                if backend is not None:
                    return backend
                raise NoBackendAvailable(
                    f"all backends are busy and {settings.queue_size} requests already wait",
                    kind="queue_full",
                )
            waiter = _Waiter(strategy, environ, avoid, prefer)
            self._waiters.append(waiter)
        waiter.event.wait(settings.queue_timeout)
        with self._lock:
            if waiter.backend is not None:
                return waiter.backend
            if waiter.error is None:
                self._waiters.remove(waiter)
                backend = self._spare_backup(strategy, environ, avoid)
                if backend is not None:
                    return backend
                waiter.error = NoBackendAvailable(
                    f"all backends stayed busy for {settings.queue_timeout:g} s",
                    kind="queue_timeout",
                )
            raise waiter.error

    def release(self, backend: Backend) -> None:
        """Give a slot back; the oldest waiter that can use a free slot gets it."""
        with self._lock:
            backend.active -= 1
            close = backend.state is State.DRAINING and backend.active == 0
            if self._waiters:
                self._hand_over()
        if close:
            backend.close()

    def _hand_over(self) -> None:
        """Give free slots to waiters, oldest first. Called with the lock held.

        Finding candidates may change a backend's state, whose callback calls
        here again: the guard keeps that inner call from serving a waiter twice.
        """
        if self._handing_over:
            return
        self._handing_over = True
        try:
            self._serve_waiters()
        finally:
            self._handing_over = False

    def _serve_waiters(self) -> None:
        candidates = self.candidates(self.clock())
        if not candidates:
            for waiter in self._waiters:
                waiter.error = NoBackendAvailable("no backend is available")
                waiter.event.set()
            self._waiters.clear()
            return
        for waiter in list(self._waiters):
            backend = self._choose(waiter.strategy, candidates, waiter.environ,
                                   waiter.avoid, waiter.prefer)
            if backend is None:
                continue
            backend.active += 1
            backend.requests += 1
            waiter.backend = backend
            self._waiters.remove(waiter)
            waiter.event.set()
            if all(b.maxconn and b.active >= b.maxconn for b in candidates):
                return

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def primary_counts(self) -> tuple[int, int]:
        """(up, all) primaries: what the log lines, events and health report count."""
        primaries = [b for b in self.backends if not b.backup]
        return sum(1 for b in primaries if b.state is State.UP), len(primaries)

    # -- changes ----------------------------------------------------------------------

    def reconfigure(self, settings: Settings, specs: tuple[BackendSpec, ...] | None = None) -> None:
        """Apply a new, already validated backend list at once.

        Backends whose line did not change keep their connections, counters
        and state; new ones start taking requests; removed ones drain.
        """
        specs = settings.backends if specs is None else specs
        with self._lock:
            old = {(b.spec, b.maxconn): b for b in self.backends}
            kept: list[Backend] = []
            for spec in specs:
                backend = old.pop((spec, settings.maxconn_of(spec)), None)
                kept.append(backend or self._build(spec, settings))
            self.backends = tuple(kept)
            self._tokens = {b.token: b for b in kept}
            _label(self.backends)
            self.settings = settings
            for backend in old.values():
                backend.drain()
            if self._waiters:
                self._hand_over()
        log.info(
            "pool %s reconfigured: %d backends (%s), %d draining",
            self.name, len(kept), ", ".join(b.address for b in kept) or "none", len(old),
        )

    def close(self) -> None:
        with self._lock:
            for waiter in self._waiters:
                waiter.error = NoBackendAvailable("the balancer is shutting down", kind="shutdown")
                waiter.event.set()
            self._waiters.clear()
        for backend in self.backends:
            backend.close()

    def _state_changed(self, backend: Backend, old: State, new: State, reason: str) -> None:
        healthy, total = self.primary_counts()
        level = logging.WARNING if new is State.DOWN else logging.INFO
        log.log(
            level,
            "backend %s (%s) %s -> %s: %s; %d of %d primaries up",
            backend.id, backend.address, old.value, new.value, reason, healthy, total,
        )
        if self._waiters:
            with self._lock:
                self._hand_over()
        if self.listener is not None:
            self.listener(self, backend, old, new, reason)
