"""One backend: its address, its state, its counters and its urllib3 pool.

State machine (written as data in :data:`TRANSITIONS`)::

    up ──fail──> down ──recover──> up
    up/down ──drain──> draining       (no new requests; closed when idle)
    any ──disable──> disabled ──enable──> up

A backend that fails ``passive.fall`` connects in a row goes down for
``passive.cooldown`` seconds; after that it is offered requests again, and a
single further failure sends it straight back down. Every change is reported
once, through the ``on_change`` callback the pool gives it. Slots (``active``)
are counted by the pool, which owns the lock that makes them atomic.
"""

from __future__ import annotations

import collections
import enum
import http.client
import logging
import queue
import re
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from urllib3 import HTTPConnectionPool, HTTPHeaderDict, Timeout
from urllib3.connection import HTTPConnection
from urllib3.response import BaseHTTPResponse
from urllib3.util import SKIP_HEADER
from urllib3.util.wait import wait_for_read

from .backendlines import BackendSpec
from .settings import Settings
from .stats import BackendStats
from .upstream import StrictResponse

log = logging.getLogger(__name__)

_HAS_POLL = hasattr(select, "poll")


# http.client's own rules for a header line: a name without ':' or white space,
# a value without a bare CR or LF (a folded continuation is let through).
_LEGAL_NAME = re.compile(rb"[^:\s][^:\r\n]*").fullmatch
_ILLEGAL_VALUE = re.compile(rb"\n(?![ \t])|\r(?![ \t\n])").search


class KeptAliveConnection(HTTPConnection):
    """A pooled connection to a backend.

    Its answers are read by :class:`zope_lb.upstream.StrictResponse`: a strict
    head with one deadline, interim 1xx answers skipped, and the connection
    closed at once when an answer was not framed exactly (bytes past its end, a
    body where none may be). Before it is reused, ``is_connected`` polls the
    socket once (about 0.5 µs, for every method): a byte or an EOF waiting on an
    idle connection means the backend closed it or sent more than it should,
    and urllib3 then opens a fresh one. It sends no header the client did not:
    no ``User-Agent`` of urllib3's, no ``Accept-Encoding: identity``.
    """

    _polled: Any = None  # the socket the poller watches
    _poller: Any = None

    def response_class(self, sock: Any, debuglevel: int = 0,  # type: ignore[override]
                       method: str | None = None, url: str | None = None) -> StrictResponse:
        """http.client builds each answer through this: ours, knowing its connection."""
        return StrictResponse(sock, debuglevel, method, url, connection=self)

    def getresponse(self) -> BaseHTTPResponse:  # type: ignore[override]
        """urllib3's ``getresponse`` without its second look at the headers.

        urllib3 checks the parsed headers for defects and rewrites obs-folded
        values (about 10 µs for a dozen headers); StrictResponse has refused
        both already, so its fields go straight into the HTTPHeaderDict. The
        rest is urllib3 2.x's own method (``_response_options`` is urllib3's,
        see ``tests/test_connection.py``, which holds the two to the same result).
        """
        options = self._response_options
        if options is None:
            raise http.client.ResponseNotReady()
        self._response_options = None
        self.sock.settimeout(self.timeout)
        shutdown = getattr(self.sock, "shutdown", None)
        raw = http.client.HTTPConnection.getresponse(self)
        return urllib3.HTTPResponse(
            body=raw,
            headers=HTTPHeaderDict(raw.msg._headers),  # type: ignore[attr-defined]
            status=raw.status,
            version=raw.version,
            version_string=getattr(self, "_http_vsn_str", "HTTP/?"),
            reason=raw.reason,
            preload_content=options.preload_content,
            decode_content=options.decode_content,
            original_response=raw,
            enforce_content_length=options.enforce_content_length,
            request_method=options.request_method,
            request_url=options.request_url,
            sock_shutdown=shutdown,
        )

    @property
    def is_connected(self) -> bool:
        """Whether the idle socket is still open with nothing unread on it."""
        sock = self.sock
        if sock is None:
            return False
        if not _HAS_POLL:  # not on Linux: urllib3's own check (select)
            return not wait_for_read(sock, timeout=0.0)
        if sock is not self._polled:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            self._poller = poller
            self._polled = sock
        return not self._poller.poll(0)

    def putrequest(self, method: str, url: str, skip_host: bool = False,
                   skip_accept_encoding: bool = False) -> None:
        # http.client would add "Accept-Encoding: identity"; the client's own
        # Accept-Encoding, if any, is forwarded as one of its headers.
        super().putrequest(method, url, skip_host=skip_host, skip_accept_encoding=True)

    def request(self, method: str, url: str, body: Any = None,  # type: ignore[override]
                headers: Any = None, **options: Any) -> None:
        if headers is None or "User-Agent" not in headers:
            headers = {**(headers or {}), "User-Agent": SKIP_HEADER}  # not urllib3's own
        super().request(method, url, body, headers, **options)

    def putheader(self, header: str, *values: str) -> None:  # type: ignore[override]
        """Buffer one header line, checked by http.client's rules, in one step.

        urllib3 and http.client take about 3 µs a header between them (a
        SKIP_HEADER scan, then encode and check each value in a list), and
        every proxied request carries six or more. A single str value, which
        is every header zope_lb sends, is encoded and checked here directly
        and handed to http.client's ``_output``, where its own ``putheader``
        puts it; anything else goes the long way. ``tests/test_connection.py``
        holds the two ways to the same bytes and the same refusals.
        """
        if len(values) == 1 and type(header) is str:
            value = values[0]
            if type(value) is str and value != SKIP_HEADER:
                name = header.encode("ascii")
                if not _LEGAL_NAME(name):
                    raise ValueError(f"Invalid header name {name!r}")
                data = value.encode("latin-1")
                if _ILLEGAL_VALUE(data):
                    raise ValueError(f"Invalid header value {data!r}")
                self._output(name + b": " + data)  # type: ignore[attr-defined]
                return
        super().putheader(header, *values)


class ConnectionStack:
    """The idle connections of a non-blocking urllib3 pool (its ``QueueCls``):
    last in, first out, as urllib3's ``LifoQueue``, without the Condition a
    queue that can wait needs. A pool of zope_lb never waits for a connection
    (``block=False``: when all are out it opens another; the slots of
    ``maxconn`` bound how many), and a get and a put cost 0.6 µs here against
    3 µs. ``get`` raises ``queue.Empty`` when none is idle, ``put`` raises
    ``queue.Full`` when ``maxsize`` are, as urllib3 expects."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()

    def get(self, block: bool = False, timeout: float | None = None) -> Any:
        try:
            return self._items.pop()  # atomic: no lock needed
        except IndexError:
            raise queue.Empty from None

    def put(self, item: Any, block: bool = False, timeout: float | None = None) -> None:
        with self._lock:
            if len(self._items) >= self.maxsize:
                raise queue.Full
            self._items.append(item)

    def qsize(self) -> int:
        return len(self._items)


class BackendConnectionPool(HTTPConnectionPool):
    """A backend's urllib3 pool: KeptAliveConnections, kept in a ConnectionStack
    (zope_lb's pools never block)."""

    ConnectionCls = KeptAliveConnection
    QueueCls = ConnectionStack  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any):
        if kwargs.get("block"):
            raise ValueError("a BackendConnectionPool never blocks: block=False")
        super().__init__(*args, **kwargs)


class State(str, enum.Enum):
    UP = "up"
    DOWN = "down"
    DRAINING = "draining"
    DISABLED = "disabled"


TRANSITIONS: dict[tuple[State, str], State] = {
    (State.UP, "fail"): State.DOWN,
    (State.DOWN, "recover"): State.UP,
    (State.UP, "drain"): State.DRAINING,
    (State.DOWN, "drain"): State.DRAINING,
    (State.DISABLED, "drain"): State.DRAINING,
    (State.UP, "disable"): State.DISABLED,
    (State.DOWN, "disable"): State.DISABLED,
    (State.DRAINING, "disable"): State.DISABLED,
    (State.DISABLED, "enable"): State.UP,
    (State.DRAINING, "enable"): State.UP,
}


def next_state(state: State, event: str) -> State | None:
    """The state ``event`` leads to from ``state``, or None if it changes nothing."""
    return TRANSITIONS.get((state, event))


StateListener = Callable[["Backend", State, State, str], None]

#: urllib3 keeps this many idle connections for a backend with maxconn=0 (unlimited).
UNLIMITED_POOL_SIZE = 32


class Backend:
    """A live backend. Failure counts change under its lock; reads are lock-free."""

    def __init__(
        self,
        spec: BackendSpec,
        *,
        maxconn: int,
        timeout_connect: float,
        timeout_read: float,
        fall: int,
        cooldown: float,
        rise: int = 2,
        probe_fall: int = 3,
        slowstart: float = 0.0,
        auto_recover: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateListener | None = None,
        pool_factory: Callable[..., Any] = BackendConnectionPool,
    ):
        self.spec = spec
        self.id = spec.id
        self.address = spec.address
        self.url_host = spec.url_host  # a cheap first test for rewrite_locations
        self.base_weight = spec.weight
        self.backup = spec.backup
        self.maxconn = maxconn
        self.fall = fall
        self.cooldown = cooldown
        self.rise = rise
        self.probe_fall = probe_fall
        self.slowstart = slowstart
        # Without active health checks, a backend that went down is offered
        # requests again after the cool-down; with them, only passing probes
        # bring it back.
        self.auto_recover = auto_recover
        self._clock = clock
        self._set_timeouts(timeout_connect, timeout_read)
        self._pool_factory = pool_factory
        self.pool = self._new_pool(maxconn or UNLIMITED_POOL_SIZE)
        self.state = State.UP
        self.reason = ""
        self.down_until = 0.0
        self.ramp_until = 0.0  # slow start: the weight is ramping until then
        # Slot counts, changed only under the owning pool's lock (pool.py).
        self.active = 0
        self.requests = 0
        self.token = ""  # the affinity cookie value, set by the pool
        self.pool_name = ""  # the pool it belongs to, set by the pool
        self.label = self.id  # what pages call it (never the address), set by the pool
        self.failures = 0
        self.consecutive_failures = 0
        self.probe_passes = 0
        self.probe_failures = 0
        self.last_probe: tuple[float, bool, str] | None = None  # (when, passed, detail)
        self.stats = BackendStats(clock)
        self._on_change = on_change
        self._lock = threading.Lock()

    def _new_pool(self, size: int) -> Any:
        return self._pool_factory(
            self.spec.host, self.spec.port,
            maxsize=size, block=False, timeout=self.timeout, retries=False,
        )

    def fresh_pool(self) -> Any:
        """A one-connection pool of its own, for a retry that must not reuse a
        pooled (possibly stale) connection. The caller closes it."""
        return self._new_pool(1)

    def __repr__(self) -> str:
        return f"<Backend {self.id} {self.address} {self.state.value}>"

    @property
    def weight(self) -> float:
        """The weight strategies see: during slow start it ramps from 5 % of the
        configured weight to all of it, so a cold Zope client is not flooded."""
        ramp_until = self.ramp_until
        if not ramp_until:
            return self.base_weight
        remaining = ramp_until - self._clock()
        if remaining <= 0:
            self.ramp_until = 0.0
            return self.base_weight
        return self.base_weight * max(0.05, 1.0 - remaining / self.slowstart)

    def available(self, now: float) -> bool:
        """Whether the backend may take a new request at ``now``."""
        state = self.state
        if state is State.UP:
            return True
        if state is State.DOWN and self.auto_recover and now >= self.down_until:
            self._change("recover", f"tried again after {self.cooldown:g} s cool-down")
            return self.state is State.UP
        return False

    def record_success(self) -> None:
        if self.consecutive_failures:
            self.consecutive_failures = 0

    def record_failure(self, reason: str, now: float) -> None:
        """Count a failed request (passive check); ``fall`` in a row: down at once."""
        with self._lock:
            self.failures += 1
            self.consecutive_failures += 1
            tripped = self.consecutive_failures >= self.fall
            if tripped:
                self.down_until = now + self.cooldown
                self.probe_passes = 0  # back up only after health.rise new passes
        if tripped:
            count = self.consecutive_failures
            self._change("fail", f"{count} failed request{'s' * (count > 1)} in a row: {reason}")

    def record_probe(self, passed: bool, detail: str, now: float) -> None:
        """Count an active probe; ``rise`` passes bring a down backend back up (with
        slow start), ``probe_fall`` failures take an up one down."""
        with self._lock:
            self.last_probe = (now, passed, detail)
            if passed:
                self.probe_passes += 1
                self.probe_failures = 0
                change = self.state is State.DOWN and self.probe_passes >= self.rise
            else:
                self.probe_failures += 1
                self.probe_passes = 0
                change = self.state is State.UP and self.probe_failures >= self.probe_fall
            count = self.probe_passes if passed else self.probe_failures
        if not change:
            return
        if passed:
            self.consecutive_failures = 0
            self._change("recover", f"{count} probe{'s' * (count > 1)} passed")
        else:
            self._change("fail", f"{count} probe{'s' * (count > 1)} failed: {detail}")

    # -- administrative changes --

    def configure(self, settings: Settings) -> None:
        """Take new timeouts and health rules without losing connections or state."""
        self.fall = settings.passive_fall
        self.cooldown = settings.passive_cooldown
        self.rise = settings.health_rise
        self.probe_fall = settings.health_fall
        self.slowstart = settings.slowstart
        self.auto_recover = not settings.health_interval
        self._set_timeouts(settings.timeout_connect, settings.timeout_read)
        self.pool.timeout = self.timeout

    def _set_timeouts(self, connect: float, read: float) -> None:
        """The urllib3 Timeout its pools are made with, and the same two numbers
        as floats, which the request path (``exchange.send``) takes as they are."""
        self.timeout = Timeout(connect=connect, read=read)
        self.timeouts = (connect, read)

    def disable(self, reason: str = "disabled by an administrator") -> None:
        self._change("disable", reason)

    def enable(self, reason: str = "enabled by an administrator") -> None:
        if getattr(self.pool, "pool", True) is None:  # closed by a drain: reconnect
            self.pool = self._new_pool(self.maxconn or UNLIMITED_POOL_SIZE)
        self._change("enable", reason)

    def drain(self, reason: str = "removed from the configuration") -> None:
        """Take no new requests; close the pool once the last one finished."""
        self._change("drain", reason)
        with self._lock:
            idle = self.active == 0
        if idle:
            self.pool.close()

    def close(self) -> None:
        self.pool.close()

    def start_slowly(self) -> None:
        """A backend that just joined (a new address of a ``resolve`` line) ramps
        up like a recovered one: a new replica's caches are cold too."""
        if self.slowstart:
            self.ramp_until = self._clock() + self.slowstart

    def _change(self, event: str, reason: str) -> None:
        with self._lock:
            old = self.state
            new = next_state(old, event)
            if new is None:
                return
            self.state = new
            self.reason = reason
            if new is State.UP and old is State.DOWN and self.slowstart:
                self.ramp_until = self._clock() + self.slowstart
        if self._on_change is not None:
            self._on_change(self, old, new, reason)
