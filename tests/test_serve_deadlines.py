"""Deadlines of the real ``zope-lb serve``: a client that is slow to send its
request head (timeout.request) or stops reading its answer (timeout.client) is
cut, and an answer a slow reader has not taken yet is spooled, so the backend is
free at once."""

from __future__ import annotations

import http.client
import signal
import socket
import time

import pytest
from servers import wait_until

pytestmark = pytest.mark.slow


def get(port, path="/echo", timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def closed_within(sock, seconds):
    """Whether the server closed ``sock`` within ``seconds`` (what it sent before)."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def test_a_request_head_sent_too_slowly_gets_408_and_is_closed(serve_process, backend):
    lb = serve_process([backend.address], app="timeout.request = 1")
    sock = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
    started = time.monotonic()
    head = b"GET /echo HTTP/1.1\r\nHost: example.org\r\nX-Slow: " + b"a" * 40
    sent = 0
    try:
        while time.monotonic() - started < 4 and sent < len(head):  # a byte every 0.1 s
            sock.send(head[sent:sent + 1])
            sent += 1
            time.sleep(0.1)
    except OSError:
        pass  # closed under us: what we want
    closed, data = closed_within(sock, 3)
    sock.close()
    assert closed and data.startswith(b"HTTP/1.1 408 "), data
    assert 0.9 < time.monotonic() - started < 4
    # nothing reached the backend (its health probes ask for /)
    assert not [r for r in backend.app.echo.requests if r["path"] == "/echo"]
    assert lb.wait_for_log(r"closed 1 connection\(s\) whose request head took longer than "
                           r"timeout.request \(1 s\)", timeout=2)
    assert get(lb.port)[0] == 200


def test_a_kept_alive_connection_gets_timeout_request_after_its_answer(
        serve_process, backend):
    lb = serve_process([backend.address], app="timeout.request = 1")
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    conn.request("GET", "/echo")
    assert conn.getresponse().read()
    answered = time.monotonic()
    closed, data = closed_within(conn.sock, 4)
    assert closed and data == b""  # a quiet close, as HAProxy's keep-alive timeout
    assert 0.9 < time.monotonic() - answered < 3.5
    conn.close()


def test_a_request_body_that_stops_coming_is_cut(serve_process, backend):
    lb = serve_process([backend.address], app="timeout.client = 1")
    sock = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
    started = time.monotonic()
    closed, data = closed_within(sock, 4)
    sock.close()
    assert closed and data == b""
    assert 0.9 < time.monotonic() - started < 3.5
    assert lb.wait_for_log(r"closed 1 connection\(s\) whose client sent nothing of its "
                           r"request body for timeout.client \(1 s\)", timeout=2)
    assert not [r for r in backend.app.echo.requests if r["path"] == "/echo"]


def test_a_client_that_stops_reading_is_cut_and_frees_the_backend(serve_process, backend):
    """One backend slot (maxconn 1): a client takes an answer far over the spool
    bound and reads nothing; after timeout.client it is cut and the next GET
    is answered (on main it waited for good: every later request got 503)."""
    lb = serve_process([f"{backend.address} maxconn=1"],
                       app="timeout.client = 2\nqueue.timeout = 20")
    stalled = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /big?n=300000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_until(lambda: backend.server.task_dispatcher.active_count > 0, timeout=5)
    started = time.monotonic()
    status, _ = get(lb.port, timeout=20)  # waits in the queue for the one slot
    took = time.monotonic() - started
    assert status == 200
    assert 1.5 < took < 2 + 5
    assert lb.wait_for_log(r"closed 1 connection\(s\) whose client read nothing of its "
                           r"answer for timeout.client \(2 s\)", timeout=2)
    stalled.close()


def test_an_answer_a_slow_reader_has_not_taken_is_spooled(serve_process, backend):
    """A 30 MB answer to a client that reads nothing for a while: the backend slot
    (maxconn 1) is free as soon as the backend has sent it all (waitress alone
    spools 16 MB, then holds the thread and the slot until the client reads)."""
    lb = serve_process([f"{backend.address} maxconn=1"], app="queue.timeout = 20")
    stalled = socket.socket()
    # a fixed receive buffer: the kernel's autotuning (up to 32 MB) would spool it
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    stalled.settimeout(5)
    stalled.connect(("127.0.0.1", lb.port))
    stalled.sendall(b"GET /big?n=30000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)
    started = time.monotonic()
    status, _ = get(lb.port, timeout=20)
    assert status == 200
    assert time.monotonic() - started < 2
    # and the slow reader still gets the whole answer
    stalled.settimeout(10)
    received = 0
    while True:
        chunk = stalled.recv(1 << 20)
        if not chunk:
            break
        received += len(chunk)
        if received >= 30_000_000:
            break
    stalled.close()
    assert received >= 30_000_000


def test_a_reload_changes_the_deadlines_of_the_running_server(serve_process, backend):
    """The deadlines are [app:main] options read on each maintenance pass: a
    SIGHUP with a new timeout.request applies without a restart."""
    lb = serve_process([backend.address])  # timeout.request 10 s
    ini = lb.ini_path
    with open(ini) as f:
        text = f.read()
    with open(ini, "w") as f:
        f.write(text.replace("[app:main]\n", "[app:main]\ntimeout.request = 1\n", 1))
    lb.send(signal.SIGHUP)
    time.sleep(0.5)  # the reload runs in a thread of its own; bounded retries below

    def slow_head_is_cut():
        sock = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
        try:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
            closed, data = closed_within(sock, 3)
            return closed and data.startswith(b"HTTP/1.1 408 ")
        finally:
            sock.close()

    assert any(slow_head_is_cut() for _ in range(3))
    assert lb.running()
    assert get(lb.port)[0] == 200
