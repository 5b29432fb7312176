"""``zope-lb check``: the pure evaluation, then the command against a real server."""

from __future__ import annotations

import argparse
import json
import socket

import pytest
from servers import ServerThread

from zope_lb import check


def backend(id_, state="up", reason="", role="primary"):
    return {"id": id_, "address": f"127.0.0.1:80{id_[-1]}", "role": role,
            "state": state, "reason": reason}


OK_PAYLOAD = {"status": "ok", "healthy": 3, "total": 3,
              "backends": [backend("client1"), backend("client2"), backend("client3")]}
DEGRADED_PAYLOAD = {"status": "degraded", "healthy": 2, "total": 3,
                    "backends": [backend("client1"),
                                 backend("client2", "down", "connection refused"),
                                 backend("client3")]}
DOWN_PAYLOAD = {"status": "down", "healthy": 0, "total": 2,
                "backends": [backend("client1", "down", "connection refused"),
                             backend("client2", "down", "timed out")]}


# -- evaluate -----------------------------------------------------------------

def test_ok():
    assert check.evaluate(OK_PAYLOAD) == (
        0, "ZOPE_LB OK - 3 of 3 backends healthy | healthy=3;2;0;0;3 total=3")


def test_degraded_names_the_down_backend():
    assert check.evaluate(DEGRADED_PAYLOAD) == (
        1, "ZOPE_LB WARNING - 2 of 3 backends healthy: client2 down: connection refused"
           " | healthy=2;2;0;0;3 total=3")


def test_down_is_critical():
    code, line = check.evaluate(DOWN_PAYLOAD)
    assert code == 2
    assert line == ("ZOPE_LB CRITICAL - 0 of 2 backends healthy: client1 down: connection "
                    "refused, client2 down: timed out | healthy=0;1;0;0;2 total=2")


@pytest.mark.parametrize("healthy, warning, critical, expected", [
    (3, 1, 0, 0),
    (2, 1, 0, 0),   # one down is fine when warning is 1
    (1, 1, 0, 1),
    (1, 1, 1, 2),
    (0, 1, 0, 2),
    (2, None, 1, 1),
    (1, None, 1, 2),
])
def test_thresholds(healthy, warning, critical, expected):
    payload = {"status": "x", "healthy": healthy, "total": 3, "backends": []}
    code, line = check.evaluate(payload, warning, critical)
    assert code == expected
    warn = 2 if warning is None else warning
    assert line.endswith(f"| healthy={healthy};{warn};{critical};0;3 total=3")


def test_a_503_is_critical_whatever_the_counts():
    code, line = check.evaluate(OK_PAYLOAD, http_status=503)
    assert code == 2 and line.startswith("ZOPE_LB CRITICAL - 3 of 3")


@pytest.mark.parametrize("payload", [
    None,
    [],
    "ok",
    {},
    {"status": "ok"},
    {"healthy": 3},
    {"healthy": "3", "total": 3},
    {"healthy": True, "total": 3},
    {"healthy": -1, "total": 3},
    {"healthy": 4, "total": 3},
    {"healthy": 1, "total": 3, "backends": "client1"},
    {"healthy": 1, "total": 3, "backends": ["client1"]},
])
def test_malformed_payload_is_unknown(payload):
    code, line = check.evaluate(payload)
    assert code == 3
    assert line.startswith("ZOPE_LB UNKNOWN - ")
    assert "|" not in line and "\n" not in line


def test_reasons_cannot_break_the_plugin_line():
    payload = {"healthy": 0, "total": 1,
               "backends": [backend("client1", "down", "bad | thing\nsecond line")]}
    code, line = check.evaluate(payload)
    assert code == 2
    assert line.count("|") == 1 and "\n" not in line
    assert "bad / thing second line" in line


@pytest.mark.parametrize("given, expected", [
    ("http://127.0.0.1:6543", "http://127.0.0.1:6543/__zope_lb__/health"),
    ("http://127.0.0.1:6543/", "http://127.0.0.1:6543/__zope_lb__/health"),
    ("127.0.0.1:6543", "http://127.0.0.1:6543/__zope_lb__/health"),
    ("https://lb.example.org/lb/__zope_lb__/health",
     "https://lb.example.org/lb/__zope_lb__/health"),
])
def test_health_url(given, expected):
    assert check.health_url(given) == expected


# -- the command against a real server ---------------------------------------

class Canned:
    """Serves one prepared answer at any path, and records the paths asked for."""

    def __init__(self):
        self.status = "200 OK"
        self.body = b"{}"
        self.content_type = "application/json"
        self.paths: list[str] = []

    def __call__(self, environ, start_response):
        self.paths.append(environ["PATH_INFO"])
        start_response(self.status, [("Content-Type", self.content_type)])
        return [self.body]


@pytest.fixture
def lb():
    app = Canned()
    server = ServerThread(app).start()
    yield app, server.url
    server.stop()


def run(argv, capsys):
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    code = check.run(parser.parse_args(argv))
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    return code, out.strip()


@pytest.mark.parametrize("status, payload, expected_code, expected_line", [
    ("200 OK", OK_PAYLOAD, 0,
     "ZOPE_LB OK - 3 of 3 backends healthy | healthy=3;2;0;0;3 total=3"),
    ("200 OK", DEGRADED_PAYLOAD, 1,
     "ZOPE_LB WARNING - 2 of 3 backends healthy: client2 down: connection refused"
     " | healthy=2;2;0;0;3 total=3"),
    ("503 Service Unavailable", DOWN_PAYLOAD, 2,
     "ZOPE_LB CRITICAL - 0 of 2 backends healthy: client1 down: connection refused,"
     " client2 down: timed out | healthy=0;1;0;0;2 total=2"),
])
def test_cli_against_a_real_server(lb, capsys, status, payload, expected_code, expected_line):
    app, url = lb
    app.status, app.body = status, json.dumps(payload).encode()
    assert run([url], capsys) == (expected_code, expected_line)
    assert app.paths == ["/__zope_lb__/health"]


def test_cli_thresholds_and_full_url(lb, capsys):
    app, url = lb
    app.body = json.dumps(DEGRADED_PAYLOAD).encode()
    code, line = run([f"{url}/__zope_lb__/health", "--warning", "1", "--critical", "0"], capsys)
    assert code == 0
    assert line == "ZOPE_LB OK - 2 of 3 backends healthy | healthy=2;1;0;0;3 total=3"


def test_cli_garbage_is_unknown(lb, capsys):
    app, url = lb
    app.content_type, app.body = "text/html", b"<html>Plone site</html>"
    code, line = run([url], capsys)
    assert code == 3
    assert line.startswith("ZOPE_LB UNKNOWN - ") and "no valid JSON" in line


def test_cli_other_http_status_is_unknown(lb, capsys):
    app, url = lb
    app.status, app.body = "404 Not Found", b'{"healthy": 1, "total": 1}'
    code, line = run([url], capsys)
    assert code == 3 and "HTTP 404" in line


def test_cli_json_without_the_fields_is_unknown(lb, capsys):
    app, url = lb
    app.body = b'{"status": "ok"}'
    assert run([url], capsys)[0] == 3


def test_cli_connection_refused_is_unknown(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, line = run([f"http://127.0.0.1:{port}", "--timeout", "2"], capsys)
    assert code == 3
    assert line == (f"ZOPE_LB UNKNOWN - cannot reach http://127.0.0.1:{port}"
                    "/__zope_lb__/health: connection refused")


def test_cli_timeout_is_unknown(capsys):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        code, line = run([f"http://127.0.0.1:{port}", "--timeout", "0.3"], capsys)
    assert code == 3 and line.endswith("timed out")


def test_cli_refuses_negative_thresholds(capsys):
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["http://x", "--warning", "-1"])


def test_without_backend_details_the_line_says_where_they_are():
    """Outside the balancer's admin.allow the endpoint gives the counts alone."""
    payload = {"status": "degraded", "healthy": 2, "total": 3}
    assert check.evaluate(payload) == (
        1, "ZOPE_LB WARNING - 2 of 3 backends healthy (which, and why: only from an "
           "address in the balancer's admin.allow) | healthy=2;2;0;0;3 total=3")
    assert check.evaluate({**payload, "healthy": 3})[1].startswith(
        "ZOPE_LB OK - 3 of 3 backends healthy | ")


@pytest.mark.parametrize("text", ["\u0663", "\uff11", "1.5"])
def test_cli_thresholds_are_ascii_whole_numbers(text):
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["http://x", "--warning", text])
