"""Tests for ``zope_lb.backend``: the state table and a backend's counters and
cool-down. No sockets (``pool_factory=`` stub) and no clock (``now`` passed in)."""

from __future__ import annotations

import itertools
import queue
import threading

import pytest

from zope_lb.backend import (
    TRANSITIONS,
    UNLIMITED_POOL_SIZE,
    Backend,
    BackendConnectionPool,
    ConnectionStack,
    State,
    next_state,
)
from zope_lb.backendlines import parse_backend_line

EVENTS = ("fail", "recover", "drain", "disable", "enable")

EXPECTED = {
    # (state, event): new state; every pair not listed changes nothing
    (State.UP, "fail"): State.DOWN,
    (State.UP, "drain"): State.DRAINING,
    (State.UP, "disable"): State.DISABLED,
    (State.DOWN, "recover"): State.UP,
    (State.DOWN, "drain"): State.DRAINING,
    (State.DOWN, "disable"): State.DISABLED,
    (State.DRAINING, "disable"): State.DISABLED,
    (State.DRAINING, "enable"): State.UP,
    (State.DISABLED, "drain"): State.DRAINING,
    (State.DISABLED, "enable"): State.UP,
}


class StubPool:
    """Records how it was made and whether it was closed."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class Recorder:
    def __init__(self) -> None:
        self.pools: list[StubPool] = []
        self.changes: list[tuple] = []

    def pool_factory(self, *args, **kwargs) -> StubPool:
        pool = StubPool(*args, **kwargs)
        self.pools.append(pool)
        return pool

    def on_change(self, backend, old, new, reason) -> None:
        self.changes.append((backend, old, new, reason))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def make(
    rec: Recorder,
    line: str = "zope1:8080",
    *,
    fall: int = 3,
    cooldown: float = 10.0,
    maxconn: int = 4,
) -> Backend:
    return Backend(
        parse_backend_line(line),
        maxconn=maxconn,
        timeout_connect=2.0,
        timeout_read=30.0,
        fall=fall,
        cooldown=cooldown,
        on_change=rec.on_change,
        pool_factory=rec.pool_factory,
    )


# -- the table ----------------------------------------------------------------


@pytest.mark.parametrize("state, event", list(itertools.product(State, EVENTS)))
def test_every_event_from_every_state(state: State, event: str) -> None:
    assert next_state(state, event) == EXPECTED.get((state, event))


def test_table_has_only_known_states_and_events() -> None:
    assert TRANSITIONS == EXPECTED
    assert all(new is not old for (old, _), new in TRANSITIONS.items())


def test_unknown_event_changes_nothing() -> None:
    assert next_state(State.UP, "explode") is None


@pytest.mark.parametrize("state, event", list(itertools.product(State, EVENTS)))
def test_change_follows_the_table_and_reports_once(
    rec: Recorder, state: State, event: str
) -> None:
    backend = make(rec)
    backend.state = state
    backend._change(event, "because")
    new = EXPECTED.get((state, event))
    if new is None:
        assert backend.state is state
        assert rec.changes == []
    else:
        assert backend.state is new
        assert backend.reason == "because"
        assert rec.changes == [(backend, state, new, "because")]


# -- construction -------------------------------------------------------------


def test_pool_is_made_with_the_backend_address_and_limits(rec: Recorder) -> None:
    backend = make(rec, "[::1]:8081 id=six weight=3 backup", maxconn=5)
    (pool,) = rec.pools
    assert backend.pool is pool
    assert pool.args == ("::1", 8081)
    assert pool.kwargs["maxsize"] == 5
    assert pool.kwargs["block"] is False
    assert pool.kwargs["retries"] is False
    timeout = pool.kwargs["timeout"]
    assert (timeout.connect_timeout, timeout.read_timeout) == (2.0, 30.0)
    assert (backend.id, backend.address, backend.weight, backend.backup) == (
        "six",
        "[::1]:8081",
        3,
        True,
    )
    assert backend.state is State.UP
    assert (backend.active, backend.requests, backend.failures) == (0, 0, 0)
    assert repr(backend) == "<Backend six [::1]:8081 up>"


def test_unlimited_maxconn_keeps_a_bounded_pool(rec: Recorder) -> None:
    make(rec, maxconn=0)
    assert rec.pools[0].kwargs["maxsize"] == UNLIMITED_POOL_SIZE


def test_fresh_pool_is_a_separate_one_connection_pool(rec: Recorder) -> None:
    backend = make(rec)
    fresh = backend.fresh_pool()
    assert fresh is not backend.pool
    assert fresh.args == ("zope1", 8080)
    assert fresh.kwargs["maxsize"] == 1
    assert fresh.kwargs["retries"] is False


# -- passive failure detection ------------------------------------------------


@pytest.mark.parametrize("fall", [1, 2, 3, 5])
def test_failure_takes_backend_down_only_at_fall_in_a_row(
    rec: Recorder, fall: int
) -> None:
    backend = make(rec, fall=fall, cooldown=10.0)
    for i in range(fall - 1):
        backend.record_failure("refused", now=100.0 + i)
        assert backend.state is State.UP
        assert backend.available(100.0 + i)
    assert rec.changes == []
    backend.record_failure("refused", now=200.0)
    assert backend.state is State.DOWN
    assert backend.down_until == 210.0
    assert backend.failures == fall
    assert backend.consecutive_failures == fall
    plural = "s" if fall > 1 else ""
    reason = f"{fall} failed request{plural} in a row: refused"
    assert rec.changes == [(backend, State.UP, State.DOWN, reason)]
    assert backend.reason == reason


def test_success_resets_the_run(rec: Recorder) -> None:
    backend = make(rec, fall=3)
    backend.record_failure("refused", now=1.0)
    backend.record_failure("refused", now=2.0)
    backend.record_success()
    assert backend.consecutive_failures == 0
    backend.record_failure("refused", now=3.0)
    backend.record_failure("refused", now=4.0)
    assert backend.state is State.UP
    assert backend.failures == 4  # the total is never reset
    backend.record_failure("refused", now=5.0)
    assert backend.state is State.DOWN


def test_unavailable_during_cooldown_and_available_after(rec: Recorder) -> None:
    backend = make(rec, fall=1, cooldown=10.0)
    backend.record_failure("timed out", now=100.0)
    assert not backend.available(100.0)
    assert not backend.available(109.999)
    assert backend.state is State.DOWN
    assert backend.available(110.0)
    assert backend.state is State.UP
    assert rec.changes[-1] == (
        backend,
        State.DOWN,
        State.UP,
        "tried again after 10 s cool-down",
    )
    assert backend.available(110.5)
    assert len(rec.changes) == 2


def test_one_failure_after_cooldown_sends_it_straight_back_down(rec: Recorder) -> None:
    backend = make(rec, fall=3, cooldown=5.0)
    for t in (1.0, 2.0, 3.0):
        backend.record_failure("refused", now=t)
    assert backend.available(8.0)
    backend.record_failure("refused again", now=8.0)
    assert backend.state is State.DOWN
    assert backend.down_until == 13.0
    assert not backend.available(12.0)
    assert [(old, new) for _, old, new, _ in rec.changes] == [
        (State.UP, State.DOWN),
        (State.DOWN, State.UP),
        (State.UP, State.DOWN),
    ]
    assert rec.changes[-1][3] == "4 failed requests in a row: refused again"


def test_success_after_cooldown_needs_fall_failures_again(rec: Recorder) -> None:
    backend = make(rec, fall=2, cooldown=5.0)
    backend.record_failure("refused", now=1.0)
    backend.record_failure("refused", now=1.0)
    assert backend.available(6.0)
    backend.record_success()
    backend.record_failure("refused", now=7.0)
    assert backend.state is State.UP


def test_failures_while_down_change_nothing_but_extend_cooldown(rec: Recorder) -> None:
    backend = make(rec, fall=1, cooldown=10.0)
    backend.record_failure("refused", now=0.0)
    backend.record_failure("refused", now=5.0)
    assert backend.state is State.DOWN
    assert len(rec.changes) == 1
    assert not backend.available(10.0)
    assert backend.available(15.0)


def test_recovery_is_reported_once_when_many_threads_look(rec: Recorder) -> None:
    backend = make(rec, fall=1, cooldown=1.0)
    backend.record_failure("refused", now=0.0)
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def look() -> None:
        barrier.wait(timeout=5)
        results.append(backend.available(2.0))

    threads = [threading.Thread(target=look) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == [True] * 8
    assert [(old, new) for _, old, new, _ in rec.changes] == [
        (State.UP, State.DOWN),
        (State.DOWN, State.UP),
    ]


@pytest.mark.parametrize("state", [State.DRAINING, State.DISABLED])
def test_draining_and_disabled_are_never_available(rec: Recorder, state: State) -> None:
    backend = make(rec)
    backend.state = state
    assert not backend.available(1e12)
    backend.record_failure("refused", now=0.0)
    backend.record_failure("refused", now=0.0)
    backend.record_failure("refused", now=0.0)
    assert backend.state is state
    assert rec.changes == []


def test_no_listener_is_fine(rec: Recorder) -> None:
    backend = Backend(
        parse_backend_line("a:80"),
        maxconn=1,
        timeout_connect=1.0,
        timeout_read=1.0,
        fall=1,
        cooldown=1.0,
        pool_factory=rec.pool_factory,
    )
    backend.record_failure("refused", now=0.0)
    assert backend.state is State.DOWN
    assert backend.available(1.0)


# -- draining -----------------------------------------------------------------


def test_drain_of_an_idle_backend_closes_the_pool_at_once(rec: Recorder) -> None:
    backend = make(rec)
    backend.drain()
    assert backend.state is State.DRAINING
    assert backend.pool.closed == 1
    assert rec.changes == [
        (backend, State.UP, State.DRAINING, "removed from the configuration")
    ]
    assert not backend.available(0.0)


def test_close_closes_the_pool(rec: Recorder) -> None:
    backend = make(rec)
    backend.close()
    assert backend.pool.closed == 1


def test_after_passive_detection_it_takes_rise_new_probes_to_come_back(rec: Recorder) -> None:
    backend = make(rec, fall=2)
    backend.rise = 2
    backend.auto_recover = False
    for _ in range(6):  # probes passing while it was up
        backend.record_probe(True, "status 200", 1.0)
    backend.record_failure("connection refused", 2.0)
    backend.record_failure("connection refused", 2.1)
    assert backend.state is State.DOWN
    backend.record_probe(True, "status 200", 3.0)
    assert backend.state is State.DOWN  # one pass is not health.rise
    backend.record_probe(True, "status 200", 4.0)
    assert backend.state is State.UP
    assert backend.reason == "2 probes passed"


def test_connection_stack_is_last_in_first_out_and_bounded() -> None:
    stack = ConnectionStack(2)
    with pytest.raises(queue.Empty):
        stack.get(block=False)
    stack.put("a")
    stack.put("b")
    with pytest.raises(queue.Full):
        stack.put("c")
    assert stack.qsize() == 2
    assert [stack.get(), stack.get()] == ["b", "a"]  # the most recently used first


def test_backend_pool_keeps_idle_connections_in_a_stack_and_never_blocks() -> None:
    pool = BackendConnectionPool("127.0.0.1", 9, maxsize=3, block=False)
    assert isinstance(pool.pool, ConnectionStack)
    assert pool.pool.qsize() == 3  # urllib3 fills it with placeholders
    conns = [pool._get_conn() for _ in range(4)]  # one more than kept: a new one
    assert len({id(c) for c in conns}) == 4
    for conn in conns:
        pool._put_conn(conn)  # the fourth is closed and dropped, not kept
    assert pool.pool.qsize() == 3
    pool.close()
    assert pool.pool is None
    with pytest.raises(ValueError, match="never blocks"):
        BackendConnectionPool("127.0.0.1", 9, maxsize=1, block=True)
