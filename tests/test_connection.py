"""``zope_lb.backend.KeptAliveConnection``: its short way of buffering a header
line must write exactly what urllib3 and http.client would, and refuse exactly
what they refuse."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3 import HTTPConnectionPool
from urllib3.connection import HTTPConnection
from urllib3.util import SKIP_HEADER
from webtest import TestApp

from zope_lb import LoadBalancer
from zope_lb.backend import KeptAliveConnection


def buffered(connection_class, header, *values):
    """What putheader leaves in the request being built, or the exception type."""
    conn = connection_class("127.0.0.1", 9)
    conn.putrequest("GET", "/", skip_host=True, skip_accept_encoding=True)
    conn._buffer.clear()  # only the header line under test
    try:
        conn.putheader(header, *values)
    except (ValueError, UnicodeError) as exc:
        return type(exc)
    return list(conn._buffer)


# the characters the rules are about (CR, LF, tab, space, ':', DEL, latin-1
# and beyond), then any text at all; names also as clients send them, so that
# the value's rules are reached too
tricky = st.text(st.sampled_from("aZ09-_ :\t\r\n\x7f\xe9\u0100\u20ac"), max_size=8)
header_text = tricky | st.text(max_size=8)
token = st.text(st.sampled_from("abcXYZ-_09"), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(token | header_text, header_text)
def test_one_str_value_buffers_what_http_client_would(name, value):
    assert buffered(KeptAliveConnection, name, value) == buffered(HTTPConnection, name, value)


def test_injected_line_break_is_refused():
    for value in ("a\r\nX-Evil: 1", "a\nX-Evil: 1", "a\rb"):
        assert buffered(KeptAliveConnection, "X-Test", value) is ValueError
    for name in (" X-Test", "X:Test", "X-Test\r\nX-Evil"):
        assert buffered(KeptAliveConnection, name, "1") is ValueError
    assert buffered(KeptAliveConnection, "X-Test", "\u20ac") is UnicodeEncodeError


def test_other_forms_take_urllib3s_way():
    assert buffered(KeptAliveConnection, "X-Many", "a", "b") == [b"X-Many: a\r\n\tb"]
    assert buffered(KeptAliveConnection, "Content-Length", 12) == [b"Content-Length: 12"]
    assert buffered(KeptAliveConnection, "User-Agent", SKIP_HEADER) == []
    assert buffered(KeptAliveConnection, "X-Test", SKIP_HEADER) is ValueError


def test_latin1_header_reaches_the_backend_byte_for_byte(scripted):
    server = scripted(lambda head, index: b"HTTP/1.1 204 No Content\r\n\r\n")
    app = TestApp(LoadBalancer([server.address], health_interval=0))
    app.get("/", headers={"X-Name": "caf\xe9"}, status=204)
    assert b"\r\nX-Name: caf\xe9\r\n" in server.requests[0]


class UrllibsOwnWay(KeptAliveConnection):
    """The same connection, answering through urllib3's own ``getresponse``."""

    getresponse = HTTPConnection.getresponse


ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
    b"Content-Length: 5\r\nX-Trailing: v \t\r\n\r\nhello",
    b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 99\r\n\r\n",
    b"HTTP/1.0 200\r\nX-Latin: caf\xe9\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
]


def test_getresponse_builds_what_urllib3s_own_would(scripted):
    """KeptAliveConnection.getresponse skips urllib3's header re-check, and
    touches urllib3's private _response_options: this holds it to urllib3's
    result for every version the project runs on."""
    seen = []
    for connection_class in (KeptAliveConnection, UrllibsOwnWay):
        server = scripted(lambda head, index: ANSWERS[index])
        pool = HTTPConnectionPool("127.0.0.1", server.port, maxsize=1, retries=False)
        pool.ConnectionCls = connection_class
        answers = []
        for method in ("GET", "GET", "GET", "GET"):
            response = pool.urlopen(method, "/", preload_content=False, decode_content=False)
            answers.append((response.status, response.reason, response.version,
                            response.version_string, list(response.headers.items()),
                            response.length_remaining, response.chunked,
                            response.read(decode_content=False)))
            response.release_conn()
        pool.close()
        assert server.connections == 1  # each answer left the connection clean
        seen.append(answers)
    assert seen[0] == seen[1]
    assert seen[0][0][4][1:3] == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
