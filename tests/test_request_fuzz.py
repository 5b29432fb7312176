"""Fuzz of the request path: hypothesis writes raw requests (request line,
headers, body framing, dot-segment paths) and sends them over a socket to the
real ``zope-lb serve`` (vhm.root = /Plone) in front of a recording backend.

Whatever the bytes, it must hold that:

- zope_lb gives no 5xx of its own (the backend always answers 200; 501 is
  waitress refusing a transfer coding it does not know, which is right);
- every request the backend saw was answered to the client, once: it belongs
  to exactly one request zope_lb accepted, none was made up from a body;
- a request hidden in a body that is framed correctly never reaches the
  backend as a request of its own (smuggling);
- under ``vhm.root`` no ``.`` or ``..`` segment reaches the backend, in any
  spelling, and every path is under the site's VirtualHostRoot;
- a ``path:/manage*`` pool gets exactly the requests whose path, as Zope
  serves it, is under /manage (``/x/../manage_main`` included);
- no traceback in the process log.

Bounded: 150 examples, each a connection of at most a few seconds.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawclient import Recorder, exchange
from servers import ServerThread

# the host is the client's when it is a plain host name, else the server's own
ROOT = re.compile(
    rb"/VirtualHostBase/http/[A-Za-z0-9.\[\]:-]+:[0-9]+/Plone/VirtualHostRoot(/|\?|$)")
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
SENTINEL = b"GET /end HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"

_PIECES = st.sampled_from([b"/", b".", b"..", b"%2e", b"%2E", b"%2f", b"%2F", b"a", b"b%20c",
                           b"%25", b"%2e%2e", b".%2e", b"%c3%a9", b";", b"//", b"manage_main",
                           b"/manage", b"/manage_main/.."])

paths = st.lists(_PIECES, max_size=10).map(lambda pieces: b"/" + b"".join(pieces))
targets = st.one_of(
    paths, paths, paths,
    paths.map(lambda p: p + b"?q=1&x=%2e%2e"),
    paths.map(lambda p: b"http://www.example.com" + p),
    paths.map(lambda p: b"http://evil.example" + p),
    st.sampled_from([b"*", b"www.example.com:80", b"a:/x", b"foo", b"//x/../y",
                     b"HTTP://www.example.com:80/x", b"/a b", b"/\x00", b"/caf\xe9"]),
)
methods = st.sampled_from([b"GET", b"GET", b"GET", b"POST", b"POST", b"HEAD", b"PUT", b"OPTIONS",
                           b"PROPFIND", b"DELETE", b"CONNECT", b"get", b"G@T"])
versions = st.sampled_from([b" HTTP/1.1"] * 5 + [b" HTTP/1.0", b" HTTP/1.0", b"", b" HTTP/2.0",
                            b" HTTP/1.1 "])
hosts = st.sampled_from([
    *[[b"Host: www.example.com"]] * 6, [],
    [b"Host: www.example.com", b"Host: evil.example"], [b"Host: www.example.com, evil"],
    [b"Host: www.example.com:80"], [b"Host: "], [b"Host: www.example.com\r\n :80"],
])
# (header lines, whether their framing is unambiguous for a correct HTTP/1.1 parser)
transfer_encodings = st.sampled_from([
    *[([], True)] * 6, ([b"Transfer-Encoding: chunked"], True),
    ([b"Transfer-Encoding: gzip, chunked"], False), ([b"Transfer-Encoding: identity"], False),
    ([b"Transfer-Encoding : chunked"], False), ([b"Transfer-Encoding: xchunked"], False),
    ([b"Transfer-Encoding:\r\n chunked"], False), ([b"Transfer-Encoding: chunked, chunked"], False),
    ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], False),
])
extras = st.lists(st.sampled_from([
    b"Connection: keep-alive", b"Connection: close", b"Connection: X-Secret",
    b"X-Secret: 1", b"X-Folded: a\r\n b", b"Expect: 100-continue", b"X_Under: 1",
    b"X-Forwarded-For: 10.9.9.9", b"Cookie: __ac=x", b"X-Nul: a\x00b", b"X-Cr: a\rb",
]), max_size=2)
payloads = st.sampled_from([b"hello", SMUGGLED, b""])
framings = st.sampled_from(["none", "none", "length", "length", "chunked", "chunked",
                            "chunked+length", "short-length",
                            "double-length", "bad-length"])
line_ends = st.sampled_from([b"\r\n"] * 7 + [b"\n"])


def build(method, target, version, host, te, extra, payload, framing, eol):
    """The raw request, and whether a request hidden in its body is its body for
    sure (so reaching the backend as a request would be smuggling)."""
    te_lines, te_clear = te
    head = [method + b" " + target + version, *host, *extra]
    body = b""
    if framing == "length":
        head.append(b"Content-Length: %d" % len(payload))
        body = payload
    elif framing in ("chunked", "chunked+length"):
        head += te_lines or [b"Transfer-Encoding: chunked"]
        if framing == "chunked+length":
            head.append(b"Content-Length: %d" % len(payload))
        body = (b"%x\r\n" % len(payload) + payload + b"\r\n" if payload else b"") + b"0\r\n\r\n"
    elif framing == "short-length":
        head.append(b"Content-Length: %d" % (len(payload) // 2))
        body = payload
    elif framing == "double-length":
        head += [b"Content-Length: %d" % len(payload)] * 2
        body = payload
    elif framing == "bad-length":
        head.append(b"Content-Length: +%d" % len(payload))
        body = payload
    else:
        head += te_lines
    data = eol.join(head) + b"\r\n\r\n" + body
    surely_body = (framing in ("length", "chunked", "chunked+length") and te_clear
                   and eol == b"\r\n")
    return data, surely_body


@pytest.fixture
def site(serve_process):
    """vhm.root = /Plone, and a ``zmi`` pool taking the paths under /manage."""
    site, zmi = Recorder("site"), Recorder("zmi")
    servers = [ServerThread(site).start(), ServerThread(zmi).start()]
    process = serve_process(
        [servers[0].address],
        app=(f"vhm.root = /Plone\nhealth.interval = 0\npool.zmi.backends = {servers[1].address}"
             "\npool.zmi.match = path:/manage*"))
    yield process, site, zmi
    for server in servers:
        server.stop()


def public_path(uri: bytes) -> bytes:
    """The path the client asked for, decoded, as Zope traverses it (empty
    segments skipped), from the VHM path the backend got."""
    path = unquote_to_bytes(ROOT.sub(b"/", uri.split(b"?")[0], count=1))
    return b"/" + b"/".join(s for s in path.split(b"/") if s)


def test_fuzzed_requests_are_answered_once_or_refused(site):
    process, site_app, zmi_app = site

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(methods, targets, versions, hosts, transfer_encodings, extras, payloads, framings,
           line_ends)
    def check(method, target, version, host, te, extra, payload, framing, eol):
        data, surely_body = build(method, target, version, host, te, extra, payload, framing,
                                  eol)
        starts = len(site_app.requests), len(zmi_app.requests)
        result = exchange(process.port, data + SENTINEL, timeout=2.0, head=method == b"HEAD")
        to_site, to_zmi = site_app.since(starts[0]), zmi_app.since(starts[1])
        seen = to_site + to_zmi

        statuses = [a.status for a in result.answers]
        assert all(s < 500 or s == 501 for s in statuses), (statuses, data)
        stamped = [a.headers["x-seen"] for a in result.answers if "x-seen" in a.headers]
        assert sorted(stamped) == sorted(str(r["seen"]) for r in seen), (statuses, data)
        if surely_body:
            assert not any(r["uri"] == "/smuggled" or r["uri"].endswith("/smuggled")
                           for r in seen), data
        for record in seen:
            uri = record["uri"].encode("latin-1")
            if uri == b"*":
                assert record["method"] == "OPTIONS"
                continue
            assert ROOT.match(uri), (uri, data)
            segments = unquote_to_bytes(uri.split(b"?")[0]).split(b"/")
            assert b".." not in segments and b"." not in segments, (uri, data)
            # the path: rule saw the path Zope serves: no way around it
            assert public_path(uri).startswith(b"/manage") is (record in to_zmi), (uri, data)

    check()
    assert len(site_app.requests) > 20  # not every example was refused: many reached the backend
    log = process.log()
    assert "Traceback" not in log, log[-3000:]
