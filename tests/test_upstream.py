"""``zope_lb.upstream.parse_head``: HAProxy's rules for a backend's answer head,
as a pure function; the same fields as http.client for every head it accepts."""

from __future__ import annotations

import http.client
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zope_lb.upstream import HEAD_LIMIT, HeadError, parse_head


def head(*fields: str, status: str = "HTTP/1.1 200 OK") -> bytes:
    return ("\r\n".join((status, *fields)) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(("data", "rule"), [
    (head("X-A: a\rX-B: b"), "bare CR"),
    (head("X-A: a\x00b"), "NUL"),
    (head("X-A: a", " folded"), "obs-fold"),
    (head("X-A : a"), "white space before the colon"),
    (head("X-A a"), "without a colon"),
    (head("X\x01A: a"), "invalid character"),
    (head("Content-Length: 5", "Content-Length: 6"), "differing Content-Length"),
    (head("Content-Length: 5, 6"), "differing Content-Length"),
    (head("Content-Length: +5"), "invalid Content-Length"),
    (head("Content-Length: -1"), "invalid Content-Length"),
    (head("Content-Length: 0x5"), "invalid Content-Length"),
    (head("Content-Length: "), "invalid Content-Length"),
    (head("Transfer-Encoding: identity"), "'identity' is refused"),
    (head("Transfer-Encoding: gzip, chunked"), "unknown transfer coding"),
    (head("Transfer-Encoding: chunked, gzip"), "unknown transfer coding"),
    (head("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), "unknown transfer"),
    (head("Transfer-Encoding: chunked", status="HTTP/1.0 200 OK"), "HTTP/1.0"),
    (head(status="HTTP/2.0 200 OK"), "status line"),
    (head(status="HTTP/1.1 OK 200"), "status line"),
    (head(status="HTTP/1.1 20 OK"), "status line"),
    (head(status="HTTP/1.1  200 OK"), "status line"),
    (head(status="ICY 200 OK"), "status line"),
    (b"HTTP/1.1 200 OK\nX-A: a\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\n\r\n", "bare LF"),
])
def test_refused(data, rule):
    with pytest.raises(HeadError, match=rule):
        parse_head(data, "GET")


def test_framing_of_an_ordinary_answer():
    parsed = parse_head(head("Content-Type: text/html", "Content-Length: 12"), "GET")
    assert (parsed.version, parsed.status, parsed.reason) == (11, 200, "OK")
    assert parsed.fields == [("Content-Type", "text/html"), ("Content-Length", "12")]
    assert (parsed.length, parsed.chunked, parsed.will_close) == (12, False, False)


def test_content_length_beside_chunked_is_dropped_and_the_connection_not_reused():
    parsed = parse_head(head("Content-Length: 5", "Transfer-Encoding: Chunked"), "GET")
    assert [name for name, _ in parsed.fields] == ["Transfer-Encoding"]
    assert (parsed.length, parsed.chunked, parsed.will_close) == (None, True, True)


@pytest.mark.parametrize("fields", [("Content-Length: 5", "Content-Length: 5"),
                                    ("Content-Length: 5, 5",)])
def test_identical_content_lengths_are_one(fields):
    assert parse_head(head(*fields), "GET").length == 5


@pytest.mark.parametrize(("status", "method"), [("HTTP/1.1 204 No Content", "GET"),
                                                ("HTTP/1.1 304 Not Modified", "GET"),
                                                ("HTTP/1.1 200 OK", "HEAD"),
                                                ("HTTP/1.1 103 Early Hints", "GET")])
def test_no_body_where_none_may_be(status, method):
    parsed = parse_head(head("Transfer-Encoding: chunked", "Content-Length: 9", status=status),
                        method)
    assert (parsed.length, parsed.chunked) == (0, False)


@pytest.mark.parametrize(("status", "fields", "will_close"), [
    ("HTTP/1.1 200 OK", ("Content-Length: 1",), False),
    ("HTTP/1.1 200 OK", ("Content-Length: 1", "Connection: Close"), True),
    ("HTTP/1.1 200 OK", ("Content-Length: 1", "Connection: upgrade, close"), True),
    ("HTTP/1.1 200 OK", (), True),  # close-delimited
    ("HTTP/1.0 200 OK", ("Content-Length: 1",), True),
    ("HTTP/1.0 200 OK", ("Content-Length: 1", "Connection: keep-alive"), False),
    ("HTTP/1.1 200", ("Content-Length: 1",), False),  # no reason phrase
])
def test_connection_kept_or_closed(status, fields, will_close):
    assert parse_head(head(*fields, status=status), "GET").will_close is will_close


def test_white_space_around_values_is_not_part_of_them():
    parsed = parse_head(head("X-A: \t a b \t", "X-B:c", "X-C:"), "GET")
    assert parsed.fields == [("X-A", "a b"), ("X-B", "c"), ("X-C", "")]


def test_too_many_fields():
    with pytest.raises(HeadError, match="more than 100"):
        parse_head(head(*(f"X-{n}: v" for n in range(101))), "GET")
    assert HEAD_LIMIT >= 16 * 1024


token = st.text("abcXYZ-_09!#$%&'*+.^`|~", min_size=1, max_size=10)
value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                              blacklist_characters="\x7f" + "".join(map(chr, range(0x80, 0xA0)))),
                max_size=12)
field = st.tuples(token, value).filter(
    lambda f: f[0].lower() not in ("content-length", "transfer-encoding"))


@settings(max_examples=300, deadline=None)
@given(st.lists(field, max_size=12), st.sampled_from(["200 OK", "404 Not Found", "302 Found"]))
def test_accepts_what_http_client_reads_and_reads_the_same(fields, status):
    data = head(*(f"{n}: {v}" for n, v in fields), status=f"HTTP/1.1 {status}")
    ours = parse_head(data, "GET")
    theirs = http.client.parse_headers(io.BytesIO(data.split(b"\r\n", 1)[1]))
    assert ours.fields == theirs.items()
    assert ours.status == int(status[:3])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_clean_head_or_a_head_error(junk):
    """Whatever is accepted has no byte in it that could end or split a line
    on the way to the client."""
    try:
        parsed = parse_head(b"HTTP/1.1 200 OK\r\n" + junk + b"\r\n\r\n", "GET")
    except HeadError:
        return
    for name, value in parsed.fields:
        assert TOKEN_CHARS.issuperset(name) and name
        assert not set(value) & {"\r", "\n", "\x00"}
        assert value == value.strip(" \t")


TOKEN_CHARS = set("!#$%&'*+.^_`|~-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
