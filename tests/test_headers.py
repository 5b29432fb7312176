"""Tests for ``zope_lb.headers``: pure request/response rewriting."""

from __future__ import annotations

import copy
import ipaddress
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zope_lb import headers as headers_module
from zope_lb.headers import (
    HOP_BY_HOP,
    connection_tokens,
    request_headers,
    response_headers,
    upstream_target,
)


def net(*items: str) -> tuple:
    return tuple(ipaddress.ip_network(i) for i in items)


def environ(**extra: object) -> dict:
    base = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "lb.example.org",
        "SERVER_PORT": "8080",
        "REMOTE_ADDR": "192.0.2.10",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "www.example.org",
    }
    base.update(extra)
    return base


# -- request_headers ----------------------------------------------------------


def test_ordinary_headers_pass_with_their_http_names() -> None:
    headers = request_headers(
        environ(
            HTTP_ACCEPT="text/html",
            HTTP_COOKIE="__ac=abc",
            HTTP_USER_AGENT="curl",
            HTTP_IF_NONE_MATCH='"x"',
            HTTP_X_CUSTOM_THING="1",
        )
    )
    assert headers["Accept"] == "text/html"
    assert headers["Cookie"] == "__ac=abc"
    assert headers["User-Agent"] == "curl"
    assert headers["If-None-Match"] == '"x"'
    assert headers["X-Custom-Thing"] == "1"


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_request_headers_are_dropped(name: str) -> None:
    key = "HTTP_" + name.upper().replace("-", "_")
    headers = request_headers(environ(**{key: "x", "HTTP_ACCEPT": "*/*"}))
    assert name not in {h.lower() for h in headers}
    assert headers["Accept"] == "*/*"


def test_headers_named_in_connection_are_dropped() -> None:
    headers = request_headers(
        environ(
            HTTP_CONNECTION="keep-alive, X-Secret ,x-other-thing",
            HTTP_X_SECRET="s",
            HTTP_X_OTHER_THING="o",
            HTTP_X_KEPT="k",
        )
    )
    lower = {h.lower() for h in headers}
    assert "connection" not in lower
    assert "x-secret" not in lower
    assert "x-other-thing" not in lower
    assert headers["X-Kept"] == "k"


def test_connection_tokens() -> None:
    assert connection_tokens(" Keep-Alive, ,X-Foo,,close ") == {
        "keep-alive",
        "x-foo",
        "close",
    }
    assert connection_tokens("") == frozenset()


def test_host_is_kept_when_preserve_host() -> None:
    headers = request_headers(environ(), preserve_host=True)
    assert headers["Host"] == "www.example.org"


def test_host_is_left_out_when_not_preserve_host() -> None:
    headers = request_headers(environ(), preserve_host=False)
    assert "host" not in {h.lower() for h in headers}
    assert headers["X-Forwarded-Host"] == "www.example.org"


@pytest.mark.parametrize(
    "extra, host",
    [
        ({"SERVER_PORT": "8080"}, "lb.example.org:8080"),
        ({"SERVER_PORT": "80"}, "lb.example.org"),
        ({"SERVER_PORT": "443", "wsgi.url_scheme": "https"}, "lb.example.org"),
        ({"SERVER_PORT": "80", "wsgi.url_scheme": "https"}, "lb.example.org:80"),
    ],
)
def test_host_without_host_header_comes_from_server_name(
    extra: dict, host: str
) -> None:
    env = environ(**extra)
    del env["HTTP_HOST"]
    headers = request_headers(env)
    assert headers["Host"] == host
    assert headers["X-Forwarded-Host"] == host


def test_untrusted_peer_forwarded_headers_are_replaced() -> None:
    env = environ(
        HTTP_X_FORWARDED_FOR="6.6.6.6",
        HTTP_X_FORWARDED_PROTO="https",
        HTTP_X_FORWARDED_HOST="evil.example",
        HTTP_X_FORWARDED_PORT="443",
    )
    headers = request_headers(env, trusted=net("10.0.0.0/8"))
    assert headers["X-Forwarded-For"] == "192.0.2.10"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "www.example.org"
    assert headers["X-Forwarded-Port"] == "8080"


def test_no_trusted_proxies_means_forwarded_headers_are_replaced() -> None:
    headers = request_headers(environ(HTTP_X_FORWARDED_FOR="6.6.6.6"))
    assert headers["X-Forwarded-For"] == "192.0.2.10"


@pytest.mark.parametrize(
    "trusted", [("192.0.2.10",), ("192.0.2.0/24",), ("10.0.0.0/8", "192.0.0.0/8")]
)
def test_trusted_peer_forwarded_for_is_appended(trusted: tuple[str, ...]) -> None:
    env = environ(HTTP_X_FORWARDED_FOR="203.0.113.5, 198.51.100.1")
    headers = request_headers(env, trusted=net(*trusted))
    assert headers["X-Forwarded-For"] == "203.0.113.5, 198.51.100.1, 192.0.2.10"


def test_trusted_peer_without_forwarded_for_starts_the_chain() -> None:
    headers = request_headers(environ(), trusted=net("192.0.2.0/24"))
    assert headers["X-Forwarded-For"] == "192.0.2.10"


def test_trusted_ipv6_peer_by_cidr() -> None:
    env = environ(REMOTE_ADDR="fd00::7", HTTP_X_FORWARDED_FOR="203.0.113.5")
    headers = request_headers(env, trusted=net("fd00::/8"))
    assert headers["X-Forwarded-For"] == "203.0.113.5, fd00::7"


def test_trusted_peer_proto_host_port_are_kept() -> None:
    env = environ(
        HTTP_X_FORWARDED_PROTO="https",
        HTTP_X_FORWARDED_HOST="public.example",
        HTTP_X_FORWARDED_PORT="443",
    )
    headers = request_headers(env, trusted=net("192.0.2.0/24"))
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == "public.example"
    assert headers["X-Forwarded-Port"] == "443"


def test_trusted_peer_without_proto_host_port_gets_ours() -> None:
    env = environ(**{"wsgi.url_scheme": "https"})
    headers = request_headers(env, trusted=net("192.0.2.0/24"))
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == "www.example.org"
    assert headers["X-Forwarded-Port"] == "8080"


@pytest.mark.parametrize("peer", ["", "not-an-ip", "unix:/tmp/sock"])
def test_unparsable_peer_is_not_trusted(peer: str) -> None:
    env = environ(REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR="6.6.6.6")
    headers = request_headers(env, trusted=net("0.0.0.0/0"))
    assert headers["X-Forwarded-For"] == peer


def test_content_type_is_passed() -> None:
    headers = request_headers(environ(CONTENT_TYPE="application/x-www-form-urlencoded"))
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Content-Type" not in request_headers(environ(CONTENT_TYPE=""))


def test_non_header_environ_keys_are_ignored() -> None:
    headers = request_headers(
        environ(**{"wsgi.input": object(), "REMOTE_USER": "admin"})
    )
    assert set(headers) == {
        "Host",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Forwarded-Port",
    }


environ_keys = st.one_of(
    st.sampled_from(["HTTP_ACCEPT", "HTTP_COOKIE", "HTTP_TE", "HTTP_KEEP_ALIVE",
                     "HTTP_X_FORWARDED_FOR", "HTTP_UPGRADE", "HTTP_X_CUSTOM_THING",
                     "HTTP_", "HTTPX", "CONTENT_LENGTH", "REMOTE_USER", "wsgi.input"]),
    st.text(st.sampled_from("HTP_XAZ-.az"), max_size=12),
)


@settings(max_examples=300)
@given(st.dictionaries(environ_keys, st.text(max_size=5), max_size=8), st.booleans())
def test_remembered_header_names_forward_what_the_rule_says(extra: dict, named: bool) -> None:
    """The names request_headers remembers per environ key give the headers
    the rule gives: every HTTP_* key as its header, but those zope_lb drops
    (hop-by-hop) or sets itself (Host, X-Forwarded-*)."""
    env = environ(**extra)
    if named:  # headers named in Connection: the other way, checked alike
        env["HTTP_CONNECTION"] = "x-custom-thing"
    skip = {"HTTP_" + h.upper().replace("-", "_") for h in HOP_BY_HOP} | {
        "HTTP_HOST", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO",
        "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT"}
    if named:
        skip.add("HTTP_X_CUSTOM_THING")
    expected = {k[5:].replace("_", "-").title(): v for k, v in env.items()
                if k.startswith("HTTP_") and k not in skip}
    got = request_headers(env)
    ours = {"Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
            "X-Forwarded-Port"}
    assert {k: v for k, v in got.items() if k not in ours} == expected


def test_remembered_header_names_are_bounded() -> None:
    """A client inventing a new header name with every request cannot grow the
    memory of names past its bound; the names are still forwarded."""
    for number in range(headers_module._FORWARDED_NAMES_LIMIT + 500):
        got = request_headers(environ(**{f"HTTP_X_INVENTED_{number}": "1"}))
        assert got[f"X-Invented-{number}"] == "1"
    assert len(headers_module._FORWARDED_NAMES) <= headers_module._FORWARDED_NAMES_LIMIT


@pytest.mark.parametrize("trusted", [(), net("192.0.2.0/24")])
def test_callers_environ_is_not_modified(trusted: tuple) -> None:
    env = environ(
        HTTP_CONNECTION="close, X-Drop",
        HTTP_X_DROP="1",
        HTTP_TE="trailers",
        HTTP_X_FORWARDED_FOR="203.0.113.5",
        CONTENT_TYPE="text/plain",
    )
    before = copy.deepcopy(env)
    request_headers(env, trusted=trusted, preserve_host=False)
    assert env == before


# -- response_headers ---------------------------------------------------------


def test_response_hop_by_hop_and_connection_named_are_dropped() -> None:
    items = [
        ("Content-Type", "text/html"),
        ("Connection", "keep-alive, X-Backend-Private"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Trailer", "Expires"),
        ("Upgrade", "h2c"),
        ("Proxy-Authenticate", "Basic"),
        ("x-backend-private", "secret"),
        ("X-Powered-By", "Zope"),
    ]
    assert response_headers(items) == [
        ("Content-Type", "text/html"),
        ("X-Powered-By", "Zope"),
    ]


def test_repeated_set_cookie_kept_in_order() -> None:
    items = [
        ("Set-Cookie", "a=1; Path=/"),
        ("Content-Length", "3"),
        ("Set-Cookie", "b=2; Path=/"),
        ("set-cookie", "c=3"),
    ]
    assert response_headers(iter(items)) == items


# -- upstream_target ----------------------------------------------------------


@pytest.mark.parametrize(
    "env, target",
    [
        ({"PATH_INFO": "/plone/front-page"}, "/plone/front-page"),
        ({"PATH_INFO": ""}, "/"),
        ({}, "/"),
        ({"PATH_INFO": "/a", "QUERY_STRING": "b=%20c&d=e+f"}, "/a?b=%20c&d=e+f"),
        ({"PATH_INFO": "/a b", "QUERY_STRING": ""}, "/a%20b"),
        ({"PATH_INFO": "/a?b#c"}, "/a%3Fb%23c"),
        (
            {"PATH_INFO": "/@@view/++resource++x/a:b;c=d,e!$&'()*+~"},
            "/@@view/++resource++x/a:b;c=d,e!$&'()*+~",
        ),
        ({"PATH_INFO": "/100%"}, "/100%25"),
    ],
)
def test_target_from_path_info(env: dict, target: str) -> None:
    assert upstream_target(env) == target


@pytest.mark.parametrize("key", ["REQUEST_URI", "RAW_URI"])
@pytest.mark.parametrize(
    "raw, path, target",
    [
        ("/a%2Fb", "/a/b", "/a%2Fb"),
        ("/a%2fb", "/a/b", "/a%2fb"),
        ("/%41%42", "/AB", "/%41%42"),
        ("/a%20b?x=1", "/a b", "/a%20b"),
        ("/caf%C3%A9", "/caf\u00c3\u00a9", "/caf%C3%A9"),
        ("/a%25b", "/a%b", "/a%25b"),
    ],
)
def test_client_percent_encoding_kept_when_it_agrees(
    key: str, raw: str, path: str, target: str
) -> None:
    assert upstream_target({key: raw, "PATH_INFO": path}) == target


@pytest.mark.parametrize(
    "env, target",
    [
        # REQUEST_URI absent
        ({"PATH_INFO": "/a/b"}, "/a/b"),
        # REQUEST_URI disagrees (e.g. a middleware rewrote PATH_INFO)
        ({"REQUEST_URI": "/other%2Fpath", "PATH_INFO": "/a/b"}, "/a/b"),
        ({"REQUEST_URI": "/x", "PATH_INFO": "/y z"}, "/y%20z"),
        # not origin-form, not absolute-form
        ({"REQUEST_URI": "*", "PATH_INFO": "/"}, "/"),
        ({"REQUEST_URI": "", "PATH_INFO": "/a b"}, "/a%20b"),
    ],
)
def test_target_falls_back_to_quoting_path_info(env: dict, target: str) -> None:
    assert upstream_target(env) == target


@pytest.mark.parametrize(
    "raw, path, query, target",
    [
        ("http://elsewhere/x?y", "/x", "y", "/x?y"),
        ("http://elsewhere:8080/a%2Fb?q=1", "/a/b", "q=1", "/a%2Fb?q=1"),
        ("https://elsewhere", "/", "", "/"),
        ("http://elsewhere?y", "/", "y", "/?y"),
    ],
)
def test_absolute_form_request_line_keeps_only_path_and_query(
    raw: str, path: str, query: str, target: str
) -> None:
    result = upstream_target(
        {"REQUEST_URI": raw, "PATH_INFO": path, "QUERY_STRING": query}
    )
    assert result == target
    assert "elsewhere" not in result


def test_non_ascii_path_info_is_quoted_as_its_original_bytes() -> None:
    # The client sent UTF-8 "é" (C3 A9); the WSGI str holds those bytes as latin-1.
    path = "/caf" + b"\xc3\xa9".decode("latin-1")
    assert upstream_target({"PATH_INFO": path}) == "/caf%C3%A9"
    assert upstream_target({"PATH_INFO": path, "REQUEST_URI": "/nope"}) == "/caf%C3%A9"
    # never double-encoded as UTF-8 of the latin-1 characters
    assert "%C3%83" not in upstream_target({"PATH_INFO": path})


def test_raw_non_ascii_request_line_is_quoted_as_its_bytes() -> None:
    raw = b"/caf\xc3\xa9".decode("latin-1")  # the client sent the bytes unquoted
    assert upstream_target({"REQUEST_URI": raw, "PATH_INFO": raw}) == "/caf%C3%A9"


def test_raw_non_ascii_request_line_keeps_the_clients_percent_encoding() -> None:
    # Request line bytes b"/a%2F\xe9", as waitress hands them over.
    raw = b"/a%2F\xe9".decode("latin-1")
    path = unquote_to_bytes(b"/a%2F\xe9").decode("latin-1")  # "/a/é"
    assert upstream_target({"REQUEST_URI": raw, "PATH_INFO": path}) == "/a%2F%E9"


@pytest.mark.parametrize(
    "env, target",
    [
        ({"SCRIPT_NAME": "/site", "PATH_INFO": "/x"}, "/site/x"),
        ({"SCRIPT_NAME": "/site", "PATH_INFO": ""}, "/site"),
        ({"SCRIPT_NAME": "/my site", "PATH_INFO": "/x y"}, "/my%20site/x%20y"),
        (
            {"SCRIPT_NAME": "/site", "PATH_INFO": "/a/b", "REQUEST_URI": "/site/a%2Fb"},
            "/site/a%2Fb",
        ),
        ({"SCRIPT_NAME": "/site", "PATH_INFO": "/x", "QUERY_STRING": "q"}, "/site/x?q"),
    ],
)
def test_script_name_is_prefixed(env: dict, target: str) -> None:
    assert upstream_target(env) == target


# -- properties ---------------------------------------------------------------

_raw_chars = st.one_of(
    st.sampled_from(list("abcXYZ019/-._~%?#:@!$&'()*+,;= ")),
    st.builds(lambda b: f"%{b:02X}", st.integers(0, 255)),
    st.builds(lambda b: f"%{b:02x}", st.integers(0, 255)),
    st.builds(chr, st.integers(0x80, 0xFF)),  # raw bytes >= 0x80 in the request line
)


@st.composite
def request_paths(draw: st.DrawFn) -> bytes:
    """Raw request-target path bytes as a client could put them on the request line."""
    text = "/" + "".join(draw(st.lists(_raw_chars, max_size=20)))
    raw = text.encode("latin-1")
    # the request line has no '?', '#' or space inside the path part
    return raw.split(b"?")[0].split(b"#")[0].replace(b" ", b"%20")


@settings(max_examples=400, deadline=None)
@given(raw=st.one_of(request_paths(), st.binary(max_size=30).map(lambda b: b"/" + b)))
def test_target_is_ascii_and_unquotes_to_the_path_bytes(raw: bytes) -> None:
    raw = raw.split(b"?")[0]
    original = unquote_to_bytes(raw)
    env = {
        "PATH_INFO": original.decode("latin-1"),
        "REQUEST_URI": raw.decode("latin-1"),
    }
    target = upstream_target(env)
    assert target.isascii()
    assert unquote_to_bytes(target) == original
    # and without REQUEST_URI (servers that do not keep it)
    fallback = upstream_target({"PATH_INFO": original.decode("latin-1")})
    assert fallback.isascii()
    assert unquote_to_bytes(fallback) == original
    assert not set(fallback) & set(" ?#")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=30))
def test_quoting_any_path_bytes_round_trips(path: bytes) -> None:
    path = b"/" + path
    target = upstream_target(
        {"REQUEST_URI": quote(path), "PATH_INFO": path.decode("latin-1")}
    )
    assert target.isascii()
    assert unquote_to_bytes(target) == path


_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=12,
)
_header_names = st.one_of(
    st.sampled_from(sorted(HOP_BY_HOP)),
    st.sampled_from([h.upper() for h in HOP_BY_HOP]),
    _token,
)


def _environ_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(_header_names, st.text(max_size=10), max_size=12),
    named=st.lists(_header_names, max_size=4),
    trusted=st.booleans(),
    preserve_host=st.booleans(),
)
def test_no_hop_by_hop_header_ever_comes_out(
    headers: dict, named: list, trusted: bool, preserve_host: bool
) -> None:
    env = environ(**{_environ_key(k): v for k, v in headers.items()})
    if named:
        env["HTTP_CONNECTION"] = ", ".join(named)
    out = request_headers(env, net("192.0.2.0/24") if trusted else (), preserve_host)
    lower = {h.lower() for h in out}
    assert not lower & HOP_BY_HOP
    dropped = {n.lower() for n in named} - {
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
    }
    assert not lower & dropped


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_header_names, st.text(max_size=10)), max_size=12))
def test_no_hop_by_hop_response_header_ever_comes_out(items: list) -> None:
    out = response_headers(items)
    assert not {n.lower() for n, _ in out} & HOP_BY_HOP
    assert all(item in items for item in out)


def test_raw_non_ascii_query_is_escaped_as_its_bytes() -> None:
    """``GET //?\\xe9`` passes waitress; the byte must not become UTF-8's %C3%A9."""
    environ = {"PATH_INFO": "/", "REQUEST_URI": "//?\xe9&a=%41", "QUERY_STRING": "\xe9&a=%41"}
    assert upstream_target(environ) == "/?%E9&a=%41"
