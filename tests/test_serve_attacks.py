"""Issue 11 items 3 and 4 against the real ``zope-lb serve``, production defaults
except where named: slowloris, idle connections and stalled readers must not
take the site down. Bounded in count and time (a few seconds each)."""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time

import pytest
from apps import routes
from servers import ServerThread, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def backends():
    """Three backends that use poll(): this test process itself holds more than
    FD_SETSIZE sockets, which select() cannot watch."""
    servers = [ServerThread(routes(f"b{i}"), asyncore_use_poll=True).start()
               for i in range(3)]
    yield servers
    for server in servers:
        server.stop()


def timed_get(port, path="/echo", timeout=15.0):
    """(status, seconds) of one normal GET on a new connection."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


def test_slowloris_and_idle_connections_do_not_stop_a_normal_get(serve_process, backends):
    lb = serve_process([b.address for b in backends])
    idle, slow = [], []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", lb.port), timeout=5))
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
            sock.setblocking(False)
            slow.append(sock)
        head = b"GET /echo HTTP/1.1\r\nHost: example.org\r\nX-Pad: " + b"a" * 100
        stop = threading.Event()

        def trickle():  # a byte a second on each of the 300, for at most 6 s
            for offset in range(6):
                if stop.is_set():
                    return
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.send(head[offset:offset + 1])
                stop.wait(1)

        attacker = threading.Thread(target=trickle, daemon=True)
        attacker.start()
        time.sleep(1.5)
        timings = [timed_get(lb.port) for _ in range(5)]
        stop.set()
        attacker.join(5)
        assert all(status == 200 for status, _ in timings), timings
        assert max(seconds for _, seconds in timings) < 2, timings
    finally:
        for sock in idle + slow:
            sock.close()


def test_stalled_readers_of_a_300_mb_answer_free_their_slots(serve_process, backends):
    """3 backends x 4 slots, 12 clients ask for 300 MB and read nothing: a normal
    GET waits in the queue and is answered once timeout.client cut them."""
    lb = serve_process([b.address for b in backends], app="timeout.client = 3")
    stalled = []
    try:
        for _ in range(12):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", lb.port))
            sock.sendall(b"GET /big?n=300000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append(sock)
        busy = lambda: sum(b.server.task_dispatcher.active_count for b in backends)  # noqa: E731
        assert wait_until(lambda: busy() == 12, timeout=10)
        status, seconds = timed_get(lb.port, timeout=20)
        assert status == 200
        assert seconds < 3 + 5
        assert wait_until(lambda: busy() == 0, timeout=5)  # every backend slot is free
        cut = r"closed (\d+) connection\(s\) whose client read nothing of its answer"
        assert wait_until(lambda: sum(map(int, re.findall(cut, lb.log()))) == 12, timeout=5)
    finally:
        for sock in stalled:
            sock.close()
