"""Slots, the queue, affinity and named pools against real waitress backends."""

from __future__ import annotations

import http.client
import threading
from collections import Counter

import pytest
import urllib3
from servers import ServerThread, wait_until
from webtest import TestApp

from zope_lb import LoadBalancer


class Gate:
    """A backend that holds every request until the test opens the gate, and
    records how many it held at once and in which order they arrived."""

    def __init__(self, name: str):
        self.name = name
        self.open = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[str] = []

    def __call__(self, environ, start_response):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.arrivals.append(environ["PATH_INFO"])
        try:
            self.open.wait(20)
        finally:
            with self.lock:
                self.in_flight -= 1
        body = self.name.encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body))), ("X-Backend", self.name)])
        return [body]


@pytest.fixture
def gates():
    apps = [Gate("g0"), Gate("g1")]
    servers = [ServerThread(app, threads=16).start() for app in apps]
    yield servers
    for app in apps:
        app.open.set()
    for server in servers:
        server.stop()


def quiet_lb(*args, **options) -> LoadBalancer:
    """A balancer without active health probes: these tests count requests."""
    options.setdefault("health_interval", 0)
    return LoadBalancer(*args, **options)


def serve(lb: LoadBalancer, threads: int = 64) -> ServerThread:
    return ServerThread(lb, threads=threads).start()


def get(port: int, path: str, timeout: float = 20) -> tuple[int, str, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return res.status, res.read().decode(), dict(res.getheaders())
    finally:
        conn.close()


def test_maxconn_is_never_exceeded_under_50_concurrent_clients(gates):
    lb = quiet_lb([s.address for s in gates], maxconn=3, **{"queue.timeout": 20})
    front = serve(lb)
    results: list[int] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        status, _, _ = get(front.port, f"/r{i}")
        with lock:
            results.append(status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: lb.pool.queued == 44, timeout=10)
        assert [s.app.in_flight for s in gates] == [3, 3]
        for server in gates:
            server.app.open.set()
        for thread in threads:
            thread.join(20)
        assert results.count(200) == 50
        assert [s.app.max_in_flight for s in gates] == [3, 3]
        assert sum(len(s.app.arrivals) for s in gates) == 50
    finally:
        front.stop()


def test_queue_is_first_in_first_out(gates):
    server = gates[0]
    lb = quiet_lb([server.address], maxconn=1, **{"queue.timeout": 20})
    front = serve(lb, threads=8)
    threads = []
    try:
        for i in range(4):
            thread = threading.Thread(target=get, args=(front.port, f"/q{i}"))
            thread.start()
            threads.append(thread)
            # each request is in (at the backend or in the queue) before the next
            assert wait_until(lambda i=i: len(server.app.arrivals) + lb.pool.queued == i + 1)
        server.app.open.set()
        for thread in threads:
            thread.join(20)
        assert server.app.arrivals == ["/q0", "/q1", "/q2", "/q3"]
    finally:
        front.stop()


def test_queue_timeout_gives_503_with_retry_after(gates):
    lb = quiet_lb([gates[0].address], maxconn=1, **{"queue.timeout": "300ms"})
    front = serve(lb, threads=8)
    holder = threading.Thread(target=get, args=(front.port, "/hold"))
    try:
        holder.start()
        assert wait_until(lambda: gates[0].app.in_flight == 1)
        status, body, headers = get(front.port, "/late")
        assert status == 503
        assert headers["Retry-After"].isdigit()
        assert "busy for 0.3 s" in body
    finally:
        gates[0].app.open.set()
        holder.join(20)
        front.stop()


def test_closing_a_streamed_response_frees_its_slot(backend):
    lb = quiet_lb([backend.address], maxconn=1, **{"queue.timeout": "2s"})
    front = serve(lb, threads=8)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
        # 100 chunks, 0.1 s apart: 10 s if read to the end
        conn.request("GET", "/big?n=6553600&chunk=65536&delay=0.1")
        res = conn.getresponse()
        assert len(res.read1(65536)) > 0, "no first chunk"
        assert lb.pool.backends[0].active == 1, "slot not held while the body streams"
        conn.close()  # the client goes away mid-body
        assert wait_until(lambda: lb.pool.backends[0].active == 0, timeout=5), (
            "slot still held 5 s after the client went away")
        status, _, _ = get(front.port, "/echo", timeout=5)
        assert status == 200, f"the next request got {status}"
    finally:
        front.stop()


# -- affinity ----------------------------------------------------------------------


def sticky_lb(backends, **options) -> LoadBalancer:
    lines = [f"{b.address} id=client{i}" for i, b in enumerate(backends)]
    return quiet_lb(lines, affinity="cookie", **options)


def test_affinity_cookie_sticks_and_names_no_address(backends):
    app = TestApp(sticky_lb(backends))
    first = app.get("/echo")
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith("zlb_backend=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and "Path=/" in cookie and "Secure" not in cookie
    for backend in backends:
        assert str(backend.port) not in cookie and "127.0.0.1" not in cookie
    served = {app.get("/echo").headers["X-Backend"] for _ in range(6)}
    assert served == {first.headers["X-Backend"]}
    assert "Set-Cookie" not in app.get("/echo").headers  # already right: not re-sent


def test_affinity_cookie_is_secure_on_https(backends):
    app = TestApp(sticky_lb(backends), extra_environ={"wsgi.url_scheme": "https"})
    assert "Secure" in app.get("/echo").headers["Set-Cookie"]


def test_affinity_survives_a_balancer_restart(backends):
    app = TestApp(sticky_lb(backends))
    name = app.get("/echo").headers["X-Backend"]
    restarted = TestApp(sticky_lb(backends))
    restarted.cookiejar = app.cookiejar
    assert {restarted.get("/echo").headers["X-Backend"] for _ in range(4)} == {name}


def test_affinity_redispatches_when_its_backend_stops(backends):
    lb = sticky_lb(backends)
    app = TestApp(lb)
    name = app.get("/echo").headers["X-Backend"]
    index = int(name[1:])
    old_cookie = app.cookies["zlb_backend"]
    backends[index].stop()
    res = app.get("/echo")
    assert res.headers["X-Backend"] != name
    assert app.cookies["zlb_backend"] != old_cookie  # rewritten
    assert {app.get("/echo").headers["X-Backend"] for _ in range(4)} == {res.headers["X-Backend"]}


def test_forged_affinity_cookie_is_ignored(backends):
    app = TestApp(sticky_lb(backends))
    app.set_cookie("zlb_backend", "127.0.0.1:1")
    res = app.get("/echo")
    assert res.status_int == 200
    assert "Set-Cookie" in res.headers


def test_affinity_when_sticks_only_logged_in_requests(backends):
    app = TestApp(sticky_lb(backends, **{"affinity.when": "__ac"}))
    anonymous = Counter(app.get("/echo").headers["X-Backend"] for _ in range(6))
    assert len(anonymous) == 3 and "zlb_backend" not in app.cookies
    app.set_cookie("__ac", "editor-ticket")
    name = app.get("/echo").headers["X-Backend"]
    assert "zlb_backend" in app.cookies
    assert {app.get("/echo").headers["X-Backend"] for _ in range(5)} == {name}


# -- named pools -------------------------------------------------------------------


def test_named_pools_route_by_rules(backends):
    lb = quiet_lb(
        [backends[0].address],
        **{
            "pool.zmi.backends": backends[1].address,
            "pool.zmi.match": "path:*/manage*",
            "pool.editors.backends": backends[2].address,
            "pool.editors.match": "cookie:__ac method:GET,POST",
        },
    )
    app = TestApp(lb)
    assert app.get("/Plone/front-page").headers["X-Backend"] == "b0"
    assert app.get("/Plone/manage_main").headers["X-Backend"] == "b1"
    app.set_cookie("__ac", "x")
    assert app.get("/Plone/front-page").headers["X-Backend"] == "b2"
    assert app.post("/Plone/edit", b"a=1").headers["X-Backend"] == "b2"
    assert app.put("/Plone/file", b"x").headers["X-Backend"] == "b0"  # method not listed
    assert app.get("/Plone/manage_main").headers["X-Backend"] == "b1"  # first pool wins


# -- strategies end to end ----------------------------------------------------------


def test_least_connections_avoids_the_busy_backend(backends):
    lb = quiet_lb([b.address for b in backends[:2]], strategy="least_connections")
    front = serve(lb, threads=8)
    try:
        slow = threading.Thread(target=get, args=(front.port, "/slow?s=1.5"))
        slow.start()
        assert wait_until(lambda: sum(b.active for b in lb.pool.backends) == 1)
        busy = next(b for b in lb.pool.backends if b.active)
        idle_name = next(s.app.echo.name for s in backends[:2] if s.address != busy.address)
        http = urllib3.PoolManager()
        served = {http.request("GET", front.url + "/echo").headers["X-Backend"] for _ in range(5)}
        assert served == {idle_name}
        slow.join(10)
    finally:
        front.stop()


def test_uri_hash_sends_a_path_to_one_backend(backends):
    app = TestApp(quiet_lb([b.address for b in backends], strategy="uri_hash"))
    for path in ("/Plone/news", "/Plone/events", "/Plone/about"):
        served = {app.get(path).headers["X-Backend"] for _ in range(5)}
        assert len(served) == 1


def test_weights_and_backups_end_to_end(backends):
    lines = [f"{backends[0].address} weight=3", backends[1].address,
             f"{backends[2].address} backup"]
    lb = quiet_lb(lines, **{"passive.fall": 1})
    app = TestApp(lb)
    seen = Counter(app.get("/echo").headers["X-Backend"] for _ in range(8))
    assert seen == {"b0": 6, "b1": 2}
    backends[0].stop()
    backends[1].stop()
    assert {app.get("/echo").headers["X-Backend"] for _ in range(3)} == {"b2"}


def test_first_fills_the_first_backend(backends):
    app = TestApp(quiet_lb([b.address for b in backends], strategy="first"))
    assert {app.get("/echo").headers["X-Backend"] for _ in range(5)} == {"b0"}



def test_slot_is_free_once_the_backend_answered_in_full(backend):
    """A small answer is read whole with its headers: the backend is free before
    the client has even started to read. A big one holds its slot until close."""
    from webob import Request

    lb = quiet_lb([backend.address], maxconn=1)
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    small = lb(Request.blank("/echo").environ, start_response)  # not iterated yet
    assert statuses[-1].startswith("200") and lb.pool.backends[0].active == 0
    assert b"".join(small).startswith(b"{")
    small.close()
    big = lb(Request.blank("/big?n=1000000&chunk=65536").environ, start_response)
    assert statuses[-1].startswith("200") and lb.pool.backends[0].active == 1
    big.close()  # the client went away before the end: close() frees it
    assert lb.pool.backends[0].active == 0
