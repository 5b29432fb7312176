"""Tests for ``zope-lb demo``: the demo client app and the whole command."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from webtest import TestApp

from zope_lb.demo_backend import make_demo_backend

CLIENT = re.compile(r'data-client="([^"]+)"')
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "shared.sqlite")


def test_page_names_the_client_and_its_port(db: str) -> None:
    app = TestApp(make_demo_backend("client1", db, port=8081))
    res = app.get("/")
    assert res.content_type == "text/html"
    assert CLIENT.findall(res.text) == ["client1"]
    assert "port 8081" in res.text
    assert "kill PID" in res.text
    assert res.headers["Cache-Control"] == "no-store"


def test_edit_is_seen_through_another_client_on_the_same_db(db: str) -> None:
    one = TestApp(make_demo_backend("client1", db))
    two = TestApp(make_demo_backend("client2", db))
    res = one.post("/", {"text": "Edited through client1"}, status=303)
    assert res.headers["Location"] == "/"
    page = two.get("/")
    assert "Edited through client1" in page.text
    assert "Last edited through client1." in page.text


def test_hit_counts_are_shared(db: str) -> None:
    one = TestApp(make_demo_backend("client1", db, port=8081))
    two = TestApp(make_demo_backend("client2", db, port=8082))
    one.get("/")
    one.get("/")
    one.head("/")  # HEAD (readiness checks) does not count
    page = two.get("/")
    rows = re.findall(r"<td>(client\d)</td><td>(\d*)</td><td>(\d+)</td>", page.text)
    assert rows == [("client1", "8081", "2"), ("client2", "8082", "1")]


def test_user_text_is_html_escaped(db: str) -> None:
    app = TestApp(make_demo_backend("client1", db))
    app.post("/", {"text": "<script>alert(1)</script> & more"}, status=303)
    page = app.get("/")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page.text


def test_bad_requests(db: str) -> None:
    app = TestApp(make_demo_backend("client1", db))
    app.get("/nothing-here", status=404)
    app.post("/", {}, status=400)
    app.put("/", "x", status=405)


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _request(
    port: int, method: str = "GET", path: str = "/", body: str | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    conn.request(method, path, body=body, headers=headers)
    res = conn.getresponse()
    res.read()  # keep the body on the response object for the caller
    conn.close()
    return res


def _get_text(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        res = conn.getresponse()
        assert res.status == 200
        return res.read().decode("utf-8")
    finally:
        conn.close()


def _wait_for(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "zope-lb demo exited early"
        try:
            _get_text(port)
            return
        except (OSError, AssertionError, http.client.HTTPException):
            time.sleep(0.1)
    pytest.fail(f"balancer on port {port} did not answer within {timeout}s")


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _demo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "zope_lb.cli", "demo", *args]


def _env() -> dict[str, str]:
    """Import this checkout's zope_lb even when run from another directory."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ini", "stop"),
    [("development.ini", signal.SIGINT), (None, signal.SIGTERM)],
    ids=["ini-ctrl-c", "no-ini-sigterm"],
)
def test_zope_lb_demo_end_to_end(tmp_path: Path, ini: str | None, stop: signal.Signals) -> None:
    *ports, lb_port = _free_ports(4)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    cmd = _demo_cmd(
        "--ports", ",".join(map(str, ports)), "--port", str(lb_port),
        "--db", str(tmp_path / "demo.sqlite"),
    )  # fmt: skip
    if ini:
        cmd += ["--ini", str(ROOT / ini)]
    # Files, not pipes: a full pipe would block the demo's logging.
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=tmp_path, env=_env())
    try:
        _wait_for(lb_port, proc, timeout=20)
        banner = out.read_text()
        assert f"http://127.0.0.1:{lb_port}/" in banner
        pids = [int(p) for p in re.findall(r"client\d: port \d+, pid (\d+)", banner)]
        assert len(pids) == 3

        seen = {CLIENT.search(_get_text(lb_port)).group(1) for _ in range(6)}
        assert len(seen) >= 2, seen

        body = urllib.parse.urlencode({"text": "Written through the balancer"})
        res = _request(lb_port, "POST", "/", body)
        assert res.status == 303
        assert res.headers["Location"] == "/"
        assert "Written through the balancer" in _get_text(lb_port)

        proc.send_signal(stop)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert "Stopping the demo" in out.read_text()
    assert "Traceback" not in err.read_text()
    assert all(_refuses(p) for p in [*ports, lb_port])
    deadline = time.monotonic() + 5
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_pid_alive(p) for p in pids)


@pytest.mark.slow
def test_zope_lb_demo_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        *ports, lb_port = _free_ports(3)
        cmd = _demo_cmd("--ports", f"{port},{ports[0]}", "--port", str(lb_port))
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=_env()
        )
    assert res.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in res.stderr
    assert "Traceback" not in res.stderr
