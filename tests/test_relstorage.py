"""RelStorage clusters: ``zope-lb verify`` and ``health.storage`` on Zope clients
whose ZODB is RelStorage on PostgreSQL.

First the parsers and verdicts on the Database Location texts RelStorage 4.3
shows (captured from Zope 6.3; MySQL and Oracle from RelStorage's adapters'
``__str__``), and the health probe against scripted backends; then, marked
``zope``, a real PostgreSQL (Debian's, tests/postgres.py) with real Zope
clients on it (tests/zope_cluster.py), verify run as the operator runs it,
and the real ``zope-lb serve`` taking the clients out when PostgreSQL stops
and back when it returns.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import urllib3
from postgres import postgres_installed, running_postgres
from serve_process import console_script
from test_probes import answer, checker_for, request_line
from zope_cluster import (
    PASSWORD,
    USER,
    RelStorageCluster,
    relstorage_installed,
)

from zope_lb.errors import ConfigError
from zope_lb.health import ZEO_PAGE, storage_name
from zope_lb.settings import parse_settings
from zope_lb.verify import FAIL, PASS, Database, Probe, judge, relstorage_database

CREDENTIALS = f"{USER}:{PASSWORD}"


def pg_location(port: int, host: str = "127.0.0.1", db: str = "zodb",
                at: str = "7ff544070a10") -> str:
    """What Zope's Control Panel shows as Database Location for a RelStorage on
    PostgreSQL (the adapter's repr: its memory address differs per process)."""
    return (f"RelStorage: <PostgreSQLAdapter at {at} history preserving,"
            f"dsn=\"dbname='{db}' user='postgres' host='{host}' port='{port}'\">")


def db_page(location: str) -> bytes:
    """The Control Panel's table, as Zope 6.3 renders it (quotes escaped)."""
    escaped = location.replace("&", "&amp;").replace("'", "&#x27;").replace('"', "&quot;")
    escaped = escaped.replace("<", "&lt;").replace(">", "&gt;")
    return (f'<table id="zmi-db_info"><tbody><tr><td>Database Location</td>'
            f'<td class="code">{escaped}</td></tr></tbody></table>').encode()


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(("location", "expected"), [
    (pg_location(5433), Database("PostgreSQL", (("127.0.0.1", 5433),), "zodb")),
    ("RelStorage: <PostgreSQLAdapter at 7f01 history free,dsn='dbname=zodb host=db'>",
     Database("PostgreSQL", (("db", 5432),), "zodb")),
    ("RelStorage: <PostgreSQLAdapter at 7f01 history free,"
     "dsn='postgresql://zope@db1:5433,db2/plone?sslmode=require'>",
     Database("PostgreSQL", (("db1", 5433), ("db2", 5432)), "plone")),
    ("RelStorage: <PostgreSQLAdapter at 7f01 history free,dsn='dbname=zodb'>",
     Database("PostgreSQL", (), "zodb", local="unix:(default socket)")),
    ("RelStorage: MySQLAdapter, history preserving, db='zodb', host='127.0.0.1', "
     "port=3307, user='zope'", Database("MySQL", (("127.0.0.1", 3307),), "zodb")),
    ("RelStorage: MySQLAdapter, history free, db='plone', host='mysql', user='zope'",
     Database("MySQL", (("mysql", 3306),), "plone")),
    ("RelStorage: OracleAdapter, history preserving, user='zope', "
     "dsn='ora.lan:1522/XEPDB1', twophase=False",
     Database("Oracle", (("ora.lan", 1522),), "XEPDB1")),
    ("RelStorage: OracleAdapter, history preserving, user='zope', dsn='(DESCRIPTION="
     "(ADDRESS=(PROTOCOL=TCP)(HOST=ora)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=ZODB)))', "
     "twophase=False", Database("Oracle", (("ora", 1521),), "ZODB")),
    ("/srv/zope/var/Data.fs", None),
    ("[('127.0.0.1', 8100)]", None),
    ("my own name", None),
])
def test_relstorage_database_reads_what_the_control_panel_shows(location, expected):
    assert relstorage_database(location) == expected


def test_a_password_in_the_dsn_is_never_part_of_the_name():
    location = ("RelStorage: <PostgreSQLAdapter at 7f01 history free,"
                "dsn=\"dbname='zodb' host='127.0.0.1' port='5432'\">")
    database = relstorage_database(location)
    assert database is not None
    assert database.describe() == "PostgreSQL 127.0.0.1:5432/zodb"


# ---------------------------------------------------------------- verdicts


def rs_probe(address: str, location: str, servers: tuple[str, ...], tid: str = "A") -> Probe:
    from dataclasses import replace

    from zope_lb.verify import Transaction

    database = relstorage_database(location)
    assert database is not None
    probe = Probe(address, status=200, ms=5.0, location=location,
                  transactions=(Transaction(id=tid, tid="", time="now"),))
    return replace(probe, servers=servers, database=database.describe(),
                   db_name=f"{database.kind} {database.name}")


def test_two_clients_on_one_database_pass_though_their_locations_differ():
    a = rs_probe("127.0.0.1:1", pg_location(5433, at="7f0a"), ("127.0.0.1:5433",))
    b = rs_probe("127.0.0.1:2", pg_location(5433, host="localhost", at="7f0b"),
                 ("127.0.0.1:5433", "[::1]:5433"))
    report = judge([a, b], storage_checked=True, write_checked=False)
    assert report.passed, report.to_dict()
    location = {c.name: c for c in report.clients[1].checks}["location"]
    assert location.outcome == PASS
    assert "the same database as PostgreSQL 127.0.0.1:5433/zodb" in location.reason


@pytest.mark.parametrize("other", [
    pg_location(5433, db="other"),  # another database on the same server
    pg_location(5434),  # the same name on another server
])
def test_a_client_on_another_database_fails(other):
    a = rs_probe("127.0.0.1:1", pg_location(5433, at="7f0a"), ("127.0.0.1:5433",))
    b = rs_probe("127.0.0.1:2", pg_location(5433, at="7f0b"), ("127.0.0.1:5433",))
    port = "5434" if "5434" in other else "5433"
    c = rs_probe("127.0.0.1:3", other, (f"127.0.0.1:{port}",))
    report = judge([a, b, c], storage_checked=True, write_checked=False)
    assert [client.passed for client in report.clients] == [True, True, False]
    (failure,) = report.clients[2].failures
    assert failure.name == "location"
    assert failure.reason.startswith(f"'{c.database}' differs from "
                                     "'PostgreSQL 127.0.0.1:5433/zodb'")


def test_a_client_on_its_own_filestorage_fails_beside_relstorage_clients():
    a = rs_probe("127.0.0.1:1", pg_location(5433, at="7f0a"), ("127.0.0.1:5433",))
    b = rs_probe("127.0.0.1:2", pg_location(5433, at="7f0b"), ("127.0.0.1:5433",))
    own = Probe("127.0.0.1:3", status=200, location="/srv/c3/var/Data.fs")
    report = judge([a, b, own], storage_checked=True, write_checked=False)
    assert [client.passed for client in report.clients] == [True, True, False]
    assert report.clients[2].failures[0].outcome == FAIL
    assert "is a FileStorage" in report.clients[2].failures[0].reason


# ---------------------------------------------------------------- health


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def failing_relstorage_client(location: str):
    """A scripted client: the Control Panel names ``location``; from the third
    request on, everything answers 500 as Zope does with its database gone."""
    def respond(head: bytes, i: int) -> bytes:
        if i >= 2:
            return answer("500 Internal Server Error", b"Internal Server Error")
        if request_line(head).split()[1] == ZEO_PAGE.encode():
            return answer("200 OK", db_page(location))
        return answer("200 OK")
    return respond


@pytest.mark.parametrize("flag", ["health.storage", "health.zeo"])
def test_a_failing_relstorage_client_is_reported_with_its_database(scripted, flag):
    port = closed_port()
    server = scripted(failing_relstorage_client(pg_location(port)))
    checker, backend = checker_for(server, **{flag: "true", "health.auth": CREDENTIALS})
    try:
        first = checker.probe(backend)  # GET /, then the Control Panel
        second = checker.probe(backend)  # GET / answers 500
    finally:
        checker.close()
    assert first == (True, first[1]) and first[1].endswith(f"; PostgreSQL 127.0.0.1:{port}/zodb")
    assert not second[0]
    assert second[1].startswith(f"storage unavailable: PostgreSQL 127.0.0.1:{port}/zodb "
                                "(connection refused); status 500 in ")


def test_a_relstorage_client_is_read_once_while_it_passes(scripted):
    port = closed_port()
    location, location_name = pg_location(port), f"; PostgreSQL 127.0.0.1:{port}/zodb"
    server = scripted(lambda head, i: answer("200 OK", db_page(location))
                      if request_line(head).split()[1] == ZEO_PAGE.encode()
                      else answer("200 OK"))
    checker, backend = checker_for(server, **{"health.storage": "true",
                                              "health.auth": CREDENTIALS})
    try:
        results = [checker.probe(backend) for _ in range(3)]
    finally:
        checker.close()
    assert all(passed and detail.endswith(location_name)
               for passed, detail in results), results
    paths = [request_line(head).split()[1] for head in server.requests]
    assert paths == [b"/", ZEO_PAGE.encode(), b"/", b"/"]  # it asks its database anyway


def test_a_database_that_accepts_connections_is_named_but_not_blamed(scripted):
    with socket.socket() as listener:  # a "database" that accepts and says nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = scripted(failing_relstorage_client(pg_location(port)))
        checker, backend = checker_for(server, **{"health.storage": "true",
                                                  "health.auth": CREDENTIALS})
        try:
            checker.probe(backend)
            passed, detail = checker.probe(backend)
        finally:
            checker.close()
    assert not passed
    assert detail.startswith("status 500 in ")
    assert detail.endswith(f"; storage PostgreSQL 127.0.0.1:{port}/zodb")


def test_without_health_storage_a_failure_names_no_storage(scripted):
    server = scripted(failing_relstorage_client(pg_location(closed_port())))
    checker, backend = checker_for(server)
    try:
        checker.probe(backend)
        checker.probe(backend)
        passed, detail = checker.probe(backend)
    finally:
        checker.close()
    assert not passed and "storage" not in detail


@pytest.mark.parametrize("flag", ["health.storage", "health.zeo"])
def test_a_disconnected_zeo_client_names_its_server(scripted, flag):
    port = closed_port()
    page = db_page(f"[('127.0.0.1', {port})] (disconnected)")
    server = scripted(lambda head, i: answer("200 OK", page)
                      if request_line(head).split()[1] == ZEO_PAGE.encode()
                      else answer("200 OK"))
    checker, backend = checker_for(server, **{flag: "true", "health.auth": CREDENTIALS})
    try:
        result = checker.probe(backend)
    finally:
        checker.close()
    assert result == (False, f"storage unavailable: ZEO 127.0.0.1:{port} "
                             "(connection refused); ZEO disconnected")


def test_a_client_that_is_gone_is_not_blamed_on_its_storage(scripted):
    page = db_page(pg_location(closed_port()))

    def closing(body: bytes) -> bytes:  # no idle keep-alive left for stop() to wait on
        return (f"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    server = scripted(lambda head, i: closing(page)
                      if request_line(head).split()[1] == ZEO_PAGE.encode()
                      else closing(b"ok"), close_after=True)
    checker, backend = checker_for(server, **{"health.storage": "true",
                                              "health.auth": CREDENTIALS})
    try:
        assert checker.probe(backend)[0]  # its database is known now
        server.stop()  # the Zope client stops; its port refuses
        passed, detail = checker.probe(backend)
    finally:
        checker.close()
    assert not passed and "storage" not in detail, detail


@pytest.mark.parametrize("flag", ["health.storage", "health.zeo"])
def test_health_storage_needs_health_auth(flag):
    with pytest.raises(ConfigError, match=f"{flag}.*needs health.auth"):
        parse_settings({"backends": "127.0.0.1:1\n127.0.0.1:2", flag: "true"})


def test_storage_name_for_zeo_and_relstorage():
    zeo = storage_name("[('127.0.0.1', 8100)]")
    assert zeo is not None and zeo.text == "ZEO 127.0.0.1:8100" and not zeo.relstorage
    rs = storage_name(pg_location(5433))
    assert rs is not None and rs.text == "PostgreSQL 127.0.0.1:5433/zodb" and rs.relstorage
    assert storage_name("/var/Data.fs") is None


# ---------------------------------------------------------------- real PostgreSQL


@pytest.fixture(scope="module")
def pg_cluster(tmp_path_factory) -> Iterator[tuple[object, RelStorageCluster]]:
    """A PostgreSQL with databases ``zodb`` and ``other``; Zope clients rs0
    (DSN host 127.0.0.1) and rs1 (``localhost``) on ``zodb``, own0 on a
    FileStorage, rsother on ``other``."""
    if not relstorage_installed():
        pytest.skip("RelStorage is not installed: pip install -e '.[zope]'")
    if not postgres_installed():
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    base = tmp_path_factory.mktemp("relstorage")
    with running_postgres(("zodb", "other")) as pg:
        cluster = RelStorageCluster(base, lambda db, host: pg.dsn(db, host))
        try:
            yield pg, cluster.start(hosts=("127.0.0.1", "localhost"), own_storage=1,
                                    other_database="other")
        finally:
            cluster.stop()


def run_verify(*targets: str, write_check: bool = True) -> tuple[int, dict]:
    argv = [console_script(), "verify", "--json", *targets]
    if write_check:
        argv.insert(3, "--write-check")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ZOPE_LB_USER": CREDENTIALS})
    return done.returncode, json.loads(done.stdout)


@pytest.mark.zope
def test_verify_passes_two_clients_on_one_database(pg_cluster):
    pg, cluster = pg_cluster
    status, report = run_verify(*cluster.addresses)
    assert status == 0, report
    assert report["result"] == "pass"
    rs0, rs1 = report["clients"]
    assert rs0["database"] == f"PostgreSQL 127.0.0.1:{pg.port}/zodb"
    assert rs1["database"] == f"PostgreSQL localhost:{pg.port}/zodb"  # the same server
    assert f"127.0.0.1:{pg.port}" in rs1["database_servers"]
    assert rs0["writer"] and rs1["write_seen"]


@pytest.mark.zope
@pytest.mark.parametrize("odd", ["own0", "rsother"])
def test_verify_fails_a_client_on_another_storage(pg_cluster, odd):
    pg, cluster = pg_cluster
    other = next(s for s in cluster.others if s.name == odd)
    status, report = run_verify(*cluster.addresses, other.address)
    assert status == 1, report
    verdicts = {c["address"]: c["verdict"] for c in report["clients"]}
    assert verdicts == {**dict.fromkeys(cluster.addresses, "pass"), other.address: "fail"}
    failures = next(c["failures"] for c in report["clients"] if c["address"] == other.address)
    expected = "is a FileStorage" if odd == "own0" else (
        f"'PostgreSQL 127.0.0.1:{pg.port}/other' differs from "
        f"'PostgreSQL 127.0.0.1:{pg.port}/zodb'")
    assert any(expected in f for f in failures), failures


def get_status(address: str, timeout: float = 10.0) -> tuple[int, float]:
    host, port = address.rsplit(":", 1)
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/")
        status = conn.getresponse().status
    finally:
        conn.close()
    return status, time.monotonic() - started


def wait_until(condition, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.mark.zope
def test_postgresql_stopped_takes_the_clients_out_and_restarted_brings_them_back(
        pg_cluster, serve_process):
    pg, cluster = pg_cluster
    app = (f"health.interval = 300ms\nhealth.timeout = 1s\nhealth.rise = 2\n"
           f"health.fall = 2\nhealth.storage = true\nhealth.auth = {CREDENTIALS}")
    lines = [f"{s.address} id={s.name}" for s in cluster.clients]
    lb = serve_process(lines, app=app)
    http_pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(5, 10))

    def health() -> dict:
        return json.loads(http_pool.request("GET", f"{lb.url}/__zope_lb__/health").data)

    assert wait_until(lambda: health()["status"] == "ok", 15), health()
    assert http_pool.request("GET", f"{lb.url}/").status == 200
    time.sleep(1.0)  # a probe or two passes: each client's database is known

    pg.stop()
    try:
        # the measurement the docs quote: a client answers 500 at once, not a hang
        for server in cluster.clients:
            status, took = get_status(server.address)
            assert status == 500 and took < 1.0, (status, took)

        def all_out() -> bool:
            return all(b["state"] == "down" and "storage unavailable: PostgreSQL" in b["reason"]
                       for b in health()["backends"])
        started = time.monotonic()
        assert wait_until(all_out, 10), health()
        assert time.monotonic() - started < 5  # health.fall probes, 300 ms apart
        reasons = {b["id"]: b["reason"] for b in health()["backends"]}
        assert (f"storage unavailable: PostgreSQL 127.0.0.1:{pg.port}/zodb "
                "(connection refused); status 500") in reasons["rs0"]
        assert (f"storage unavailable: PostgreSQL localhost:{pg.port}/zodb "
                "(connection refused); status 500") in reasons["rs1"]
        assert http_pool.request("GET", f"{lb.url}/").status == 503
    finally:
        if not pg.running():
            pg.start()  # same port, same data
    assert wait_until(lambda: health()["status"] == "ok", 15), health()
    assert http_pool.request("GET", f"{lb.url}/").status == 200
    assert lb.wait_for_log(r"storage unavailable: PostgreSQL", timeout=1)


@pytest.mark.zope
def test_a_hung_postgresql_takes_the_clients_out_by_timeout_and_names_it(
        pg_cluster, serve_process):
    pg, cluster = pg_cluster
    app = (f"health.interval = 300ms\nhealth.timeout = 1s\nhealth.rise = 2\n"
           f"health.fall = 2\nhealth.storage = true\nhealth.auth = {CREDENTIALS}")
    lb = serve_process([f"{s.address} id={s.name}" for s in cluster.clients], app=app)
    http_pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(5, 10))

    def health() -> dict:
        return json.loads(http_pool.request("GET", f"{lb.url}/__zope_lb__/health").data)

    assert wait_until(lambda: health()["status"] == "ok", 15), health()
    time.sleep(1.0)  # a probe or two passes: each client's database is known
    with pg.frozen():
        # the measurement the docs quote: a request hangs, it does not fail
        with pytest.raises(TimeoutError):
            get_status(cluster.clients[0].address, timeout=3)

        def all_out() -> bool:
            return all(b["state"] == "down" and "timeout after 1 s" in b["reason"]
                       and f":{pg.port}/zodb" in b["reason"] for b in health()["backends"])
        assert wait_until(all_out, 10), health()
        reasons = {b["id"]: b["reason"] for b in health()["backends"]}
        # the frozen server's kernel accepts the connect: named, not blamed
        assert reasons["rs0"].endswith(f"; storage PostgreSQL 127.0.0.1:{pg.port}/zodb")
        assert "storage unavailable" not in reasons["rs0"]
    assert wait_until(lambda: health()["status"] == "ok", 20), health()
    assert http_pool.request("GET", f"{lb.url}/").status == 200
