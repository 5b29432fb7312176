"""The proxy core against real waitress backends on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections import Counter

import pytest
import urllib3
from servers import ServerThread, wait_until
from webtest import TestApp

from zope_lb import LoadBalancer


def lb_for(servers, **options):
    """A balancer over ``servers``, without active health probes (these tests
    count requests; health checks have tests of their own)."""
    options.setdefault("health_interval", 0)
    return LoadBalancer([s.address for s in servers], **options)


def test_round_robin_spreads_requests_evenly(backends):
    app = TestApp(lb_for(backends))
    seen = Counter(app.get("/echo").headers["X-Backend"] for _ in range(9))
    assert seen == {"b0": 3, "b1": 3, "b2": 3}


def test_method_path_query_headers_and_body_arrive(backend):
    app = TestApp(lb_for([backend]))
    body = b"x=1&y=" + "é".encode() * 10
    res = app.post("/some/path?a=1&b=%20c", body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Custom": "yes",
    })
    got = res.json
    assert got["method"] == "POST"
    assert got["path"] == "/some/path"
    assert got["query"] == "a=1&b=%20c"
    assert got["headers"]["X-Custom"] == "yes"
    assert got["content_type"] == "application/x-www-form-urlencoded"
    assert got["body_length"] == len(body)


@pytest.mark.parametrize("method", [
    "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "DELETE", "PUT", "OPTIONS", "PATCH",
])
def test_every_method_passes_webdav_included(backend, method):
    app = TestApp(lb_for([backend]))
    res = app.request("/dav/folder", method=method, body=b"<x/>",
                      headers={"Destination": "http://site/dav/other", "Depth": "1",
                               "Content-Type": "text/xml"})
    assert res.status_int == 200
    assert res.json["method"] == method
    assert res.json["headers"]["Destination"] == "http://site/dav/other"
    assert res.json["headers"]["Depth"] == "1"


def test_propfind_multistatus(backend):
    app = TestApp(lb_for([backend]))
    res = app.request("/dav/folder", method="PROPFIND", body=b"<propfind/>",
                      headers={"Depth": "0"})
    assert res.status_int == 207
    assert b"<d:href>/dav/folder</d:href>" in res.body


def test_multiple_set_cookie_headers_survive(backend):
    res = TestApp(lb_for([backend])).get("/cookies")
    assert res.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


def ok(body: bytes = b"ok", *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def test_hop_by_hop_response_headers_dropped(scripted):
    backend = scripted(lambda head, i: ok(
        b"hop", "Connection: keep-alive, X-Secret-Hop", "X-Secret-Hop: 1",
        "Keep-Alive: timeout=5", "Proxy-Authenticate: Basic", "Upgrade: h2c",
        "Trailer: X-Sum", "X-Kept: yes"))
    res = TestApp(lb_for([backend])).get("/hop")
    for name in ("Connection", "Keep-Alive", "X-Secret-Hop", "Proxy-Authenticate",
                 "Upgrade", "Trailer"):
        assert name not in res.headers
    assert res.headers["X-Kept"] == "yes"
    assert res.body == b"hop"


def test_garbage_from_backend_gives_502(scripted, caplog):
    backend = scripted(lambda head, i: b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    with caplog.at_level(logging.WARNING, logger="zope_lb"):
        res = TestApp(lb_for([backend])).get("/", status=502)
    assert "could not answer" in res.text and "Traceback" not in res.text
    assert any(backend.address in r.getMessage() for r in caplog.records)


def test_stale_keepalive_connection_is_retried_once_for_get(scripted):
    """The backend closes the kept-alive connection just as the next request
    arrives: the GET is sent again on a fresh connection, and succeeds."""
    backend = scripted(lambda head, i: ok(b"first") if i == 0 else None)
    app = TestApp(lb_for([backend]))
    assert app.get("/one").body == b"first"
    assert app.get("/two").body == b"first"  # answered on the retry's new connection
    assert backend.connections == 2
    assert [h.split(b" ")[1] for h in backend.requests] == [b"/one", b"/two", b"/two"]


def test_stale_keepalive_connection_never_resends_a_post(scripted, caplog):
    backend = scripted(lambda head, i: ok(b"first") if i == 0 else None)
    app = TestApp(lb_for([backend]))
    app.get("/one")
    with caplog.at_level(logging.WARNING, logger="zope_lb"):
        res = app.post("/form", b"a=1", status=502)
    assert "closed the connection" in res.text
    assert [h.split(b" ")[0] for h in backend.requests].count(b"POST") == 1
    assert any(backend.address in r.getMessage() for r in caplog.records)


def test_connection_closed_while_idle_costs_no_request(scripted, caplog):
    """The backend closed a kept-alive connection between two requests. Every
    method gets the liveness poll before a pooled connection is reused (a GET
    too: skipping it let stray bytes answer the next request), so each request
    goes out once, on a new connection, with no retry."""
    backend = scripted(lambda head, i: ok(head.split(b" ")[1]), close_after=True)
    app = TestApp(lb_for([backend]))
    assert app.get("/one").body == b"/one"
    assert wait_until(lambda: backend.closed == 1, timeout=5)
    with caplog.at_level(logging.INFO, logger="zope_lb"):
        assert app.post("/form", b"a=1").body == b"/form"
    assert not [r for r in caplog.records
                if "/form" in r.getMessage() and r.name != "zope_lb.access"]
    assert wait_until(lambda: backend.closed == 2, timeout=5)
    with caplog.at_level(logging.INFO, logger="zope_lb"):
        assert app.get("/two").body == b"/two"
    assert not [r for r in caplog.records
            if "/two" in r.getMessage() and r.name != "zope_lb.access"]
    assert [h.split(b" ")[1] for h in backend.requests] == [b"/one", b"/form", b"/two"]
    assert backend.connections == 3
    assert app.app.pool.backends[0].state.value == "up"


def test_hop_by_hop_request_headers_dropped(backend):
    res = TestApp(lb_for([backend])).get("/echo", headers={
        "Connection": "X-Private", "X-Private": "secret", "Keep-Alive": "5",
        "Proxy-Authorization": "Basic Zm9v", "TE": "trailers", "Upgrade": "websocket",
        "X-Kept": "1",
    })
    sent = res.json["headers"]
    for name in ("X-Private", "Keep-Alive", "Proxy-Authorization", "Te", "Upgrade"):
        assert name not in sent
    assert sent["X-Kept"] == "1"


def test_x_forwarded_headers_replace_untrusted_and_extend_trusted(backend):
    untrusted = TestApp(lb_for([backend]), extra_environ={"REMOTE_ADDR": "203.0.113.9"})
    sent = untrusted.get("/echo", headers={"X-Forwarded-For": "6.6.6.6",
                                           "X-Forwarded-Proto": "https"}).json["headers"]
    assert sent["X-Forwarded-For"] == "203.0.113.9"
    assert sent["X-Forwarded-Proto"] == "http"
    assert sent["X-Forwarded-Host"] == "localhost:80"
    trusted = TestApp(lb_for([backend], **{"forwarded.trusted": "10.0.0.0/8"}),
                      extra_environ={"REMOTE_ADDR": "10.1.2.3"})
    sent = trusted.get("/echo", headers={"X-Forwarded-For": "198.51.100.7",
                                         "X-Forwarded-Proto": "https",
                                         "X-Forwarded-Host": "www.example.org"}).json["headers"]
    assert sent["X-Forwarded-For"] == "198.51.100.7, 10.1.2.3"
    assert sent["X-Forwarded-Proto"] == "https"
    assert sent["X-Forwarded-Host"] == "www.example.org"


def test_host_header_preserved_or_replaced(backend):
    kept = TestApp(lb_for([backend])).get("/echo", headers={"Host": "www.example.org"})
    assert kept.json["headers"]["Host"] == "www.example.org"
    replaced = TestApp(lb_for([backend], preserve_host=False)).get(
        "/echo", headers={"Host": "www.example.org"})
    assert replaced.json["headers"]["Host"] == backend.address


def test_head_and_304_carry_no_body(backend):
    app = TestApp(lb_for([backend]))
    head = app.head("/echo")
    assert head.status_int == 200 and head.body == b""
    res = app.get("/notmodified", status=304)
    assert res.body == b"" and res.headers["ETag"] == '"abc"'


def test_redirect_is_passed_not_followed(backend):
    res = TestApp(lb_for([backend])).get("/redirect", status=302)
    assert res.headers["Location"] == "http://example.org/target"


def test_backend_error_status_passes_through(backend):
    res = TestApp(lb_for([backend])).get("/status?code=500", status=500)
    assert res.body == b"status 500"


# -- through a real waitress-served balancer ----------------------------------


@pytest.fixture
def served(backends):
    """The balancer over the three backends, itself served by waitress."""
    lb = lb_for(backends)
    server = ServerThread(lb, threads=8).start()
    yield server
    server.stop()
    lb.close()


def raw_request(address: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (Connection: close)."""
    import socket

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_percent_encoded_and_non_ascii_paths_arrive_as_sent(served, backends):
    sent_path = "/caf%C3%A9/a%2Fb/x%20y/~user"
    response = raw_request(served.address,
                           f"GET {sent_path}?q=%C3%A9 HTTP/1.1\r\nHost: x\r\n"
                           "Connection: close\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 200")
    record = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert record["uri"] == f"{sent_path}?q=%C3%A9"
    assert record["path"] == "/café/a/b/x y/~user".encode().decode("latin-1")


def test_absolute_uri_never_picks_the_target(served, backends):
    response = raw_request(
        served.address,
        b"GET http://192.0.2.1:9/secret?x=1 HTTP/1.1\r\nHost: 192.0.2.1:9\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 200")
    record = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert record["backend"] in {"b0", "b1", "b2"}
    assert record["uri"] == "/secret?x=1"


def test_connect_method_refused(served):
    response = raw_request(served.address,
                           b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n"
                           b"Connection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 405")


def test_chunked_upload_streams_through(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    parts = [bytes([i]) * 50000 for i in range(20)]
    conn.request("PUT", "/echo", body=iter(parts), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    res = conn.getresponse()
    record = json.loads(res.read())
    import hashlib
    assert res.status == 200
    assert record["body_length"] == sum(map(len, parts))
    assert record["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    # waitress de-chunks an upload and hands the app a Content-Length
    assert record["content_length"] == str(sum(map(len, parts)))
    conn.close()


def test_body_of_unknown_length_is_sent_chunked(scripted):
    """Servers other than waitress may pass a chunked upload through as such."""
    import io

    backend = scripted(lambda head, i: ok(b"stored"))
    data = b"0123456789" * 30000
    environ = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(data),
               "wsgi.input_terminated": True,
               "SERVER_PROTOCOL": "HTTP/1.1"}  # chunked is HTTP/1.1 only (HTTP/1.0: 400)
    app = TestApp(lb_for([backend]), lint=False)
    assert app.request("/upload", method="PUT", environ=environ).body == b"stored"
    assert b"Transfer-Encoding: chunked" in backend.requests[0]
    assert b"Content-Length" not in backend.requests[0]
    assert backend.bodies[0] == data


def test_large_body_streams_in_chunks(served):
    """The first bytes arrive long before the backend finished sending."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    started = time.monotonic()
    # 10 chunks of 64 KiB, 0.2 s apart: the whole body takes about 2 s
    conn.request("GET", "/big?n=655360&chunk=65536&delay=0.2")
    res = conn.getresponse()
    first = res.read1(65536)
    first_at = time.monotonic() - started
    rest = res.read()
    total_at = time.monotonic() - started
    assert len(first) + len(rest) == 655360
    assert first_at < 1.0 < total_at
    conn.close()


def test_chunked_response_without_length_streams(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.request("GET", "/big?n=300000&chunk=1000&length=0")
    res = conn.getresponse()
    assert res.getheader("Transfer-Encoding") == "chunked"
    assert len(res.read()) == 300000
    conn.close()


# -- failures ----------------------------------------------------------------------


def test_failover_when_a_backend_is_stopped(backends):
    lb = lb_for(backends, **{"passive.fall": 2})
    app = TestApp(lb)
    backends[1].stop()
    seen = Counter(app.get("/echo").headers["X-Backend"] for _ in range(12))
    assert set(seen) == {"b0", "b2"}
    assert sum(seen.values()) == 12
    down = [b for b in lb.pool.backends if b.state.value == "down"]
    assert [b.address for b in down] == [backends[1].address]


def test_stopped_backend_returns_after_cooldown(backends):
    now = [1000.0]
    lb = lb_for(backends, clock=lambda: now[0], **{"passive.fall": 1,
                                                    "passive.cooldown": 10})
    app = TestApp(lb)
    port = backends[1].port
    backends[1].stop()
    for _ in range(6):
        app.get("/echo")
    now[0] += 5
    assert "b1" not in {app.get("/echo").headers["X-Backend"] for _ in range(6)}
    backends[1] = ServerThread(backends[1].app, port=port).start()
    now[0] += 6  # cool-down over
    assert "b1" in {app.get("/echo").headers["X-Backend"] for _ in range(6)}


def test_all_backends_down_gives_503_with_retry_after(backends, caplog):
    lb = lb_for(backends)
    for server in backends:
        server.stop()
    with caplog.at_level(logging.WARNING, logger="zope_lb"):
        res = TestApp(lb).get("/echo", status=503)
    assert res.headers["Retry-After"].isdigit()
    assert "no backend could be reached" in res.text
    assert "Traceback" not in res.text
    assert any(backends[0].address in r.getMessage() for r in caplog.records)


def test_read_timeout_gives_504(backend, caplog):
    lb = lb_for([backend], **{"timeout.read": "300ms"})
    with caplog.at_level(logging.WARNING, logger="zope_lb"):
        res = TestApp(lb).get("/slow?s=1.5", status=504)
    assert "took too long" in res.text and "0.3 s" in res.text
    assert any(backend.address in r.getMessage() for r in caplog.records)


def test_post_is_never_sent_twice(backends):
    """A connect failure moves a POST; a POST that reached a backend is not repeated."""
    lb = lb_for(backends)
    backends[0].stop()
    app = TestApp(lb)
    for _ in range(6):
        assert app.post("/echo", b"data").status_int == 200
    counts = Counter()
    for server in backends[1:]:
        counts[server.app.echo.name] = len(server.app.echo.requests)
    assert sum(counts.values()) == 6


def test_reconfigure_adds_and_drains_without_dropping(backends):
    lb = lb_for(backends[:2])
    app = TestApp(lb)
    lb.reconfigure([backends[1].address, backends[2].address])
    seen = Counter(app.get("/echo").headers["X-Backend"] for _ in range(6))
    assert seen == {"b1": 3, "b2": 3}


def test_removed_backend_finishes_its_request(backends):
    import threading

    lb = lb_for(backends[:1])
    server = ServerThread(lb, threads=4).start()
    try:
        result = {}

        def slow_request():
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/slow?s=1")
            res = conn.getresponse()
            result["status"], result["body"] = res.status, res.read()

        worker = threading.Thread(target=slow_request)
        worker.start()
        time.sleep(0.3)
        lb.reconfigure([backends[1].address])
        after = urllib3.PoolManager().request("GET", server.url + "/echo")
        assert after.headers["X-Backend"] == "b1"
        worker.join(10)
        assert result == {"status": 200, "body": b"slow done"}
        assert lb.pool.backends[0].address == backends[1].address
    finally:
        server.stop()
