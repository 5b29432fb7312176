"""A raw-socket HTTP client and a recording backend, for request-path attacks.

The client sends bytes exactly as given and reads back every response the
server writes on the connection, until it closes it or a deadline passes;
the backend records every request it receives and stamps its answer with
the request's number, so a test can tell which client request each
backend request belongs to. Loopback only, every wait bounded.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    """What came back for one send: the answers in order, and whether the
    server closed the connection (rather than the deadline passing)."""

    answers: list[Answer] = field(default_factory=list)
    closed: bool = False
    garbage: bytes = b""


def exchange(port: int, data: bytes, *, timeout: float = 3.0, expect: int | None = None,
             head: bool = False) -> Exchange:
    """Send ``data`` to 127.0.0.1:``port`` and read the answers: until the server
    closes, ``expect`` answers arrived, or ``timeout`` seconds passed. With
    ``head``, the first request sent was a HEAD (its answer has no body)."""
    result = Exchange()
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        stream = sock.makefile("rb")
        while expect is None or len(result.answers) < expect:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                first = stream.peek(1)[:1]
            except TimeoutError:
                break
            except OSError:
                result.closed = True
                break
            if not first:
                result.closed = True
                break
            first_is_head = head and not result.answers
            response = http.client.HTTPResponse(_Source(stream),
                                                method="HEAD" if first_is_head else "GET")
            try:
                response.begin()
                body = response.read()
            except TimeoutError:
                break
            except (http.client.HTTPException, OSError):
                result.garbage = stream.read1(65536) if not stream.closed else b""
                break
            result.answers.append(Answer(response.status,
                                         {k.lower(): v for k, v in response.getheaders()},
                                         body))
        stream.close()
    return result


class _Source:
    """What http.client.HTTPResponse wants of a socket: a makefile() that keeps
    reading from one shared buffer, so pipelined answers are not lost."""

    def __init__(self, stream: Any):
        self._stream = stream

    def makefile(self, mode: str) -> Any:
        return _Unclosable(self._stream)


class _Unclosable:
    def __init__(self, stream: Any):
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def close(self) -> None:  # HTTPResponse closes its file after each answer
        pass


class Recorder:
    """A WSGI backend that records every request and answers ``seen N``
    with an ``X-Seen: N`` header (``NAME-N`` for a named one)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        with self.lock:
            number = f"{self.name}-{len(self.requests)}" if self.name else str(len(self.requests))
            self.requests.append({
                "seen": number,
                "method": environ["REQUEST_METHOD"],
                "uri": environ.get("REQUEST_URI", ""),
                "path": environ["PATH_INFO"],
                "host": environ.get("HTTP_HOST"),
                "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
                "body": body,
            })
        data = f"seen {number}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(data))),
                                  ("X-Seen", str(number))])
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [data]

    def since(self, start: int) -> list[dict[str, Any]]:
        with self.lock:
            return self.requests[start:]
