"""``zope-lb serve`` behind a real nginx: the trusted X-Forwarded-* headers reach
the balancer (waitress must not strip them), untrusted ones are not believed."""

from __future__ import annotations

import http.client
import json
import os
import subprocess

import pytest
from nginx import Nginx, available
from serve_process import console_script, listening, production_ini
from servers import free_port, wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="needs Debian's nginx")]

PLONE = "vhm.root = /Plone\nvhm.base = auto\n"


@pytest.fixture
def nginx(tmp_path):
    """``nginx(upstream_port, headers=None)`` starts a real nginx in front of it."""
    started = []

    def start(upstream, headers=None):
        proxy = Nginx(tmp_path / f"nginx{len(started)}", upstream, headers)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


def get_from(port, path, source="127.0.0.2", headers=None):
    """GET ``path`` from a client at ``source`` (a loopback address of its own, so
    the client is told apart from nginx at 127.0.0.1)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_behind_nginx_the_backend_sees_the_public_url_and_the_client(
        serve_process, backend, nginx):
    lb = serve_process([backend.address], app=PLONE + "forwarded.trusted = 127.0.0.1")
    proxy = nginx(lb.port)
    status, body = get_from(proxy.port, "/news/item?x=1")
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == ("/VirtualHostBase/https/www.example.org:443/Plone"
                            "/VirtualHostRoot/news/item")
    assert seen["query"] == "x=1"
    # the client (127.0.0.2) as nginx saw it, then nginx as zope_lb saw it
    assert seen["headers"]["X-Forwarded-For"] == "127.0.0.2, 127.0.0.1"
    assert seen["headers"]["X-Forwarded-Proto"] == "https"
    assert seen["headers"]["X-Forwarded-Host"] == "www.example.org"


def test_without_forwarded_trusted_the_headers_are_not_believed(
        serve_process, backend, nginx):
    lb = serve_process([backend.address], app=PLONE)
    proxy = nginx(lb.port)
    status, body = get_from(proxy.port, "/news")
    assert status == 200
    seen = json.loads(body)
    # nginx's Host ($host: no port) over plain http, not the forged public URL
    assert seen["path"] == "/VirtualHostBase/http/127.0.0.1:80/Plone/VirtualHostRoot/news"
    assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert "www.example.org" not in body.decode()


def test_a_client_cannot_forge_the_headers_past_nginx(serve_process, backend, nginx):
    """Trusting nginx is trusting what nginx sets: a client's own X-Forwarded-Proto
    and -Host are overwritten there, its X-Forwarded-For is kept as history only."""
    lb = serve_process([backend.address], app=PLONE + "forwarded.trusted = 127.0.0.1")
    proxy = nginx(lb.port)
    status, body = get_from(proxy.port, "/", headers={
        "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "gopher"})
    assert status == 200
    seen = json.loads(body)
    assert seen["path"].startswith("/VirtualHostBase/https/www.example.org:443/Plone/")
    assert "evil.example" not in body.decode()


def test_an_explicit_server_setting_still_wins(serve_process, backend):
    """``clear_untrusted_proxy_headers = true`` in [server:main] is obeyed: waitress
    strips the headers again (what an operator asked for, even if unwise)."""
    lb = serve_process([backend.address], app=PLONE + "forwarded.trusted = 127.0.0.1",
                       server="clear_untrusted_proxy_headers = true")
    status, body = get_from(lb.port, "/", source="127.0.0.1", headers={
        "X-Forwarded-Host": "www.example.org", "X-Forwarded-Proto": "https"})
    assert status == 200
    assert json.loads(body)["path"].startswith("/VirtualHostBase/http/127.0.0.1:")


def test_a_bad_server_setting_stops_start_up_in_one_line(tmp_path, backend):
    ini = tmp_path / "bad.ini"
    ini.write_text(f"[app:main]\nuse = egg:zope_lb\nbackends = {backend.address}\n\n"
                   "[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:0\n"
                   "thread = 4\n")
    done = subprocess.run([console_script(), "serve", str(ini)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "[server:main]" in done.stderr and "thread" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_pserve_with_the_zope_lb_server_keeps_the_headers(tmp_path, backend):
    """pserve runs the same server: ``use = call:zope_lb.server:server_factory``
    (``egg:zope_lb#server`` once installed), graceful stop included."""
    port = free_port()
    ini = tmp_path / "pserve.ini"
    text = production_ini([backend.address], port,
                          app=PLONE + "forwarded.trusted = 127.0.0.1")
    ini.write_text(text.replace("use = egg:waitress#main",
                                "use = call:zope_lb.server:server_factory"))
    log_path = tmp_path / "pserve.log"
    pserve = os.path.join(os.path.dirname(console_script()), "pserve")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([pserve, str(ini)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        assert wait_until(lambda: listening(port) or proc.poll() is not None,
                          timeout=20) and proc.poll() is None, log_path.read_text()
        status, body = get_from(port, "/", source="127.0.0.1", headers={
            "X-Forwarded-Host": "www.example.org", "X-Forwarded-Proto": "https"})
        assert status == 200
        assert json.loads(body)["path"].startswith(
            "/VirtualHostBase/https/www.example.org:443/Plone/")
        proc.terminate()
        assert proc.wait(15) == 0
        assert "zope-lb serves on" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
