"""Hostile request lines and paths against the real ``zope-lb serve``: each is
refused with 400 (and nothing reaches the backend), or resolved so that
nothing climbs out of ``vhm.root`` or around a routing rule."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from rawclient import Recorder, exchange
from servers import ServerThread

ROOT = "/VirtualHostBase/http/www.example.com:80/Plone/VirtualHostRoot"


@pytest.fixture
def recorder():
    app = Recorder()
    server = ServerThread(app).start()
    yield app, server
    server.stop()


@pytest.fixture
def site(serve_process, recorder):
    """zope-lb serve with vhm.root = /Plone in front of the recording backend."""
    app, server = recorder
    process = serve_process([server.address], app="vhm.root = /Plone\nhealth.interval = 0")
    return process, app


def get(target: str, host: str = "www.example.com", extra: str = "") -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}"
            "Connection: close\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize("target", [
    "/../../acl_users/manage_main",
    "/%2e%2e/%2e%2e/Control_Panel",
    "/a/..%2f..%2fsecret",
    "/news/../../Plone2/manage_main",
])
def test_dot_segments_climbing_out_of_the_site_get_400(site, target):
    process, app = site
    result = exchange(process.port, get(target))
    assert [a.status for a in result.answers] == [400]
    assert b"climbs above" in result.answers[0].body
    assert app.requests == []


@pytest.mark.parametrize("target, path", [
    ("/news/../acl_users/manage_main", "/acl_users/manage_main"),
    ("/news/%2E%2e/Members", "/Members"),
    ("/a/b/..%2F..%2Fc?x=1", "/c"),
    ("/./front-page", "/front-page"),
])
def test_dot_segments_inside_the_site_are_resolved_before_zope_sees_them(site, target, path):
    process, app = site
    result = exchange(process.port, get(target))
    assert [a.status for a in result.answers] == [200]
    assert [r["uri"].partition("?")[0] for r in app.requests] == [ROOT + path]
    assert ".." not in unquote(app.requests[0]["uri"])


def test_two_host_headers_get_400_and_the_connection_is_closed(site):
    process, app = site
    data = (b"GET / HTTP/1.1\r\nHost: www.example.com\r\nHost: evil.example\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
    result = exchange(process.port, data)
    assert [a.status for a in result.answers] == [400]
    assert b"more than one Host" in result.answers[0].body
    assert result.closed
    assert app.requests == []


def test_a_folded_host_header_gets_400(site):
    process, app = site
    result = exchange(process.port, get("/", host="www.example.com\r\n :80"))
    assert [a.status for a in result.answers] == [400]
    assert app.requests == []


@pytest.mark.parametrize("target", ["www.example.com:80", "localhost:8080/x", "*"])
def test_a_target_that_is_not_a_path_gets_400(site, target):
    process, app = site
    result = exchange(process.port, get(target))
    assert [a.status for a in result.answers] == [400]
    assert app.requests == []


def test_an_absolute_uri_naming_another_host_gets_400(site):
    process, app = site
    result = exchange(process.port, get("http://evil.example/x"))
    assert [a.status for a in result.answers] == [400]
    assert app.requests == []
    result = exchange(process.port, get("http://www.example.com/x"))
    assert [a.status for a in result.answers] == [200]
    assert [r["uri"] for r in app.requests] == [ROOT + "/x"]


def test_http10_chunked_body_gets_400_and_the_connection_is_closed(site):
    """The body's bytes must not be read as a second request on the connection."""
    process, app = site
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
    data = (b"POST /form HTTP/1.0\r\nHost: www.example.com\r\nConnection: keep-alive\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n")
    result = exchange(process.port, data)
    assert [a.status for a in result.answers] == [400]
    assert b"HTTP/1.0" in result.answers[0].body
    assert result.closed
    assert app.requests == []


def test_a_routing_rule_cannot_be_stepped_around_with_dot_segments(serve_process):
    public, zmi = Recorder(), Recorder()
    servers = [ServerThread(public).start(), ServerThread(zmi).start()]
    try:
        process = serve_process(
            [servers[0].address],
            app=(f"health.interval = 0\npool.zmi.backends = {servers[1].address}\n"
                 "pool.zmi.match = path:/manage*"))
        for target in ("/public/../manage_main", "/public/%2e%2e/manage_main",
                       "/./manage_main", "/manage_main"):
            assert [a.status for a in exchange(process.port, get(target)).answers] == [200]
        assert public.requests == []
        assert [r["uri"] for r in zmi.requests] == ["/manage_main"] * 4
    finally:
        for server in servers:
            server.stop()



def test_a_raw_byte_in_the_query_reaches_zope_as_that_byte(site):
    """waitress lets ``GET //?\\xe9`` through; urllib3 would send the byte as
    UTF-8 (%C3%A9), another string to Zope."""
    process, app = site
    result = exchange(process.port, get("//?\xe9&a=%41"))
    assert [a.status for a in result.answers] == [200]
    assert [r["uri"] for r in app.requests] == [ROOT + "/?%E9&a=%41"]
