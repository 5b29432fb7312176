"""A raw-socket backend on 127.0.0.1 that misbehaves on request, for the framing tests.

Each request names its token in its path (``/t/<token>``) and how the backend
should misbehave in an ``X-Misbehave`` header. Every answer carries the token
in ``X-Token``, in ``Set-Cookie`` and in its body, so a client can tell its own
answer from another's. The misbehaviours that leave bytes on the connection
leave a whole *stale answer* there, with the same token: what a pooled
connection must never hand to the next request.

Bounded: every socket has a 5 s timeout, a trickled head takes at most
``TRICKLE_SECONDS``, and ``stop()`` joins every thread.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from servers import RawServer, read_head
from urllib3.exceptions import ProtocolError

TRICKLE_SECONDS = 3.0
#: how long after its answer ``late-leftover`` writes a stale one
LATE = 0.1


def answer(token: str, status: str = "200 OK", extra: str = "", body: bytes | None = None) -> bytes:
    """A well-framed answer for ``token``."""
    if body is None:
        body = f"token={token}".encode()
    if body:
        extra = f"Content-Type: text/plain\r\n{extra}"
    return (f"HTTP/1.1 {status}\r\nX-Token: {token}\r\nSet-Cookie: token={token}\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


def stale(token: str) -> bytes:
    """What a misbehaving backend leaves on the connection: a whole answer."""
    return answer(token, extra="X-Stale: 1\r\n")


def _chunked(token: str, extra: str) -> bytes:
    body = f"token={token}".encode()
    return (f"HTTP/1.1 200 OK\r\nX-Token: {token}\r\nSet-Cookie: token={token}\r\n{extra}"
            f"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + \
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


#: mode -> the bytes to send for (token, method). Modes the client should get
#: its own answer for, and modes it should get a 502 or 504 for, are listed below.
MODES: dict[str, Callable[[str, str], bytes]] = {
    "clean": lambda t, m: answer(t),
    "late-leftover": lambda t, m: answer(t),  # and a stale answer LATE seconds later
    "early-hints": lambda t, m: (b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
                                 b"\r\n" + answer(t)),
    "processing": lambda t, m: b"HTTP/1.1 102 Processing\r\n\r\n" + answer(t),
    "body-after-204": lambda t, m: answer(t, "204 No Content", body=b"") + stale(t),
    "body-after-304": lambda t, m: answer(t, "304 Not Modified", body=b"") + stale(t),
    "body-after-head": lambda t, m: answer(t) + (stale(t) if m == "HEAD" else b""),
    "past-content-length": lambda t, m: answer(t) + stale(t),
    "length-and-chunked": lambda t, m: _chunked(t, "Content-Length: 5\r\n"),
    "close-delimited": lambda t, m: (f"HTTP/1.1 200 OK\r\nX-Token: {t}\r\n"
                                     f"Content-Type: text/plain\r\n\r\n"
                                     f"token={t}").encode(),
    "bare-cr": lambda t, m: answer(t, extra="X-A: a\rX-Injected: 1\r\n"),
    "nul": lambda t, m: answer(t, extra="X-A: a\x00b\r\n"),
    "obs-fold": lambda t, m: answer(t, extra="X-A: a\r\n b\r\n"),
    "space-before-colon": lambda t, m: answer(t, extra="X-A : a\r\n"),
    "differing-lengths": lambda t, m: answer(t, extra="Content-Length: 99\r\n"),
    "bad-length": lambda t, m: (f"HTTP/1.1 200 OK\r\nX-Token: {t}\r\nContent-Length: +5\r\n"
                                f"\r\nabcde").encode(),
    "te-identity": lambda t, m: _chunked(t, "").replace(b"chunked", b"identity"),
    "te-unknown": lambda t, m: _chunked(t, "").replace(b": chunked", b": gzip, chunked"),
    "bad-status-line": lambda t, m: answer(t).replace(b"HTTP/1.1 200 OK", b"HTTP/1.1 OK 200"),
    "switching-protocols": lambda t, m: b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    "bad-chunk-size": lambda t, m: _chunked(t, "").replace(b"\r\n\r\n", b"\r\n\r\n+", 1),
    # the chunk's data runs two bytes past its size; http.client would skip them
    # as the CRLF: only seen once the first chunk is out, so the body breaks off
    "chunk-longer-than-said": lambda t, m: _chunked(t, "").replace(b"\r\n0\r\n", b"XY0\r\n"),
}
#: the client still gets exactly its own answer
OWN_ANSWER = ("clean", "early-hints", "processing", "body-after-204", "body-after-304",
              "body-after-head", "past-content-length", "length-and-chunked",
              "close-delimited")
#: the client gets a 502 from zope_lb
REFUSED = ("bare-cr", "nul", "obs-fold", "space-before-colon", "differing-lengths",
           "bad-length", "te-identity", "te-unknown", "bad-status-line",
           "switching-protocols", "bad-chunk-size")


class MisbehavingBackend(RawServer):
    """The raw backend. ``trickle`` (a mode of its own) sends the head a byte at a
    time, ``interval`` seconds apart, for at most TRICKLE_SECONDS;
    ``processing-forever`` sends a ``102 Processing`` every ``interval`` seconds
    for as long, and never a final answer."""

    join_timeout = TRICKLE_SECONDS + 5

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.requests: list[tuple[str, str, str]] = []  # (method, token, mode)
        self.heads: list[bytes] = []  # each request's head, as received
        super().__init__(backlog=64)

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buffer = b""
        with conn:
            while self._running:
                got = read_head(conn, buffer)
                if got is None:
                    return
                head, buffer = got  # requests carry no body here
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                mode = fields.get("x-misbehave", "clean")
                token = target.rsplit("/", 1)[-1]
                with self._lock:
                    self.requests.append((method, token, mode))
                    self.heads.append(head)
                try:
                    if mode == "trickle":
                        self._trickle(conn, answer(token))
                        return
                    if mode == "processing-forever":
                        self._trickle(conn, b"HTTP/1.1 102 Processing\r\n\r\n" * 100,
                                      step=29)
                        return
                    conn.sendall(MODES[mode](token, method))
                except OSError:
                    return
                if mode == "close-delimited":
                    return
                if mode == "late-leftover":
                    time.sleep(LATE)
                    try:
                        conn.sendall(stale(token))
                    except OSError:
                        return

    def _trickle(self, conn: socket.socket, data: bytes, step: int = 1) -> None:
        deadline = time.monotonic() + TRICKLE_SECONDS
        for index in range(0, len(data), step):
            if not self._running or time.monotonic() > deadline:
                return
            conn.sendall(data[index:index + step])
            time.sleep(self.interval)


def assert_answer_breaks_off(app: Any, environ: dict) -> None:
    """Read ``app``'s answer to ``environ`` as a server would: it must break off
    with ``IncompleteRead`` (the client's answer is cut, never completed with a
    guess); the body is closed either way."""
    body = app(environ, lambda status, headers, exc_info=None: None)
    try:
        with pytest.raises(ProtocolError, match="IncompleteRead"):
            b"".join(body)
    finally:
        body.close()
