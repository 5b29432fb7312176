"""The request path: pick a backend, forward, stream the answer back.

Theory of operation
-------------------
A request is tried on backends picked by the strategy until one answers with
a status line and headers; the answer's body is then streamed to the client
by :class:`ResponseBody`, whose ``close()`` (called by the WSGI server when
it is done, also when the client went away) returns the connection to the
backend's pool. The backend is not free when the WSGI app returns, but only
once it has sent its whole answer.

The slot is given back as soon as the backend's whole answer has been read
(for a small page: with the first read, before the client has it), since
the backend is free from then on; ``close()`` gives it back for an answer
that was not read to the end.

What is retried (DESIGN.md, "Retry only what is safe"):

- A connect failure (refused, timed out, name not found) sent nothing, so
  the request moves to another backend, whatever its method, up to
  ``retries`` times. The failure counts against the backend (passive check).
- A connection that breaks before any response byte arrives is most often a
  pooled keep-alive connection the backend closed just as it was reused.
  Such a request is retried once, on a fresh connection, when repeating it
  is safe: an idempotent method whose body (if any) was not yet read. urllib3
  does not tell a failed send from a failed read, so a POST is never
  repeated: it gets a 502 and the log names the backend.
- Nothing is retried after the response started.

urllib3's exceptions become ours in exactly one place, :func:`translated`.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from .accesslog import Entry
from .backend import Backend
from .errors import (
    BackendConnectError,
    BackendDisconnected,
    BackendProtocolError,
    BackendTimeout,
    NoBackendAvailable,
    UpstreamError,
)
from .exchange import Answer, send
from .headers import (
    public_origin,
    request_headers,
    request_scheme,
    response_headers,
    rewrite_locations,
    upstream_target,
    vhm_target,
)
from .logsummary import Summariser
from .pool import BackendPool
from .routing import Rule, cookie_value, has_cookie, matches_all
from .settings import Settings
from .strategies import Strategy
from .upstream import HeadTimeout

log = logging.getLogger(__name__)
#: Warnings that repeat per request during an outage: once, then summarised.
#: Every per-request trouble with one backend (refused, broke off, retried on
#: a fresh connection) shares the key ``("backend", backend)``: an outage of
#: one backend writes its first line, then one line per 10 s while it lasts.
SUMMARY = Summariser(log)

#: Methods that may be repeated: sending them twice has the effect of once.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "PROPFIND"})

CHUNK_SIZE = 64 * 1024

_DISCONNECTS = (http.client.RemoteDisconnected, ConnectionResetError,
                BrokenPipeError, ConnectionAbortedError)


#: What urllib3 and the socket layer may raise while talking to a backend.
BACKEND_ERRORS = (HTTPError, http.client.HTTPException, OSError)


def translated(exc: BaseException, backend: Backend, timeout_read: float) -> UpstreamError:
    """zope_lb's error for one of urllib3's (or the socket's): the one place
    where they are told apart (connect failures from read failures)."""
    where = f"{backend.id} ({backend.address})"  # the log's name; pages show the label
    label = getattr(backend, "label", backend.id)  # verify passes a stand-in without one
    if isinstance(exc, NameResolutionError):
        return BackendConnectError(f"host name not found: {exc.__cause__ or exc}", where,
                                   label=label, public="host name not found")
    if isinstance(exc, NewConnectionError):
        cause = exc.__cause__ or exc
        if isinstance(cause, ConnectionRefusedError):
            return BackendConnectError("connection refused", where, label=label,
                                       public="connection refused")
        return BackendConnectError(str(cause), where, label=label)
    if isinstance(exc, ConnectTimeoutError):
        return BackendConnectError("connect timed out", where, label=label,
                                   public="connect timed out")
    if isinstance(exc, ReadTimeoutError):
        if isinstance(exc.__cause__, HeadTimeout):
            reason = f"status line and headers not complete within {timeout_read:g} s"
        else:
            reason = f"no answer within {timeout_read:g} s"
        return BackendTimeout(reason, where, label=label, public=reason)
    if isinstance(exc, ProtocolError):
        broken = exc.args[1] if len(exc.args) > 1 else exc.__cause__
        if isinstance(broken, _DISCONNECTS):
            reason = "the backend closed the connection before answering"
            return BackendDisconnected(reason, where, label=label, public=reason)
        return BackendProtocolError(f"invalid response: {broken or exc}", where, label=label)
    return BackendProtocolError(f"invalid response: {exc}", where, label=label)


@contextmanager
def translate_errors(backend: Backend, timeout_read: float) -> Iterator[None]:
    """Turn urllib3's (and the socket's) exceptions into zope_lb's (off the hot path:
    health probes, verify)."""
    try:
        yield
    except BACKEND_ERRORS as exc:
        raise translated(exc, backend, timeout_read) from exc


class ClientBodyError(Exception):
    """The client's request body ended early or could not be read."""


class RequestBody:
    """The client's body as an iterable of chunks, read only as urllib3 sends it.

    ``started`` tells whether any of it was read: until then the request can
    still be sent again elsewhere.
    """

    __slots__ = ("_input", "_remaining", "started")

    def __init__(self, stream: Any, length: int | None):
        self._input = stream
        self._remaining = length  # None: read until EOF (chunked upload)
        self.started = False

    def __iter__(self) -> Iterator[bytes]:
        self.started = True
        read = self._input.read
        remaining = self._remaining
        try:
            while remaining is None or remaining > 0:
                size = CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining)
                chunk = read(size)
                if not chunk:
                    if remaining:
                        raise ClientBodyError(f"request body ended {remaining} bytes early")
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        except (OSError, ValueError) as exc:
            raise ClientBodyError(f"request body could not be read: {exc}") from exc


def request_body(environ: dict[str, Any]) -> tuple[RequestBody | None, bool]:
    """The body to forward, and whether it must be sent chunked (length unknown).

    Raises ValueError for a malformed Content-Length.
    """
    length_text = environ.get("CONTENT_LENGTH")
    if length_text:
        length = int(length_text)
        if length < 0:
            raise ValueError("negative Content-Length")
        if length == 0:
            return None, False
        return RequestBody(environ["wsgi.input"], length), False
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return RequestBody(environ["wsgi.input"], None), True
    return None, False


class ResponseBody:
    """The backend's body, streamed; ``close()`` frees the connection and the slot."""

    __slots__ = ("_response", "_pool", "_backend", "_first", "_on_close", "_closed",
                 "_freed", "_entry", "_sent", "_complete")

    def __init__(self, response: Any, pool: BackendPool, backend: Backend, first: bytes = b"",
                 on_close: Callable[[], None] | None = None, entry: Entry | None = None):
        self._response = response
        self._pool = pool
        self._backend = backend
        self._first = first
        self._on_close = on_close
        self._closed = False
        self._freed = False
        self._entry = entry  # the access log's line, written at close()
        self._sent = 0  # body bytes handed to the server
        self._complete = False  # the whole body was handed over
        if response.isclosed():  # the whole body came with the first read
            self._free()

    def _free(self) -> None:
        """Give the backend's slot back, once: as soon as its whole answer has been
        read (the backend is free then, even if the client is still receiving
        it), or at close() for an answer not read to the end."""
        if not self._freed:
            self._freed = True
            self._pool.release(self._backend)

    def __iter__(self) -> Iterator[bytes]:
        first = self._first
        if not first:
            self._complete = True
            return
        self._first = b""
        self._sent = len(first)
        yield first
        response = self._response
        if response.isclosed():  # the first read had it all: no second trip to urllib3
            self._complete = True
            return
        read1 = response.read1
        backend = self._backend
        try:
            while True:
                chunk = read1(CHUNK_SIZE)
                if response.isclosed():
                    self._free()
                if not chunk:
                    self._complete = True
                    return
                self._sent += len(chunk)
                yield chunk
        except (HTTPError, http.client.HTTPException, OSError) as exc:
            # Headers are out: all that is left is to cut the connection, so the
            # client sees a truncated response rather than a wrong one.
            if self._entry is not None:
                self._entry.end = ("timeout" if isinstance(exc, ReadTimeoutError)
                                   else "backend_error")
            SUMMARY.warning(("backend", backend),
                            "backend %s (%s): response body broke off: %s",
                            backend.id, backend.address, exc)
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        response = self._response
        try:
            if not response.isclosed():
                # Not read to the end (client went away, HEAD kept a body, error):
                # the connection is in an unknown state, so it is not reused.
                response.close()
            response.release_conn()
        finally:
            self._free()
            try:
                if self._on_close is not None:
                    self._on_close()
            finally:
                if self._entry is not None:
                    self._entry.body_closed(self._sent, self._complete)


def _may_retry(error: UpstreamError, method: str, body: RequestBody | None) -> bool:
    """DESIGN.md's retry rule: nothing sent, any method; sent, only an idempotent
    method whose body (if any) can still be sent again."""
    if body is not None and body.started:
        return False
    return not error.sent or method in IDEMPOTENT


def _unreachable(tried: list[Backend], last: UpstreamError | None) -> NoBackendAvailable:
    """503 for a request no backend could take: none up, or none could be reached."""
    if not tried or last is None:
        return NoBackendAvailable("no backend is available")
    names = ", ".join(b.label for b in tried)  # labels: this reason is shown on the page
    return NoBackendAvailable(f"no backend could be reached (tried {names}; {last.public})",
                              kind="unreachable")


def _affinity_cookie(settings: Settings, environ: dict[str, Any], backend: Backend) -> str:
    """The pool's affinity cookie naming ``backend`` (Secure over https)."""
    cookie = f"{settings.affinity_cookie}={backend.token}; Path=/; HttpOnly; SameSite=Lax"
    if request_scheme(environ, settings.forwarded_trusted) == "https":
        cookie += "; Secure"
    return cookie


class RequestObserver(Protocol):
    """Sees every attempt, for metrics; called on the request path, so cheap."""

    def request(self, pool: str, backend: str, status: int, seconds: float) -> None:
        """An attempt ended: the backend's status, or 502/504 for our errors."""

    def retry(self, pool: str, backend: str) -> None:
        """A failed attempt is being tried again on another backend."""

    def unavailable(self, pool: str, kind: str) -> None:
        """No backend could take a request; ``kind`` is NoBackendAvailable.kind
        (no_backend, queue_full, queue_timeout, shutdown)."""

    def probe(self, pool: str, backend: str, passed: bool) -> None:
        """An active health probe of a backend passed or failed."""


class Route:
    """A pool, its strategy, the rules that send a request to it, and the
    settings its requests run with (its own per-pool options; None: the proxy's)."""

    __slots__ = ("name", "rules", "pool", "strategy", "settings")

    def __init__(self, name: str, pool: BackendPool, strategy: Strategy,
                 rules: tuple[Rule, ...] = (), settings: Settings | None = None):
        self.name = name
        self.pool = pool
        self.strategy = strategy
        self.rules = rules
        self.settings = settings


class Proxy:
    """Forwards WSGI requests to the backends of the pool their route chooses."""

    def __init__(
        self,
        default: Route,
        settings: Settings,
        routes: tuple[Route, ...] = (),
        observer: RequestObserver | None = None,
    ):
        self.default = default
        self.routes = routes
        self.settings = settings
        self.observer = observer
        for route in (default, *routes):
            if route.settings is None:
                route.settings = settings

    def route(self, environ: dict[str, Any]) -> Route:
        """The first named pool whose rules all match, else the default pool."""
        for route in self.routes:
            if matches_all(route.rules, environ):
                return route
        return self.default

    def forward(self, environ: dict[str, Any], start_response: Callable[..., Any],
                entry: Entry | None = None) -> Any:
        """Answer the request from a backend.

        Raises :class:`UpstreamError` only before ``start_response`` was called,
        so the caller may still answer with an error page or a fallback app.
        ``entry`` (the access log's line) gets the pool, backend and timings.
        """
        route = self.route(environ) if self.routes else self.default
        settings = route.settings or self.settings  # the pool's own per-pool options
        pool = route.pool
        if entry is not None:
            entry.pool = route.name
        method = environ["REQUEST_METHOD"]
        target = upstream_target(environ)
        if settings.vhm_root or settings.vhm_base:
            origin = public_origin(environ, settings.forwarded_trusted, settings.vhm_base or "auto")
            target = vhm_target(target, origin, settings.vhm_root, settings.vhm_prefix,
                                settings.vhm_strip)
        headers = request_headers(environ, settings.forwarded_trusted, settings.preserve_host)
        body, chunked = request_body(environ)
        if body is not None and not chunked:
            headers["Content-Length"] = environ["CONTENT_LENGTH"]

        sticky = False
        token = None
        prefer = None
        if settings.affinity == "cookie":
            cookies = environ.get("HTTP_COOKIE", "")
            if not settings.affinity_when or has_cookie(cookies, settings.affinity_when):
                sticky = True
                token = cookie_value(cookies, settings.affinity_cookie)
                prefer = pool.by_token(token)  # a forged or stale value finds nothing

        observer = self.observer
        avoid: list[Backend] = []
        last_failure: UpstreamError | None = None
        while True:
            queued = pool.clock()
            try:
                backend = pool.acquire(route.strategy, environ, avoid, prefer)
            except NoBackendAvailable as exc:
                if entry is not None:
                    entry.wait += pool.clock() - queued
                if observer is not None:
                    observer.unavailable(route.name, exc.kind)
                if last_failure is None:
                    SUMMARY.warning(("unavailable", pool, exc.kind), "%s %s: %s",
                                    method, target, exc.reason)
                    raise
                if last_failure.sent:  # no other backend to retry on: the real error
                    raise last_failure from exc
                raise _unreachable(avoid, last_failure) from exc
            started = pool.clock()
            if entry is not None:
                entry.wait += started - queued
                entry.backend = backend.id
            try:
                response, first, on_close = self._send(backend, method, target, headers,
                                                       body, chunked)
            except ClientBodyError as exc:
                pool.release(backend)
                log.info("%s %s: %s", method, target, exc)
                raise
            except UpstreamError as exc:
                pool.release(backend)
                now = pool.clock()
                backend.record_failure(exc.reason, now)
                backend.stats.record(False, now - started)
                if observer is not None:
                    observer.request(route.name, backend.id, exc.status, now - started)
                if not _may_retry(exc, method, body) or (
                        len(avoid) >= settings.retries
                        and not (settings.retries and pool.backup_next(backend, avoid))):
                    SUMMARY.warning(("backend", backend), "%s %s: %s", method, target, exc)
                    if not exc.sent and avoid:
                        raise _unreachable([*avoid, backend], exc) from exc
                    raise
                SUMMARY.warning(("backend", backend),
                                "%s %s: %s; trying another backend", method, target, exc)
                if observer is not None:
                    observer.retry(route.name, backend.id)
                avoid.append(backend)
                last_failure = exc
                continue
            except BaseException:
                pool.release(backend)
                raise
            break
        now = pool.clock()
        failed = response.status in settings.passive_status
        if failed:
            backend.record_failure(f"answered {response.status}", now)
        else:
            backend.record_success()
        backend.stats.record(not failed and response.status < 500, now - started)
        if observer is not None:
            observer.request(route.name, backend.id, response.status, now - started)
        if entry is not None:
            entry.ttfb = now - started
            entry.status = response.status
            entry.end = "retried" if avoid else "answered"
        response_list = response_headers(response.headers)
        host = backend.url_host
        for _, value in response_list:
            if host in value:  # perhaps a redirect naming the backend itself: make it public
                origin = public_origin(environ, settings.forwarded_trusted,
                                       settings.vhm_base or "auto")
                response_list = rewrite_locations(response_list, backend.address, origin)
                break
        if sticky and token != backend.token:
            response_list.append(("Set-Cookie", _affinity_cookie(settings, environ, backend)))
        answer = ResponseBody(response, pool, backend, first, on_close, entry)
        try:
            start_response(f"{response.status} {response.reason}", response_list)
        except BaseException:
            answer.close()
            raise
        return answer

    def _send(self, backend: Backend, method: str, target: str,
              headers: dict[str, str], body: RequestBody | None,
              chunked: bool) -> tuple[Any, bytes, Callable[[], None] | None]:
        """Send the request; return the response, its first body chunk, and what
        to call when it is closed."""
        try:
            response = self._exchange(backend.pool, backend, method, target, headers,
                                     body, chunked)
            return response, self._first_chunk(response, backend), None
        except BackendDisconnected as exc:
            if method not in IDEMPOTENT or (body is not None and body.started):
                raise
            SUMMARY.info(("backend", backend), "%s %s: %s; retrying once on a fresh connection",
                         method, target, exc)
        fresh = backend.fresh_pool()
        try:
            response = self._exchange(fresh, backend, method, target, headers, body, chunked)
            return response, self._first_chunk(response, backend), fresh.close
        except BaseException:
            fresh.close()
            raise

    def _exchange(self, pool: Any, backend: Backend, method: str, target: str,
                 headers: dict[str, str], body: RequestBody | None, chunked: bool) -> Answer:
        connect, read = backend.timeouts
        try:
            return send(pool, method, target, headers, body, chunked, connect, read)
        except BACKEND_ERRORS as exc:
            raise translated(exc, backend, self.settings.timeout_read) from exc

    def _first_chunk(self, response: Any, backend: Backend) -> bytes:
        """Read the first piece of the body before answering the client.

        Until then the client has seen nothing (the server sends the headers
        with the first chunk), so a backend that dies between its headers and
        its body is a failure that can still be retried, not a broken answer.
        """
        try:
            return response.read1(CHUNK_SIZE)
        except BaseException as exc:
            response.close()
            response.release_conn()
            if isinstance(exc, BACKEND_ERRORS):
                raise translated(exc, backend, self.settings.timeout_read) from exc
            raise
