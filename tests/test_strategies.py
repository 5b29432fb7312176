"""Tests for ``zope_lb.strategies``: smooth weighted round robin and the registry."""

from __future__ import annotations

import sys
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
from fakes import Fake
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import run_concurrently

from zope_lb import strategies
from zope_lb.errors import ConfigError
from zope_lb.settings import parse_settings
from zope_lb.strategies import RoundRobin, Strategy, known_strategies, make_strategy


def backends(*weights: int) -> list[Fake]:
    return [Fake("abcdefghijklmnopqrstuvwxyz"[i], w) for i, w in enumerate(weights)]


def picks(rr: RoundRobin, candidates: list[Fake], n: int, avoid=()) -> str:
    return "".join(rr.pick(candidates, {}, avoid).id for _ in range(n))


# -- RoundRobin ---------------------------------------------------------------


def test_weights_5_1_1_interleave_as_nginx() -> None:
    assert picks(RoundRobin(), backends(5, 1, 1), 7) == "aabacaa"
    rr = RoundRobin()
    assert picks(rr, backends(5, 1, 1), 14) == "aabacaa" * 2


def test_equal_weights_alternate() -> None:
    assert picks(RoundRobin(), backends(1, 1, 1), 6) == "abcabc"


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.integers(0, 6), min_size=1, max_size=6).filter(any),
    cycles=st.integers(1, 3),
)
def test_every_full_cycle_gives_each_backend_exactly_its_weight(
    weights: list[int], cycles: int
) -> None:
    rr = RoundRobin()
    candidates = backends(*weights)
    total = sum(weights)
    for _ in range(cycles):
        counts = Counter(rr.pick(candidates, {}).id for _ in range(total))
        assert counts == Counter({b.id: b.weight for b in candidates if b.weight})


def test_weight_zero_is_never_picked() -> None:
    rr = RoundRobin()
    candidates = backends(0, 2, 0, 1)
    assert set(picks(rr, candidates, 30)) == {"b", "d"}


def test_avoid_is_respected() -> None:
    rr = RoundRobin()
    a, b, c = candidates = backends(5, 1, 1)
    for _ in range(20):
        assert rr.pick(candidates, {}, avoid=[a]) in (b, c)
        assert rr.pick(candidates, {}, avoid={a, b}) is c


@pytest.mark.parametrize(
    "weights, avoid_ids",
    [((), ""), ((0, 0), ""), ((1, 2), "ab"), ((0, 3), "b")],
)
def test_none_when_nothing_fits(weights: tuple[int, ...], avoid_ids: str) -> None:
    candidates = backends(*weights)
    avoid = [b for b in candidates if b.id in avoid_ids]
    assert RoundRobin().pick(candidates, {}, avoid) is None


def test_candidates_may_change_between_picks() -> None:
    rr = RoundRobin()
    a, b, c = backends(1, 1, 1)
    assert rr.pick([a, b, c], {}) is a
    assert rr.pick([b, c], {}) in (b, c)  # a went down
    # a came back: scores kept by id stay bounded, so the shares stay fair
    seen = Counter(rr.pick([a, b, c], {}).id for _ in range(30))
    assert sum(seen.values()) == 30
    assert all(abs(seen[x] - 10) <= 1 for x in "abc"), seen
    # a new backend joins and gets its share at once
    d = Fake("d")
    seen = Counter(rr.pick([a, b, c, d], {}).id for _ in range(40))
    assert all(abs(seen[x] - 10) <= 1 for x in "abcd"), seen


def test_removed_backends_are_eventually_forgotten() -> None:
    rr = RoundRobin()
    for i in range(100):
        rr.pick([Fake(f"gone{i}")], {})
    rr.pick(backends(1, 1), {})
    assert len(rr._score) <= 4 * 2 + 16 + 1
    assert picks(rr, backends(1, 1), 4) in ("abab", "baba")


def test_weights_can_change_between_picks() -> None:
    rr = RoundRobin()
    picks(rr, backends(1, 1), 3)
    counts = Counter(picks(rr, backends(3, 1), 400))
    assert counts["a"] == pytest.approx(300, abs=4)
    assert counts["b"] == pytest.approx(100, abs=4)


def test_round_robin_is_thread_safe() -> None:
    rr = RoundRobin()
    candidates = backends(3, 2, 1)
    threads, per_thread = 8, 600  # 4800 picks: 800 full cycles of 6
    results: list[Counter] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work(_: int) -> None:
        barrier.wait(timeout=5)
        counts = Counter(rr.pick(candidates, {}).id for _ in range(per_thread))
        with lock:
            results.append(counts)

    assert run_concurrently(work, threads, timeout=10) == []
    total = sum(results, Counter())
    assert sum(total.values()) == threads * per_thread
    assert total == {"a": 2400, "b": 1600, "c": 800}


def test_round_robin_is_a_strategy() -> None:
    assert isinstance(RoundRobin(), Strategy)


# -- registry -----------------------------------------------------------------


def test_known_strategies_contains_round_robin() -> None:
    assert "round_robin" in known_strategies()


def test_make_strategy_returns_a_fresh_object() -> None:
    first, second = make_strategy("round_robin"), make_strategy("round_robin")
    assert isinstance(first, RoundRobin)
    assert first is not second
    first.pick(backends(1, 1), {})
    assert second.pick(backends(1, 1), {}).id == "a"  # no shared scores


def test_make_strategy_unknown_name() -> None:
    with pytest.raises(KeyError):
        make_strategy("no_such_strategy_" + uuid.uuid4().hex)


PLUGIN_SOURCE = '''
class First:
    """Always the first candidate not avoided."""

    def __init__(self, settings=None):
        self.settings = settings

    def pick(self, candidates, environ, avoid=()):
        return next((c for c in candidates if c not in avoid), None)


class NoPick:
    def __init__(self, settings=None):
        pass


def factory(settings):
    return First(settings)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny installed distribution registering three strategies."""
    module = "zlb_test_plugin_" + uuid.uuid4().hex[:8]
    (tmp_path / f"{module}.py").write_text(PLUGIN_SOURCE)
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[zope_lb.strategies]\n"
        f"plugin_first = {module}:First\n"
        f"first_factory = {module}:factory\n"
        f"no_pick = {module}:NoPick\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    strategies._plugins.cache_clear()
    yield module
    monkeypatch.undo()
    sys.modules.pop(module, None)
    strategies._plugins.cache_clear()


def test_plugin_strategy_is_known_and_made(plugin: str) -> None:
    assert {"round_robin", "plugin_first", "first_factory", "no_pick"} <= known_strategies()
    for name in ("plugin_first", "first_factory"):
        strategy = make_strategy(name)
        assert type(strategy).__module__ == plugin
        a, b = backends(1, 1)
        assert strategy.pick([a, b], {}) is a
        assert strategy.pick([a, b], {}, avoid=[a]) is b
        assert make_strategy(name) is not strategy


def test_plugin_strategy_is_accepted_by_settings(plugin: str) -> None:
    assert (
        parse_settings({"backends": "a:80\nb:80", "strategy": "plugin_first"}).strategy
        == "plugin_first"
    )


def test_plugin_without_pick_is_refused(plugin: str) -> None:
    with pytest.raises(TypeError, match="'no_pick' has no pick"):
        make_strategy("no_pick")


def test_plugins_are_gone_with_their_distribution(plugin: str) -> None:
    assert "plugin_first" in known_strategies()
    strategies._plugins.cache_clear()
    sys.path.remove(
        next(p for p in sys.path if Path(p).joinpath(f"{plugin}.py").exists())
    )
    strategies._plugins.cache_clear()
    assert "plugin_first" not in known_strategies()
    with pytest.raises(ConfigError):
        parse_settings({"backends": "a:80\nb:80", "strategy": "plugin_first"})


# -- behaviours named in the issue, one by one ----------------------------------------


def test_least_connections_breaks_ties_round_robin() -> None:
    lc = make_strategy("least_connections")
    candidates = backends(1, 1, 1)  # all idle: a tie every time
    assert "".join(lc.pick(candidates, {}).id for _ in range(6)) in ("abcabc", "bcabca", "cabcab")


def test_least_connections_weighs_active_requests() -> None:
    a, b = backends(3, 1)
    a.active, b.active = 2, 1  # 2/3 < 1/1: the heavier one is less loaded
    assert make_strategy("least_connections").pick([a, b], {}) is a


def test_random_two_follows_the_weights() -> None:
    import random

    rt = strategies.RandomTwo(rng=random.Random(7))
    candidates = backends(4, 1)  # always idle: the first of the two drawn wins ties
    seen = Counter(rt.pick(candidates, {}).id for _ in range(4000))
    assert 0.70 < seen["a"] / 4000 < 0.95  # far from an even split


def test_first_moves_on_when_the_first_is_full() -> None:
    a, b, c = backends(1, 1, 1)
    for backend in (a, b, c):
        backend.maxconn = 2
    first = make_strategy("first")
    assert first.pick([a, b, c], {}) is a
    a.active = 2
    assert first.pick([a, b, c], {}) is b
    b.active = 2
    assert first.pick([a, b, c], {}) is c
    c.active = 2
    assert first.pick([a, b, c], {}) is None


def test_source_ip_behind_a_trusted_proxy_uses_the_client_address() -> None:
    settings = parse_settings({"backends": "a:1\nb:2\nc:3\nd:4",
                               "forwarded.trusted": "10.0.0.0/8"})
    sip = make_strategy("source_ip", settings)
    candidates = backends(1, 1, 1, 1)

    def pick(remote: str, forwarded: str | None = None) -> str:
        env = {"REMOTE_ADDR": remote}
        if forwarded:
            env["HTTP_X_FORWARDED_FOR"] = forwarded
        return sip.pick(candidates, env).id

    clients = [f"198.51.100.{i}" for i in range(1, 41)]
    via_proxy = [pick("10.0.0.5", client) for client in clients]
    direct = [pick(client) for client in clients]
    assert via_proxy == direct  # the client behind the proxy, not the proxy
    assert len(set(via_proxy)) > 1  # so the clients are spread, not all on one
    # an untrusted peer cannot choose its backend by forging X-Forwarded-For
    assert {pick("203.0.113.9", client) for client in clients} == {pick("203.0.113.9")}


@pytest.mark.parametrize("name", ["least_connections", "random_two", "source_ip", "uri_hash",
                                  "first"])
def test_every_builtin_strategy_is_safe_to_share_between_threads(name) -> None:
    strategy = make_strategy(name, parse_settings({"backends": "a:1\nb:2"}))
    candidates = backends(3, 1, 2)
    for backend in candidates:
        backend.maxconn = 1000
    picked: list[str] = []

    def work(_: int) -> None:
        for i in range(1500):
            env = {"REMOTE_ADDR": f"192.0.2.{i % 200}", "PATH_INFO": f"/p{i % 50}"}
            picked.append(strategy.pick(candidates, env).id)

    assert run_concurrently(work, 8) == []
    assert len(picked) == 8 * 1500
    assert set(picked) <= {"a", "b", "c"}


def test_the_readme_example_is_a_working_plugin(tmp_path: Path, monkeypatch) -> None:
    """The README's example strategy, copied from the README, installed as a
    plugin, selected by name, balancing real requests."""
    import re as re_module

    from apps import routes
    from servers import ServerThread
    from webtest import TestApp

    from zope_lb import LoadBalancer

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (source,) = re_module.findall(r"```python\n# my_package/balancing\.py\n(.*?)```", readme,
                                  re_module.S)
    package = tmp_path / "my_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "balancing.py").write_text(source)
    dist = tmp_path / "my_package-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[zope_lb.strategies]\nmy_strategy = my_package.balancing:MyStrategy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    strategies._plugins.cache_clear()
    servers = [ServerThread(routes(f"b{i}")).start() for i in range(2)]
    lb = LoadBalancer([f"{s.address} id=client{i}" for i, s in enumerate(servers)],
                      strategy="my_strategy", health_interval=0)
    try:
        app = TestApp(lb)
        plain = {app.get("/echo").headers["X-Backend"] for _ in range(4)}
        hinted = {app.get("/echo", headers={"X-Zope-Client": "client1"}).headers["X-Backend"]
                  for _ in range(4)}
        assert plain == {"b0", "b1"} and hinted == {"b1"}
    finally:
        lb.close()
        for server in servers:
            server.stop()
        monkeypatch.undo()
        sys.modules.pop("my_package.balancing", None)
        sys.modules.pop("my_package", None)
        strategies._plugins.cache_clear()
