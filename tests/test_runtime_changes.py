"""Changes at run time: apply(), per-backend actions, stats, settings as text."""

from __future__ import annotations

from collections import Counter

import pytest
from webtest import TestApp

from zope_lb import ConfigError, LoadBalancer
from zope_lb.settings import format_options, parse_settings


@pytest.fixture
def lb(backends):
    balancer = LoadBalancer([f"{b.address} id=c{i}" for i, b in enumerate(backends[:2])],
                            health_interval=0)
    yield balancer
    balancer.close()


def served(app, n=6, path="/echo"):
    return Counter(app.get(path).headers["X-Backend"] for _ in range(n))


def test_apply_adds_and_removes_backends_at_once(lb, backends):
    app = TestApp(lb)
    assert served(app) == {"b0": 3, "b1": 3}
    lb.apply({"backends": f"{backends[1].address} id=c1\n{backends[2].address} id=c2"})
    assert served(app) == {"b1": 3, "b2": 3}
    assert lb.current_options()["backends"].splitlines()[1].startswith(backends[2].address)


def test_bad_edit_is_refused_whole_and_nothing_changes(lb, backends):
    before = lb.settings
    with pytest.raises(ConfigError) as info:
        lb.apply({"strategy": "least_connections",
                  "backends": f"{backends[0].address}\nhttp://{backends[2].address}"})
    assert info.value.key == "backends" and info.value.line == 2
    assert lb.settings is before
    assert lb.settings.strategy == "round_robin"
    assert served(TestApp(lb)) == {"b0": 3, "b1": 3}


def test_apply_changes_strategy_timeouts_and_pools(lb, backends):
    lb.apply({"strategy": "first", "timeout.read": "7", "pool.zmi.backends": backends[2].address,
              "pool.zmi.match": "path:*/manage*"})
    app = TestApp(lb)
    assert served(app) == {"b0": 6}
    assert app.get("/site/manage_main").headers["X-Backend"] == "b2"
    assert all(b.timeout.read_timeout == 7 for p in lb.pools for b in p.backends)
    options = lb.current_options()
    zmi = next(p for p in lb.pools if p.name == "zmi").backends[0]
    lb.apply(options)  # applying the same text changes nothing
    assert lb.settings == parse_settings(options)
    assert next(p for p in lb.pools if p.name == "zmi").backends[0] is zmi
    for key in ("pool.zmi.backends", "pool.zmi.match", "pool.zmi.strategy"):
        del options[key]
    lb.apply(options, replace=True)  # a whole new configuration: the pool is gone
    assert [p.name for p in lb.pools] == ["default"]
    assert zmi.state.value == "draining"
    assert served(app, path="/site/manage_main") == {"b0": 6}


def test_disable_enable_and_drain_a_backend(lb):
    app = TestApp(lb)
    lb.backend_action("c0", "disable")
    assert served(app) == {"b1": 6}
    lb.backend_action("c0", "enable")
    assert served(app) == {"b0": 3, "b1": 3}
    lb.backend_action("c1", "drain")
    assert served(app) == {"b0": 6}
    lb.backend_action("c1", "enable")  # a drained backend reconnects when enabled
    assert served(app) == {"b0": 3, "b1": 3}
    with pytest.raises(KeyError):
        lb.backend_action("nope", "disable")
    with pytest.raises(ValueError):
        lb.backend_action("c0", "explode")


def test_stats_count_the_last_minute(lb):
    app = TestApp(lb)
    for _ in range(4):
        app.get("/echo")
    app.get("/status?code=503", status=503)
    rows = {row["id"]: row for row in lb.stats()}
    assert rows["c0"]["requests_1m"] + rows["c1"]["requests_1m"] == 5
    assert rows["c0"]["errors_1m"] + rows["c1"]["errors_1m"] == 1
    assert rows["c0"]["p50_ms"] is not None and rows["c0"]["p95_ms"] >= rows["c0"]["p50_ms"]
    assert {row["state"] for row in rows.values()} == {"up"}


def test_settings_survive_a_round_trip_through_text():
    settings = parse_settings({
        "backends": "a:80 weight=2 id=one\n[::1]:8080 backup maxconn=0",
        "forwarded.trusted": "10.0.0.0/8, 192.0.2.1", "passive.status": "",
        "health.expect": "200-299 302", "affinity": "cookie", "affinity.when": "__ac",
        "pool.zmi.backends": "c:1", "pool.zmi.match": "path:*/manage* method:GET,POST",
        "slowstart": "30s", "queue.timeout": "500ms",
    })
    assert parse_settings(format_options(settings)) == settings
