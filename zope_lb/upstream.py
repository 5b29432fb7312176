"""Strict reading of a backend's answer head, and whether its connection stays clean.

Theory of operation
-------------------
http.client reads a backend's status line and headers leniently (obs-fold,
bare CR, NUL, a space before the colon, differing Content-Lengths, unknown
transfer codings) and takes any 1xx but 100 as the final answer. A proxy
that is lenient there passes on answers the client may read differently from
us, and a pooled connection with bytes left on it answers the *next* request
with them: one user gets another's page.

:class:`StrictResponse` is http.client's ``HTTPResponse`` with only the head
reading replaced (``begin``): :func:`parse_head` applies HAProxy's rules and
any breach is a :class:`HeadError` (a 502). Interim answers (102, 103, any
1xx but 101) are read and dropped. The whole head, interim answers included,
must arrive within the socket's timeout (``timeout.read``) in total, not per
read: a backend trickling its head a byte a second gets a 504
(:class:`HeadTimeout`). Body reading and chunked decoding stay http.client's.

A connection is *clean* when its answer ended exactly where its framing said:
the body complete (Content-Length reached, or the last chunk and the trailer's
empty line read) and no byte read past it. The response counts the bytes it
received from the socket and the bytes http.client consumed; when the answer
ends (``_close_conn``) with any byte left over, or framed by the connection
closing, the connection is closed at once and never pooled. Bytes that arrive
on the socket after that are seen when the connection is taken from the pool
again (``KeptAliveConnection.is_connected``: one ``poll``).
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import time
from typing import Any, NamedTuple

#: The most bytes a backend's head (interim answers included) may take.
HEAD_LIMIT = 64 * 1024
#: The most header fields an answer may have (as http.client).
MAX_FIELDS = 100

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_FIELD_VALUE = r"[\t\x20-\x7e\x80-\xff]*"
# RFC 9112 §4: HTTP-version SP 3DIGIT SP [ reason ]; "HTTP/1.1 200" without
# the second SP is tolerated, as nginx and HAProxy do.
_STATUS_LINE = re.compile(r"HTTP/1\.([0-9]) ([1-9][0-9][0-9])(?: (" + _FIELD_VALUE + r"))?\r\n")
_FIELD_BLOCK = re.compile(r"(?:" + _TOKEN + ":" + _FIELD_VALUE + r"\r\n)*").fullmatch
# on a block _FIELD_BLOCK passed (trailing white space is taken off after)
_FIELDS = re.compile(r"([^:\r]+):[\t ]*([^\r]*)\r\n").findall
_LENGTH = re.compile(r"[0-9]{1,18}").fullmatch
_BARE_LF = re.compile(rb"(?<!\r)\n").search
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[\t ]*(?:;[^\r\n]*)?\r\n").fullmatch


class HeadError(http.client.HTTPException):
    """The backend's status line or headers broke a rule: 502, connection closed."""


class HeadTimeout(TimeoutError):
    """The backend's whole head did not arrive within the read timeout: 504."""


class Head(NamedTuple):
    """One parsed answer head and the framing of the body after it (a tuple:
    built once per answer, so built cheaply)."""

    version: int  # 10 or 11, as http.client
    status: int
    reason: str
    fields: list[tuple[str, str]]  # as sent, minus a Content-Length beside chunked
    length: int | None  # body bytes, or None: chunked or close-delimited
    chunked: bool
    will_close: bool  # the connection cannot carry another request after this answer


#: The fields that frame an answer or say whether its connection stays open.
_CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _KEEP_ALIVE = range(4)
_FRAMING = {"content-length": _CONTENT_LENGTH, "transfer-encoding": _TRANSFER_ENCODING,
            "connection": _CONNECTION, "keep-alive": _KEEP_ALIVE}


def parse_head(head: bytes, method: str | None = None) -> Head:
    """Parse one answer head (status line to the empty line, CRLF included).

    Raises :class:`HeadError` naming the rule for anything HAProxy would refuse.
    """
    text = head.decode("latin-1")
    match = _STATUS_LINE.match(text)
    if match is None:
        raise HeadError(f"malformed status line {_quote(text.partition(chr(10))[0])}: "
                        "expected 'HTTP/1.x NNN reason'")
    block = text[match.end():-2]
    if not text.endswith("\r\n") or not _FIELD_BLOCK(block):
        raise HeadError(_field_fault(block))
    fields = _FIELDS(block)
    if " \r\n" in block or "\t\r\n" in block:  # rare: trailing white space
        fields = [(name, value.rstrip(" \t")) for name, value in fields]
    if len(fields) > MAX_FIELDS:
        raise HeadError(f"more than {MAX_FIELDS} header fields")
    version = 10 if match.group(1) == "0" else 11
    status = int(match.group(2))
    lengths: list[str] = []
    codings: list[str] = []
    connection = ""
    keep_alive = False
    framing = _FRAMING.get
    for name, value in fields:
        kind = framing(name.lower())
        if kind is None:
            continue
        if kind == _CONTENT_LENGTH:
            lengths.append(value)
        elif kind == _TRANSFER_ENCODING:
            codings.append(value)
        elif kind == _CONNECTION:
            connection = f"{connection},{value.lower()}"
        else:
            keep_alive = True
    tokens = {t.strip() for t in connection.split(",")} if connection else set()
    # HTTP/1.1 stays open unless told; HTTP/1.0 closes unless told (RFC 9112 §9.3)
    will_close = ("close" in tokens) if version == 11 else not (keep_alive or
                                                                "keep-alive" in tokens)
    length = _content_length(lengths) if lengths else None
    chunked = False
    if codings:
        if version == 10:
            raise HeadError("Transfer-Encoding in an HTTP/1.0 answer")
        named = [c.strip().lower() for value in codings for c in value.split(",")]
        if named != ["chunked"]:
            which = ", ".join(named)
            if "identity" in named:
                raise HeadError(f"Transfer-Encoding {which!r}: 'identity' is refused")
            raise HeadError(f"unknown transfer coding {which!r}: only 'chunked' is accepted")
        chunked = True
        if lengths:
            # RFC 9112 §6.3: chunked wins; the Content-Length is dropped, and a
            # connection that carried such an answer is not trusted again.
            fields = [f for f in fields if f[0].lower() != "content-length"]
            length = None
            will_close = True
    if status in (204, 304) or status < 200 or method == "HEAD":
        length = 0
        chunked = False
    elif not chunked and length is None:
        will_close = True  # close-delimited: the body ends when the backend closes
    return Head(version, status, (match.group(3) or "").strip(), fields, length, chunked,
                will_close)


def _content_length(values: list[str]) -> int:
    """One Content-Length from all the fields (RFC 9110 §8.6: identical repeats
    allowed, differing ones refused)."""
    if len(values) == 1 and _LENGTH(values[0]):  # the usual answer: one plain number
        return int(values[0])
    found = {v.strip() for value in values for v in value.split(",")}
    for value in found:
        if not _LENGTH(value):
            raise HeadError(f"invalid Content-Length {_quote(value)}")
    numbers = {int(v) for v in found}
    if len(numbers) > 1:
        raise HeadError(f"differing Content-Length values {', '.join(sorted(found))}")
    return numbers.pop()


def _field_fault(block: str) -> str:
    """What is wrong with the first bad header line (the error path only)."""
    for line in block.split("\r\n"):
        if _FIELD_BLOCK(line + "\r\n"):
            continue
        if "\n" in line:
            return "a bare LF in a header (lines must end in CRLF)"
        if "\r" in line:
            return f"a bare CR in header {_quote(line)}"
        if "\x00" in line:
            return f"a NUL in header {_quote(line)}"
        if line[:1] in (" ", "\t"):
            return f"a folded header line (obs-fold) {_quote(line)}"
        name, colon, _ = line.partition(":")
        if colon and name != name.rstrip(" \t"):
            return f"white space before the colon in header {_quote(line)}"
        if not colon:
            return f"a header line without a colon {_quote(line)}"
        return f"an invalid character in header {_quote(line)}"
    return "an incomplete header block"


def _quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


class _CountingReader(io.RawIOBase):
    """The socket as raw input for a BufferedReader, counting what it received, so
    that the bytes read ahead past an answer can be told (``received - tell()``)."""

    def __init__(self, sock: socket.socket, hold_fd: bool = True):
        # A socket file keeps the descriptor open when http.client closes the
        # connection after the head of an answer that ends the connection.
        self._io = sock.makefile("rb", buffering=0) if hold_fd else None
        self._recv_into = sock.recv_into
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._recv_into(buffer)
        self.received += count
        return count

    def tell(self) -> int:
        return self.received

    def close(self) -> None:
        if self._io is not None:
            self._io.close()
        super().close()


class StrictResponse(http.client.HTTPResponse):
    """http.client's response with a strict, deadline-bound head and clean reuse.

    ``connection`` is the http.client connection it belongs to: it is closed when
    the answer was not framed exactly.
    """

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None,
                 url: str | None = None, connection: Any = None, hold_fd: bool = True):
        # What http.client's __init__ sets, with a counting reader under self.fp.
        # hold_fd=False: the caller keeps the connection open until the answer
        # ends (``_close_conn`` closes it then if it may not be reused).
        self._raw = raw = _CountingReader(sock, hold_fd)
        self.fp = io.BufferedReader(raw)
        self._sock = sock
        self._connection = connection
        self.debuglevel = debuglevel
        self._method = method
        self.headers = self.msg = None  # type: ignore[assignment]
        self.version = self.status = self.reason = http.client._UNKNOWN  # type: ignore[attr-defined]
        self.chunked = self.chunk_left = http.client._UNKNOWN  # type: ignore[attr-defined]
        self.length = self.will_close = http.client._UNKNOWN  # type: ignore[attr-defined]
        self._complete = False
        self.interim = 0  # how many 1xx answers were skipped

    def begin(self) -> None:
        if self.headers is not None:
            return
        sock = self._sock
        timeout = sock.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            head = self._read_head(deadline, 0)
            parsed = parse_head(head, self._method)
            used = len(head)
            while parsed.status < 200:
                if parsed.status == 101:
                    raise HeadError("101 Switching Protocols, which zope_lb never asks for")
                self.interim += 1  # 102 Processing, 103 Early Hints...: not passed on
                head = self._read_head(deadline, used)
                used += len(head)
                parsed = parse_head(head, self._method)
        finally:
            if sock.gettimeout() != timeout:
                sock.settimeout(timeout)
        message = http.client.HTTPMessage()
        message._headers = parsed.fields  # type: ignore[attr-defined]
        self.headers = self.msg = message
        self.code = self.status = parsed.status
        self.reason = parsed.reason
        self.version = parsed.version
        self.chunked = parsed.chunked
        self.chunk_left = None
        self.length = parsed.length
        self.will_close = parsed.will_close

    def _read_head(self, deadline: float | None, used: int) -> bytes:
        """One head, up to and including its empty line, and not a byte more.

        The exchange's first read waits as long as the socket's timeout; every
        later read that has to wait gets only what is left of it, so the head
        (interim answers included) has one deadline in total. ``used`` is how
        many head bytes the exchange already took.
        """
        fp = self.fp
        raw = self._raw
        parts: list[bytes] = []
        tail = b""
        size = used
        wait_free = used == 0
        while True:
            if wait_free or raw.received > fp.tell() or deadline is None:
                data = fp.peek(HEAD_LIMIT)  # the first wait, or none
            else:
                left = deadline - time.monotonic()
                try:
                    if left <= 0:
                        raise TimeoutError
                    self._sock.settimeout(left)
                    data = fp.peek(HEAD_LIMIT)
                except TimeoutError as exc:
                    raise HeadTimeout("the status line and headers did not arrive "
                                      "in time") from exc
            wait_free = False
            if not data:
                if size:
                    raise HeadError("the backend closed the connection in the middle of "
                                    "its head")
                raise http.client.RemoteDisconnected(
                    "Remote end closed connection without response")
            seen = tail + data
            end = seen.find(b"\r\n\r\n")
            if end >= 0:
                take = end + 4 - len(tail)
                if size + take > HEAD_LIMIT:
                    raise HeadError(f"answer head longer than {HEAD_LIMIT} bytes")
                last = fp.read(take)
                return b"".join(parts) + last if parts else last
            if _BARE_LF(seen):
                raise HeadError("a bare LF in the answer head (lines must end in CRLF)")
            size += len(data)
            if size > HEAD_LIMIT:
                raise HeadError(f"answer head longer than {HEAD_LIMIT} bytes")
            parts.append(fp.read(len(data)))
            tail = seen[-3:]

    # -- clean reuse --

    def _read_next_chunk_size(self) -> int:
        line = self.fp.readline(1024)
        match = _CHUNK_SIZE(line)
        if match is None:
            self._close_conn()
            raise ValueError(f"malformed chunk size line {line[:40]!r}")
        return int(match.group(1), 16)

    def _get_chunk_left(self) -> int | None:
        """http.client's, but the CRLF after each chunk's data is checked, not
        just skipped: a chunk longer than its size line said is a broken answer."""
        chunk_left = self.chunk_left
        if not chunk_left:  # 0: at the end of a chunk; None: before the first
            if chunk_left is not None and self._safe_read(2) != b"\r\n":  # type: ignore[attr-defined]
                self._close_conn()
                raise http.client.IncompleteRead(b"")
            try:
                chunk_left = self._read_next_chunk_size()
            except ValueError:
                raise http.client.IncompleteRead(b"") from None
            if chunk_left == 0:
                self._read_and_discard_trailer()
                self._close_conn()
                chunk_left = None
            self.chunk_left = chunk_left
        return chunk_left

    def _read_and_discard_trailer(self) -> None:
        """Skip the trailer fields; the answer is complete only at its empty line."""
        for _ in range(MAX_FIELDS + 1):
            line = self.fp.readline(HEAD_LIMIT + 1)
            if line == b"\r\n":
                self._complete = True
                return
            if not line.endswith(b"\r\n"):
                return  # EOF or a broken trailer: the body is out, the connection is not clean

    def _close_conn(self) -> None:
        fp = self.fp
        clean = (
            not self.will_close
            and (self._complete or (not self.chunked and self.length == 0))
            and self._raw.received == fp.tell()
        )
        super()._close_conn()  # type: ignore[misc]
        connection = self._connection
        if not clean and connection is not None and connection.sock is self._sock:
            connection.close()
