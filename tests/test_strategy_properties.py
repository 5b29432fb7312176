"""Properties of the strategies and of backup selection (hypothesis)."""

from __future__ import annotations

import math
import time

from fakes import Fake
from hypothesis import given, settings
from hypothesis import strategies as st

from zope_lb.pool import BackendPool
from zope_lb.settings import parse_settings
from zope_lb.strategies import (
    First,
    HashRing,
    LeastConnections,
    RandomTwo,
    SourceIP,
    URIHash,
)


def full(b: Fake) -> bool:
    return bool(b.maxconn) and b.active >= b.maxconn


backend_states = st.lists(
    st.tuples(st.integers(1, 5), st.integers(0, 6), st.integers(0, 4)),  # weight, active, maxconn
    min_size=1, max_size=8,
)


def build(states) -> list[Fake]:
    return [Fake(f"b{i}", w, a, m) for i, (w, a, m) in enumerate(states)]


@given(backend_states, st.randoms(use_true_random=False))
def test_least_connections_and_random_two_never_pick_a_full_backend(states, rnd):
    candidates = build(states)
    for strategy in (LeastConnections(), RandomTwo(rng=rnd), First()):
        choice = strategy.pick(candidates, {})
        if all(full(b) for b in candidates):
            assert choice is None
        else:
            assert choice is not None and not full(choice)


@given(backend_states)
def test_least_connections_picks_the_lowest_load(states):
    candidates = build(states)
    choice = LeastConnections().pick(candidates, {})
    free = [b for b in candidates if not full(b)]
    if free:
        assert choice.active / choice.weight == min(b.active / b.weight for b in free)


@given(st.integers(3, 10), st.integers(0, 9))
@settings(max_examples=25, deadline=None)
def test_removing_one_of_n_moves_only_its_keys(n, removed_index):
    removed_index %= n
    members = [(f"client{i}", 1) for i in range(n)]
    before = HashRing(members)
    after = HashRing([m for i, m in enumerate(members) if i != removed_index])
    keys = [f"/site/page-{k}" for k in range(2000)]
    removed = members[removed_index][0]
    moved = 0
    for key in keys:
        old = next(before.walk(key))
        new = next(after.walk(key))
        if old == removed:
            moved += 1
        else:
            assert new == old  # keys of the other backends never move
    assert moved / len(keys) < 2.0 / n  # about 1/n of the keys


@given(st.lists(st.integers(1, 3), min_size=2, max_size=6),
       st.lists(st.integers(0, 30), min_size=1, max_size=200),
       st.sampled_from([1.0, 1.25, 1.5, 2.0]))
@settings(max_examples=60, deadline=None)
def test_bounded_load_never_exceeds_ceil_of_factor_times_average(weights, paths, factor):
    """Requests arrive (none finish): no backend ever exceeds its bounded share."""
    candidates = [Fake(f"b{i}", w) for i, w in enumerate(weights)]
    strategy = URIHash()
    strategy.load_factor = factor
    total_weight = sum(weights)
    for path in paths:
        choice = strategy.pick(candidates, {"PATH_INFO": f"/p{path}"})
        choice.active += 1
        balls = sum(b.active for b in candidates)
        for b in candidates:
            assert b.active <= math.ceil(factor * balls * b.weight / total_weight)


def test_uri_hash_keeps_a_path_on_one_backend_when_load_is_even():
    candidates = [Fake(f"b{i}") for i in range(3)]
    strategy = URIHash()
    first = strategy.pick(candidates, {"PATH_INFO": "/Plone/news"})
    assert all(strategy.pick(candidates, {"PATH_INFO": "/Plone/news"}) is first
               for _ in range(20))


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=30))
def test_source_ip_is_stable_per_client(clients):
    candidates = [Fake(f"b{i}") for i in range(4)]
    strategy = SourceIP()
    for client in clients:
        environ = {"REMOTE_ADDR": client}
        assert strategy.pick(candidates, environ) is strategy.pick(candidates, environ)


class StubPool:
    def __init__(self, *args, **kwargs):
        pass

    def close(self):
        pass


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=8))
def test_backups_are_used_exactly_when_no_primary_is_available(lines):
    """lines: (is_backup, is_down) per backend."""
    text = "\n".join(f"h{i}:80{' backup' if backup else ''}" for i, (backup, _) in enumerate(lines))
    pool = BackendPool(parse_settings({"backends": text, "passive.fall": 1,
                                       "passive.cooldown": 60}), pool_factory=StubPool)
    now = time.monotonic()
    for backend, (_, down) in zip(pool.backends, lines, strict=True):
        if down:
            backend.record_failure("refused", now)
    chosen = pool.candidates(now)
    primaries_up = [b for b in pool.backends if not b.backup and b.state.value == "up"]
    if primaries_up:
        assert chosen == primaries_up
    else:
        assert chosen == [b for b in pool.backends if b.backup and b.state.value == "up"]
