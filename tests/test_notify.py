"""Notifiers against real things: a local HTTP server, a real subprocess."""

from __future__ import annotations

import json
import logging
import shlex
import socket
import sys
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from servers import ServerThread

from zope_lb.notify import (
    ClusterWatch,
    CommandNotifier,
    Dispatcher,
    LogNotifier,
    WebhookNotifier,
    make_event,
    utc_now_iso,
)

NOW = "2024-05-01T12:00:00Z"


def down_event() -> dict:
    return make_event(
        "backend.down", time=NOW, backend="client2", address="127.0.0.1:8082",
        old="up", new="down", reason="connection refused", healthy=2, total=3,
    )


class Hook:
    """A WSGI webhook receiver answering a scripted list of statuses (then 200)."""

    def __init__(self, statuses: list[int] | None = None):
        self.statuses = list(statuses or [])
        self.requests: list[dict] = []

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.requests.append({
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "content_type": environ.get("CONTENT_TYPE"),
            "user_agent": environ.get("HTTP_USER_AGENT", ""),
            "body": environ["wsgi.input"].read(length),
        })
        status = self.statuses.pop(0) if self.statuses else 200
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [b"thanks"]


@pytest.fixture
def hook_server():
    servers = []

    def start(statuses=None):
        hook = Hook(statuses)
        server = ServerThread(hook).start()
        servers.append(server)
        return hook, f"{server.url}/hooks/zope"

    yield start
    for server in servers:
        server.stop()


def no_sleep(seconds: float) -> None:
    pass


# -- make_event, LogNotifier ------------------------------------------------

def test_make_event_has_every_field_and_is_json():
    event = down_event()
    assert list(event) == ["event", "backend", "address", "old", "new", "reason",
                           "healthy", "total", "time"]
    assert json.loads(json.dumps(event)) == event


def test_make_event_refuses_unknown_kind():
    with pytest.raises(ValueError, match="backend.exploded"):
        make_event("backend.exploded", time=NOW)


def test_utc_now_iso_is_utc_with_z():
    assert utc_now_iso(clock=lambda: 0.0) == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize("kind, level", [
    ("backend.down", logging.WARNING),
    ("cluster.degraded", logging.WARNING),
    ("backend.up", logging.INFO),
    ("backend.draining", logging.INFO),
    ("cluster.recovered", logging.INFO),
])
def test_log_notifier_logs_once_at_the_right_level(caplog, kind, level):
    caplog.set_level(logging.DEBUG, logger="zope_lb.notify")
    LogNotifier().send(make_event(kind, time=NOW, backend="client2", reason="why"))
    records = [r for r in caplog.records if r.name == "zope_lb.notify"]
    assert len(records) == 1
    assert records[0].levelno == level
    assert "why" in records[0].getMessage()


# -- WebhookNotifier ----------------------------------------------------------

def test_webhook_posts_the_exact_json(hook_server):
    hook, url = hook_server()
    WebhookNotifier(url).send(down_event())
    assert len(hook.requests) == 1
    request = hook.requests[0]
    assert request["method"] == "POST"
    assert request["path"] == "/hooks/zope"
    assert request["content_type"] == "application/json"
    assert request["user_agent"].startswith("zope_lb/")
    assert json.loads(request["body"]) == down_event()


def test_webhook_retries_server_errors_then_succeeds(hook_server, caplog):
    hook, url = hook_server([500, 500, 200])
    slept = []
    WebhookNotifier(url, attempts=3, backoff=0.5, sleep=slept.append).send(down_event())
    assert len(hook.requests) == 3
    assert slept == [0.5, 1.0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_webhook_gives_up_after_the_bound_and_logs(hook_server, caplog):
    hook, url = hook_server([503] * 10)
    WebhookNotifier(url, attempts=3, sleep=no_sleep).send(down_event())
    assert len(hook.requests) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("gave up" in m and "HTTP 503" in m for m in warnings)
    assert not any("/hooks/zope" in m for m in warnings), "webhook path may hold a secret"


def test_webhook_does_not_retry_a_client_error(hook_server):
    hook, url = hook_server([404, 200])
    WebhookNotifier(url, attempts=3, sleep=no_sleep).send(down_event())
    assert len(hook.requests) == 1


def test_webhook_connection_refused_is_logged_not_raised(caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    WebhookNotifier(f"http://127.0.0.1:{port}/", attempts=2, sleep=no_sleep).send(down_event())
    assert any("gave up" in r.getMessage() for r in caplog.records)


def test_webhook_times_out_against_a_silent_server(caplog):
    # Listening but never accepting: the TCP handshake completes, no answer comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        started = time.monotonic()
        WebhookNotifier(url, timeout=0.3, attempts=2, backoff=0.05).send(down_event())
        elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 3.0
    assert any("gave up" in r.getMessage() and "2 attempt" in r.getMessage()
               for r in caplog.records)


def test_webhook_refuses_a_non_http_url():
    with pytest.raises(ValueError, match="http"):
        WebhookNotifier("ftp://example.org/hook")


# -- CommandNotifier ----------------------------------------------------------

def test_command_gets_the_event_in_its_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOPE_LB_REQUIRE", raising=False)  # CI's own, not the event's
    out = tmp_path / "env.txt"
    script = ("import json, os, sys; "
              "json.dump({k: v for k, v in os.environ.items() if k.startswith('ZOPE_LB_')}, "
              "open(sys.argv[1], 'w'))")
    command = shlex.join([sys.executable, "-c", script, str(out)])
    CommandNotifier(command).send(down_event())
    env = json.loads(out.read_text())
    assert env == {
        "ZOPE_LB_EVENT": "backend.down",
        "ZOPE_LB_BACKEND": "client2",
        "ZOPE_LB_ADDRESS": "127.0.0.1:8082",
        "ZOPE_LB_OLD": "up",
        "ZOPE_LB_NEW": "down",
        "ZOPE_LB_REASON": "connection refused",
        "ZOPE_LB_HEALTHY": "2",
        "ZOPE_LB_TOTAL": "3",
        "ZOPE_LB_TIME": NOW,
        "ZOPE_LB_JSON": env["ZOPE_LB_JSON"],
    }
    assert json.loads(env["ZOPE_LB_JSON"]) == down_event()


def test_command_via_sh_and_none_fields_are_empty(tmp_path):
    out = tmp_path / "env.txt"
    command = "sh -c " + shlex.quote(f"env | grep ZOPE_LB_ | sort > {shlex.quote(str(out))}")
    CommandNotifier(command).send(make_event("cluster.degraded", time=NOW, healthy=1, total=3))
    lines = out.read_text().splitlines()
    assert "ZOPE_LB_EVENT=cluster.degraded" in lines
    assert "ZOPE_LB_BACKEND=" in lines
    assert "ZOPE_LB_HEALTHY=1" in lines


def test_command_is_not_run_through_a_shell(tmp_path):
    marker = tmp_path / "should-not-exist"
    CommandNotifier(f"true; touch {marker}").send(down_event())
    assert not marker.exists()


def test_command_timeout_kills_it_and_its_children(tmp_path, caplog):
    marker = tmp_path / "late"
    # sh forks sleep; killing only sh would leave sleep holding our pipe open.
    command = "sh -c " + shlex.quote(f"sleep 5; touch {shlex.quote(str(marker))}")
    started = time.monotonic()
    CommandNotifier(command, timeout=0.3).send(down_event())
    assert time.monotonic() - started < 3.0
    assert any("timed out" in r.getMessage() for r in caplog.records)
    assert not marker.exists()


def test_command_failure_and_missing_command_are_logged(caplog):
    CommandNotifier("sh -c 'echo oops; exit 4'").send(down_event())
    CommandNotifier("/nonexistent/zope-lb-hook").send(down_event())
    messages = [r.getMessage() for r in caplog.records]
    assert any("exited 4" in m and "oops" in m for m in messages)
    assert any("could not start" in m for m in messages)


# -- Dispatcher ---------------------------------------------------------------

class Slow:
    def __init__(self, delay: float):
        self.delay = delay
        self.seen: list[dict] = []
        self.release = threading.Event()

    def send(self, event):
        self.release.wait(self.delay)
        self.seen.append(event)


class Boom:
    def send(self, event):
        raise RuntimeError("broken notifier")


def test_dispatch_never_blocks_and_drops_when_full(caplog):
    slow = Slow(delay=5)
    dispatcher = Dispatcher([slow], queue_size=2)
    started = time.monotonic()
    for i in range(10):
        dispatcher.dispatch(make_event("backend.up", time=NOW, backend=f"c{i}"))
    assert time.monotonic() - started < 0.5
    assert dispatcher.dropped >= 7  # one in the worker's hands, two queued, the rest dropped
    assert any("queue full" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    slow.release.set()
    assert dispatcher.close(timeout=2)
    assert len(slow.seen) == 10 - dispatcher.dropped


def test_close_drains_the_queue():
    seen = Slow(delay=0)
    dispatcher = Dispatcher([seen, LogNotifier()])
    for i in range(5):
        dispatcher.dispatch(make_event("backend.up", time=NOW, backend=f"c{i}"))
    assert dispatcher.close(timeout=2)
    assert [e["backend"] for e in seen.seen] == ["c0", "c1", "c2", "c3", "c4"]
    dispatcher.dispatch(down_event())  # after close: ignored, no error


def test_close_is_bounded_when_a_notifier_hangs():
    slow = Slow(delay=30)
    dispatcher = Dispatcher([slow], queue_size=1)
    for _ in range(3):
        dispatcher.dispatch(down_event())
    started = time.monotonic()
    assert dispatcher.close(timeout=0.3) is False
    assert time.monotonic() - started < 1.0
    slow.release.set()


def test_a_failing_notifier_does_not_silence_the_others(caplog):
    seen = Slow(delay=0)
    dispatcher = Dispatcher([Boom(), seen])
    dispatcher.dispatch(down_event())
    assert dispatcher.close(timeout=2)
    assert len(seen.seen) == 1
    assert any("broken notifier" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_webhook_through_dispatcher_is_off_the_callers_path():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        dispatcher = Dispatcher([WebhookNotifier(url, timeout=0.3, attempts=1)])
        started = time.monotonic()
        dispatcher.dispatch(down_event())
        assert time.monotonic() - started < 0.1
        assert dispatcher.close(timeout=2)


# -- ClusterWatch -------------------------------------------------------------

def test_cluster_watch_example():
    watch = ClusterWatch(min_healthy=1)
    kinds = [[e["event"] for e in watch.update(h, 3, NOW)] for h in [3, 2, 1, 0, 1, 2, 3, 1]]
    assert kinds == [[], [], ["cluster.degraded"], [], [], ["cluster.recovered"], [],
                     ["cluster.degraded"]]


def test_cluster_event_fields():
    watch = ClusterWatch(min_healthy=1)
    watch.update(2, 3, NOW)
    (event,) = watch.update(1, 3, "2024-05-01T12:00:05Z")
    assert event["event"] == "cluster.degraded"
    assert event["backend"] is None and event["address"] is None
    assert (event["healthy"], event["total"], event["time"]) == (1, 3, "2024-05-01T12:00:05Z")
    assert "min_healthy=1" in event["reason"]


@given(
    min_healthy=st.integers(min_value=0, max_value=5),
    counts=st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=60),
)
def test_cluster_watch_alternates(min_healthy, counts):
    watch = ClusterWatch(min_healthy)
    events = []
    for healthy in counts:
        new = watch.update(healthy, 8, NOW)
        assert len(new) <= 1
        if new:  # an event means this count crossed the line
            assert (new[0]["event"] == "cluster.degraded") == (healthy <= min_healthy)
        events.extend(e["event"] for e in new)
    # Strictly alternating, starting with degraded iff we began above the threshold.
    if events:
        first = "cluster.degraded" if counts[0] > min_healthy else "cluster.recovered"
        assert events[0] == first
        assert all(a != b for a, b in zip(events, events[1:], strict=False))
    # One event per crossing, none otherwise.
    sides = [h <= min_healthy for h in counts]
    assert len(events) == sum(a != b for a, b in zip(sides, sides[1:], strict=False))
