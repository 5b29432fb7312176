"""Active health probes, request by request: what is sent (method, path, Host),
how the answer is judged (health.expect), and the ZEO check's corner cases.
Each probe goes to a scripted backend on 127.0.0.1 that records what it got."""

from __future__ import annotations

import logging

import pytest
from test_verify import DB_ZEO

from zope_lb.backend import Backend
from zope_lb.health import ZEO_PAGE, HealthChecker
from zope_lb.settings import parse_settings


def answer(status: str, body: bytes = b"ok") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/html\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def checker_for(server, **options):
    settings = parse_settings({"backends": f"{server.address}\n127.0.0.1:9", **options})
    backend = Backend(settings.backends[0], maxconn=4, timeout_connect=1.0, timeout_read=2.0,
                      fall=3, cooldown=1.0)
    checker = HealthChecker(lambda: [backend], settings)
    return checker, backend


def request_line(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0]


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def test_the_probe_is_a_get_of_health_path_with_health_host(scripted):
    server = scripted(lambda head, i: answer("200 OK"))
    checker, backend = checker_for(server, **{"health.path": "/@@ok",
                                              "health.host": "www.example.org"})
    try:
        passed, detail = checker.probe(backend)
    finally:
        checker.close()
    assert passed and detail.startswith("status 200 in ")
    (head,) = server.requests
    assert request_line(head) == b"GET /@@ok HTTP/1.1"
    assert header(head, b"Host") == b"www.example.org"


def test_head_is_sent_when_asked_for_and_warned_about(scripted, caplog):
    server = scripted(lambda head, i: answer("200 OK", b""))
    with caplog.at_level(logging.WARNING, logger="zope_lb"):
        checker, backend = checker_for(server, **{"health.method": "HEAD"})
    try:
        assert checker.probe(backend)[0]
    finally:
        checker.close()
    assert request_line(server.requests[0]) == b"HEAD / HTTP/1.1"
    assert "health.method = HEAD: on Zope a first HEAD of an object writes" in caplog.text


def test_get_is_the_default_and_warns_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="zope_lb"):
        settings = parse_settings({"backends": "127.0.0.1:8081\n127.0.0.1:8082"})
    assert settings.health_method == "GET"
    assert "HEAD" not in caplog.text


@pytest.mark.parametrize(("expect", "status", "passed"), [
    ("200-399", "302 Found", True),
    ("200", "302 Found", False),
    ("200,401", "401 Unauthorized", True),
    ("200-399", "500 Internal Server Error", False),
])
def test_health_expect_judges_the_status(scripted, expect, status, passed):
    server = scripted(lambda head, i: answer(status))
    checker, backend = checker_for(server, **{"health.expect": expect})
    try:
        result, detail = checker.probe(backend)
    finally:
        checker.close()
    assert result is passed
    assert detail.startswith(f"status {status.split()[0]}")


def zope_like(zeo_page: tuple[str, bytes]):
    def respond(head: bytes, i: int) -> bytes:
        if request_line(head).split()[1] == ZEO_PAGE.encode():
            return answer(*zeo_page)
        return answer("200 OK")
    return respond


ZEO = {"health.zeo": "true", "health.auth": "admin:secret"}


def test_zeo_check_sends_the_login_and_reads_connected(scripted):
    server = scripted(zope_like(("200 OK", DB_ZEO.encode())))
    checker, backend = checker_for(server, **ZEO)
    try:
        passed, detail = checker.probe(backend)
    finally:
        checker.close()
    assert passed and detail.endswith("; ZEO connected")
    zeo_head = server.requests[1]
    assert request_line(zeo_head) == f"GET {ZEO_PAGE} HTTP/1.1".encode()
    assert header(zeo_head, b"Authorization") == b"Basic YWRtaW46c2VjcmV0"


def test_zeo_check_says_disconnected(scripted):
    page = DB_ZEO.replace("(connected)", "(disconnected)").encode()
    server = scripted(zope_like(("200 OK", page)))
    checker, backend = checker_for(server, **ZEO)
    try:
        passed, detail = checker.probe(backend)
        assert not passed and "ZEO disconnected" in detail
    finally:
        checker.close()


def test_a_refused_login_skips_the_zeo_check_with_one_warning(scripted, caplog):
    server = scripted(zope_like(("401 Unauthorized", b"login")))
    checker, backend = checker_for(server, **ZEO)
    try:
        with caplog.at_level(logging.WARNING, logger="zope_lb"):
            results = [checker.probe(backend) for _ in range(3)]
    finally:
        checker.close()
    assert all(passed for passed, _ in results)  # the site stays up
    assert all("ZEO" not in detail for _, detail in results)  # and no claim is made
    warnings = [r for r in caplog.records if "refused health.auth" in r.getMessage()]
    assert len(warnings) == 1


def test_a_page_without_a_database_location_claims_nothing(scripted):
    server = scripted(zope_like(("200 OK", b"<html><body>No table here</body></html>")))
    checker, backend = checker_for(server, **ZEO)
    try:
        passed, detail = checker.probe(backend)
    finally:
        checker.close()
    assert passed and "ZEO" not in detail
