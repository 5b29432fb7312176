"""PasteDeploy wiring, `zope-lb serve` and `pserve` as real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
import urllib3
from apps import routes
from paste.deploy import loadapp
from servers import ServerThread, free_port, wait_until
from webtest import TestApp

from zope_lb import ConfigError, LoadBalancer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def load(ini: str, **global_conf: str):
    return loadapp(f"config:{os.path.join(HERE, 'ini', ini)}", global_conf=global_conf)


def test_app_factory_from_ini_text(tmp_path, backends):
    ini = tmp_path / "lb.ini"
    lines = "\n    ".join(b.address for b in backends)
    ini.write_text(f"[app:main]\nuse = egg:zope_lb\nbackends =\n    {lines}\n"
                   "timeout.read = 30\nretries = 1\n")
    app = loadapp(f"config:{ini}")
    assert isinstance(app, LoadBalancer)
    assert app.settings.timeout_read == 30.0 and app.settings.retries == 1
    seen = {TestApp(app).get("/echo").headers["X-Backend"] for _ in range(3)}
    assert seen == {"b0", "b1", "b2"}


def test_bad_ini_stops_loading_with_key_and_rule(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[app:main]\nuse = egg:zope_lb\nbackends =\n    127.0.0.1:8081\n"
                   "    http://127.0.0.1:8082\n")
    with pytest.raises(ConfigError) as info:
        loadapp(f"config:{ini}")
    assert "backends line 2" in str(info.value)
    assert "drop the 'http://' prefix" in str(info.value)


def test_filter_sends_prefix_to_backends_and_rest_to_app(backends):
    app = TestApp(load("filter.ini", test_backends=backends[0].address + "\n" + backends[1].address,
                       test_fallback="false"))
    assert app.get("/site/echo").json["path"] == "/site/echo"
    assert app.get("/site").json["path"] == "/site"
    assert app.get("/other").text == "local app: /other"
    assert app.get("/sitemap").text == "local app: /sitemap"


def test_filter_fallback_answers_when_no_backend_can(backends):
    lb_app = load("filter.ini", test_backends=backends[0].address, test_fallback="true")
    backends[0].stop()
    assert TestApp(lb_app).get("/site/page").text == "local app: /site/page"


def test_filter_without_fallback_gives_503(backends):
    lb_app = load("filter.ini", test_backends=backends[0].address, test_fallback="false")
    backends[0].stop()
    TestApp(lb_app).get("/site/page", status=503)


def test_ipv6_backend():
    server = ServerThread(routes("v6"), host="::1").start()
    try:
        app = TestApp(LoadBalancer([server.address], preserve_host=False))
        res = app.get("/echo")
        assert res.headers["X-Backend"] == "v6"
        assert res.json["headers"]["Host"] == server.address
    finally:
        server.stop()


# -- real processes -------------------------------------------------------------------


def write_ini(tmp_path, backends, port: int) -> str:
    ini = tmp_path / "served.ini"
    lines = "\n    ".join(b.address for b in backends)
    ini.write_text(f"[app:main]\nuse = egg:zope_lb\nbackends =\n    {lines}\n\n"
                   f"[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:{port}\n"
                   "threads = 4\n")
    return str(ini)


def serve_once(*args: str) -> subprocess.CompletedProcess:
    """``zope-lb serve ARGS`` run to its end: for the ways it refuses to start."""
    return subprocess.run([sys.executable, "-m", "zope_lb.cli", "serve", *args],
                          capture_output=True, text=True, timeout=30)


def run_and_query(command: list[str], port: int, backends,
                  while_running: Callable[[subprocess.Popen], None] | None = None) -> None:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    http = urllib3.PoolManager(retries=False, timeout=2)

    def answers() -> bool:
        try:
            return http.request("GET", f"http://127.0.0.1:{port}/echo").status == 200
        except urllib3.exceptions.HTTPError:
            return proc.poll() is not None

    try:
        assert wait_until(answers, timeout=20), "server did not answer"
        assert proc.poll() is None, proc.stdout.read().decode()
        seen = {http.request("GET", f"http://127.0.0.1:{port}/echo").headers["X-Backend"]
                for _ in range(6)}
        assert seen == {b.app.echo.name for b in backends}
        if while_running is not None:
            while_running(proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise


@pytest.mark.slow
def test_zope_lb_serve_answers_over_http(tmp_path, backends):
    port = free_port()
    ini = write_ini(tmp_path, backends[:2], port)
    run_and_query([sys.executable, "-m", "zope_lb.cli", "serve", ini], port, backends[:2])


@pytest.mark.slow
def test_zope_lb_serve_refuses_bad_config_in_one_line(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[app:main]\nuse = egg:zope_lb\nbackends = 127.0.0.1\n"
                   "[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:0\n")
    result = serve_once(str(ini))
    assert result.returncode == 2
    assert "backends line 1 '127.0.0.1': always include the port number" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_pserve_serves_development_ini_style(tmp_path, backends):
    pserve = shutil.which("pserve", path=os.path.dirname(sys.executable)) or shutil.which("pserve")
    assert pserve, "pyramid's pserve is part of the test extra"
    port = free_port()
    ini = write_ini(tmp_path, backends[:2], port)
    run_and_query([pserve, ini], port, backends[:2])


def test_development_ini_loads():
    app = loadapp(f"config:{os.path.join(ROOT, 'development.ini')}")
    assert [b.address for b in app.pool.backends] == [
        "127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]


def write_ini_with_admin(tmp_path, backends, port: int, admin_port: int, line: str) -> str:
    ini = tmp_path / "with-admin.ini"
    lines = "\n    ".join(b.address for b in backends)
    ini.write_text(f"[app:main]\nuse = egg:zope_lb\nbackends =\n    {lines}\n"
                   f"admin.users = {line}\n\n"
                   "[app:admin]\nuse = egg:zope_lb#admin\nbalancer = main\n\n"
                   f"[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:{port}\n\n"
                   f"[server:admin]\nuse = egg:waitress#main\nlisten = 127.0.0.1:{admin_port}\n")
    return str(ini)


@pytest.mark.slow
def test_serve_also_runs_the_admin_on_a_port_of_its_own(tmp_path, backends):
    from zope_lb.passwd import hash_password

    port, admin_port = free_port(), free_port()
    ini = write_ini_with_admin(tmp_path, backends[:2], port, admin_port,
                               f"admin:{hash_password('pw')}")
    seen = []

    def ask_the_admin(proc) -> None:
        http = urllib3.PoolManager(retries=False, timeout=5)
        base = f"http://127.0.0.1:{admin_port}/__zope_lb__"
        seen.append(http.request("GET", f"{base}/health").json())
        status = http.request("GET", f"{base}/api/status",
                              headers=urllib3.make_headers(basic_auth="admin:pw"))
        seen.append((status.status, status.json()))
        seen.append(http.request("GET", f"{base}/api/status").status)  # no login

    run_and_query([sys.executable, "-m", "zope_lb.cli", "serve", ini, "--also", "admin"],
                  port, backends[:2], ask_the_admin)
    health, (code, status), anonymous = seen
    assert health["total"] == 2 and health["status"] == "ok"
    assert code == 200 and len(status["backends"]) == 2  # the balancer of this process
    assert anonymous == 401


@pytest.mark.slow
def test_serve_stops_when_an_also_server_cannot_listen(tmp_path, backends):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        ini = write_ini_with_admin(tmp_path, backends[:2], free_port(),
                                   taken.getsockname()[1], "")
        result = serve_once(ini, "--also", "admin")
    assert result.returncode == 1
    assert "[server:admin] cannot listen" in result.stderr
    assert "Traceback" not in result.stderr
