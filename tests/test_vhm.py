"""VirtualHostMonster rewriting and Location rewriting (pure, and through the proxy)."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st
from servers import ScriptedServer
from webtest import TestApp

from zope_lb import ConfigError, LoadBalancer, parse_settings
from zope_lb.headers import public_origin, rewrite_locations, upstream_target, vhm_target

ORIGIN = ("https", "www.example.com", "443")


@pytest.mark.parametrize("target, root, prefix, expected", [
    ("/foo", "/Plone", "", "/VirtualHostBase/https/www.example.com:443/Plone/VirtualHostRoot/foo"),
    ("/", "/Plone", "", "/VirtualHostBase/https/www.example.com:443/Plone/VirtualHostRoot/"),
    ("/foo?a=1&b=%20", "/Plone", "",
     "/VirtualHostBase/https/www.example.com:443/Plone/VirtualHostRoot/foo?a=1&b=%20"),
    ("/site/foo", "/Plone", "/site",
     "/VirtualHostBase/https/www.example.com:443/Plone/VirtualHostRoot/_vh_site/foo"),
    ("/site", "/Plone", "/site",
     "/VirtualHostBase/https/www.example.com:443/Plone/VirtualHostRoot/_vh_site/"),
    ("/a/b/c", "", "/a/b",
     "/VirtualHostBase/https/www.example.com:443/VirtualHostRoot/_vh_a/_vh_b/c"),
    ("/sitemap", "/Plone", "/site",  # not under the prefix: kept whole
     "/VirtualHostBase/https/www.example.com:443/Plone/VirtualHostRoot/sitemap"),
])
def test_vhm_target(target, root, prefix, expected):
    assert vhm_target(target, ORIGIN, root, prefix) == expected


@given(st.binary(max_size=40), st.sampled_from(["", "/Plone", "/a/b"]),
       st.sampled_from(["", "/site"]))
def test_any_path_comes_out_once_and_intact(raw, root, prefix):
    path = "/" + quote(raw, safe="/:@!$&'()*+,;=-._~")
    out = vhm_target(path, ORIGIN, root, prefix)
    head = f"/VirtualHostBase/https/www.example.com:443{root}/VirtualHostRoot"
    assert out.startswith(head)
    tail = out[len(head):]
    under = bool(prefix) and (path == prefix or path.startswith(prefix + "/"))
    vh = "".join(f"/_vh_{s}" for s in prefix.split("/") if s) if under else ""
    assert tail.startswith(vh)
    kept = tail[len(vh):]
    expected = (path[len(prefix):] or "/") if under else path
    assert kept == expected  # once, unchanged: same escapes, same bytes
    assert unquote_to_bytes(kept) == unquote_to_bytes(expected)
    assert out.isascii()


def test_public_origin_trusts_forwarded_headers_only_from_trusted_proxies():
    environ = {"HTTP_HOST": "lb.internal:6543", "wsgi.url_scheme": "http",
               "REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_PROTO": "https",
               "HTTP_X_FORWARDED_HOST": "www.example.com", "SERVER_NAME": "lb"}
    assert public_origin(environ) == ("http", "lb.internal", "6543")
    trusted = parse_settings({"backends": "a:1\nb:2",
                              "forwarded.trusted": "10.0.0.0/8"}).forwarded_trusted
    assert public_origin(environ, trusted) == ("https", "www.example.com", "443")
    assert public_origin({"HTTP_HOST": "evil/../x", "SERVER_NAME": "lb"}) == ("http", "lb", "80")
    assert public_origin(environ, (), "https://www.example.org:8443") == (
        "https", "www.example.org", "8443")


SEGMENT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"),
                  max_size=6)


@given(st.lists(SEGMENT, max_size=4), st.sampled_from(["", "/site", "/café", "/a/ü"]),
       st.booleans(), st.booleans())
def test_a_browser_path_reaches_zope_once_and_intact(segments, prefix, under, lower_hex):
    """The whole way: the request line a browser sends (non-ASCII as UTF-8
    percent-escapes, '%' itself escaped), the WSGI environ waitress makes of it,
    the upstream target, the VHM path. What Zope gets decodes to the very bytes
    the browser meant, once; a prefix, ASCII or not, is found however the
    browser spelled its escapes."""
    if under:  # half the paths lie under the prefix (if any)
        segments = [p for p in prefix.split("/") if p] + segments
    raw = ("/" + "/".join(segments)).encode("utf-8")
    uri = quote(raw, safe="/")
    if lower_hex:
        uri = "".join(part if i % 2 == 0 else part.lower()
                      for i, part in enumerate(re.split(r"(%[0-9A-F]{2})", uri)))
    environ = {"REQUEST_URI": uri, "PATH_INFO": unquote_to_bytes(uri).decode("latin-1"),
               "SCRIPT_NAME": "", "QUERY_STRING": ""}
    out = vhm_target(upstream_target(environ), ORIGIN, "/Plone", prefix)
    assert out.isascii()
    tail = out[len("/VirtualHostBase/https/www.example.com:443/Plone/VirtualHostRoot"):]
    wanted = prefix.encode("utf-8")
    if prefix and (raw == wanted or raw.startswith(wanted + b"/")):
        vh = "".join(f"/_vh_{quote(p.encode())}" for p in prefix.split("/") if p)
        assert tail.startswith(vh)
        tail, expected = tail[len(vh):], raw[len(wanted):] or b"/"
    else:
        expected = raw
    assert unquote_to_bytes(tail) == expected


def test_rewrite_locations():
    items = [("Location", "http://10.0.0.1:8080/Plone/login"),
             ("Refresh", "5; url=http://10.0.0.1:8080/Plone"),
             ("Content-Location", "http://10.0.0.1:8080/x"),
             ("Link", "<http://10.0.0.1:8080/x>")]
    out = dict(rewrite_locations(items, "10.0.0.1:8080", ORIGIN))
    assert out["Location"] == "https://www.example.com/Plone/login"
    assert out["Refresh"] == "5; url=https://www.example.com/Plone"
    assert out["Content-Location"] == "https://www.example.com/x"
    assert out["Link"] == "<http://10.0.0.1:8080/x>"  # only the three location headers


@pytest.mark.parametrize(("backend", "value", "expected"), [
    ("10.0.0.1:8080", "http://10.0.0.1:80801/x", "http://10.0.0.1:80801/x"),  # another port
    ("10.0.0.1:80", "http://10.0.0.10/x", "http://10.0.0.10/x"),  # another host
    ("zope1:8080", "http://zope1:8080.evil.example/", "http://zope1:8080.evil.example/"),
    ("10.0.0.1:8080", "http://10.0.0.1:8080", "https://www.example.com"),
    ("10.0.0.1:80", "http://10.0.0.1/x", "https://www.example.com/x"),  # default port left out
    ("10.0.0.1:80", "http://10.0.0.1:80/x", "https://www.example.com/x"),
    ("zope1:443", "https://ZOPE1/x", "https://www.example.com/x"),
    ("zope1:8080", "http://zope1:8080#top", "https://www.example.com#top"),
    ("[::1]:8080", "http://[::1]:8080/a?b=1", "https://www.example.com/a?b=1"),
])
def test_rewrite_locations_matches_the_whole_authority_only(backend, value, expected):
    assert rewrite_locations([("Location", value)], backend, ORIGIN) == [("Location", expected)]


def test_vhm_settings_rules():
    with pytest.raises(ConfigError, match="vhm.base"):
        parse_settings({"backends": "a:1\nb:2", "vhm.base": "https://x.org/path"})
    with pytest.raises(ConfigError, match="vhm.root"):
        parse_settings({"backends": "a:1\nb:2", "vhm.root": "Plone"})
    with pytest.raises(ConfigError, match="health.auth"):
        parse_settings({"backends": "a:1\nb:2", "health.zeo": "true"})
    with pytest.raises(ConfigError, match="vhm.prefix '/site': needs vhm.root or vhm.base"):
        parse_settings({"backends": "a:1\nb:2", "vhm.prefix": "/site"})


def test_vhm_base_alone_turns_rewriting_on_for_the_zope_root(backends):
    lb = LoadBalancer([backends[0].address], health_interval=0, **{"vhm.base": "auto"})
    try:
        got = TestApp(lb).get("/foo", headers={"Host": "www.example.com"}).json
    finally:
        lb.close()
    assert got["uri"] == "/VirtualHostBase/http/www.example.com:80/VirtualHostRoot/foo"


def test_through_the_proxy_zope_sees_the_vhm_path_and_redirects_are_public(backends):
    lb = LoadBalancer([backends[0].address], health_interval=0, **{"vhm.root": "/Plone"})
    app = TestApp(lb, extra_environ={"wsgi.url_scheme": "https"})
    got = app.get("/news/item?x=1", headers={"Host": "www.example.com"}).json
    assert got["uri"] == (
        "/VirtualHostBase/https/www.example.com:443/Plone/VirtualHostRoot/news/item?x=1")


def test_location_naming_the_backend_is_rewritten():
    backend = ScriptedServer(lambda head, i: (
        b"HTTP/1.1 302 Found\r\nLocation: http://" + backend.address.encode()
        + b"/Plone/login_form\r\nContent-Length: 0\r\n\r\n"))
    try:
        lb = LoadBalancer([backend.address], health_interval=0, preserve_host=False)
        res = TestApp(lb).get("/Plone/edit", headers={"Host": "www.example.com"}, status=302)
        assert res.headers["Location"] == "http://www.example.com/Plone/login_form"
    finally:
        backend.stop()


def test_root_slash_turns_rewriting_on_for_the_zope_root():
    settings = parse_settings({"backends": "a:1\nb:2", "vhm.root": "/"})
    assert settings.vhm_root == "/"
    assert vhm_target("/x", ORIGIN, settings.vhm_root) == (
        "/VirtualHostBase/https/www.example.com:443/VirtualHostRoot/x")
    assert parse_settings({"backends": "a:1\nb:2"}).vhm_root == ""  # off by default
