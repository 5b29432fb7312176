"""Error pages: HTML, JSON or text as the client accepts; backends named by
label (``id=`` or ``backend N``), never by address; JSON that is clean JSON."""

from __future__ import annotations

import json

import pytest
from apps import routes
from servers import ServerThread, free_port
from webtest import TestApp

from zope_lb import LoadBalancer
from zope_lb.pages import error_page, page_type

ACCEPTS = {
    "application/json": "application/json",
    "text/html": "text/html",
    "text/plain": "text/plain",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8": "text/html",
    "application/json, text/plain;q=0.5": "application/json",
    "*/*": "text/html",
    "image/png": "text/plain",
    None: "text/plain",
}


@pytest.mark.parametrize("accept, expected", ACCEPTS.items())
def test_page_type_follows_accept(accept, expected):
    assert page_type(accept) == expected


def dead_addresses(count):
    """Addresses on 127.0.0.1 where nothing listens (connection refused)."""
    return [f"127.0.0.1:{free_port()}" for _ in range(count)]


def get(app, accept, status):
    headers = {"Accept": accept} if accept else {}
    return app.get("/page", headers=headers, status=status)


@pytest.mark.parametrize("accept", list(ACCEPTS))
def test_503_names_backends_by_number_never_by_address(accept):
    addresses = dead_addresses(2)
    app = TestApp(LoadBalancer(addresses, health_interval=0))
    res = get(app, accept, 503)
    text = res.text
    assert res.content_type == ACCEPTS[accept]
    assert "backend 1" in text and "backend 2" in text
    assert "connection refused" in text
    for address in addresses:
        assert address not in text
        assert address.split(":")[1] not in text  # not even the port
    assert "127.0.0.1" not in text
    assert "<br" not in text
    assert res.headers["Retry-After"] == "5"
    assert res.headers["Cache-Control"] == "no-store"
    if ACCEPTS[accept] == "application/json":
        body = json.loads(text)
        assert body["code"] == 503 and body["title"] == "Service Unavailable"
        assert body["message"].startswith("No application server of this site is available")
    elif ACCEPTS[accept] == "text/html":
        assert "<h1>503 Service Unavailable</h1>" in text
    else:
        assert text.startswith("503 Service Unavailable\n")


def test_pages_use_the_configured_ids():
    a, b = dead_addresses(2)
    app = TestApp(LoadBalancer([f"{a} id=zeo1", b], health_interval=0))
    text = get(app, "application/json", 503).json["message"]
    assert "tried zeo1, backend 2" in text
    assert a not in text and b not in text


@pytest.mark.parametrize("accept", ["application/json", "text/html", "text/plain"])
def test_502_for_garbage_names_the_label_only(scripted, accept):
    backend = scripted(lambda head, i: b"NOT HTTP AT ALL\r\n\r\n")
    app = TestApp(LoadBalancer([backend.address], health_interval=0))
    res = get(app, accept, 502)
    assert res.content_type == accept
    assert "backend 1: the answer was not valid HTTP" in res.text
    assert backend.address not in res.text and "NOT HTTP" not in res.text
    if accept == "application/json":
        assert res.json["code"] == 502


@pytest.mark.parametrize("accept", ["application/json", "text/html", "text/plain"])
def test_504_names_the_label_only(accept):
    server = ServerThread(routes("slow")).start()
    try:
        app = TestApp(LoadBalancer([f"{server.address} id=client1"], health_interval=0,
                                   timeout_read=0.2))
        res = app.get("/slow?s=1", headers={"Accept": accept}, status=504)
        assert res.content_type == accept
        assert "client1: no answer within 0.2 s" in res.text
        assert server.address not in res.text
        if accept == "application/json":
            assert json.loads(res.text)["code"] == 504
    finally:
        server.stop()


def test_labels_follow_a_reconfigured_list():
    a, b, c = dead_addresses(3)
    balancer = LoadBalancer([a, b], health_interval=0)
    balancer.reconfigure([c, a])
    assert [x.label for x in balancer.pool.backends] == ["backend 1", "backend 2"]
    assert balancer.pool.backends[1].address == a


@pytest.mark.parametrize("accept", ["application/json", "text/html", "text/plain"])
def test_400_page_in_every_format(accept):
    page = error_page(400, 'The <Content-Length> "header" is not valid.')
    app = TestApp(page)
    res = app.get("/", headers={"Accept": accept}, status=400)
    assert res.content_type == accept
    if accept == "application/json":
        assert res.json["message"] == 'The <Content-Length> "header" is not valid.'
    elif accept == "text/html":
        assert "&lt;Content-Length&gt;" in res.text and "<Content" not in res.text


def test_head_gets_no_body():
    app = TestApp(error_page(404, "Not here."))
    res = app.head("/", status=404)
    assert res.body == b""
    assert int(res.headers["Content-Length"]) > 0
