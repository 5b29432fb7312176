"""Issue 11 item 11: the public health endpoint tells anyone ``status``,
``healthy`` and ``total``; which backends, where, and what they answered only
to a client the admin pages would answer (``admin.allow``, through
``forwarded.trusted`` proxies as the admin decides)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import urllib3
from webtest import TestApp

from zope_lb import LoadBalancer

HEALTH = "/__zope_lb__/health"


@pytest.fixture
def lb(backends):
    """Two backends, c1 down with the failure text of a refused connection."""
    balancer = LoadBalancer([f"{b.address} id=c{i}" for i, b in enumerate(backends[:2])],
                            health_interval=0, passive_fall=1, retries=1,
                            admin_allow="127.0.0.1", forwarded_trusted="127.0.0.10")
    backends[1].stop()
    app = TestApp(balancer)
    for _ in range(4):
        app.get("/echo")
    assert [b.state.value for b in balancer.pool.backends] == ["up", "down"]
    yield balancer, backends
    balancer.close()


def health(balancer, peer, **headers):
    return TestApp(balancer, extra_environ={"REMOTE_ADDR": peer}).get(HEALTH, headers=headers)


def test_outside_admin_allow_only_the_counts(lb):
    balancer, backends = lb
    answer = health(balancer, "127.0.0.5")
    assert answer.json == {"status": "degraded", "healthy": 1, "total": 2}
    for secret in (backends[0].address, backends[1].address, "c1", "refused"):
        assert secret not in answer.text


def test_inside_admin_allow_every_backend_and_its_failure(lb):
    balancer, backends = lb
    report = health(balancer, "127.0.0.1").json
    assert (report["status"], report["healthy"], report["total"]) == ("degraded", 1, 2)
    rows = {row["id"]: row for row in report["backends"]}
    assert rows["c1"]["address"] == backends[1].address and rows["c1"]["state"] == "down"
    assert rows["c1"]["reason"]


@pytest.mark.parametrize(("peer", "forwarded", "details"), [
    ("127.0.0.10", "127.0.0.1", True),  # a trusted proxy says: an allowed client
    ("127.0.0.10", "127.0.0.7", False),  # a trusted proxy says: someone else
    ("127.0.0.5", "127.0.0.1", False),  # anyone can send the header: not trusted
])
def test_through_a_proxy_as_the_admin_decides(lb, peer, forwarded, details):
    balancer, _ = lb
    answer = health(balancer, peer, **{"X-Forwarded-For": forwarded})
    assert ("backends" in answer.json) is details
    admin = TestApp(balancer, extra_environ={"REMOTE_ADDR": peer}).get(
        "/__zope_lb__/", headers={"X-Forwarded-For": forwarded}, expect_errors=True)
    assert (admin.status_int != 403) is details  # the admin's own verdict, the same


@pytest.mark.slow
def test_zope_lb_serve_and_check_from_outside_and_inside(backends, serve_process):
    """The real process: this test's 127.0.0.1 is outside admin.allow = 127.0.0.2,
    and a connection from 127.0.0.2 (loopback too) is inside."""
    backends[1].stop()
    process = serve_process([f"{b.address} id=c{i}" for i, b in enumerate(backends[:2])],
                            app="admin.allow = 127.0.0.2\nhealth.interval = 0\n"
                                "passive.fall = 1")
    outside = urllib3.PoolManager(retries=False, timeout=10)
    inside = urllib3.PoolManager(retries=False, timeout=10, source_address=("127.0.0.2", 0))
    for _ in range(4):
        outside.request("GET", process.url + "/")
    answer = outside.request("GET", process.url + HEALTH)
    assert answer.status == 200
    assert json.loads(answer.data) == {"status": "degraded", "healthy": 1, "total": 2}
    assert backends[1].address.encode() not in answer.data
    report = json.loads(inside.request("GET", process.url + HEALTH).data)
    assert [(b["id"], b["state"]) for b in report["backends"]] == [("c0", "up"),
                                                                 ("c1", "down")]
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "zope-lb"), "check", process.url],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stdout.startswith("ZOPE_LB WARNING - 1 of 2 backends healthy (which, and "
                                    "why: only from an address in the balancer's admin.allow)")
    assert backends[1].address not in result.stdout
