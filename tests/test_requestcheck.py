"""Request checks and dot segments (pure): what is refused, what is resolved."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from waitress.parser import ParsingError, split_uri

from zope_lb.headers import (
    PathEscapes,
    dot_free_path,
    has_dot_segment,
    upstream_target,
    vhm_target,
)
from zope_lb.requestcheck import BadRequest, check_request
from zope_lb.routing import parse_rule

ORIGIN = ("http", "www.example.com", "80")
HEAD = "/VirtualHostBase/http/www.example.com:80/Plone/VirtualHostRoot"


def waitress_environ(target: str, method: str = "GET", protocol: str = "HTTP/1.1",
                     **headers: str) -> dict:
    """The environ waitress builds for a request line ``METHOD target``."""
    _, _, path, query, _ = split_uri(target.encode("latin-1"))
    environ = {"REQUEST_METHOD": method, "SERVER_PROTOCOL": protocol, "SCRIPT_NAME": "",
               "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_URI": target,
               "SERVER_NAME": "lb", "SERVER_PORT": "6543", "wsgi.url_scheme": "http",
               "HTTP_HOST": "www.example.com"}
    environ.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return environ


def forwarded(target: str, root: str = "/Plone", prefix: str = "") -> str:
    """The target zope_lb sends upstream for ``target`` under ``vhm.root``."""
    environ = check_request(waitress_environ(target))
    return vhm_target(upstream_target(environ), ORIGIN, root, prefix)


# -- dot segments ---------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("/a/b/../c", "/a/c"),
    ("/a/./b", "/a/b"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/a/%2e%2E/b", "/b"),
    ("/a/.%2e/b", "/b"),
    ("/a/b/..%2Fc", "/a%2Fc"),
    ("/a/b%2f..%2fc", "/a%2fc"),
    ("/caf%C3%A9/x/../y%20z", "/caf%C3%A9/y%20z"),
    ("/a//..", "/a/"),
    ("/.well-known/x", "/.well-known/x"),
    ("/a/...", "/a/..."),
    ("/", "/"),
])
def test_dot_segments_are_resolved_keeping_the_rest_as_spelt(raw, expected):
    assert dot_free_path(raw) == expected


@pytest.mark.parametrize("raw", [
    "/..", "/../../acl_users/manage_main", "/%2e%2e/%2e%2e/Control_Panel",
    "/a/..%2f..%2fsecret", "/a/../..", "/./..", "/%2E%2E",
])
def test_a_path_climbing_above_the_root_is_refused(raw):
    with pytest.raises(PathEscapes):
        dot_free_path(raw)
    with pytest.raises(BadRequest, match="climbs above"):
        check_request(waitress_environ(raw))


@pytest.mark.parametrize("target, expected", [
    ("/a/../acl_users/manage_main", HEAD + "/acl_users/manage_main"),
    ("/news/%2e%2e/Members?x=1", HEAD + "/Members?x=1"),
    ("/a/b/..%2f..%2fc", HEAD + "/c"),
    ("/caf%c3%a9/./x", HEAD + "/caf%c3%a9/x"),
    ("http://www.example.com/a/../b", HEAD + "/b"),
])
def test_forwarded_vhm_path_has_no_dot_segment(target, expected):
    assert forwarded(target) == expected


def test_vhm_prefix_is_matched_after_resolving():
    assert forwarded("/site/../manage", prefix="/site") == HEAD + "/manage"
    assert forwarded("/other/../site/x", prefix="/site") == HEAD + "/_vh_site/x"


def test_without_vhm_the_resolved_path_is_forwarded():
    environ = check_request(waitress_environ("/a/%2E%2e/b?q=1"))
    assert upstream_target(environ) == "/b?q=1"
    assert environ["PATH_INFO"] == "/b"


def test_the_callers_environ_is_not_changed():
    original = waitress_environ("/a/../b")
    kept = dict(original)
    check_request(original)
    assert original == kept


@pytest.mark.parametrize("target", ["/a/b.css", "/.well-known/security.txt", "/a/.hidden",
                                    "/a/...", "/a/..b", "/%2e%2e%2e",
                                    "/%252e%252e/x"])  # decoded once: "%2e%2e", a name
def test_a_path_without_dot_segments_is_passed_as_it_is(target):
    environ = waitress_environ(target)
    assert check_request(environ) is environ


@given(st.lists(st.sampled_from(["/", ".", "a", "%2e", "%2f"]), max_size=10))
def test_has_dot_segment_agrees_with_resolving(pieces):
    raw = "/" + "".join(pieces)
    decoded = unquote_to_bytes(raw).decode("latin-1")
    try:
        changed = dot_free_path(raw) != raw
    except PathEscapes:
        changed = True
    assert has_dot_segment(decoded) is (changed or any(
        s in (".", "..") for s in decoded.split("/")))


def test_script_name_cannot_be_climbed_out_of():
    environ = {**waitress_environ("/mount/../x"), "SCRIPT_NAME": "/mount", "PATH_INFO": "/../x"}
    with pytest.raises(BadRequest):
        check_request(environ)
    environ = {**waitress_environ("/mount/a/../x"), "SCRIPT_NAME": "/mount",
               "PATH_INFO": "/a/../x"}
    assert check_request(environ)["PATH_INFO"] == "/x"


_PIECES = st.sampled_from(["/", ".", "..", "%2e", "%2E", "%2f", "%2F", "a", "b%20c", "%25",
                           "%2e%2e", ".%2e", "%", "?", "%c3%a9", "\xe9", ";", "//"])


@settings(max_examples=400)
@given(st.lists(_PIECES, max_size=14), st.sampled_from(["", "/site"]))
def test_forwarded_vhm_path_stays_under_the_root_or_is_refused(pieces, prefix):
    target = "/" + "".join(pieces)
    try:
        out = forwarded(target, prefix=prefix)
    except (BadRequest, ParsingError):  # ParsingError: waitress's own 400
        return
    assert out.startswith(HEAD + "/") or out == HEAD
    path = out.partition("?")[0]
    segments = unquote_to_bytes(path).split(b"/")  # decoded, as Zope splits it
    assert b".." not in segments and b"." not in segments
    assert out.isascii()


# -- framing ---------------------------------------------------------------------

def test_two_host_headers_are_refused():
    with pytest.raises(BadRequest, match="more than one Host"):
        check_request(waitress_environ("/", HOST="a, evil.example"))


@pytest.mark.parametrize("host", ["www.example.com :80", "www.example.com\tevil"])
def test_a_folded_host_header_is_refused(host):
    with pytest.raises(BadRequest, match="not a host name"):
        check_request(waitress_environ("/", HOST=host))


@pytest.mark.parametrize("target", ["host:80", "localhost:8080/x", "a:/x", "foo",
                                    "ftp://www.example.com/x", "http:///x",
                                    "http://user@www.example.com/x"])
def test_targets_that_are_not_paths_are_refused(target):
    with pytest.raises(BadRequest):
        check_request(waitress_environ(target))


def test_absolute_form_with_another_host_is_refused():
    with pytest.raises(BadRequest, match="not the Host header"):
        check_request(waitress_environ("http://evil.example/x"))


@pytest.mark.parametrize("target", ["http://www.example.com/x", "http://WWW.example.com:80/x",
                                    "https://www.example.com:443?q"])
def test_absolute_form_with_the_same_host_passes(target):
    check_request(waitress_environ(target))


def test_asterisk_only_for_options():
    check_request(waitress_environ("*", method="OPTIONS"))
    with pytest.raises(BadRequest):
        check_request(waitress_environ("*"))


def test_connect_is_left_to_its_405():
    check_request(waitress_environ("host:443", method="CONNECT"))


@pytest.mark.parametrize("coding", ["chunked", "gzip, chunked", "identity"])
def test_http10_with_a_transfer_encoding_is_refused(coding):
    with pytest.raises(BadRequest, match="HTTP/1.0"):
        check_request(waitress_environ("/", protocol="HTTP/1.0", TRANSFER_ENCODING=coding))


def test_http11_transfer_encoding_left_by_another_server_passes():
    environ = waitress_environ("/", TRANSFER_ENCODING="chunked")  # gunicorn keeps it
    assert check_request(environ) is environ


# -- routing rules ----------------------------------------------------------------

@pytest.mark.parametrize("path, rule, matches", [
    ("/public/../manage_main", "path:/public", False),
    ("/public/../manage_main", "path:/manage", True),
    ("/public/%2e%2e/manage_main".replace("%2e", "."), "path:/manage*", True),
    ("/x//manage_main", "path:*/manage_main", True),
    ("//manage_main", "path:/manage", True),
    ("/a/./b/", "path:/a/b/", True),
    ("/../../manage", "path:/manage", True),
])
def test_path_rules_match_the_resolved_path(path, rule, matches):
    assert parse_rule(rule).matches({"PATH_INFO": path, "SCRIPT_NAME": ""}) is matches


def rfc3986_remove_dot_segments(path: str) -> tuple[str, bool]:
    """RFC 3986 section 5.2.4 as written (input and output buffers), on a
    decoded path; also says whether a '..' met an empty output (a climb)."""
    source, out, climbed = path, "", False
    while source:
        if source.startswith("../"):
            source = source[3:]
        elif source.startswith(("./", "/./")):
            source = source[2:]
        elif source == "/.":
            source = "/"
        elif source.startswith("/../") or source == "/..":
            source = "/" + source[4:] if source.startswith("/../") else "/"
            climbed = climbed or not out
            out = out[:out.rfind("/")] if "/" in out else ""
        elif source in (".", ".."):
            source = ""
        else:
            end = source.find("/", 1)
            end = len(source) if end < 0 else end
            out, source = out + source[:end], source[end:]
    return out, climbed


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["/", ".", "..", "%2e", "%2F", "a", "b%2fc", "%2e%2e"]),
                max_size=12))
def test_dot_free_path_is_rfc3986_on_the_decoded_path(pieces):
    raw = "/" + "".join(pieces)
    expected, climbed = rfc3986_remove_dot_segments(unquote_to_bytes(raw).decode("latin-1"))
    try:
        out = dot_free_path(raw)
    except PathEscapes:
        assert climbed
        return
    assert not climbed
    assert unquote_to_bytes(out).decode("latin-1") == (expected or "/")
    assert dot_free_path(out) == out  # resolving twice changes nothing
