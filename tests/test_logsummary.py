"""Quiet outages: a warning that repeats per request is logged once, then
summarised per 10 s window; the access log still has every request."""

from __future__ import annotations

import logging

from servers import free_port, wait_until
from webtest import TestApp

from zope_lb import LoadBalancer
from zope_lb.logsummary import Summariser


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def summariser(caplog, **options):
    logger = logging.getLogger("zope_lb.test_summary")
    caplog.set_level(logging.INFO, logger="zope_lb.test_summary")
    clock = Clock()
    return Summariser(logger, clock=clock, timer=False, **options), clock


def messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "zope_lb.test_summary"]


def test_first_logged_rest_counted_then_one_summary_line(caplog):
    summary, clock = summariser(caplog)
    summary.warning("refused:b1", "GET %s: b1 refused", "/a")
    for n in range(912):
        clock.now += 0.01
        summary.warning("refused:b1", "GET %s: b1 refused", f"/p{n}")
    assert messages(caplog) == ["GET /a: b1 refused"]
    clock.now = 1010.0
    summary.flush()
    assert messages(caplog) == ["GET /a: b1 refused",
                                "GET /p911: b1 refused ... and 912 more in the last 10 s"]
    assert caplog.records[-1].levelno == logging.WARNING


def test_a_lasting_trouble_writes_one_line_per_window(caplog):
    summary, clock = summariser(caplog)
    for _ in range(6000):  # 60 s at 100 a second
        summary.warning("k", "refused")
        clock.now += 0.01
    clock.now += 10
    summary.flush()
    lines = messages(caplog)
    assert lines[0] == "refused"
    assert len(lines) == 7  # the first, then one per 10 s window
    assert sum(int(line.split()[3]) for line in lines[1:]) == 5999


def test_a_window_without_repeats_closes_quietly(caplog):
    summary, clock = summariser(caplog)
    summary.warning("k", "once")
    clock.now += 11
    summary.flush()
    assert messages(caplog) == ["once"]
    summary.warning("k", "again")  # a new trouble: in full
    assert messages(caplog) == ["once", "again"]


def test_keys_are_summarised_apart_and_a_later_event_closes_due_windows(caplog):
    summary, clock = summariser(caplog)
    summary.warning("a", "a refused")
    summary.warning("a", "a refused")
    summary.warning("b", "b refused")
    clock.now += 10
    summary.info("c", "c retried")  # any event closes windows that ended
    assert messages(caplog) == ["a refused", "b refused",
                                "a refused ... and 1 more in the last 10 s", "c retried"]


def test_the_timer_reports_the_last_count_without_more_events(caplog):
    logger = logging.getLogger("zope_lb.test_summary")
    caplog.set_level(logging.INFO, logger="zope_lb.test_summary")
    summary = Summariser(logger, window=0.2)
    try:
        for _ in range(3):
            summary.warning("k", "refused")
        assert wait_until(lambda: len(messages(caplog)) == 2, timeout=5)
        assert messages(caplog)[1] == "refused ... and 2 more in the last 0.2 s"
    finally:
        summary.close()


def test_a_summary_has_the_highest_level_it_counted(caplog):
    summary, clock = summariser(caplog)
    summary.info("b1", "retrying on a fresh connection")
    summary.warning("b1", "connection refused")
    summary.info("b1", "retrying on a fresh connection")
    clock.now += 10
    summary.flush()
    first, line = caplog.records
    assert first.levelno == logging.INFO
    assert line.levelno == logging.WARNING
    assert line.getMessage() == ("retrying on a fresh connection ... and 2 more "
                                 "in the last 10 s")


def test_nothing_is_counted_when_the_level_is_off(caplog):
    summary, _ = summariser(caplog)
    caplog.set_level(logging.ERROR, logger="zope_lb.test_summary")
    summary.warning("k", "refused")
    assert messages(caplog) == []


def test_2000_requests_to_a_dead_cluster_write_a_handful_of_lines(caplog):
    """Every request fails (nothing listens): the warnings come out as a few
    lines, while the access log has all 2000."""
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    balancer = LoadBalancer(dead, health_interval=0)
    app = TestApp(balancer)
    try:
        with caplog.at_level(logging.INFO, logger="zope_lb"):
            for n in range(2000):
                app.get(f"/page{n}", status=(502, 503))
            assert balancer.access_writer is not None
            balancer.access_writer.drain()  # the lines its thread has not written yet
        other = [r for r in caplog.records
                 if r.name.startswith("zope_lb") and r.name != "zope_lb.access"]
        access = [r for r in caplog.records if r.name == "zope_lb.access"]
        assert len(access) == 2000
        assert len(other) <= 8, "\n".join(r.getMessage() for r in other)
    finally:
        balancer.close()
