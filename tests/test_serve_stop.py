"""Graceful stop of the real ``zope-lb serve``: SIGTERM/SIGINT close the listening
socket at once, requests in flight finish (up to shutdown.timeout), idle
connections close, a second signal cuts; the log says what happened."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import threading
import time

import pytest
from servers import wait_until

pytestmark = pytest.mark.slow


def slow_get(port, seconds, result):
    """GET /slow?s=N in a thread; ``result`` gets the status and body, or the error."""
    def run():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", f"/slow?s={seconds}")
            response = conn.getresponse()
            result["status"], result["body"] = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            result["error"] = exc
        finally:
            result["ended"] = time.monotonic()
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def refused(port):
    """Whether a new connection is turned away: refused, or reset when it raced
    the listener closing (it reached the backlog of a socket that is gone)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_request_in_flight_finishes_and_new_connections_are_refused(
        serve_process, backend, signum):
    # access lines may wait 5 s for their thread: the drained request's line
    # can only be in the log because the stop wrote what was waiting
    lb = serve_process([backend.address], app="access_log.flush = 5")
    result: dict = {}
    thread = slow_get(lb.port, 3, result)
    assert wait_until(lambda: _busy(backend), timeout=5)
    lb.send(signum)
    assert wait_until(lambda: refused(lb.port), timeout=3, interval=0.02)
    assert lb.running()  # still draining, yet nobody new gets in
    thread.join(10)
    assert result.get("status") == 200 and result["body"] == b"slow done", result
    assert lb.wait(10) == 0
    log = lb.log()
    assert "waiting up to 30 s (shutdown.timeout) for 1 request(s) in flight" in log
    assert "stopped: every request finished" in log
    assert re.search(r'"GET /slow\?s=3 HTTP/1.1" 200 .* end=answered', log), log[-2000:]
    assert "Traceback" not in log


def test_idle_keep_alive_connections_close_at_once(serve_process, backend):
    lb = serve_process([backend.address])
    idle = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    idle.request("GET", "/echo")
    assert idle.getresponse().read()
    result: dict = {}
    thread = slow_get(lb.port, 3, result)
    assert wait_until(lambda: _busy(backend), timeout=5)
    lb.send(signal.SIGTERM)
    idle.sock.settimeout(2)
    started = time.monotonic()
    assert idle.sock.recv(1) == b""  # closed by the server, not timed out
    assert time.monotonic() - started < 1.5
    assert lb.running()
    thread.join(10)
    assert result.get("status") == 200
    assert lb.wait(10) == 0


def test_a_second_signal_cuts_the_requests_in_flight(serve_process, backend):
    lb = serve_process([backend.address])
    result: dict = {}
    thread = slow_get(lb.port, 20, result)
    assert wait_until(lambda: _busy(backend), timeout=5)
    lb.send(signal.SIGTERM)
    assert lb.wait_for_log(r"for 1 request\(s\) in flight", timeout=5)
    sent = time.monotonic()
    lb.send(signal.SIGTERM)
    assert lb.wait(10) == 0
    thread.join(5)
    assert "error" in result and result["ended"] - sent < 5, result
    assert "stopped after a second stop signal: cut 1 request(s) still in flight" in lb.log()


def test_a_request_longer_than_shutdown_timeout_is_cut(serve_process, backend):
    lb = serve_process([backend.address], app="shutdown.timeout = 1")
    result: dict = {}
    thread = slow_get(lb.port, 20, result)
    assert wait_until(lambda: _busy(backend), timeout=5)
    sent = time.monotonic()
    lb.send(signal.SIGTERM)
    assert lb.wait(10) == 0
    took = time.monotonic() - sent
    thread.join(5)
    assert "error" in result, result
    assert 0.9 < took < 6
    log = lb.log()
    assert "waiting up to 1 s (shutdown.timeout) for 1 request(s) in flight" in log
    assert "stopped after shutdown.timeout (1 s): cut 1 request(s) still in flight" in log


def _busy(backend):
    """Whether the backend's waitress is working on a request now."""
    return backend.server.task_dispatcher.active_count > 0
