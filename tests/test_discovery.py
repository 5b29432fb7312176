"""``resolve`` lines: parsing, the pure expansion, and the discovery loop's rules.

The loop's rules (keep the last good set, one WARNING per failure streak) are
also tested against a real dnsmasq in test_resolve.py; here the lookup is
handed in (the ``lookup=`` seam) to cover answers a hosts file cannot give.
"""

from __future__ import annotations

import logging
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zope_lb.backendlines import BackendSpec, as_dns_server, parse_backend_line
from zope_lb.discovery import (
    Answer,
    Discovery,
    LookupFailed,
    Target,
    expand,
    expand_all,
    next_lookup,
)
from zope_lb.errors import ConfigError
from zope_lb.settings import format_options, parse_settings


def test_resolve_flag_parses_and_is_written_back_as_given():
    spec = parse_backend_line("backend:8080 weight=2 maxconn=3 backup resolve")
    assert (spec.host, spec.port, spec.resolve, spec.weight, spec.maxconn, spec.backup) == (
        "backend", 8080, "a", 2, 3, True)
    assert spec.line == "backend:8080  weight=2  maxconn=3  backup  resolve"
    srv = parse_backend_line("_http._tcp.backend.local resolve=srv id=plone")
    assert (srv.host, srv.port, srv.resolve, srv.id) == ("_http._tcp.backend.local", 0,
                                                         "srv", "plone")
    assert srv.line == "_http._tcp.backend.local  id=plone  resolve=srv"


def test_settings_round_trip_keeps_resolve_lines_and_options():
    settings = parse_settings({
        "backends": "\nbackend:8080 resolve\n_http._tcp.zope.local resolve=srv\n10.0.0.5:8080",
        "resolve.interval": "2s", "resolve.server": "127.0.0.11"})
    assert settings.resolve_interval == 2.0
    assert settings.resolve_server == "127.0.0.11:53"
    options = format_options(settings)
    assert options["backends"].splitlines() == [
        "backend:8080  resolve", "_http._tcp.zope.local  resolve=srv", "10.0.0.5:8080"]
    assert parse_settings(options) == settings


@pytest.mark.parametrize("line, rule", [
    ("10.0.0.5:8080 resolve", "nothing to resolve"),
    ("[::1]:8080 resolve", "nothing to resolve"),
    ("backend resolve", "always include the port"),
    ("_http._tcp.backend.local:8080 resolve=srv", "SRV records give the port"),
    ("_http._tcp.backend.local resolve", "add resolve=srv"),
    ("backend:8080 resolve=a", "unknown flag"),
    ("backend:8080 resolve=", "unknown flag"),
    ("backend:8080 resolve resolve", "given twice"),
    ("_http.._tcp.x resolve=srv", "not a valid SRV name"),
])
def test_bad_resolve_lines_are_refused_naming_the_rule(line, rule):
    with pytest.raises(ConfigError, match=rule):
        parse_settings({"backends": line})


@pytest.mark.parametrize("value, result", [
    ("", ""), ("127.0.0.11", "127.0.0.11:53"), ("10.0.0.2:5353", "10.0.0.2:5353"),
    ("[::1]:53", "[::1]:53"), ("[fd00::2]", "[fd00::2]:53"), ("::1", "[::1]:53"),
])
def test_resolve_server_accepts_ip_and_port(value, result):
    assert as_dns_server(value) == result


@pytest.mark.parametrize("value", ["dns.local:53", "127.0.0.1:0", "127.0.0.1:99999",
                                   "127.0.0.1:x", "[::1", "1.2.3.4:５３"])
def test_resolve_server_refuses_what_is_not_an_ip_and_port(value):
    with pytest.raises(ConfigError, match="resolve.server"):
        parse_settings({"backends": "a:1", "resolve.server": value})


def test_one_primary_resolve_line_is_not_warned_about_as_a_proxy(caplog):
    parse_settings({"backends": "backend:8080 resolve"})
    assert "that is a proxy" not in caplog.text


def test_expand_gives_one_backend_per_address_with_the_line_flags():
    spec = parse_backend_line("backend:8080 weight=3 maxconn=2 resolve")
    specs = expand(spec, [Target("10.0.0.7", 8080), Target("fd00::7", 8080)])
    assert [(s.id, s.address, s.weight, s.maxconn, s.resolve) for s in specs] == [
        ("backend@10.0.0.7", "10.0.0.7:8080", 3, 2, ""),
        ("backend@fd00::7", "[fd00::7]:8080", 3, 2, ""),
    ]
    named = expand(parse_backend_line("backend:8080 id=zope resolve"),
                   [Target("10.0.0.7", 8080)])
    assert named[0].id == "zope@10.0.0.7"
    srv = expand(parse_backend_line("_http._tcp.b.local resolve=srv"),
                 [Target("10.0.0.7", 8081), Target("10.0.0.8", 8082, backup=True)])
    assert [(s.id, s.backup) for s in srv] == [("_http._tcp.b.local@10.0.0.7:8081", False),
                                              ("_http._tcp.b.local@10.0.0.8:8082", True)]


def test_expand_all_keeps_fixed_lines_and_never_adds_an_address_twice():
    fixed = parse_backend_line("10.0.0.7:8080")
    a = parse_backend_line("a.local:8080 resolve")
    b = parse_backend_line("b.local:8080 resolve")
    answers = {("a.local", 8080, "a"): [Target("10.0.0.7", 8080), Target("10.0.0.8", 8080)],
               ("b.local", 8080, "a"): [Target("10.0.0.8", 8080), Target("10.0.0.9", 8080)]}
    specs = expand_all([fixed, a, b], answers)
    assert [s.id for s in specs] == ["10.0.0.7:8080", "a.local@10.0.0.8", "b.local@10.0.0.9"]
    assert expand_all([a], {}) == ()  # no answer yet: nothing


@pytest.mark.parametrize("interval, ttl, result", [
    (5, None, 5), (5, 30, 5), (5, 2, 2), (5, 0, 1), (0.5, 10, 1), (5, 0.2, 1)])
def test_next_lookup_follows_a_shorter_ttl_with_a_floor_of_one_second(interval, ttl, result):
    assert next_lookup(interval, ttl) == result


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _discovery(answers):
    """A Discovery whose lookups return (or raise) the next item of ``answers``."""
    changes = []
    calls = iter(answers)

    def lookup(key, server, resolver):
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    clock = Clock()
    discovery = Discovery(lambda: changes.append(1), lookup=lookup, clock=clock)
    discovery.follow(parse_settings({"backends": "backend:8080 resolve",
                                     "resolve.interval": "5"}))
    return discovery, changes, clock


def test_failures_and_empty_answers_keep_the_last_good_set_with_one_warning(caplog):
    good = Answer((Target("10.0.0.1", 8080), Target("10.0.0.2", 8080)), 30.0)
    discovery, _, clock = _discovery([
        good, LookupFailed("backend: timed out"), Answer((), 30.0),
        RuntimeError("a resolver bug"), good])
    key = ("backend", 8080, "a")
    spec = parse_backend_line("backend:8080 resolve")
    caplog.set_level(logging.INFO, logger="zope_lb.discovery")
    assert discovery._look_up([key]) is True
    for _ in range(3):
        assert discovery._look_up([key]) is False
        assert [s.host for s in discovery.expand([spec])] == ["10.0.0.1", "10.0.0.2"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the last 2 addresses" in warnings[0].getMessage()
    assert discovery._look_up([key]) is False  # recovered with the same set: no change
    assert any("answers again" in r.getMessage() for r in caplog.records
               if r.levelno == logging.INFO)


def test_lookups_are_scheduled_by_the_interval_or_a_shorter_ttl():
    discovery, _, clock = _discovery([Answer((Target("10.0.0.1", 8080),), 2.0),
                                      LookupFailed("down"),
                                      Answer((Target("10.0.0.1", 8080),), None)])
    key = ("backend", 8080, "a")
    discovery._look_up([key])
    assert discovery._due[key] == clock.now + 2.0  # the TTL, shorter than 5
    discovery._look_up([key])
    assert discovery._due[key] == clock.now + 5.0  # a failure: the interval
    discovery._look_up([key])
    assert discovery._due[key] == clock.now + 5.0  # no TTL (system resolver)


def test_a_name_no_longer_configured_is_forgotten():
    discovery, _, _ = _discovery([Answer((Target("10.0.0.1", 8080),), 30.0)])
    discovery._look_up([("backend", 8080, "a")])
    discovery.follow(parse_settings({"backends": "other:8080 resolve"}))
    assert discovery.answers() == {}
    assert list(discovery._due) == [("other", 8080, "a")]


def test_the_thread_reports_a_change_and_stops_when_closed():
    answered = threading.Event()
    discovery = Discovery(answered.set, lookup=lambda key, server, resolver: Answer(
        (Target("10.0.0.1", 8080),), None))
    discovery.follow(parse_settings({"backends": "backend:8080 resolve"}))
    discovery.start()
    try:
        assert answered.wait(5)
        assert [s.id for s in discovery.expand([parse_backend_line("backend:8080 resolve")])
                ] == ["backend@10.0.0.1"]
    finally:
        discovery.close()
    assert discovery._thread is not None and not discovery._thread.is_alive()


def test_backend_spec_of_an_srv_name_has_no_port_in_its_address():
    assert BackendSpec("_http._tcp.x", 0, resolve="srv").address == "_http._tcp.x"


ips = st.builds(lambda a, b: f"10.0.{a}.{b}", st.integers(0, 3), st.integers(1, 4))


@given(fixed=st.lists(ips, max_size=4, unique=True),
       names=st.dictionaries(st.sampled_from(["a.local", "b.local", "c.local"]),
                             st.lists(ips, max_size=6), max_size=3))
def test_expansion_never_repeats_an_address_or_an_id(fixed, names):
    specs = [parse_backend_line(f"{ip}:8080") for ip in fixed]
    specs += [parse_backend_line(f"{name}:8080 resolve") for name in names]
    answers = {(name, 8080, "a"): [Target(ip, 8080) for ip in found]
               for name, found in names.items()}
    out = expand_all(specs, answers)
    assert len({s.address for s in out}) == len(out)
    assert len({s.id for s in out}) == len(out)
    assert out[:len(fixed)] == tuple(specs[:len(fixed)])  # fixed lines first, unchanged
    every = set(fixed) | {ip for found in names.values() for ip in found}
    assert {s.host for s in out} == every  # each address is served by someone
    assert all(not s.resolve for s in out)


def test_a_shorter_interval_applies_to_lookups_already_scheduled():
    discovery, _, clock = _discovery([Answer((Target("10.0.0.1", 8080),), None)])
    key = ("backend", 8080, "a")
    discovery._look_up([key])
    assert discovery._due[key] == clock.now + 5.0
    discovery.follow(parse_settings({"backends": "backend:8080 resolve",
                                     "resolve.interval": "1"}))
    assert discovery._due[key] == clock.now + 1.0
