"""Health checks, failover, retries and telling someone, with real backends."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import urllib3
from apps import Echo, routes
from servers import ScriptedServer, ServerThread, free_port, wait_until
from webtest import TestApp

from zope_lb import LoadBalancer
from zope_lb.backend import State
from zope_lb.health import HealthChecker

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = {"health_interval": "100ms", "health_timeout": "500ms", "health_rise": 2,
        "health_fall": 2}


def state_of(lb: LoadBalancer, server) -> State:
    return next(b.state for b in lb.pool.backends if b.address == server.address)


@pytest.fixture
def balancers():
    made: list[LoadBalancer] = []

    def make(*args, **options) -> LoadBalancer:
        lb = LoadBalancer(*args, **options)
        made.append(lb)
        return lb

    yield make
    for lb in made:
        lb.close()


def test_stopped_backend_is_marked_down_avoided_and_returns_with_slow_start(
        backends, balancers, caplog):
    lb = balancers([b.address for b in backends], slowstart="1s", **FAST)
    app = TestApp(lb)
    port = backends[1].port
    with caplog.at_level(logging.INFO, logger="zope_lb"):
        backends[1].stop()
        # fall (2) x interval (0.1 s), plus a probe's timeout for slack
        assert wait_until(lambda: state_of(lb, backends[1]) is State.DOWN, timeout=3)
        served = Counter(app.get("/echo").headers["X-Backend"] for _ in range(10))
        assert "b1" not in served and sum(served.values()) == 10
        backends[1] = ServerThread(backends[1].app, port=port).start()
        assert wait_until(lambda: state_of(lb, backends[1]) is State.UP, timeout=3)
    b1 = next(b for b in lb.pool.backends if b.address == backends[1].address)
    assert b1.weight < b1.base_weight  # ramping up
    assert wait_until(lambda: b1.weight == b1.base_weight, timeout=3)
    down = [r for r in caplog.records if "up -> down" in r.getMessage()]
    up = [r for r in caplog.records if "down -> up" in r.getMessage()]
    assert len(down) == 1 and down[0].levelno == logging.WARNING
    assert "2 probes failed: connection refused" in down[0].getMessage()
    assert "2 of 3 primaries up" in down[0].getMessage()
    assert len(up) == 1 and up[0].levelno == logging.INFO


def test_backend_that_accepts_but_never_answers_fails_by_timeout(backends, balancers):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel accepts connections; nobody ever answers
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    try:
        lb = balancers([backends[0].address, address],
                       **{**FAST, "health_timeout": "200ms", "timeout.read": "300ms"})
        hung = next(b for b in lb.pool.backends if b.address == address)
        assert wait_until(lambda: hung.state is State.DOWN, timeout=5)
        assert hung.reason == "2 probes failed: timeout after 0.2 s"
        app = TestApp(lb)
        assert {app.get("/echo").headers["X-Backend"] for _ in range(4)} == {"b0"}
    finally:
        silent.close()


def test_passive_detection_marks_down_at_once(balancers):
    """Three 503s in a row from a client: down without waiting for a probe."""
    sick = ScriptedServer(lambda head, i: (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nContent-Type: text/plain"
        b"\r\n\r\nsick"))
    healthy = ServerThread(routes("ok")).start()
    try:
        lb = balancers([sick.address, healthy.address], health_interval=0,
                       **{"passive.fall": 3, "passive.cooldown": 60})
        app = TestApp(lb)
        statuses = Counter(app.get("/x", status="*").status_int for _ in range(10))
        assert statuses[503] == 3 and statuses[200] == 7
        assert lb.pool.backends[0].state is State.DOWN
        assert lb.pool.backends[0].reason == "3 failed requests in a row: answered 503"
    finally:
        sick.stop()
        healthy.stop()


@pytest.mark.parametrize(("passive_status", "answer", "counts"), [
    ("500", b"500 Internal Server Error", True),  # named: counts
    ("500", b"503 Service Unavailable", False),  # not named any more: an answer like any
])
def test_passive_status_says_which_answers_count_as_failures(balancers, passive_status,
                                                            answer, counts):
    sick = ScriptedServer(lambda head, i: (
        b"HTTP/1.1 " + answer + b"\r\nContent-Length: 4\r\nContent-Type: text/plain"
        b"\r\n\r\nsick"))
    healthy = ServerThread(routes("ok")).start()
    try:
        lb = balancers([sick.address, healthy.address], health_interval=0,
                       **{"passive.fall": 2, "passive.cooldown": 60,
                          "passive.status": passive_status})
        app = TestApp(lb)
        for _ in range(6):
            app.get("/x", status="*")
        assert (lb.pool.backends[0].state is State.DOWN) is counts
    finally:
        sick.stop()
        healthy.stop()


def test_read_timeouts_mark_a_backend_down_at_once(balancers):
    """A client that takes the request and never answers (a Zope whose ZEO is
    gone): passive.fall timeouts in a row take it out before any probe."""
    hung = ScriptedServer(lambda head, i: time.sleep(1) or None)
    try:
        lb = balancers([hung.address], health_interval=0,
                       **{"passive.fall": 2, "passive.cooldown": 60, "timeout.read": "0.3s",
                          "retries": 0})
        app = TestApp(lb)
        first = app.post("/x", b"a=1", status="*")  # not retried: its own error
        assert first.status_int == 504
        app.post("/x", b"a=1", status="*")
        assert lb.pool.backends[0].state is State.DOWN
        assert "2 failed requests in a row" in lb.pool.backends[0].reason
        assert "0.3" in lb.pool.backends[0].reason
    finally:
        hung.stop()


def test_sent_get_is_retried_elsewhere_but_a_sent_post_is_not(balancers):
    """A backend that takes the request and closes without answering."""
    dropper = ScriptedServer(lambda head, i: None)
    good_app = Echo("good")
    good = ServerThread(good_app).start()
    try:
        lb = balancers([dropper.address, good.address], health_interval=0,
                       **{"passive.fall": 100})
        app = TestApp(lb)
        for _ in range(4):
            assert app.get("/page").headers["X-Backend"] == "good"
        before = len(dropper.requests)
        posts = [app.post("/form", b"a=1", status="*").status_int for _ in range(4)]
        assert posts.count(502) == 2 and posts.count(200) == 2  # round robin: 2 hit dropper
        dropped_posts = [h for h in dropper.requests[before:] if h.startswith(b"POST")]
        assert len(dropped_posts) == 2  # each sent once, never again
        assert sum(r["method"] == "POST" for r in good_app.requests) == 2
    finally:
        dropper.stop()
        good.stop()


def test_close_in_the_middle_of_a_round_ends_the_checker_quietly(backends, balancers):
    """close(), from another thread, can land between the loop's check of the
    stop flag and its handing the round's probes to the executor that close()
    has just shut down: the loop must end there, not die with a traceback."""
    lb = balancers([b.address for b in backends[:2]], **{"health.interval": 0})
    calls = 0

    def listing():
        nonlocal calls
        calls += 1
        if calls == 2:  # the round in which both backends are due
            checker.close(timeout=0)
        return lb.pool.backends

    checker = HealthChecker(listing, lb.settings)
    checker._run()  # in this thread, so an exception reaches the test
    assert calls == 2


def test_timeout_on_the_only_backend_is_504_not_503(backend, balancers):
    lb = balancers([backend.address], health_interval=0, **{"timeout.read": "200ms"})
    TestApp(lb).get("/slow?s=1", status=504)


# -- chaos ------------------------------------------------------------------------------


class ProcessBackend:
    """A backend in its own process: stop() kills it (SIGKILL), as a Zope client dies."""

    def __init__(self, name: str, log: str):
        self.name = name
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ProcessBackend:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "backend_process.py"), "--port",
             str(self.port), "--name", self.name, "--log", self.log],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout.readline().strip() == b"READY"
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def ids(self) -> list[str]:
        with open(self.log) as f:
            return f.read().split()


def run_chaos(method: str, tmp_path, threads: int = 8, per_thread: int = 300):
    servers = [ProcessBackend(f"r{i}", str(tmp_path / f"r{i}.log")).start() for i in range(3)]
    lb = LoadBalancer([s.address for s in servers], retries=2, maxconn=8,
                      **{**FAST, "passive.fall": 2, "timeout.connect": "1s",
                         "timeout.read": "5s", "queue.timeout": "10s"})
    front = ServerThread(lb, threads=32).start()
    outcomes: dict[str, int] = {}
    both_down_after: list[int] = []  # requests answered when two were down together
    lock = threading.Lock()
    done = threading.Event()

    def client(t: int) -> None:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(10))
        for i in range(per_thread):
            request_id = f"{t}-{i}"
            try:
                res = http.request(method, front.url + "/chaos", body=request_id.encode()
                                   if method == "POST" else None)
                status = res.status
            except urllib3.exceptions.HTTPError:
                status = 0
            with lock:
                outcomes[request_id] = status

    def chaos() -> None:
        # two of the three backends down at the same time, twice (different
        # pairs), each pair stopped one after the other and then restarted
        for first, second in ((0, 1), (1, 2)):
            if done.wait(0.3):
                return
            servers[first].stop()
            done.wait(0.15)
            servers[second].stop()
            with lock:
                both_down_after.append(len(outcomes))
            done.wait(0.3)
            servers[first].start()
            servers[second].start()

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    monkey = threading.Thread(target=chaos)
    try:
        for worker in workers:
            worker.start()
        monkey.start()
        for worker in workers:
            worker.join(120)
        assert not any(w.is_alive() for w in workers), "chaos clients did not finish"
    finally:
        done.set()
        monkey.join(10)
        front.stop()
        lb.close()
        for server in servers:
            server.stop()
    # the chaos happened while the clients were still sending requests
    assert len(both_down_after) == 2, both_down_after
    assert all(0 < n < threads * per_thread for n in both_down_after), both_down_after
    return outcomes, servers


@pytest.mark.slow
def test_chaos_gets_never_fail(tmp_path):
    outcomes, _ = run_chaos("GET", tmp_path)
    assert len(outcomes) == 8 * 300
    failed = {k: v for k, v in outcomes.items() if v != 200}
    assert failed == {}


@pytest.mark.slow
def test_chaos_posts_never_run_twice(tmp_path):
    outcomes, servers = run_chaos("POST", tmp_path)
    recorded = Counter(i for server in servers for i in server.ids())
    assert all(count == 1 for count in recorded.values()), "a POST ran twice"
    succeeded = [k for k, v in outcomes.items() if v == 200]
    assert all(recorded[k] == 1 for k in succeeded)
    assert len(succeeded) > 0.9 * len(outcomes)


# -- telling someone ------------------------------------------------------------------


class Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers["Content-Length"])
        Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_and_command_hear_of_a_backend_going_down(backends, balancers, tmp_path):
    Hook.received = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=hook.serve_forever, daemon=True)
    thread.start()
    out = tmp_path / "events.txt"
    command = (f"{sys.executable} -c \"import os; open({str(out)!r}, 'a').write("
               f"os.environ['ZOPE_LB_EVENT'] + ' ' + os.environ['ZOPE_LB_BACKEND'] + '\\\\n')\"")
    try:
        balancers([f"{b.address} id=client{i}" for i, b in enumerate(backends[:2])],
                  **FAST, **{"notify.webhook": f"http://127.0.0.1:{hook.server_port}/hook",
                                  "notify.command": command, "notify.min_healthy": 1})
        backends[1].stop()
        assert wait_until(lambda: len(Hook.received) >= 2, timeout=5)
        down, degraded = Hook.received[:2]
        assert down["event"] == "backend.down" and down["backend"] == "client1"
        assert down["address"] == backends[1].address
        assert (down["old"], down["new"]) == ("up", "down")
        assert down["healthy"] == 1 and down["total"] == 2
        assert "probes failed" in down["reason"] and down["time"].endswith("Z")
        assert degraded["event"] == "cluster.degraded"
        assert wait_until(lambda: out.exists() and "backend.down client1" in out.read_text())
    finally:
        hook.shutdown()
        hook.server_close()


def test_health_endpoint_and_check_command(backends, balancers):
    lb = balancers([f"{b.address} id=client{i}" for i, b in enumerate(backends[:2])], **FAST)
    front = ServerThread(lb, threads=4).start()
    http = urllib3.PoolManager(retries=False)
    try:
        def check() -> tuple[int, str]:
            result = subprocess.run(
                [sys.executable, "-m", "zope_lb.cli", "check", front.url], capture_output=True,
                text=True, timeout=30, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            return result.returncode, result.stdout

        res = http.request("GET", front.url + "/__zope_lb__/health")
        report = json.loads(res.data)
        assert res.status == 200 and report["status"] == "ok"
        assert report["healthy"] == 2 and report["total"] == 2
        assert {b["id"] for b in report["backends"]} == {"client0", "client1"}
        assert "token" not in res.data.decode()
        code, line = check()
        assert code == 0 and line.startswith("ZOPE_LB OK")

        backends[1].stop()
        assert wait_until(lambda: lb.health()["status"] == "degraded", timeout=3)
        code, line = check()
        assert code == 1 and "client1" in line

        backends[0].stop()
        assert wait_until(lambda: lb.health()["status"] == "down", timeout=3)
        res = http.request("GET", front.url + "/__zope_lb__/health")
        assert res.status == 503 and json.loads(res.data)["healthy"] == 0
        code, line = check()
        assert code == 2 and line.startswith("ZOPE_LB CRITICAL")
    finally:
        front.stop()


def test_close_leaves_no_thread_behind(backends):
    before = {t.name for t in threading.enumerate()}
    lb = LoadBalancer([b.address for b in backends], **FAST)
    assert wait_until(lambda: lb.checker.running)
    time.sleep(0.3)  # let a few probes run on the executor
    lb.close()
    assert not lb.checker.running
    assert wait_until(lambda: not [t for t in threading.enumerate()
                                   if t.name.startswith("zope_lb") and t.name not in before])


def test_an_event_counts_its_own_pool_and_the_cluster_watch_follows_the_site(balancers):
    lb = balancers(["127.0.0.1:9 id=web1", "127.0.0.1:10 id=web2"], health_interval=0,
                      **{"pool.zmi.backends": "127.0.0.1:11 id=zmi1",
                         "pool.zmi.match": "path:*/manage*", "notify.min_healthy": 1})
    sent = []

    class Recorder:
        def dispatch(self, event):
            sent.append(event)

        def close(self):
            pass

    lb.dispatcher = Recorder()
    lb.backend_action("zmi1", "disable")
    lb.backend_action("web1", "disable")
    assert [(e["event"], e.get("backend"), e["healthy"], e["total"]) for e in sent] == [
        ("backend.disabled", "zmi1", 0, 1),  # the zmi pool's own count
        ("backend.disabled", "web1", 1, 2),
        ("cluster.degraded", None, 1, 2),  # the site: the default pool
    ]


def test_the_checker_spreads_its_probes_and_never_spins(balancers):
    """Probes of several backends start spread over one interval (so several
    balancers do not probe in step), come about once per interval after that,
    and the loop sleeps between rounds instead of spinning."""
    import dataclasses
    import random

    lb = balancers([f"127.0.0.1:{port}" for port in (9, 10, 11, 12)], health_interval=0)
    settings = dataclasses.replace(lb.settings, health_interval=0.2)
    calls: list[tuple[float, str]] = []

    class Recording(HealthChecker):
        def probe(self, backend):
            calls.append((time.monotonic(), backend.id))
            return True, "ok"

    class CountingEvent(threading.Event):
        waits = 0

        def wait(self, timeout=None):
            CountingEvent.waits += 1
            return super().wait(timeout)

    checker = Recording(lambda: lb.pool.backends, settings, rng=random.Random(1))
    checker._stop = CountingEvent()
    started = time.monotonic()
    try:
        checker.start()
        time.sleep(1.3)
    finally:
        checker.close()
    assert not checker.running
    per_backend = Counter(backend for _, backend in calls)
    assert len(per_backend) == 4 and all(3 <= n <= 8 for n in per_backend.values()), per_backend
    firsts = sorted(min(t for t, b in calls if b == backend) - started for backend in per_backend)
    assert firsts[-1] - firsts[0] > 0.02, firsts  # not all in step
    assert CountingEvent.waits <= 2 * len(calls) + 4  # a sleep per round, no spinning


@pytest.mark.slow
def test_a_balancer_left_open_stops_its_checker_at_exit():
    """An embedding app that never calls close(): the interpreter still exits at
    once and cleanly, the checker stopped by the balancer's exit hook."""
    code = ("import logging, time\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "from zope_lb import LoadBalancer\n"
            "lb = LoadBalancer(['127.0.0.1:9', '127.0.0.1:10'], **{'health.interval': '0.1s'})\n"
            "time.sleep(0.5)\n"
            "print('running', lb.checker.running)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "running True"
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr
    assert time.monotonic() - started < 15
