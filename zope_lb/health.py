"""Active health checks: one checker thread per balancer probes every backend.

Theory of operation
-------------------
The checker thread wakes when the next probe is due, probes every backend
that is due at once (concurrently, on a small bounded executor, so one hung
Zope client does not delay the others), feeds each result to the backend
(``Backend.record_probe``: ``health.rise`` passes in a row bring a down
backend back, ``health.fall`` failures take an up one down), and schedules
the backend's next probe ``health.interval`` later, jittered by 10 % so that
several balancers do not probe in step. The first probe of each backend is
spread over the first interval for the same reason.

Probes use their own one-connection pool per backend, never the request
pool, so a probe neither waits for nor takes one of the backend's slots. A
probe that does not answer within ``health.timeout`` fails: a Zope client
whose ZEO server is gone may hang rather than fail.

Each backend is probed by its pool's rules (per-pool ``health.*`` options):
its own path, port, timeout and interval; a pool with ``health.interval = 0``
is not probed. With ``health.port`` the probe goes to the backend's host on
that port (plone.observability answers there in a thread of its own, so a
probe still answers while every Zope worker is busy), and every probe detail
names the port, so a failure reads ``probe port 8081: connection refused``.

With ``health.storage`` (old name ``health.zeo``) a probe that passed also
reads the client's Control Panel (as a Manager, ``health.auth``): a ZEO
client that says ``(disconnected)`` fails, and the checker remembers which
storage each client named.  A RelStorage client needs no such page to fail:
it asks its database at the start of every request, so with PostgreSQL
stopped even ``GET /`` answers 500 at once, and with PostgreSQL hung it
hangs (the probe times out).  When a probe fails, the remembered storage is
named in the reason, and the checker tries a bare TCP connect to it (no
byte sent, bounded by ``health.timeout``): ``connection refused`` there
says ``storage unavailable``; anything else only names the storage, since
the balancer may not be on the database's network at all.

``close()`` stops the thread and the executor within a bounded time; the
balancer calls it from ``LoadBalancer.close()`` and at interpreter exit.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3 import HTTPConnectionPool, Timeout

from .backend import Backend, State
from .errors import BackendConnectError, BackendTimeout, UpstreamError
from .proxy import translate_errors
from .settings import Settings
from .verify import host_port, parse_database_location, relstorage_database, zeo_servers

log = logging.getLogger(__name__)

USER_AGENT = "zope_lb-health"
#: Bytes of a probe's body that are read; the rest is dropped with the connection.
PROBE_BODY_LIMIT = 64 * 1024
MAX_PROBE_WORKERS = 8
#: Where a Zope client shows its storage and whether ZEO is connected (Manager only).
ZEO_PAGE = "/Control_Panel/Database/main/manage_main"


@dataclass(frozen=True)
class StorageName:
    """The storage a client's Control Panel named: for reasons, and where to
    try a TCP connect when the client fails."""

    text: str  # 'ZEO 127.0.0.1:8100', 'PostgreSQL 127.0.0.1:5432/zodb'
    servers: tuple[tuple[str, int], ...]
    relstorage: bool


def storage_name(location: str) -> StorageName | None:
    """What a Database Location names, if it is a ZEO server or a RelStorage
    database (pure); a FileStorage or an unknown storage is None."""
    servers = zeo_servers(location)
    if servers:
        shown = ",".join(host_port(h, p) for h, p in servers)
        return StorageName(f"ZEO {shown}", servers, relstorage=False)
    database = relstorage_database(location)
    if database is not None:
        return StorageName(database.describe(), database.servers, relstorage=True)
    return None


def storage_reason(name: StorageName, cause: str | None, detail: str) -> str:
    """A failed probe's reason naming the storage (pure): ``cause`` is what a
    TCP connect to the storage got, None when it connected."""
    if cause == "connection refused":
        return f"storage unavailable: {name.text} ({cause}); {detail}"
    if cause is None:
        return f"{detail}; storage {name.text}"
    return f"{detail}; storage {name.text} ({cause})"


def tcp_cause(servers: Iterable[tuple[str, int]], timeout: float) -> str | None:
    """None when one of ``servers`` accepts a TCP connection, else why not;
    all of them within ``timeout``.  Nothing is sent: PostgreSQL logs nothing
    for a connection without data."""
    cause = "no address"
    deadline = time.monotonic() + timeout
    for host, port in servers:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"no answer from here in {timeout:g} s"
        try:
            socket.create_connection((host, port), timeout=left).close()
            return None
        except ConnectionRefusedError:
            cause = "connection refused"
        except TimeoutError:
            cause = f"no answer from here in {timeout:g} s"
        except socket.gaierror:
            cause = f"{host} does not resolve here"
        except OSError as exc:
            cause = exc.strerror or type(exc).__name__
    return cause


def probe_verdict(status: int, expect: frozenset[int]) -> tuple[bool, str]:
    """Whether a probe's answer passes, and the reason when it does not (pure)."""
    if status in expect:
        return True, f"status {status}"
    return False, f"status {status}"


class HealthChecker:
    def __init__(
        self,
        backends: Callable[[], Iterable[Backend]],
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        pool_factory: Callable[..., Any] = HTTPConnectionPool,
        rng: random.Random | None = None,
        on_probe: Callable[[Backend, bool], None] | None = None,
        settings_of: Callable[[Backend], Settings] | None = None,
    ):
        self._backends = backends
        self._on_probe = on_probe
        self._settings_of = settings_of  # a backend's pool's settings (per-pool options)
        self.settings = settings
        self._clock = clock
        self._pool_factory = pool_factory
        self._rng = rng or random.Random()
        self._due: dict[Backend, float] = {}
        # per backend: (port, timeout) it was made for, and the one-connection pool
        self._probe_pools: dict[Backend, tuple[tuple[int, float], Any]] = {}
        self._auth_warned: set[Backend] = set()
        self._storage: dict[Backend, StorageName] = {}  # what each Control Panel named
        self._failing: set[Backend] = set()  # its last probe failed
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=MAX_PROBE_WORKERS, thread_name_prefix="zope_lb-probe"
        )
        self._thread = threading.Thread(target=self._run, name="zope_lb-health", daemon=True)

    def start(self) -> HealthChecker:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop probing; bounded by ``timeout`` plus one probe's timeout."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
        for _, pool in self._probe_pools.values():
            pool.close()
        self._probe_pools.clear()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # -- the loop ---------------------------------------------------------------------

    def settings_of(self, backend: Backend) -> Settings:
        """The rules ``backend`` is probed by: its pool's (they may change at run time)."""
        return self.settings if self._settings_of is None else self._settings_of(backend)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self._clock()
            backends = [b for b in self._backends()
                        if b.state in (State.UP, State.DOWN)
                        and self.settings_of(b).health_interval]
            self._forget_removed(backends)
            due = []
            # the shortest interval bounds the wait, so a changed one is seen in time
            interval = min((self.settings_of(b).health_interval for b in backends),
                           default=self.settings.health_interval or 1.0)
            for backend in backends:
                when = self._due.get(backend)
                if when is None:  # new: spread first probes over one interval
                    self._due[backend] = now + self._rng.uniform(
                        0, self.settings_of(backend).health_interval)
                elif when <= now:
                    due.append(backend)
            if due:
                if self._stop.is_set():
                    return
                try:
                    futures = [self._executor.submit(self.probe, b) for b in due]
                except RuntimeError:  # close() shut the executor down meanwhile
                    return
                for backend, future in zip(due, futures, strict=True):
                    try:
                        passed, detail = future.result()
                    except CancelledError:  # close() cancelled it
                        return
                    except Exception as exc:  # a bug, not a backend failure: keep probing
                        log.exception("health probe of %s crashed", backend.address)
                        passed, detail = False, f"probe crashed: {exc}"
                    if self._stop.is_set():
                        return
                    backend.record_probe(passed, detail, self._clock())
                    if self._on_probe is not None:
                        self._on_probe(backend, passed)
                    self._due[backend] = self._clock() + (
                        self.settings_of(backend).health_interval
                        * self._rng.uniform(0.9, 1.1))
            next_due = min(self._due.values(), default=self._clock() + interval)
            self._stop.wait(min(interval, max(0.01, next_due - self._clock())))

    def _forget_removed(self, backends: list[Backend]) -> None:
        live = set(backends)
        for backend in [b for b in self._due if b not in live]:
            del self._due[backend]
            self._storage.pop(backend, None)
            self._failing.discard(backend)
            made = self._probe_pools.pop(backend, None)
            if made is not None:
                made[1].close()

    # -- one probe (I/O) ------------------------------------------------------------

    def probe(self, backend: Backend) -> tuple[bool, str]:
        """Probe ``backend`` once: (passed, detail)."""
        settings = self.settings_of(backend)
        passed, detail = self._probe(backend, settings)
        if settings.health_port:
            detail = f"probe port {settings.health_port}: {detail}"
        if passed:
            self._failing.discard(backend)
        else:
            self._failing.add(backend)
        return passed, detail

    def _probe_pool(self, backend: Backend, settings: Settings) -> Any:
        """The backend's one-connection probe pool, made again when its port or
        timeout changed at run time."""
        port = settings.health_port or backend.spec.port
        wanted = (port, settings.health_timeout)
        made = self._probe_pools.get(backend)
        if made is not None and made[0] == wanted:
            return made[1]
        if made is not None:
            made[1].close()
        timeout = Timeout(connect=settings.health_timeout, read=settings.health_timeout)
        pool = self._pool_factory(
            backend.spec.host, port, maxsize=1, block=False, timeout=timeout, retries=False,
        )
        self._probe_pools[backend] = (wanted, pool)
        return pool

    def _probe(self, backend: Backend, settings: Settings) -> tuple[bool, str]:
        pool = self._probe_pool(backend, settings)
        headers = {"User-Agent": USER_AGENT}
        if settings.health_host:
            headers["Host"] = settings.health_host
        started = time.monotonic()
        try:
            with translate_errors(backend, settings.health_timeout):
                response = pool.urlopen(
                    settings.health_method, settings.health_path, headers=headers,
                    retries=False, redirect=False, preload_content=False,
                    decode_content=False,
                )
                try:
                    response.read(PROBE_BODY_LIMIT, decode_content=False)
                finally:
                    if response.isclosed():
                        response.release_conn()
                    else:
                        response.close()
                        response.release_conn()
        except BackendTimeout:
            return self._failed(backend, f"timeout after {settings.health_timeout:g} s")
        except BackendConnectError as exc:  # the client itself is gone: not its storage
            return False, exc.reason
        except UpstreamError as exc:
            return self._failed(backend, exc.reason)
        passed, detail = probe_verdict(response.status, settings.health_expect)
        detail = f"{detail} in {(time.monotonic() - started) * 1000:.0f} ms"
        if not passed:
            return self._failed(backend, detail)
        if _storage_checked(settings):
            known = self._storage.get(backend)
            # A RelStorage client that answered has just asked its database: its
            # page is read again only after a failure (it may have been reconfigured).
            if known is None or not known.relstorage or backend in self._failing:
                return self.zeo_check(backend, pool, detail)
            return passed, f"{detail}; {known.text}"
        return passed, detail

    def _failed(self, backend: Backend, detail: str) -> tuple[bool, str]:
        """A failed probe; with ``health.storage``, its reason names the storage."""
        settings = self.settings_of(backend)
        known = self._storage.get(backend) if _storage_checked(settings) else None
        if known is None:
            return False, detail
        cause = tcp_cause(known.servers, settings.health_timeout)
        return False, storage_reason(known, cause, detail)

    def zeo_check(self, backend: Backend, pool: Any, detail: str) -> tuple[bool, str]:
        """A Zope client that lost its ZEO server still answers ``GET /`` at once
        while every uncached read hangs: its Control Panel says ``(disconnected)``."""
        settings = self.settings_of(backend)
        headers = {"User-Agent": USER_AGENT,
                   **urllib3.util.make_headers(basic_auth=settings.health_auth)}
        try:
            with translate_errors(backend, settings.health_timeout):
                response = pool.urlopen("GET", ZEO_PAGE, headers=headers, retries=False,
                                        redirect=False, preload_content=True)
        except BackendTimeout:
            return False, f"ZEO check: timeout after {settings.health_timeout:g} s"
        except UpstreamError as exc:
            return False, f"ZEO check: {exc.reason}"
        if response.status in (401, 403):
            if backend not in self._auth_warned:
                self._auth_warned.add(backend)
                log.warning("health.storage: %s (%s) refused health.auth (status %d); "
                            "the storage check is skipped for it", backend.id, backend.address,
                            response.status)
            return True, detail
        if response.status >= 500:  # a RelStorage client whose database just went away
            return self._failed(backend, f"storage check: status {response.status}")
        found = parse_database_location(response.data.decode("utf-8", "replace"))
        named = storage_name(found[0]) if found is not None else None
        if named is not None:
            self._storage[backend] = named
        if found is not None and found[1] is False:
            return self._failed(backend, "ZEO disconnected")
        if named is not None and named.relstorage:
            return True, f"{detail}; {named.text}"
        return True, f"{detail}; ZEO connected" if found and found[1] else detail


def _storage_checked(settings: Settings) -> bool:
    return settings.health_storage or settings.health_zeo
