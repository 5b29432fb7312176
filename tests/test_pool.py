"""Slots, the FIFO wait queue and draining in ``zope_lb.pool``.

The queue does no I/O, so these use stub connection pools; the same rules are
checked against real backends in test_balancing.py.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from zope_lb.errors import NoBackendAvailable
from zope_lb.pool import BackendPool, affinity_token
from zope_lb.settings import parse_settings
from zope_lb.strategies import RoundRobin


class StubPool:
    def __init__(self, *args, **kwargs):
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def make_pool(lines="a:1\nb:2", **options) -> BackendPool:
    settings = parse_settings({"backends": lines, **options})
    return BackendPool(settings, pool_factory=StubPool)


def start_waiting(pool, results, strategy, prefer=None, name=None):
    def run():
        try:
            results.append((name, pool.acquire(strategy, {}, (), prefer)))
        except NoBackendAvailable as exc:
            results.append((name, exc))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_slots_are_counted_and_never_exceeded():
    pool = make_pool(maxconn=2)
    rr = RoundRobin()
    taken = [pool.acquire(rr, {}) for _ in range(4)]
    assert sorted(b.active for b in pool.backends) == [2, 2]
    assert [b.requests for b in pool.backends] == [2, 2]
    for backend in taken:
        pool.release(backend)
    assert [b.active for b in pool.backends] == [0, 0]


def test_full_backends_make_requests_wait_in_fifo_order():
    pool = make_pool("a:1", maxconn=1, **{"queue.timeout": 5})
    rr = RoundRobin()
    holder = pool.acquire(rr, {})
    results: list = []
    threads = []
    for i in range(3):
        threads.append(start_waiting(pool, results, rr, name=i))
        wait_for(lambda i=i: pool.queued == i + 1)
    for served in range(1, 4):
        pool.release(holder)
        wait_for(lambda served=served: len(results) == served)
        holder = results[-1][1]
    for thread in threads:
        thread.join(5)
    assert [name for name, _ in results] == [0, 1, 2]
    assert pool.backends[0].active == 1 and pool.queued == 0


def test_newcomer_does_not_overtake_a_waiter():
    pool = make_pool("a:1", maxconn=1, **{"queue.timeout": 5})
    rr = RoundRobin()
    holder = pool.acquire(rr, {})
    results: list = []
    first = start_waiting(pool, results, rr, name="waiter")
    wait_for(lambda: pool.queued == 1)
    second = start_waiting(pool, results, rr, name="newcomer")
    wait_for(lambda: pool.queued == 2)
    pool.release(holder)
    wait_for(lambda: len(results) == 1)
    assert results[0][0] == "waiter"
    pool.release(results[0][1])
    first.join(5)
    second.join(5)
    assert [name for name, _ in results] == ["waiter", "newcomer"]


def test_queue_timeout_gives_503_reason():
    now = time.monotonic
    pool = make_pool("a:1", maxconn=1, **{"queue.timeout": "100ms"})
    rr = RoundRobin()
    pool.acquire(rr, {})
    started = now()
    with pytest.raises(NoBackendAvailable) as info:
        pool.acquire(rr, {})
    assert 0.09 < now() - started < 2
    assert "busy for 0.1 s" in info.value.reason
    assert pool.queued == 0


def test_full_queue_answers_at_once():
    pool = make_pool("a:1", maxconn=1, **{"queue.size": 0, "queue.timeout": 5})
    rr = RoundRobin()
    pool.acquire(rr, {})
    started = time.monotonic()
    with pytest.raises(NoBackendAvailable) as info:
        pool.acquire(rr, {})
    assert time.monotonic() - started < 0.5
    assert "0 requests already wait" in info.value.reason


def test_no_available_backend_is_503_without_waiting():
    pool = make_pool("a:1", **{"passive.fall": 1})
    pool.backends[0].record_failure("connection refused", time.monotonic())
    with pytest.raises(NoBackendAvailable, match="no backend is available"):
        pool.acquire(RoundRobin(), {})


def test_waiters_fail_at_once_when_the_last_backend_goes_down():
    pool = make_pool("a:1", maxconn=1, **{"queue.timeout": 30, "passive.fall": 1})
    rr = RoundRobin()
    holder = pool.acquire(rr, {})
    results: list = []
    thread = start_waiting(pool, results, rr)
    wait_for(lambda: pool.queued == 1)
    started = time.monotonic()
    holder.record_failure("connection refused", time.monotonic())
    thread.join(5)
    assert time.monotonic() - started < 2
    assert isinstance(results[0][1], NoBackendAvailable)


def test_pinned_waiter_waits_for_its_backend_while_others_pass():
    pool = make_pool("a:1\nb:2", maxconn=1, **{"queue.timeout": 5})
    rr = RoundRobin()
    a, b = pool.backends
    hold_a = pool.acquire(rr, {}, prefer=a)
    hold_b = pool.acquire(rr, {}, prefer=b)
    results: list = []
    pinned = start_waiting(pool, results, rr, prefer=a, name="pinned-to-a")
    wait_for(lambda: pool.queued == 1)
    free = start_waiting(pool, results, rr, name="any")
    wait_for(lambda: pool.queued == 2)
    pool.release(hold_b)  # b frees: the pinned waiter cannot use it, the other can
    wait_for(lambda: len(results) == 1)
    assert results[0][0] == "any" and results[0][1] is b
    pool.release(hold_a)
    pinned.join(5)
    free.join(5)
    assert results[1][0] == "pinned-to-a" and results[1][1] is a


def test_pinned_to_a_down_backend_is_redispatched():
    pool = make_pool("a:1\nb:2", **{"passive.fall": 1})
    a, b = pool.backends
    a.record_failure("connection refused", time.monotonic())
    assert pool.acquire(RoundRobin(), {}, prefer=a) is b


def test_backups_only_when_no_primary_is_available():
    pool = make_pool("a:1\nb:2 backup", **{"passive.fall": 1})
    rr = RoundRobin()
    a, b = pool.backends
    assert {pool.acquire(rr, {}).id for _ in range(4)} == {a.id}
    a.record_failure("connection refused", time.monotonic())
    assert pool.acquire(rr, {}) is b


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections", "random_two",
                                      "source_ip", "uri_hash", "first"])
def test_weight_zero_takes_no_new_requests_and_leaves_them_to_the_backups(strategy):
    from zope_lb.strategies import make_strategy

    pool = make_pool("a:1 weight=0\nb:2 backup\nc:3 weight=0 backup", strategy=strategy,
                     **{"queue.timeout": 3})
    pick = make_strategy(strategy, pool.settings)
    started = time.monotonic()
    assert {pool.acquire(pick, {"PATH_INFO": f"/{i}", "REMOTE_ADDR": "192.0.2.1"}).id
            for i in range(4)} == {"b:2"}
    assert time.monotonic() - started < 2  # served, not waiting out queue.timeout


def test_only_weight_zero_backends_is_503_at_once():
    """The settings refuse such a list; the pool still answers at once if it gets
    one (no request may wait out the queue for a backend that cannot come)."""
    settings = parse_settings({"backends": "a:1\nb:2", "queue.timeout": 3})
    zero = tuple(dataclasses.replace(spec, weight=0) for spec in settings.backends)
    pool = BackendPool(dataclasses.replace(settings, backends=zero), pool_factory=StubPool)
    started = time.monotonic()
    with pytest.raises(NoBackendAvailable, match="no backend is available"):
        pool.acquire(RoundRobin(), {})
    assert time.monotonic() - started < 2


def test_drained_backend_closes_its_connections_after_the_last_release():
    pool = make_pool("a:1\nb:2")
    rr = RoundRobin()
    a = pool.backends[0]
    held = [pool.acquire(rr, {}, prefer=a) for _ in range(2)]
    pool.reconfigure(parse_settings({"backends": "b:2\nc:3"}))
    assert a.state.value == "draining" and a.pool.closed == 0
    assert a not in pool.candidates(time.monotonic())
    pool.release(held[0])
    assert a.pool.closed == 0
    pool.release(held[1])
    assert a.pool.closed == 1
    assert [x.address for x in pool.backends] == ["b:2", "c:3"]


def test_unchanged_backends_keep_their_state_across_reconfigure():
    pool = make_pool("a:1\nb:2")
    b = pool.backends[1]
    b.requests = 7
    pool.reconfigure(parse_settings({"backends": "b:2\nc:3"}))
    assert pool.backends[0] is b and b.requests == 7


def test_affinity_tokens_are_stable_and_not_the_address():
    pool = make_pool("10.0.0.1:8080 id=client1\n10.0.0.2:8080")
    token = pool.backends[0].token
    assert token == affinity_token("client1")
    assert "10.0.0" not in token and "client1" not in token
    assert make_pool("10.0.0.1:8080 id=client1\n10.0.0.3:8080").backends[0].token == token
    assert pool.by_token(token) is pool.backends[0]
    assert pool.by_token("forged") is None and pool.by_token(None) is None
