"""Real servers on 127.0.0.1 with ephemeral ports, for the tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import waitress.server
import waitress.wasyncore

from zope_lb.backendlines import url_host


class ServerThread:
    """A waitress server in a thread. ``stop()`` closes every connection,
    like a Zope client that died; ``start()`` again binds the same port."""

    def __init__(self, app: Any, port: int = 0, threads: int = 8, host: str = "127.0.0.1",
                 **adjustments: Any):
        self.app = app
        self.host = host
        self.port = port
        self.threads = threads
        self.adjustments = adjustments
        self.server: Any = None
        self.thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{url_host(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> ServerThread:
        self.server = waitress.server.create_server(
            self.app, host=self.host, port=self.port, threads=self.threads,
            clear_untrusted_proxy_headers=False, **self.adjustments,
        )
        self.port = self.server.effective_port
        self.thread = threading.Thread(target=self.server.run, daemon=True,
                                       name=f"backend-{self.port}")
        self.thread.start()
        return self

    def stop(self) -> None:
        server = self.server
        if server is None:
            return
        self.server = None
        trigger = server.trigger
        done = threading.Event()

        def close_channels() -> None:
            # Runs in the server's own loop thread, so no descriptor is closed
            # under a poll() that still watches it. The trigger only leaves the
            # map (which ends the loop): it stays open until the workers are
            # gone, because a worker pulls it when it finishes a task, and
            # pull_trigger() itself writes to it after queueing this thunk.
            # Closing it here raced with that write (EBADF, or a stray byte in
            # whatever reused the descriptor).
            for channel in list(server._map.values()):
                if channel is server:
                    waitress.wasyncore.dispatcher.close(server)  # server.close() shuts the trigger
                elif channel is not trigger:
                    channel.close()
            trigger.del_channel()
            done.set()

        trigger.pull_trigger(close_channels)
        assert done.wait(5), "backend loop did not run the close"
        assert self.thread is not None
        self.thread.join(5)
        assert not self.thread.is_alive(), "backend thread did not stop"
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
        trigger.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def run_concurrently(work: Any, count: int, timeout: float = 30.0) -> list[BaseException]:
    """Run ``work(0)`` ... ``work(count - 1)`` in threads at once and wait for them
    all, ``timeout`` seconds at most in total. Returns what they raised, and a
    TimeoutError for each one still running then."""
    errors: list[BaseException] = []

    def run(number: int) -> None:
        try:
            work(number)
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    errors += [TimeoutError(f"{t.name} still running after {timeout:g} s")
               for t in threads if t.is_alive()]
    return errors


def read_head(conn: socket.socket, buffer: bytes) -> tuple[bytes, bytes] | None:
    """The next request head on ``conn`` (without its blank line) and what came
    after it, reading on from ``buffer``; None when the client closed or failed."""
    while b"\r\n\r\n" not in buffer:
        try:
            data = conn.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        buffer += data
    head, rest = buffer.split(b"\r\n\r\n", 1)
    return head, rest


class RawServer:
    """A listening socket on 127.0.0.1 and a thread per connection, for the raw
    test servers below and in misbehaving.py: ``handle(conn)`` serves one
    connection. ``stop()`` wakes the handlers still in ``recv`` and waits for
    them, each at most ``join_timeout`` seconds."""

    join_timeout = 5.0

    def __init__(self, backlog: int = 16):
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(backlog)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._running = True
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while self._running:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            thread = threading.Thread(target=self.handle, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._running = False
        self._accept_thread.join(5)
        self._sock.close()
        with self._lock:
            for conn in self._open:  # wake the handlers blocked in recv
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(self.join_timeout)


class ScriptedServer(RawServer):
    """A raw HTTP/1.1 server on 127.0.0.1 for what waitress will not do on purpose:
    send hop-by-hop headers, send garbage, or close a keep-alive connection just as
    the next request on it arrives (the stale keep-alive race).

    ``respond(request_head, index_on_connection)`` returns the raw bytes to send,
    or None to close the connection without answering. With ``close_after``,
    each connection is closed once answered, although the answer did not say
    so: what a backend's idle timeout or restart does to a kept-alive connection.
    """

    def __init__(self, respond: Any, close_after: bool = False):
        self.respond = respond
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.bodies: list[bytes] = []
        self.raw: list[bytes] = []  # each request's bytes as they came, body framing included
        self.closed = 0
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buffer = b""
        index = 0
        with conn:
            while self._running:
                got = read_head(conn, buffer)
                if got is None:
                    return
                head, buffer = got
                length = 0
                chunked = False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                    if name.strip().lower() == b"transfer-encoding":
                        chunked = b"chunked" in value.lower()
                body = b""
                framed = b""  # the body as sent, chunk framing included
                if chunked:
                    while True:
                        while b"\r\n" not in buffer:
                            data = conn.recv(65536)
                            if not data:
                                return
                            buffer += data
                        size_line, buffer = buffer.split(b"\r\n", 1)
                        size = int(size_line.split(b";")[0], 16)
                        while len(buffer) < size + 2:
                            data = conn.recv(65536)
                            if not data:
                                return
                            buffer += data
                        body += buffer[:size]
                        framed += size_line + b"\r\n" + buffer[:size + 2]
                        buffer = buffer[size + 2:]
                        if size == 0:
                            break
                else:
                    while len(buffer) < length:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffer += data
                    body, buffer = buffer[:length], buffer[length:]
                    framed = body
                self.requests.append(head)
                self.bodies.append(body)
                self.raw.append(head + b"\r\n\r\n" + framed)
                answer = self.respond(head, index)
                index += 1
                if answer is None:
                    return
                conn.sendall(answer)
                if self.close_after:
                    return

    def handle(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        finally:
            self.closed += 1

