"""``zope_lb.exchange``: the request path's own drive of a pooled connection must
put on the wire exactly what urllib3's ``urlopen`` put there, read every answer
as it read it, and keep a connection only when it did.

The reference is urlopen through the same connection class
(``KeptAliveConnection``), as the proxy called it before: same pool, same
strict head parser, same header checks.
"""

from __future__ import annotations

import contextlib
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from misbehaving import assert_answer_breaks_off
from servers import RawServer, ScriptedServer, read_head
from urllib3 import Retry
from urllib3.exceptions import ProtocolError, ReadTimeoutError
from webob import Request
from webtest import TestApp

from zope_lb import LoadBalancer
from zope_lb.backend import BackendConnectionPool
from zope_lb.exchange import origin_form, send

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def capture_server(answer: bytes = OK) -> ScriptedServer:
    """A ScriptedServer answering every request with ``answer``; ``raw`` has each
    request's bytes as they came."""
    return ScriptedServer(lambda head, index: answer)


@pytest.fixture(scope="module")
def shared_capture():
    server = capture_server()
    yield server
    server.stop()


@pytest.fixture
def capture(shared_capture):
    """The module's capture server, with no request recorded yet."""
    shared_capture.raw.clear()
    return shared_capture


def new_pool(server: RawServer) -> BackendConnectionPool:
    return BackendConnectionPool("127.0.0.1", server.port, maxsize=1, block=False,
                                 timeout=5, retries=False)


def through_urlopen(pool, method, target, headers, chunks, chunked):
    response = pool.urlopen(method, target, body=None if chunks is None else iter(chunks),
                            headers=headers, chunked=chunked,
                            retries=Retry(False, redirect=False), redirect=False,
                            assert_same_host=False, preload_content=False,
                            decode_content=False)
    body = b""
    while chunk := response.read1(65536, decode_content=False):
        body += chunk
    status = response.status
    response.release_conn()
    return status, body


def through_send(pool, method, target, headers, chunks, chunked):
    answer = send(pool, method, target, headers, None if chunks is None else iter(chunks),
                  chunked, 5, 5)
    body = b""
    while chunk := answer.read1(65536):
        body += chunk
    assert answer.isclosed()
    answer.release_conn()
    return answer.status, body


methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                           "PROPFIND", "MKCOL"])
path_text = st.text(st.sampled_from("az09/-._~%2fF?=&+ é€\x7e!$'()*,;:@[]"), max_size=20)
header_names = st.sampled_from(["Host", "Accept", "Cookie", "X-Forwarded-For", "Content-Type",
                                "Authorization", "X-Custom", "If-None-Match"])
header_values = st.text(st.sampled_from("abz09 ,;=/\t\"é"), max_size=12)
bodies = st.one_of(
    st.none(),
    st.tuples(st.just("length"), st.lists(st.binary(min_size=0, max_size=20), max_size=4)),
    st.tuples(st.just("chunked"), st.lists(st.text("ab").map(str.encode), max_size=4)),
)


@settings(max_examples=150, deadline=None)
@given(methods, path_text, st.dictionaries(header_names, header_values, max_size=5), bodies)
def test_the_request_is_the_bytes_urlopen_sent(shared_capture, method, path, headers, body):
    target = "/" + path
    chunks = None
    chunked = False
    if body is not None:
        kind, chunks = body
        if kind == "length":
            headers = {**headers, "Content-Length": str(sum(map(len, chunks)))}
        else:
            chunked = True
    capture = shared_capture
    sent = []
    for way in (through_urlopen, through_send):
        pool = new_pool(capture)
        try:
            outcome = way(pool, method, target, dict(headers), chunks, chunked)
        except (ValueError, UnicodeError) as exc:  # refused before anything was sent
            outcome = type(exc)
        finally:
            pool.close()
        sent.append((outcome, capture.raw[-1] if not isinstance(outcome, type) else None))
        capture.raw.clear()
    assert sent[0] == sent[1]


def test_no_body_gets_a_zero_length_where_urllib3_gave_one(capture):
    pool = new_pool(capture)
    for method in ("POST", "PUT", "PATCH", "GET", "DELETE"):
        through_send(pool, method, "/x", {"Host": "h"}, None, False)
    heads = [raw.split(b"\r\n")[0].split()[0] + (b" CL0" if b"Content-Length: 0" in raw else b"")
             for raw in capture.raw]
    assert heads == [b"POST CL0", b"PUT CL0", b"PATCH CL0", b"GET", b"DELETE"]


def test_a_body_of_unknown_length_goes_chunked(capture):
    pool = new_pool(capture)
    through_send(pool, "POST", "/upload", {"Host": "h"}, [b"abc", b"", b"defgh"], True)
    raw = capture.raw[0]
    assert b"\r\nTransfer-Encoding: chunked\r\n" in raw
    assert raw.endswith(b"\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n")


def test_the_target_is_encoded_as_urlopen_encodes_it():
    assert origin_form("/a b/%2f/é?q=a b") == "/a%20b/%2F/%C3%A9?q=a%20b"
    assert origin_form("/plain/path?x=1") == "/plain/path?x=1"
    assert origin_form("*") == "*"


# -- reading answers -------------------------------------------------------------

ANSWERS = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"),
    "no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "not-modified": b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    "interim": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "http10": b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc",
    "will-close": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
}


BODILESS = ("empty", "no-content", "not-modified")


@pytest.mark.parametrize("kind", sorted(ANSWERS))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_answer_reads_as_urllib3_read_it_and_the_connection_is_kept_alike(kind, method):
    outcomes = []
    for way in (through_urlopen, through_send):
        server = capture_server(ANSWERS[kind])
        pool = new_pool(server)
        try:
            first = way(pool, method, "/", {"Host": "h"}, None, False)
            second = way(pool, method, "/", {"Host": "h"}, None, False)
            outcomes.append((first, second, server.connections))
        finally:
            pool.close()
            server.stop()
    assert outcomes[0] == outcomes[1]
    # a body after the head of a HEAD answer is a misbehaviour: never kept
    keeps = kind != "will-close" and (method == "GET" or kind in BODILESS)
    assert outcomes[1][2] == (1 if keeps else 2)


class CutShortServer(RawServer):
    """Announces 100 body bytes, sends 10, closes."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            if read_head(conn, b"") is not None:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")


def test_a_body_shorter_than_its_length_is_an_error_not_an_answer():
    server = CutShortServer()
    pool = new_pool(server)
    try:
        answer = send(pool, "GET", "/", {"Host": "h"}, None, False, 5, 5)
        assert answer.read1(65536) == b"0123456789"
        with pytest.raises(ProtocolError, match="IncompleteRead"):
            while answer.read1(65536):
                pass
        assert answer.isclosed()
        answer.release_conn()
    finally:
        pool.close()
        server.stop()


def test_through_the_balancer_a_cut_short_body_is_cut_for_the_client():
    server = CutShortServer()
    app = LoadBalancer([server.address], health_interval=0)
    try:
        assert_answer_breaks_off(app, Request.blank("/").environ)
    finally:
        app.close()
        server.stop()


class SilentServer(RawServer):
    """Reads the request, never answers."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            if read_head(conn, b"") is not None:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(1)  # until the client gives up and closes


def test_no_answer_is_a_read_timeout_and_the_connection_is_not_kept():
    server = SilentServer()
    pool = new_pool(server)
    try:
        with pytest.raises(ReadTimeoutError):
            send(pool, "GET", "/", {"Host": "h"}, None, False, 5, 0.3)
        conn = pool._get_conn()
        assert conn.sock is None  # closed: the next request connects afresh
        pool._put_conn(conn)
    finally:
        pool.close()
        server.stop()


def test_a_refused_connection_is_urllib3s_connect_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: refused
        pool = BackendConnectionPool("127.0.0.1", port, maxsize=1, block=False)
        app = TestApp(LoadBalancer([f"127.0.0.1:{port}"], health_interval=0))
        with pytest.raises(Exception) as caught:
            send(pool, "GET", "/", {"Host": "h"}, None, False, 1, 1)
        assert type(caught.value).__name__ == "NewConnectionError"
        assert "connection refused" in app.get("/", status=503).text


def test_a_connection_is_back_in_its_pool_when_its_slot_is_free(caplog):
    """The proxy frees a backend's slot as soon as the answer was read whole,
    before the server has sent it and closed the body; the connection must be
    idle in the pool by then. Otherwise the request taking the slot opens one
    more connection, and one is closed when both come back ("Connection pool
    is full, discarding connection"): connection churn, and a warning per
    request under load."""
    server = capture_server(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                           b"Content-Length: 5\r\n\r\nhello")
    app = LoadBalancer([server.address], health_interval=0, maxconn=1)
    try:
        bodies = []
        for number in range(3):  # each body still open while the next one starts
            environ = Request.blank(f"/{number}").environ
            bodies.append(app(environ, lambda status, headers, exc_info=None: None))
        assert [b"".join(body) for body in bodies] == [b"hello"] * 3
        for body in bodies:
            body.close()
        assert server.connections == 1
        assert "pool is full" not in caplog.text
    finally:
        app.close()
        server.stop()
