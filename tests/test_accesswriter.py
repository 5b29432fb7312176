"""The access log's writer thread: lines leave the request's thread, in order,
within ``access_log.flush``, and none is lost: not under concurrent requests,
not when the writer is full, not at close, not at a reload that turns it off."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from servers import run_concurrently, wait_until
from webtest import TestApp

from zope_lb import LoadBalancer
from zope_lb.accesswriter import LineWriter
from zope_lb.converters import as_log_flush


class Sink:
    """A write callable that remembers what it wrote and in which thread."""

    def __init__(self) -> None:
        self.lines: list[object] = []
        self.threads: set[str] = set()

    def __call__(self, line: object) -> None:
        self.lines.append(line)
        self.threads.add(threading.current_thread().name)


def test_lines_are_written_by_the_thread_in_order():
    sink = Sink()
    writer = LineWriter(0.01)
    try:
        assert all(writer.put(sink, n) for n in range(500))
        assert wait_until(lambda: len(sink.lines) == 500, timeout=5)
        assert sink.lines == list(range(500))
        assert sink.threads == {"zope_lb access log"}
        assert writer.waiting == 0
    finally:
        writer.close()


@pytest.mark.parametrize("limit", [10_000, 50])
def test_concurrent_requests_lose_no_line(limit):
    """8 threads put 2,000 lines each, as fast as they can. A line the writer
    refuses (full) is written by its thread, as AccessLog does: each line is
    written exactly once, and those the writer took keep each thread's order."""
    queued, inline = Sink(), Sink()
    writer = LineWriter(0.002, limit=limit)

    def work(thread: int) -> None:
        for n in range(2000):
            if not writer.put(queued, (thread, n)):
                inline((thread, n))

    assert run_concurrently(work, 8) == []
    writer.close()
    every = [(t, n) for t in range(8) for n in range(2000)]
    assert sorted(queued.lines + inline.lines) == every  # type: ignore[type-var]
    if limit == 50:
        assert inline.lines, "50 lines waiting at most: some had to be written by their thread"
    for thread in range(8):
        mine = [n for t, n in queued.lines if t == thread]  # type: ignore[misc]
        assert mine == sorted(mine)


def test_a_full_writer_refuses_so_the_request_writes_its_own_line():
    sink = Sink()
    writer = LineWriter(5.0, limit=3)  # the thread would wait 5 s: nothing is written yet
    try:
        assert [writer.put(sink, n) for n in range(4)] == [True, True, True, False]
        assert sink.lines == [] and writer.waiting == 3
    finally:
        writer.close()
    assert sink.lines == [0, 1, 2]


def test_close_writes_what_waits_at_once_and_later_lines_go_to_the_caller():
    sink = Sink()
    writer = LineWriter(5.0)
    writer.put(sink, "a")
    writer.put(sink, "b")
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 2.5  # not the 5 s the batch would have waited
    assert sink.lines == ["a", "b"]
    assert not writer._thread.is_alive()
    assert writer.put(sink, "c") is False  # closed: the caller writes it itself
    writer.close()  # twice is harmless


def test_an_idle_writer_sleeps_until_a_line_comes():
    sink = Sink()
    drains = []

    class Counting(LineWriter):
        def drain(self) -> None:
            drains.append(time.monotonic())
            super().drain()

    writer = Counting(0.005)
    try:
        writer.put(sink, 1)
        assert wait_until(lambda: sink.lines == [1], timeout=5)
        assert wait_until(lambda: len(drains) >= 1, timeout=5)
        settled = len(drains)
        time.sleep(0.3)  # 60 intervals: a polling writer would have drained each
        assert len(drains) - settled <= 1
        writer.put(sink, 2)
        assert wait_until(lambda: sink.lines == [1, 2], timeout=5)
    finally:
        writer.close()


def test_a_failing_line_does_not_end_the_writer(caplog):
    sink = Sink()
    writer = LineWriter(0.005)

    def broken() -> None:
        raise RuntimeError("disk on fire")

    try:
        with caplog.at_level(logging.ERROR, logger="zope_lb.accesswriter"):
            writer.put(broken)
            writer.put(sink, "after")
            assert wait_until(lambda: sink.lines == ["after"], timeout=5)
        assert "access log line could not be written" in caplog.text
        assert "disk on fire" in caplog.text
    finally:
        writer.close()


def test_the_option_takes_0_or_1ms_to_5s():
    assert as_log_flush("0") == 0.0
    assert as_log_flush("20ms") == 0.02
    assert as_log_flush("5") == 5.0
    assert as_log_flush("0s") == 0.0
    for bad in ("6", "0.5ms", "10s"):
        with pytest.raises(ValueError, match=r"must be 0 \(each request writes its own "
                                             r"line\) or from 1 ms to 5 s"):
            as_log_flush(bad)
    for bad in ("soon", "-1"):
        with pytest.raises(ValueError, match="must be a duration"):
            as_log_flush(bad)


def access_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "zope_lb.access"]


def test_the_balancer_hands_its_lines_to_the_thread(backend, caplog):
    caplog.set_level(logging.INFO, logger="zope_lb.access")
    balancer = LoadBalancer([backend.address], health_interval=0)
    try:
        assert balancer.access_writer is not None
        assert balancer.access_writer.interval == 0.02
        TestApp(balancer).get("/echo?q=1")
        assert wait_until(lambda: len(access_records(caplog)) == 1, timeout=5)
        (record,) = access_records(caplog)
        assert "GET /echo?q=1 HTTP/1.0" in record.getMessage()
        assert record.threadName == "zope_lb access log"
    finally:
        balancer.close()


def test_with_flush_0_the_request_writes_its_line_before_it_ends(backend, caplog):
    caplog.set_level(logging.INFO, logger="zope_lb.access")
    balancer = LoadBalancer([backend.address], health_interval=0, access_log_flush=0)
    try:
        assert balancer.access_writer is None
        TestApp(balancer).get("/echo")
        (record,) = access_records(caplog)  # no wait: written before close() returned
        assert record.threadName == threading.current_thread().name
    finally:
        balancer.close()


def test_close_and_a_reload_to_0_write_the_lines_still_waiting(backend, caplog):
    caplog.set_level(logging.INFO, logger="zope_lb.access")
    balancer = LoadBalancer([backend.address], health_interval=0, access_log_flush=5)
    app = TestApp(balancer)
    try:
        app.get("/echo?n=1")
        assert access_records(caplog) == []  # its thread would wait 5 s
        writer = balancer.access_writer
        assert writer is not None
        balancer.apply({"access_log.flush": "0"})
        assert balancer.access_writer is None and not writer._thread.is_alive()
        assert len(access_records(caplog)) == 1
        app.get("/echo?n=2")  # now written by the request itself
        assert len(access_records(caplog)) == 2
        balancer.apply({"access_log.flush": "5"})
        app.get("/echo?n=3")
        assert len(access_records(caplog)) == 2
    finally:
        balancer.close()
    assert [r.getMessage().split('"')[1] for r in access_records(caplog)] == [
        f"GET /echo?n={n} HTTP/1.0" for n in (1, 2, 3)]


def test_turning_the_access_log_off_stops_its_thread(backend):
    balancer = LoadBalancer([backend.address], health_interval=0)
    try:
        writer = balancer.access_writer
        assert writer is not None
        balancer.apply({"access_log": "off"})
        assert balancer.access is None and balancer.access_writer is None
        assert not writer._thread.is_alive()
    finally:
        balancer.close()
