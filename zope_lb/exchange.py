"""One request and its answer on a backend's pooled connection, without urlopen.

Theory of operation
-------------------
urllib3's ``urlopen`` wraps every request in machinery a proxy does not use:
a Retry and a Timeout object, redirect handling, a second pass over the
headers, and an ``HTTPResponse`` with its decoders and bookkeeping around
http.client's. On this 2-core machine that was about 100 µs of CPU per
request (``benchmarks/exchange_cost.py``: 264 against 163 µs), a sixth of the
balancer's share of a proxied request. :func:`send` drives the pool's connection itself and
:class:`Answer` reads the body straight from http.client's response, doing
what ``urlopen`` did and nothing it did not skip:

- the connection comes from the urllib3 pool (``_get_conn``), which polls an
  idle one before reuse (``KeptAliveConnection.is_connected``), and goes back
  with ``_put_conn``; after any failure the pool gets it back closed, so the
  next request connects afresh;
- the target is percent-encoded as urlopen encodes it; the request line and
  every header line are checked by http.client's own patterns (``_head``, all
  lines at once; anything unusual takes http.client's own way and raises what
  it raises); a POST/PUT/PATCH without a body gets ``Content-Length: 0``, a
  body of unknown length is sent chunked (``_framed``);
- ``timeout.connect`` bounds the connect; ``timeout.read`` every send and
  every read after it, as HAProxy's ``timeout server`` does (urlopen sent
  under the connect timeout). A socket's timeout is set once, when it
  connects, not twice per request: each ``settimeout`` is a system call that
  lets go of the GIL, a hand-over to another thread under load;
- a broken pipe while sending still reads the answer (a backend may refuse an
  upload and close);
- the head is read by :class:`~zope_lb.upstream.StrictResponse` (strict rules,
  one deadline, 1xx skipped, clean reuse);
- a body shorter than its Content-Length is an error (``IncompleteRead``),
  never a short answer passed off as whole.

Failures are raised as the urllib3 exceptions ``urlopen`` would raise
(``NewConnectionError``, ``ReadTimeoutError``, ``ProtocolError``...), so that
``proxy.translated`` stays the one place where they become zope_lb's.
"""

from __future__ import annotations

import errno
import http.client
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from urllib3 import HTTPConnectionPool
from urllib3.exceptions import ProtocolError, ReadTimeoutError
from urllib3.util.url import _encode_target, parse_url

from .upstream import StrictResponse

#: Methods urllib3 sends without ``Content-Length: 0`` when there is no body.
_NO_BODY_EXPECTED = frozenset({"GET", "HEAD", "DELETE", "TRACE", "OPTIONS", "CONNECT"})

# http.client's own rules (its module's patterns, so the two never drift apart)
_BAD_METHOD = http.client._contains_disallowed_method_pchar_re.search  # type: ignore[attr-defined]
_BAD_TARGET = http.client._contains_disallowed_url_pchar_re.search  # type: ignore[attr-defined]
_ILLEGAL_VALUE = http.client._is_illegal_header_value  # type: ignore[attr-defined]
_NAME = rb"[^:\s][^:\r\n]*"  # http.client's _is_legal_header_name
_LEGAL_NAMES = re.compile(_NAME + rb"(?:\n" + _NAME + rb")*").fullmatch


def origin_form(target: str) -> str:
    """The target as urlopen puts it on the request line: percent-encoded where
    a character may not stand, existing escapes upper-cased."""
    if target.startswith("/"):
        return _encode_target(target)
    return parse_url(target)._replace(fragment=None).url  # "*" (OPTIONS)


def send(pool: HTTPConnectionPool, method: str, target: str, headers: Mapping[str, str],
         body: Iterable[bytes] | None, chunked: bool, connect_timeout: float | None,
         read_timeout: float | None) -> Answer:
    """Send one request on a connection of ``pool``; return its answer, head read.

    ``headers`` are sent as given (with ``Content-Length`` already in them for a
    body of known length); no header is added but ``Host`` (when absent),
    ``Transfer-Encoding: chunked`` and ``Content-Length: 0`` as described above.
    """
    url = origin_form(target)
    conn: Any = pool._get_conn()  # a KeptAliveConnection
    try:
        if conn.sock is None:
            conn.timeout = connect_timeout
            conn.connect()  # NewConnectionError, ConnectTimeoutError, NameResolutionError
        sock = conn.sock
        if sock.gettimeout() != read_timeout:  # just connected, or a reload changed it
            conn.timeout = read_timeout
            sock.settimeout(read_timeout)
        fields = _framed(method, headers, chunked, body is None)
        fast = _head(method, url, fields)
        try:
            if fast is None:  # no Host of its own, or an odd header: http.client's way
                _send_request(conn, method, url, fields)
            else:
                sock.sendall(fast)
            if body is not None:
                _send_body(sock.sendall, body, chunked)
        except BrokenPipeError:
            pass  # the backend may have answered already and closed: read that answer
        except OSError as exc:
            if exc.errno not in (errno.EPROTOTYPE, errno.ECONNRESET):
                raise
        try:
            raw: Any = (http.client.HTTPConnection.getresponse(conn) if fast is None
                        else _read_answer(conn, method))
        except TimeoutError as exc:  # HeadTimeout included
            raise ReadTimeoutError(pool, url, f"Read timed out. (read timeout={read_timeout})"
                                   ) from exc
    except BaseException as exc:
        conn.close()
        pool._put_conn(None)  # the pool makes a new connection in its place
        if isinstance(exc, (OSError, http.client.HTTPException)):  # a send timeout too
            raise ProtocolError("Connection aborted.", exc) from exc
        raise  # urllib3's own (connect failures, read timeout), ClientBodyError...
    return Answer(raw, conn, pool)


def _framed(method: str, headers: Mapping[str, str], chunked: bool,
            no_body: bool) -> Mapping[str, str]:
    """The headers, with what frames the body put first, as urllib3's ``request``
    puts it: ``Transfer-Encoding: chunked`` for a body of unknown length, and
    ``Content-Length: 0`` for a POST, PUT or PATCH without a body."""
    if chunked:
        return {"Transfer-Encoding": "chunked", **headers}
    if no_body and "Content-Length" not in headers and method not in _NO_BODY_EXPECTED:
        return {"Content-Length": "0", **headers}
    return headers


def _head(method: str, url: str, fields: Mapping[str, str]) -> bytes | None:
    """The request head as http.client would write it, built in one piece; None
    when the request needs http.client's own way (no ``Host`` header given, a
    value that is not a str) or breaks one of its rules, so that it raises
    exactly what http.client raises.

    The checks are http.client's, on all lines at once: the method without
    control characters, the target without control characters or spaces, ASCII
    request line; names by ``_is_legal_header_name`` (joined by LF, which no
    legal name holds, so the count of LFs proves each name matched alone);
    values latin-1 with no CR or LF but in a fold (joined by NUL, which neither
    makes nor unmakes a match).
    """
    if "Host" not in fields:
        return None
    values = fields.values()
    if not all(type(value) is str for value in values):
        return None
    if _BAD_METHOD(method) or _BAD_TARGET(url) or not (method.isascii() and url.isascii()):
        return None
    try:
        names = "\n".join(fields)
    except TypeError:  # a name that is not a str
        return None
    if (not names.isascii() or names.count("\n") != len(fields) - 1
            or not _LEGAL_NAMES(names.encode("ascii"))):
        return None
    try:
        if _ILLEGAL_VALUE("\x00".join(values).encode("latin-1")):
            return None
        block = "\r\n".join([f"{method} {url} HTTP/1.1",
                              *[f"{name}: {value}" for name, value in fields.items()]])
        return block.encode("latin-1") + b"\r\n\r\n"
    except UnicodeEncodeError:
        return None


def _send_body(send: Callable[[bytes], Any], body: Iterable[bytes], chunked: bool) -> None:
    """The body as urllib3's ``request`` sends it: each piece as it comes (in
    chunked framing when ``chunked``), then the last chunk."""
    for chunk in body:
        if not chunk:
            continue  # an empty chunk would end a chunked body
        send(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
    if chunked:
        send(b"0\r\n\r\n")


def _read_answer(conn: Any, method: str) -> StrictResponse:
    """The answer's head, read by StrictResponse as http.client's ``getresponse``
    reads it, for a request sent in one piece (``_head``). The connection stays open while
    the body is read (http.client would close it after the head of an answer
    that ends the connection, keeping the descriptor through a socket file that
    costs 3 µs to make); the response closes it at the end, as it closes every
    connection it may not reuse."""
    response = StrictResponse(conn.sock, method=method, connection=conn, hold_fd=False)
    try:
        response.begin()
    except BaseException:
        response.close()
        raise
    return response


def _send_request(conn: Any, method: str, url: str, fields: Mapping[str, str]) -> None:
    """The request line and headers through http.client, as urllib3's ``request``
    sends them (without its User-Agent or Accept-Encoding: zope_lb adds none)."""
    conn.putrequest(method, url, skip_host="Host" in fields, skip_accept_encoding=True)
    putheader = conn.putheader
    for name, value in fields.items():
        putheader(name, value)
    conn.endheaders()


class Answer:
    """A backend's answer: status, reason and header fields, the body read in
    pieces. The connection goes back to its pool with the read that ends the
    answer (or with ``release_conn``); StrictResponse has closed it by then if
    the answer was not framed exactly. ``close`` before the end closes it."""

    __slots__ = ("_raw", "_conn", "_pool", "status", "reason", "headers")

    def __init__(self, raw: StrictResponse, conn: Any, pool: HTTPConnectionPool):
        self._raw = raw
        self._conn = conn
        self._pool: Any = pool  # None once the connection went back
        self.status: int = raw.status
        self.reason: str = raw.reason
        self.headers: list[tuple[str, str]] = raw.msg._headers  # type: ignore[attr-defined]

    def read1(self, amount: int) -> bytes:
        """Up to ``amount`` body bytes, at most one read from the socket; b"" at
        the end. Raises ``ProtocolError`` (body cut short, broken framing) or
        ``ReadTimeoutError``.

        The read that ends the answer gives the connection back to the pool
        at once (closed by StrictResponse if it may not be reused), as urllib3
        did: the proxy frees the backend's slot then, and the next request
        for that slot must find the connection idle, not open another one."""
        raw = self._raw
        fp = raw.fp
        if fp is None:
            return b""
        length = raw.length
        try:
            if length is None or raw.chunked:  # chunked, or ends when the backend closes
                data = raw.read1(amount)
            else:
                if amount > length:
                    amount = length
                data = fp.read1(amount) if amount else b""
                if amount and not data:
                    raw._close_conn()  # type: ignore[attr-defined]
                    raise http.client.IncompleteRead(b"", length)
                length -= len(data)
                raw.length = length
                if not length:
                    raw._close_conn()  # type: ignore[attr-defined]  # the clean-reuse check
        except TimeoutError as exc:
            raise ReadTimeoutError(self._pool, None, "Read timed out.") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ProtocolError(f"Connection broken: {exc!r}", exc) from exc
        if raw.fp is None:  # the answer is complete
            self.release_conn()
        return data

    def isclosed(self) -> bool:
        """Whether the whole body has been read (or the answer closed)."""
        return self._raw.fp is None

    def close(self) -> None:
        """Stop reading: the connection is in an unknown state, so it is closed
        (unless it went back to the pool already, with a complete answer)."""
        self._raw.close()
        if self._pool is not None:
            self._conn.close()

    def release_conn(self) -> None:
        """Give the connection back to its pool, once."""
        pool = self._pool
        if pool is not None:
            self._pool = None
            pool._put_conn(self._conn)
