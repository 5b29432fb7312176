"""The request path: pick a backend, forward, stream the answer back.

Theory of operation
-------------------
A request is tried on backends picked by the strategy until one answers with
a status line and headers; the answer's body is then streamed to the client
by :class:`ResponseBody`, whose ``close()`` (called by the WSGI server when
it is done, also when the client went away) returns the connection to the
backend's pool and frees the backend's slot. That is when the backend is
really free, not when the WSGI app returns.

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

urllib3's exceptions become ours in exactly one place, :func:`translate_errors`.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from .backend import Backend
from .errors import (
    BackendConnectError,
    BackendDisconnected,
    BackendProtocolError,
    BackendTimeout,
    NoBackendAvailable,
    UpstreamError,
)
from .headers import request_headers, response_headers, upstream_target
from .pool import BackendPool
from .settings import Settings
from .strategies import Strategy

log = logging.getLogger(__name__)

#: Methods that may be repeated: sending them twice has the effect of once.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "PROPFIND"})

CHUNK_SIZE = 64 * 1024

_DISCONNECTS = (http.client.RemoteDisconnected, ConnectionResetError,
                BrokenPipeError, ConnectionAbortedError)


@contextmanager
def translate_errors(backend: Backend, timeout_read: float) -> Iterator[None]:
    """Turn urllib3's (and the socket's) exceptions into zope_lb's."""
    where = f"{backend.id} ({backend.address})"
    try:
        yield
    except NameResolutionError as exc:
        raise BackendConnectError(f"host name not found: {exc.__cause__ or exc}", where) from exc
    except NewConnectionError as exc:
        cause = exc.__cause__ or exc
        reason = "connection refused" if isinstance(cause, ConnectionRefusedError) else str(cause)
        raise BackendConnectError(reason, where) from exc
    except ConnectTimeoutError as exc:
        raise BackendConnectError("connect timed out", where) from exc
    except ReadTimeoutError as exc:
        raise BackendTimeout(f"no answer within {timeout_read:g} s", where) from exc
    except ProtocolError as exc:
        broken = exc.args[1] if len(exc.args) > 1 else exc.__cause__
        if isinstance(broken, _DISCONNECTS):
            raise BackendDisconnected(
                "the backend closed the connection before answering", where
            ) from exc
        raise BackendProtocolError(f"invalid response: {broken or exc}", where) from exc
    except (HTTPError, http.client.HTTPException, OSError) as exc:
        raise BackendProtocolError(f"invalid response: {exc}", where) from exc


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

    __slots__ = ("_response", "_backend", "_on_close", "_closed")

    def __init__(self, response: Any, backend: Backend,
                 on_close: Callable[[], None] | None = None):
        self._response = response
        self._backend = backend
        self._on_close = on_close
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        read1 = self._response.read1
        backend = self._backend
        try:
            while True:
                chunk = read1(CHUNK_SIZE, decode_content=False)
                if not chunk:
                    return
                yield chunk
        except (HTTPError, http.client.HTTPException, OSError) as exc:
            # Headers are out: all that is left is to cut the connection, so the
            # client sees a truncated response rather than a wrong one.
            log.warning("backend %s (%s): response body broke off: %s",
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
            self._backend.release()
            if self._on_close is not None:
                self._on_close()


def _unreachable(tried: list[Backend], last: UpstreamError | None) -> NoBackendAvailable:
    """503 for a request no backend could take: none up, or none could be reached."""
    if not tried or last is None:
        return NoBackendAvailable("no backend is available")
    names = ", ".join(b.id for b in tried)
    return NoBackendAvailable(f"no backend could be reached (tried {names}; {last.reason})")


class Proxy:
    """Forwards WSGI requests to the backends of a pool."""

    def __init__(
        self,
        pool: BackendPool,
        strategy: Strategy,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.pool = pool
        self.strategy = strategy
        self.settings = settings
        self.clock = clock

    def forward(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Answer the request from a backend.

        Raises :class:`UpstreamError` only before ``start_response`` was called,
        so the caller may still answer with an error page or a fallback app.
        """
        settings = self.settings
        method = environ["REQUEST_METHOD"]
        target = upstream_target(environ)
        headers = request_headers(environ, settings.forwarded_trusted, settings.preserve_host)
        body, chunked = request_body(environ)
        if body is not None and not chunked:
            headers["Content-Length"] = environ["CONTENT_LENGTH"]

        avoid: list[Backend] = []
        last_failure: UpstreamError | None = None
        while True:
            now = self.clock()
            backend = self.strategy.pick(self.pool.candidates(now), environ, avoid)
            if backend is None:
                raise _unreachable(avoid, last_failure)
            backend.acquire()
            try:
                response, on_close = self._send(backend, method, target, headers, body, chunked)
            except BackendConnectError as exc:
                backend.release()
                backend.record_failure(exc.reason, now)
                log.warning("%s %s: %s", method, target, exc)
                if body is not None and body.started:
                    raise
                avoid.append(backend)
                last_failure = exc
                if len(avoid) > settings.retries:
                    raise _unreachable(avoid, last_failure) from exc
                continue
            except ClientBodyError as exc:
                backend.release()
                log.info("%s %s: %s", method, target, exc)
                raise
            except UpstreamError as exc:
                backend.release()
                log.warning("%s %s: %s", method, target, exc)
                raise
            except BaseException:
                backend.release()
                raise
            break
        backend.record_success()
        try:
            start_response(
                f"{response.status} {response.reason}",
                response_headers(response.headers.iteritems()),
            )
        except BaseException:
            ResponseBody(response, backend, on_close).close()
            raise
        return ResponseBody(response, backend, on_close)

    def _send(self, backend: Backend, method: str, target: str,
              headers: dict[str, str], body: RequestBody | None,
              chunked: bool) -> tuple[Any, Callable[[], None] | None]:
        try:
            return self._urlopen(backend.pool, backend, method, target, headers,
                                 body, chunked), None
        except BackendDisconnected as exc:
            if method not in IDEMPOTENT or (body is not None and body.started):
                raise
            log.info("%s %s: %s; retrying once on a fresh connection", method, target, exc)
        fresh = backend.fresh_pool()
        try:
            return self._urlopen(fresh, backend, method, target, headers,
                                 body, chunked), fresh.close
        except BaseException:
            fresh.close()
            raise

    def _urlopen(self, pool: Any, backend: Backend, method: str, target: str,
                 headers: dict[str, str], body: RequestBody | None, chunked: bool) -> Any:
        with translate_errors(backend, self.settings.timeout_read):
            return pool.urlopen(
                method, target, body=body, headers=headers, chunked=chunked,
                retries=False, redirect=False, assert_same_host=False,
                preload_content=False, decode_content=False,
            )

