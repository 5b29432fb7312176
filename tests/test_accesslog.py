"""The access log: one line per request on ``zope_lb.access``, in Apache's
combined format with zope_lb's fields after it, or JSON."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.request

import pytest
from serve_process import ServeProcess, production_ini
from servers import ServerThread, free_port, wait_until
from webob import Request
from webtest import TestApp

import zope_lb.app
from zope_lb import LoadBalancer
from zope_lb.accesslog import ENDS, AccessLog, escape

QUOTED = r'"((?:[^"\\]|\\.)*)"'
COMBINED = re.compile(
    r"^(?P<client>\S+) - (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    + QUOTED.replace("(", "(?P<request>", 1)
    + r" (?P<status>\d{3}) (?P<bytes>\d+|-) "
    + QUOTED.replace("(", "(?P<referer>", 1) + " "
    + QUOTED.replace("(", "(?P<agent>", 1)
    + r" pool=(?P<pool>\S+) backend=(?P<backend>\S+) wait_ms=(?P<wait>\d+)"
    r" ttfb_ms=(?P<ttfb>\d+|-) total_ms=(?P<total>\d+) end=(?P<end>\w+)$"
)


def parse(line: str) -> dict[str, str]:
    match = COMBINED.match(line)
    assert match, f"not a combined line: {line!r}"
    return match.groupdict()


def written() -> None:
    """Have every open balancer's writer thread write what it holds: a test reads
    the lines right after its requests, the thread would in 20 ms."""
    for balancer in list(zope_lb.app._open_balancers):
        if balancer.access_writer is not None:
            balancer.access_writer.drain()


def access_lines(caplog) -> list[str]:
    written()
    return [r.getMessage() for r in caplog.records if r.name == "zope_lb.access"]


@pytest.fixture
def access(caplog):
    caplog.set_level(logging.INFO, logger="zope_lb.access")
    return lambda: [parse(line) for line in access_lines(caplog)]


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class Clock:
    def __init__(self, now: float = 500.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


ENVIRON = {
    "REQUEST_METHOD": "GET", "REQUEST_URI": "/Plone/front-page?a=1&b=2",
    "PATH_INFO": "/Plone/front-page", "QUERY_STRING": "a=1&b=2",
    "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.9",
    "HTTP_REFERER": "http://127.0.0.1/", "HTTP_USER_AGENT": "Mozilla/5.0 (X11)",
}


def test_combined_line_field_by_field(caplog, utc):
    caplog.set_level(logging.INFO, logger="zope_lb.access")
    clock = Clock()
    log = AccessLog("combined", clock=clock, wall_clock=lambda: 1796085342.5)
    entry = log.open(dict(ENVIRON))
    assert entry is not None
    entry.pool, entry.backend, entry.status = "default", "client1", 200
    entry.wait, entry.ttfb, entry.end = 0.0004, 0.012, "answered"
    clock.now += 0.015
    entry.body_closed(5120, complete=True)
    entry.finish()  # a second call writes nothing
    assert access_lines(caplog) == [
        '127.0.0.9 - - [01/Dec/2026:00:35:42 +0000] "GET /Plone/front-page?a=1&b=2 HTTP/1.1" '
        '200 5120 "http://127.0.0.1/" "Mozilla/5.0 (X11)" pool=default backend=client1 '
        "wait_ms=0 ttfb_ms=12 total_ms=15 end=answered"
    ]


def test_json_line_has_the_same_fields(caplog, utc):
    caplog.set_level(logging.INFO, logger="zope_lb.access")
    clock = Clock()
    log = AccessLog("json", clock=clock, wall_clock=lambda: 1796085342.5)
    entry = log.open(dict(ENVIRON))
    assert entry is not None
    entry.pool, entry.status, entry.end = "default", 503, "no_backend"
    clock.now += 0.0021
    entry.body_closed(0, complete=False)
    (line,) = access_lines(caplog)
    assert json.loads(line) == {
        "time": "2026-12-01T00:35:42+0000", "client": "127.0.0.9", "method": "GET",
        "path": "/Plone/front-page?a=1&b=2", "protocol": "HTTP/1.1", "status": 503,
        "bytes": 0, "referer": "http://127.0.0.1/", "user_agent": "Mozilla/5.0 (X11)",
        "pool": "default", "backend": None, "wait_ms": 0, "ttfb_ms": None, "total_ms": 2,
        "end": "no_backend",
    }


def test_client_controlled_fields_cannot_forge_a_line(caplog):
    caplog.set_level(logging.INFO, logger="zope_lb.access")
    environ = {**ENVIRON, "HTTP_USER_AGENT": 'x" 200 1\nforged "line\\',
               "REQUEST_URI": "/caf\xe9 x"}
    log = AccessLog("combined")
    entry = log.open(environ)
    assert entry is not None
    entry.status = 200
    entry.finish()
    (line,) = access_lines(caplog)
    assert "\n" not in line
    fields = parse(line)
    assert fields["agent"] == 'x\\" 200 1\\x0aforged \\"line\\\\'
    assert fields["request"] == "GET /caf\\xe9 x HTTP/1.1"
    assert escape("plain text") == "plain text"


def test_the_time_stamp_is_cached_per_second(utc):
    log = AccessLog("combined")
    first = log._time(1796085342.1)
    assert log._time(1796085342.9) is first
    assert log._time(1796085343.0) == "01/Dec/2026:00:35:43 +0000"


def test_proxied_get_and_post(backends, access):
    app = TestApp(LoadBalancer([f"{backends[0].address} id=client1", backends[1].address],
                               health_interval=0, strategy="first"))
    res = app.get("/echo?x=1", headers={"User-Agent": "probe/1", "Referer": "http://r/"},
                  extra_environ={"REMOTE_ADDR": "127.0.0.5"})
    app.post("/form", b"a=1", extra_environ={"REMOTE_ADDR": "127.0.0.5"})
    get, post = access()
    assert get["client"] == "127.0.0.5"
    assert get["request"].startswith("GET /echo?x=1 ")
    assert (get["status"], get["bytes"]) == ("200", str(len(res.body)))
    assert (get["referer"], get["agent"]) == ("http://r/", "probe/1")
    assert (get["pool"], get["backend"], get["end"]) == ("default", "client1", "answered")
    assert get["ttfb"] != "-" and int(get["total"]) >= int(get["ttfb"])
    assert post["request"].startswith("POST /form ") and post["end"] == "answered"


def test_retried_timeout_and_no_backend(backend, access):
    dead = f"127.0.0.1:{free_port()}"
    app = TestApp(LoadBalancer([dead, backend.address], health_interval=0, strategy="first",
                               timeout_read=0.3))
    app.get("/echo")
    app.get("/slow?s=1", status=504)
    line_retried, line_timeout = access()
    assert (line_retried["end"], line_retried["backend"]) == ("retried", backend.address)
    assert line_timeout["status"] == "504" and line_timeout["end"] == "timeout"
    assert int(line_timeout["total"]) >= 300
    backend.stop()
    app.get("/echo", status=(502, 503))
    last = access()[-1]
    assert last["end"] == "no_backend" and last["status"] == "503"


def test_queue_wait_and_queue_full(backend, access):
    balancer = LoadBalancer([f"{backend.address} maxconn=1"], health_interval=0,
                            queue_size=1)
    app = TestApp(balancer)
    slow = threading.Thread(target=lambda: app.get("/slow?s=1.5"), daemon=True)
    slow.start()
    assert wait_until(lambda: balancer.pool.backends[0].active == 1, timeout=5)
    waiter = threading.Thread(target=lambda: app.get("/echo"), daemon=True)
    waiter.start()
    assert wait_until(lambda: balancer.pool.queued == 1, timeout=5)
    app.get("/echo", status=503)  # the queue (size 1) is full
    slow.join(5)
    waiter.join(5)
    by_end = {line["end"]: line for line in access()}
    assert by_end["queue_full"]["status"] == "503"
    assert by_end["queue_full"]["backend"] == "-"
    queued = [line for line in access() if line["request"].startswith("GET /echo ")
              and line["end"] == "answered"]
    assert len(queued) == 1 and int(queued[0]["wait"]) >= 200


def test_local_answers_and_bad_requests(backend, access):
    balancer = LoadBalancer([backend.address], health_interval=0)
    app = TestApp(balancer)
    app.get("/__zope_lb__/health")
    app.request("/x", method="CONNECT", status=405)
    environ = Request.blank("/x", method="POST").environ
    environ["CONTENT_LENGTH"] = "nonsense"
    statuses = []
    body = balancer(environ, lambda status, headers, exc_info=None: statuses.append(status))
    b"".join(body)
    body.close()  # type: ignore[attr-defined]
    assert statuses == ["400 Bad Request"]
    health, connect, bad = access()
    assert (health["status"], health["end"], health["backend"]) == ("200", "local", "-")
    assert int(health["bytes"]) > 0
    assert (connect["status"], connect["end"]) == ("405", "bad_request")
    assert (bad["status"], bad["end"]) == ("400", "bad_request")


def test_access_log_off_and_json_option(backend, caplog):
    caplog.set_level(logging.INFO, logger="zope_lb.access")
    TestApp(LoadBalancer([backend.address], health_interval=0, access_log="off")).get("/echo")
    assert access_lines(caplog) == []
    TestApp(LoadBalancer([backend.address], health_interval=0, access_log="json")).get("/echo")
    (line,) = access_lines(caplog)
    assert json.loads(line)["end"] == "answered"


def test_no_entry_when_the_logger_is_off(backend, caplog):
    caplog.set_level(logging.WARNING, logger="zope_lb.access")
    balancer = LoadBalancer([backend.address], health_interval=0)
    assert balancer.access is not None and balancer.access.open({}) is None
    TestApp(balancer).get("/echo")
    assert access_lines(caplog) == []


def test_every_end_word_is_documented():
    assert set(ENDS) >= {"answered", "retried", "client_gone", "timeout", "queue_full",
                         "queue_timeout", "no_backend", "backend_error", "bad_request",
                         "local"}


def test_client_gone_through_a_real_server(backend, access):
    """A client reads the head of a long answer and hangs up: the line says
    client_gone, with the bytes handed over so far."""
    balancer = LoadBalancer([backend.address], health_interval=0)
    front = ServerThread(balancer).start()
    try:
        with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
            sock.sendall(b"GET /big?n=50000000&chunk=65536&delay=0.01 HTTP/1.1\r\n"
                         b"Host: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert wait_until(lambda: any(line["end"] == "client_gone" for line in access()),
                          timeout=15)
        (line,) = access()
        assert line["status"] == "200" and 0 < int(line["bytes"]) < 50000000
        with urllib.request.urlopen(front.url + "/echo", timeout=5) as answer:
            answer.read()
        assert wait_until(lambda: len(access()) == 2, timeout=5)
        assert access()[1]["end"] == "answered" and access()[1]["client"] == "127.0.0.1"
    finally:
        front.stop()
        balancer.close()


def test_access_log_of_the_real_process(serve_process, backend):
    """``zope-lb serve`` with the production ini: the line for a proxied GET, a
    client that goes away, and a 503."""
    process = serve_process([f"{backend.address} id=client1"])
    with urllib.request.urlopen(process.url + "/echo?q=1", timeout=10) as answer:
        body = answer.read()
    assert process.wait_for_log(r"\[zope_lb\.access\] .*GET /echo\?q=1 ", timeout=10)
    line = re.search(r"\[zope_lb\.access\] (.*)", process.log()).group(1)
    fields = parse(line)
    assert fields["client"] == "127.0.0.1"
    assert fields["request"] == "GET /echo?q=1 HTTP/1.1"
    assert (fields["status"], fields["bytes"]) == ("200", str(len(body)))
    assert (fields["pool"], fields["backend"], fields["end"]) == ("default", "client1",
                                                                  "answered")
    assert fields["agent"].startswith("Python-urllib")

    with socket.create_connection(("127.0.0.1", process.port), timeout=5) as sock:
        sock.sendall(b"GET /big?n=50000000&chunk=65536&delay=0.01 HTTP/1.1\r\n"
                     b"Host: 127.0.0.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert process.wait_for_log(r"GET /big\?\S+ HTTP/1.1\" 200 \d+ .* end=client_gone",
                                timeout=15)

    backend.stop()
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(process.url + "/gone", timeout=10)
    assert failed.value.code == 503
    assert process.wait_for_log(r'"GET /gone HTTP/1.1" 503 \d+ .* backend=client1 '
                                r"wait_ms=\d+ ttfb_ms=- total_ms=\d+ end=no_backend",
                                timeout=10)


ACCESS_FILE_LOGGING = """
[loggers]
keys = root, zope_lb, access

[handlers]
keys = console, accessfile

[formatters]
keys = generic, bare

[logger_root]
level = INFO
handlers = console

[logger_zope_lb]
level = INFO
handlers =
qualname = zope_lb

[logger_access]
level = INFO
handlers = accessfile
qualname = zope_lb.access
propagate = 0

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[handler_accessfile]
class = handlers.WatchedFileHandler
args = ('%(here)s/access.log', 'a')
level = NOTSET
formatter = bare

[formatter_generic]
format = %(asctime)s %(levelname)-5.5s [%(name)s] %(message)s

[formatter_bare]
format = %(message)s
"""


def test_logging_sections_route_the_access_log_to_its_own_file(tmp_path, backend):
    """Logging sections that give zope_lb.access a file of its own, as the
    README's do: the lines go there, bare, and not to the main log."""
    port = free_port()
    ini = tmp_path / "production.ini"
    ini.write_text(production_ini([backend.address], port, logging=False)
                   + ACCESS_FILE_LOGGING)
    process = ServeProcess(ini, port).start()
    try:
        with urllib.request.urlopen(process.url + "/echo", timeout=10) as answer:
            answer.read()
        access_file = tmp_path / "access.log"
        assert wait_until(lambda: access_file.exists() and access_file.read_text(), timeout=10)
        (line,) = access_file.read_text().splitlines()
        assert parse(line)["end"] == "answered"
        assert "zope_lb.access" not in process.log()
        assert "balancing over" in process.log()
    finally:
        process.stop()


def test_a_failing_wrapped_app_still_gets_its_line(backend, access):
    """A filter whose wrapped app raises: the server answers 500, the line says
    so (end=error), and the exception still reaches the server."""
    def broken(environ, start_response):
        raise RuntimeError("wrapped app bug")

    app = TestApp(LoadBalancer([backend.address], app=broken, prefix="/lb",
                               health_interval=0))
    with pytest.raises(RuntimeError):
        app.get("/site/page")
    app.get("/lb/echo")
    failed, proxied = access()
    assert (failed["status"], failed["end"], failed["pool"]) == ("500", "error", "-")
    assert failed["request"].startswith("GET /site/page ")
    assert proxied["end"] == "answered"


def test_a_refused_request_has_its_line(backend, access):
    """A request refused before forwarding (here a path climbing above the
    root) is in the access log too, with the path it asked for."""
    balancer = LoadBalancer([backend.address], health_interval=0)
    app = TestApp(balancer)
    app.get("/a/%2e%2e/%2e%2e/acl_users", status=400)
    (line,) = access()
    assert (line["status"], line["end"], line["backend"]) == ("400", "bad_request", "-")
    assert line["request"] == "GET /a/../../acl_users HTTP/1.0"
