"""Outages as an operator lives them: the real ``zope-lb serve`` with a
production-like ini, backends dying under load. What the log shows, and who
answers. (Signals, reload and ``zope-lb config`` have their own files:
test_serve_stop.py, test_reload.py, test_config.py.)"""

from __future__ import annotations

import threading
import time

import pytest
import urllib3
from apps import routes
from servers import ServerThread


def other_lines(log: str) -> list[str]:
    """The log's lines besides the access log (and besides tracebacks' bodies)."""
    return [line for line in log.splitlines()
            if line.strip() and "[zope_lb.access]" not in line]


@pytest.fixture
def trio():
    servers = [ServerThread(routes(name)).start() for name in ("p0", "p1", "bk")]
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.slow
def test_the_backup_takes_the_first_request_after_both_primaries_die(serve_process, trio):
    p0, p1, bk = trio
    lb = serve_process([p0.address, p1.address, f"{bk.address} backup"])
    http = urllib3.PoolManager(retries=False, timeout=10)
    assert http.request("GET", lb.url + "/echo").headers["X-Backend"] in ("p0", "p1")
    p0.stop()
    p1.stop()
    get = http.request("GET", lb.url + "/echo")
    assert (get.status, get.headers["X-Backend"]) == (200, "bk")
    post = http.request("POST", lb.url + "/form", body=b"a=1",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (post.status, post.headers["X-Backend"]) == (200, "bk")
    assert bk.app.echo.requests[-1]["method"] == "POST"


@pytest.mark.slow
def test_a_backend_dying_under_load_loses_no_get_and_floods_no_log(serve_process, trio):
    """8 clients for about 8 s while one backend is stopped and started again
    three times: every GET is answered, and the log beside the access log stays
    short (a line per state change and a summary per 10 s, not one per request)."""
    p0, p1, bk = trio  # three primaries here
    lb = serve_process([p0.address, p1.address, bk.address],
                       app="health.interval = 1\nhealth.timeout = 1")
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def client() -> None:
        http = urllib3.PoolManager(retries=False, timeout=10)
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status = http.request("GET", lb.url + "/echo").status
            except urllib3.exceptions.HTTPError as exc:
                failures.append(repr(exc))
                continue
            if status != 200:
                failures.append(str(status))
            answered[0] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            time.sleep(1.0)
            p1.stop()  # like a SIGKILLed Zope client: its connections close
            time.sleep(1.5)
            p1.start()  # the same port again
    finally:
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(15)
    assert not failures, failures[:5]
    assert answered[0] > 300
    # each access line is written when its answer's iterable closes, just after
    # the last byte went out: the newest may land a moment after its client saw it
    assert lb.wait_for_log(r"\[zope_lb\.access\]", count=answered[0], timeout=5), answered
    log = lb.log()
    lines = other_lines(log)
    assert len(lines) < 40, "\n".join(lines)
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_dead_cluster_writes_a_handful_of_lines_for_many_requests(serve_process, trio):
    lb = serve_process([server.address for server in trio], app="health.interval = 1")
    for server in trio:
        server.stop()
    http = urllib3.PoolManager(retries=False, timeout=10)
    statuses = {http.request("GET", lb.url + "/echo").status for _ in range(500)}
    assert statuses == {503}
    assert lb.wait_for_log(r"\[zope_lb\.access\]", count=500, timeout=5)
    log = lb.log()
    lines = other_lines(log)
    assert len(lines) < 25, "\n".join(lines)
