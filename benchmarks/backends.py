"""Tiny HTTP/1.1 keep-alive backends for the benchmarks (asyncio, no deps).

One process serves every route; what differs between a "fast" and a
"Zope-like" backend is ``--delay`` and ``--threads``:

    GET  /anything      small constant body (``--body-size`` bytes). With
                        ``--delay D`` each request sleeps D seconds and at
                        most ``--threads`` requests are served at a time (the
                        rest wait, like requests queued at a Zope client).
    GET  /bytes/N       streams N bytes (Content-Length: N) in 256 KiB chunks,
                        with write flow control: for the 1 GB download and
                        the time-to-first-byte check.
    POST /upload        reads and discards the request body (Content-Length
                        or chunked), answers JSON {"received": N}.
    POST /order?id=ID   with ``--record FILE``: appends ``ID`` to FILE (one
                        write, so it survives a SIGKILL just after) as soon as
                        the body is read, then serves it like a small GET (the
                        delay too). The outage benchmark counts every ID
                        recorded twice: a POST executed twice.

Run:  python benchmarks/backends.py [--port 0] [--delay 0.02 --threads 8]
It prints ``LISTENING 127.0.0.1:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

MAX_HEADER = 64 * 1024
CHUNK = 256 * 1024
_ZEROS = memoryview(b"x" * CHUNK)


class HTTPProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 server connection; one request at a time."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: Any = None
        self.busy = False  # a response is being produced asynchronously
        self.closed = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        # request being parsed
        self.state = "head"
        self.req: dict = {}
        self.remaining = 0  # body bytes left (content-length or chunk)
        self.received = 0

    # -- asyncio callbacks --------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.process()

    # -- parsing ------------------------------------------------------------
    def process(self) -> None:
        while not self.busy and not self.closed:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > MAX_HEADER:
                        self.fail(b"431 Request Header Fields Too Large")
                    return
                head = bytes(self.buf[:end]).decode("latin-1")
                del self.buf[: end + 4]
                if not self.parse_head(head):
                    return
            elif self.state == "body":
                n = min(self.remaining, len(self.buf))
                if n:
                    del self.buf[:n]
                    self.remaining -= n
                    self.received += n
                if self.remaining:
                    return
                self.state = "done"
            elif self.state == "chunk-size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(self.buf[:end]).split(b";", 1)[0].strip()
                del self.buf[: end + 2]
                try:
                    self.remaining = int(line, 16)
                except ValueError:
                    self.fail(b"400 Bad Request")
                    return
                self.state = "chunk-data" if self.remaining else "trailers"
            elif self.state == "chunk-data":
                n = min(self.remaining, len(self.buf))
                if n:
                    del self.buf[:n]
                    self.remaining -= n
                    self.received += n
                if self.remaining:
                    return
                self.state = "chunk-crlf"
            elif self.state == "chunk-crlf":
                if len(self.buf) < 2:
                    return
                del self.buf[:2]
                self.state = "chunk-size"
            elif self.state == "trailers":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                del self.buf[: end + 2]
                if end == 0:
                    self.state = "done"
            if self.state == "done":
                self.state = "head"
                self.dispatch()

    def parse_head(self, head: str) -> bool:
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self.fail(b"400 Bad Request")
            return False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        conn = headers.get("connection", "").lower()
        keep = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
        self.req = {"method": method, "target": target, "keep": keep}
        self.received = 0
        if headers.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = "chunk-size"
        elif int(headers.get("content-length", "0") or 0) > 0:
            self.remaining = int(headers["content-length"])
            self.state = "body"
        else:
            self.state = "done"
        return True

    def fail(self, status: bytes) -> None:
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self.transport.close()
        self.closed = True

    # -- responses ----------------------------------------------------------
    def dispatch(self) -> None:
        req = self.req
        path = req["target"].split("?", 1)[0]
        srv = self.server
        if path.startswith("/bytes/"):
            try:
                size = int(path[7:])
            except ValueError:
                self.respond(b"400 Bad Request", b"bad size\n")
                return
            self.start(self.stream(size, req["method"] == "HEAD"))
        elif path == "/order" and req["method"] == "POST" and srv.record is not None:
            order = req["target"].partition("?id=")[2].encode("ascii", "replace")
            os.write(srv.record, order + b"\n")  # O_APPEND: one line per write
            if srv.delay > 0:
                self.start(self.slow())
            else:
                self.respond(b"200 OK", srv.body)
        elif path == "/upload":
            body = json.dumps({"received": self.received}).encode()
            self.respond(b"200 OK", body, b"application/json")
        elif srv.delay > 0:
            self.start(self.slow())
        else:
            self.respond(b"200 OK", srv.body)

    def respond(self, status: bytes, body: bytes, ctype: bytes = b"text/html") -> None:
        keep = self.req["keep"]
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (
                status,
                ctype,
                len(body),
                b"" if keep else b"Connection: close\r\n",
                body if self.req["method"] != "HEAD" else b"",
            )
        )
        if not keep:
            self.transport.close()
            self.closed = True

    def start(self, coro) -> None:
        self.busy = True
        self.transport.pause_reading()
        task = asyncio.ensure_future(coro)
        self.server.tasks.add(task)
        task.add_done_callback(self.finished)

    def finished(self, task) -> None:
        self.server.tasks.discard(task)
        self.busy = False
        if task.cancelled() or task.exception() is not None or self.closed:
            if not self.closed:
                self.transport.close()
                self.closed = True
            return
        self.transport.resume_reading()
        self.process()

    async def slow(self) -> None:
        srv = self.server
        async with srv.slots:
            await asyncio.sleep(srv.delay)
        if not self.closed:
            self.respond(b"200 OK", srv.body)

    async def stream(self, size: int, head_only: bool) -> None:
        keep = self.req["keep"]
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (size, b"" if keep else b"Connection: close\r\n")
        )
        left = 0 if head_only else size
        while left > 0:
            await self.can_write.wait()
            if self.closed:
                return
            n = min(left, CHUNK)
            self.transport.write(_ZEROS[:n])
            left -= n
        if not keep:
            self.transport.close()
            self.closed = True


class Server:
    def __init__(self, delay: float, threads: int, body_size: int,
                 record: str | None = None) -> None:
        self.record = (None if record is None else
                       os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        self.delay = delay
        self.slots = asyncio.Semaphore(threads)
        line = b"<html><body>Hello from a benchmark backend</body></html>\n"
        self.body = (line * (body_size // len(line) + 1))[:body_size]
        self.tasks: set = set()


async def main(args: argparse.Namespace) -> None:
    srv = Server(args.delay, args.threads, args.body_size, args.record)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HTTPProtocol(srv),
        args.host,
        args.port,
        backlog=1024,
        reuse_address=True,
    )
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {args.host}:{port}", flush=True)
    await stop.wait()
    server.close()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = ephemeral")
    p.add_argument("--delay", type=float, default=0.0, help="seconds per small request")
    p.add_argument("--threads", type=int, default=8, help="concurrent slow requests")
    p.add_argument("--body-size", type=int, default=128, help="small body bytes")
    p.add_argument("--record", metavar="FILE", help="append each POST /order id to FILE")
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
