"""SIGHUP on the real ``zope-lb serve``: a broken ini is refused in one ERROR line
and the next SIGHUP still works; a good one is applied in place; what needs a
restart is named; a filter pipeline reloads its filter's options."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import urllib3
from serve_process import LOGGING, ServeProcess, console_script, listening, production_ini
from servers import free_port, wait_until

from zope_lb.inicheck import check_ini
from zope_lb.reload import balancers_of, restart_needed

pytestmark = pytest.mark.slow
HERE = str(Path(__file__).resolve().parent)


def served_by(url: str, count: int = 6) -> set[str]:
    http = urllib3.PoolManager(retries=False, timeout=5)
    return {http.request("GET", url).headers.get("X-Backend", "") for _ in range(count)}


def reaches(url: str, name: str, timeout: float = 10.0) -> bool:
    return wait_until(lambda: name in served_by(url, 3), timeout=timeout)


def lines(process: ServeProcess, pattern: str) -> list[str]:
    return [line for line in process.log().splitlines() if re.search(pattern, line)]


def test_a_broken_ini_is_refused_in_one_line_and_the_next_sighup_works(
        serve_process, backends):
    b0, b1, b2 = backends
    process = serve_process([b0.address, b1.address])
    ini = Path(process.ini_path)
    assert served_by(process.url + "/echo") == {"b0", "b1"}

    # A key written twice: the parser itself refuses it.
    good = ini.read_text()
    ini.write_text(good.replace("[server:main]", "strategy = first\nstrategy = first\n\n"
                                                 "[server:main]"))
    process.send(signal.SIGHUP)
    assert process.wait_for_log(r"ERROR .*SIGHUP: ", timeout=10), process.log()
    [error] = lines(process, "ERROR")
    assert f"SIGHUP: {ini} not applied, the running configuration stays: {ini}:" in error
    assert "[app:main] strategy: written twice" in error
    assert served_by(process.url + "/echo") == {"b0", "b1"}

    # A stray line and a bad value: still one line, naming both.
    ini.write_text(good.replace("[server:main]", "timeout.read = soon\nnot a key\n\n"
                                                 "[server:main]"))
    process.send(signal.SIGHUP)
    assert process.wait_for_log(r"ERROR .*SIGHUP: ", timeout=10, count=2), process.log()
    second = lines(process, "ERROR")[1]
    assert "'not a key' is neither 'key = value'" in second

    # Fixed, with a new backend list: applied at once, the new backend answers.
    ini.write_text(production_ini([b1.address, b2.address], process.port))
    process.send(signal.SIGHUP)
    assert process.wait_for_log(r"INFO .*SIGHUP: applied ", timeout=10), process.log()
    [applied] = lines(process, "SIGHUP: applied")
    assert f"SIGHUP: applied {ini}: [app:main] backends" in applied
    assert reaches(process.url + "/echo", "b2")
    assert wait_until(lambda: served_by(process.url + "/echo") == {"b1", "b2"}, timeout=10)

    # And again: reloading lives on.
    ini.write_text(production_ini([b1.address, b2.address], process.port,
                                  app="strategy = first"))
    process.send(signal.SIGHUP)
    assert process.wait_for_log(r"SIGHUP: applied .*\[app:main\] strategy", timeout=10)
    assert wait_until(lambda: served_by(process.url + "/echo") == {"b1"}, timeout=10)
    assert process.running()
    assert "Traceback" not in process.log()


def test_a_change_that_needs_a_restart_is_named_in_a_warning(serve_process, backends):
    b0, b1, b2 = backends
    process = serve_process([b0.address, b1.address])
    ini = Path(process.ini_path)
    other = free_port()
    ini.write_text(production_ini([b0.address, b1.address, b2.address], other, threads=8,
                                  server="channel_timeout = 30"))
    process.send(signal.SIGHUP)
    assert process.wait_for_log(r"SIGHUP: applied ", timeout=10), process.log()
    warnings = lines(process, r"WARNI.*takes effect after a restart")
    assert [w.split("SIGHUP: ", 1)[1] for w in warnings] == [
        "[server:main] channel_timeout changed from (not set) to 30: takes effect after "
        "a restart",
        f"[server:main] listen changed from 127.0.0.1:{process.port} to 127.0.0.1:{other}: "
        "takes effect after a restart",
        "[server:main] threads changed from 16 to 8: takes effect after a restart",
    ]
    # the balancer's part is applied; the server keeps its port until restarted
    assert reaches(process.url + "/echo", "b2")


def test_the_filter_of_a_pipeline_is_reloaded(tmp_path, backends):
    b0, b1, _ = backends
    port = free_port()
    ini = tmp_path / "pipeline.ini"

    def write(backend: str) -> None:
        ini.write_text(
            f"[pipeline:main]\npipeline = lb local\n\n[filter:lb]\nuse = egg:zope_lb#balancer\n"
            f"backends = {backend}\nprefix = /site\n\n[app:local]\n"
            f"use = call:apps:local_app_factory\n\n[server:main]\nuse = egg:waitress#main\n"
            f"listen = 127.0.0.1:{port}\nthreads = 8\n" + LOGGING)

    write(b0.address)
    path = os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])
    process = ServeProcess(ini, port, env={"PYTHONPATH": path})
    try:
        process.start()
        assert served_by(process.url + "/site/echo") == {"b0"}
        write(b1.address)
        process.send(signal.SIGHUP)
        assert process.wait_for_log(r"SIGHUP: applied .*\[filter:lb\] backends", timeout=10), \
            process.log()
        assert wait_until(lambda: served_by(process.url + "/site/echo") == {"b1"}, timeout=10)
        http = urllib3.PoolManager(retries=False, timeout=5)
        assert http.request("GET", process.url + "/other").data == b"local app: /other"
    finally:
        process.stop()
    assert "ERROR" not in process.log() and "Traceback" not in process.log()


# -- the pure parts --------------------------------------------------------------------------


def test_restart_needed_names_the_app_structure(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HERE)
    ini = tmp_path / "x.ini"
    app = "[app:main]\nuse = egg:zope_lb\nbackends = 127.0.0.1:8081\n"
    server = "[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:6543\n"
    ini.write_text(app + server)
    before = check_ini(str(ini))
    ini.write_text("[pipeline:main]\npipeline = lb local\n[filter:lb]\n"
                   "use = egg:zope_lb#balancer\nbackends = 127.0.0.1:8081\n[app:local]\n"
                   "use = call:apps:local_app_factory\n" + server)
    after = check_ini(str(ini))
    assert before.ok and after.ok, (before.problems, after.problems)
    assert restart_needed(before, after) == [
        "the app changed from [app:main] egg:zope_lb to [pipeline:main] -> [filter:lb] "
        "egg:zope_lb#balancer -> [app:local] call:apps:local_app_factory"]
    assert restart_needed(after, check_ini(str(ini))) == []


def test_balancers_of_follows_wrapped_apps():
    from zope_lb import LoadBalancer

    inner = LoadBalancer(["127.0.0.1:8081"], health_interval=0)
    outer = LoadBalancer(["127.0.0.1:8082"], health_interval=0)
    outer.app = inner

    class Middleware:
        def __init__(self, app):
            self.app = app

    try:
        assert balancers_of(Middleware(outer)) == [outer, inner]
        assert balancers_of(object()) == []
    finally:
        inner.close()
        outer.close()


def test_a_reload_to_another_app_structure_is_not_applied_and_says_so(tmp_path, caplog,
                                                                     monkeypatch):
    from paste.deploy import loadapp

    from zope_lb.reload import Reloader

    monkeypatch.syspath_prepend(HERE)
    caplog.set_level(logging.INFO, logger="zope_lb")
    ini = tmp_path / "x.ini"
    lines = "backends =\n    127.0.0.1:8081\n    127.0.0.1:8082\nhealth.interval = 0\n"
    server = "[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:6543\n"
    ini.write_text("[app:main]\nuse = egg:zope_lb\n" + lines + server)
    app = loadapp(f"config:{ini}")
    try:
        reloader = Reloader(app, f"config:{ini}", "main")
        ini.write_text("[pipeline:main]\npipeline = lb local\n[filter:lb]\n"
                       "use = egg:zope_lb#balancer\n" + lines.replace("8082", "8083")
                       + "[app:local]\nuse = call:apps:local_app_factory\n" + server)
        caplog.clear()
        assert reloader.reload() is False
        messages = [(r.levelname, r.getMessage()) for r in caplog.records
                    if r.name == "zope_lb.reload"]
        assert messages == [
            ("WARNING", "SIGHUP: the app changed from [app:main] egg:zope_lb to "
                        "[pipeline:main] -> [filter:lb] egg:zope_lb#balancer -> [app:local] "
                        "call:apps:local_app_factory: takes effect after a restart"),
            ("WARNING", f"SIGHUP: {ini} not applied: none of its balancer sections "
                        "([filter:lb]) is the one running ([app:main]); restart to use it")]
        assert [b.port for b in app.settings.backends] == [8081, 8082]

        ini.write_text("[app:main]\nuse = egg:zope_lb\n" + lines + "timeout.read = 30\n"
                       + server)
        caplog.clear()
        assert reloader.reload() is True
        assert app.settings.timeout_read == 30.0
        assert [(r.levelname, r.getMessage()) for r in caplog.records
                if r.name == "zope_lb.reload"] == [
            ("INFO", f"SIGHUP: applied {ini}: [app:main] timeout.read")]
    finally:
        app.close()


def test_a_sighup_during_start_up_is_kept_and_applied(tmp_path, backends):
    """The port accepts connections before reloading begins; a SIGHUP sent then
    (``systemctl reload`` right after start) must not end the process with the
    signal's default action, and is applied once reloading runs."""
    b0, b1, _ = backends
    port = free_port()
    ini = tmp_path / "early.ini"
    ini.write_text(production_ini([b0.address, b1.address], port))
    process = ServeProcess(ini, port)
    process._log_file = open(process.log_path, "ab")  # noqa: SIM115 (closed by stop)
    process.proc = subprocess.Popen(
        [console_script(), "serve", str(ini), *process.args], stdout=process._log_file,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        # from the app's first log line (the handler is in place by then) until
        # well after the port listens, a SIGHUP every 10 ms
        deadline = time.monotonic() + 20
        while "balancing over" not in process.log() and time.monotonic() < deadline:
            time.sleep(0.002)  # a tight look: the window before reloading is short
        assert "balancing over" in process.log()
        deadline = time.monotonic() + 20
        listened_at = None
        while time.monotonic() < deadline and process.running():
            process.send(signal.SIGHUP)
            if listened_at is None and listening(port):
                listened_at = time.monotonic()
            if listened_at is not None and time.monotonic() - listened_at > 0.5:
                break
            time.sleep(0.01)
        assert process.running(), process.log()
        assert listened_at is not None, process.log()
        assert process.wait_for_log(r"SIGHUP: applied ", timeout=10), process.log()
        assert reaches(process.url + "/echo", "b1")
    finally:
        process.stop()
