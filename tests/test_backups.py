"""Backups at once: when no primary can take a request, a backup takes it in
the same request (issue 10, item 8)."""

from __future__ import annotations

import threading
import time

import pytest
from apps import routes
from servers import ServerThread, free_port
from webtest import TestApp

from zope_lb import LoadBalancer


@pytest.fixture
def cluster():
    """Two primaries (p0, p1) and a backup (bk), all running."""
    servers = [ServerThread(routes(name)).start() for name in ("p0", "p1", "bk")]
    yield servers
    for server in servers:
        server.stop()


def lines(servers):
    p0, p1, bk = servers
    return [p0.address, p1.address, f"{bk.address} backup"]


@pytest.mark.parametrize("health_interval", [0, 5])
def test_first_request_after_both_primaries_die_goes_to_the_backup(cluster, health_interval):
    balancer = LoadBalancer(lines(cluster), health_interval=health_interval)
    try:
        app = TestApp(balancer)
        assert app.get("/echo").headers["X-Backend"] in ("p0", "p1")
        cluster[0].stop()
        cluster[1].stop()
        res = app.get("/echo", status=200)
        assert res.headers["X-Backend"] == "bk"
        res = app.post("/form", b"a=1", status=200)
        assert res.headers["X-Backend"] == "bk"
        assert res.json["method"] == "POST" and res.json["body_length"] == 3
        assert cluster[2].app.echo.requests[-1]["method"] == "POST"
    finally:
        balancer.close()


def test_backup_is_tried_even_when_retries_are_spent(cluster):
    """retries = 1 is spent on the second primary; every primary has failed this
    request, so the backup still takes it."""
    balancer = LoadBalancer(lines(cluster), health_interval=0, retries=1)
    try:
        cluster[0].stop()
        cluster[1].stop()
        res = TestApp(balancer).get("/echo", status=200)
        assert res.headers["X-Backend"] == "bk"
    finally:
        balancer.close()


def test_an_untried_primary_comes_before_the_backup(cluster):
    """Two of three primaries dead: the live one answers, not the backup."""
    p0, p1, bk = cluster
    dead = f"127.0.0.1:{free_port()}"
    balancer = LoadBalancer([dead, p0.address, p1.address, f"{bk.address} backup"],
                            health_interval=0, strategy="first")
    try:
        p0.stop()
        res = TestApp(balancer).get("/echo", status=200)
        assert res.headers["X-Backend"] == "p1"
    finally:
        balancer.close()


def test_backup_takes_no_request_while_a_primary_can(cluster):
    balancer = LoadBalancer(lines(cluster), health_interval=0)
    try:
        app = TestApp(balancer)
        cluster[0].stop()
        seen = {app.get("/echo").headers["X-Backend"] for _ in range(6)}
        assert seen == {"p1"}
    finally:
        balancer.close()


def test_retries_zero_keeps_its_word(cluster):
    """retries = 0 means no second backend, backups included."""
    balancer = LoadBalancer(lines(cluster), health_interval=0, retries=0)
    try:
        cluster[0].stop()
        cluster[1].stop()
        TestApp(balancer).get("/echo", status=502)
        assert not cluster[2].app.echo.requests
    finally:
        balancer.close()


@pytest.mark.parametrize("queue", [{"queue_size": 0}, {"queue_timeout": 0.3}])
def test_full_primaries_hand_the_overflow_to_a_backup(queue):
    """The only primary is busy (maxconn 1): instead of a 503 (queue full, or
    waited queue.timeout), the backup takes the request."""
    primary = ServerThread(routes("p0")).start()
    backup = ServerThread(routes("bk")).start()
    balancer = LoadBalancer([f"{primary.address} maxconn=1", f"{backup.address} backup"],
                            health_interval=0, **queue)
    app = TestApp(balancer)
    slow = threading.Thread(target=lambda: app.get("/slow?s=1.5"), daemon=True)
    try:
        slow.start()
        deadline = time.monotonic() + 5
        while balancer.pool.backends[0].active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert balancer.pool.backends[0].active == 1
        res = app.get("/echo", status=200)
        assert res.headers["X-Backend"] == "bk"
    finally:
        slow.join(5)
        balancer.close()
        primary.stop()
        backup.stop()
