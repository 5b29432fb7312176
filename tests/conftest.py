from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from apps import routes  # noqa: E402
from serve_process import ServeProcess, production_ini  # noqa: E402
from servers import ScriptedServer, ServerThread, free_port  # noqa: E402


@pytest.fixture
def backends():
    """Three running waitress backends, named b0, b1, b2."""
    servers = [ServerThread(routes(f"b{i}")).start() for i in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def backend():
    """One running waitress backend, named solo."""
    server = ServerThread(routes("solo")).start()
    yield server
    server.stop()


@pytest.fixture
def scripted():
    """``scripted(respond, **options)`` starts a ScriptedServer, stopped after the test."""
    servers = []

    def start(respond, **options):
        server = ScriptedServer(respond, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def serve_process(tmp_path):
    """``serve_process(backends, app="", server="", args=...)`` writes an ini like
    the README's production one to ``tmp_path/production.ini`` and starts the real
    ``zope-lb serve`` on a free port; every process is stopped after the test."""
    started = []

    def start(backends, *, app="", server="", args=("--cpu", "all"), **ini_options):
        port = free_port()
        ini = tmp_path / "production.ini"
        ini.write_text(production_ini(list(backends), port, app=app, server=server,
                                      **ini_options))
        process = ServeProcess(ini, port, args=tuple(args))
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, a test marked with a marker named in ZOPE_LB_REQUIRE (e.g.
    ``zope,browser``) may not skip: a missing Zope or Chromium is a failure
    there, so those tests always run."""
    outcome = yield
    report = outcome.get_result()
    required = {m for m in os.environ.get("ZOPE_LB_REQUIRE", "").split(",") if m}
    if report.skipped and required and any(item.iter_markers(n) for n in required):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped, but ZOPE_LB_REQUIRE says it must run: {reason}"
