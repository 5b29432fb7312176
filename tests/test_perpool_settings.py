"""Per-pool options, ``vhm.strip`` and ``health.port`` in the settings (issue 12).
Pure: no sockets, no clock."""

from __future__ import annotations

import pytest

from zope_lb import inicheck, state
from zope_lb.errors import ConfigError
from zope_lb.settings import (
    OPTIONS,
    PER_POOL,
    format_options,
    parse_settings,
)

BASE = {
    "backends": "127.0.0.1:8081\n127.0.0.1:8082",
    "pool.api.backends": "127.0.0.1:8091\n127.0.0.1:8092",
    "pool.api.match": "path:/++api++",
}
VOLTO = {
    **BASE,
    "pool.api.vhm.root": "/Plone/++api++",
    "pool.api.vhm.strip": "/++api++",
    "pool.api.vhm.base": "https://www.example.com",
    "pool.api.health.path": "/@@ok",
    "pool.api.health.port": "8081",
    "pool.api.health.timeout": "500ms",
    "pool.api.maxconn": "2",
    "pool.api.affinity": "cookie",
    "pool.api.affinity.when": "__ac",
    "pool.api.slowstart": "30s",
}


def _error(values: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_settings(values)
    return info.value


def test_a_pool_runs_with_its_own_values_and_inherits_the_rest() -> None:
    settings = parse_settings({**VOLTO, "health.path": "/", "health.timeout": "3",
                               "health.rise": "4", "timeout.read": "60"})
    api = settings.pool_settings(settings.pools[0])
    assert (api.vhm_root, api.vhm_strip, api.vhm_base) == (
        "/Plone/++api++", "/++api++", "https://www.example.com")
    assert (api.health_path, api.health_port, api.health_timeout) == ("/@@ok", 8081, 0.5)
    assert (api.maxconn, api.affinity, api.affinity_when, api.slowstart) == (
        2, "cookie", "__ac", 30.0)
    # unset ones inherit the top-level value, set or default
    assert (api.health_rise, api.timeout_read, api.health_fall) == (4, 60.0, 3)
    # the default pool keeps the top-level ones
    assert (settings.vhm_root, settings.vhm_strip, settings.health_path) == ("", "", "/")
    assert (settings.health_port, settings.health_timeout, settings.maxconn) == (0, 3.0, 4)


def test_a_pool_without_options_runs_with_the_top_level_settings_object() -> None:
    settings = parse_settings(BASE)
    assert settings.pool_settings(settings.pools[0]) is settings


def test_underscore_spelling_is_the_same_key() -> None:
    settings = parse_settings({**BASE, "pool.api.health_path": "/@@ok"})
    assert settings.pool_settings(settings.pools[0]).health_path == "/@@ok"
    error = _error({**BASE, "pool.api.health_path": "/a", "pool.api.health.path": "/b"})
    assert "given twice" in str(error)


@pytest.mark.parametrize(("key", "value", "rule"), [
    # the top-level converters, with their bounds
    ("pool.api.maxconn", "10001", "from 0 to 10000"),
    ("pool.api.health.port", "65536", "from 0 to 65535"),
    ("pool.api.health.port", "８０８１", "digits 0-9"),
    ("pool.api.health.interval", "50ms", "from 100 ms"),
    ("pool.api.health.path", "healthz", "starting with '/'"),
    ("pool.api.vhm.root", "/Plone/../x", "'..' segments"),
    ("pool.api.vhm.strip", "++api++", "starting with '/'"),
    ("pool.api.vhm.strip", "/a/../b", "'..' segments"),
    ("pool.api.affinity", "sticky", "none or cookie"),
    # options that are one value for the whole balancer
    ("pool.api.timeout.read", "30", "one value for the whole balancer"),
    ("pool.api.admin.users", "a:b", "one value for the whole balancer"),
    ("pool.api.forwarded.trusted", "127.0.0.1", "one value for the whole balancer"),
    ("pool.api.health.endpoint", "/h", "one value for the whole balancer"),
    ("pool.api.prefix", "/x", "one value for the whole balancer"),
    ("pool.api.pools", "x", "unknown pool key"),
    ("pool.api.vhm.rot", "/Plone", "unknown pool key"),
])
def test_a_bad_per_pool_key_is_refused_naming_it(key, value, rule) -> None:
    error = _error({**BASE, key: value})
    assert error.key == key
    assert rule in str(error)


def test_the_refusal_says_what_a_pool_may_set() -> None:
    message = str(_error({**BASE, "pool.api.retries": "1"}))
    for name in ("vhm.strip", "health.port", "maxconn", "slowstart", "match"):
        assert name in message


def test_a_per_pool_secret_is_never_echoed() -> None:
    error = _error({**BASE, "pool.api.health.auth": "no-colon-password"})
    assert "no-colon-password" not in str(error)


@pytest.mark.parametrize(("values", "key", "rule"), [
    ({"pool.api.vhm.strip": "/++api++"}, "pool.api.vhm.strip", "needs vhm.root or vhm.base"),
    ({"pool.api.vhm.prefix": "/site"}, "pool.api.vhm.prefix", "needs vhm.root or vhm.base"),
    ({"pool.api.health.zeo": "true"}, "pool.api.health.zeo", "needs health.auth"),
    ({"pool.api.vhm.root": "/Plone", "pool.api.vhm.prefix": "/site",
      "pool.api.vhm.strip": "/x"}, "pool.api.vhm.strip", "cannot be combined"),
    ({"vhm.strip": "/x"}, "vhm.strip", "needs vhm.root or vhm.base"),
    ({"health.auth": "a:b", "pool.api.health.zeo": "true", "pool.api.health.port": "8081"},
     "pool.api.health.zeo", "cannot be combined with health.port"),
])
def test_combinations_are_checked_on_each_pools_effective_settings(values, key, rule) -> None:
    error = _error({**BASE, **values})
    assert error.key == key
    assert rule in str(error)


def test_a_pool_may_lean_on_the_top_level_for_a_combination() -> None:
    settings = parse_settings({**BASE, "vhm.root": "/Plone", "health.auth": "admin:s",
                               "pool.api.vhm.strip": "/++api++", "pool.api.health.zeo": "on"})
    api = settings.pool_settings(settings.pools[0])
    assert (api.vhm_root, api.vhm_strip, api.health_zeo) == ("/Plone", "/++api++", True)


def test_format_options_round_trips_per_pool_keys() -> None:
    settings = parse_settings(VOLTO)
    text = format_options(settings)
    assert text["pool.api.vhm.strip"] == "/++api++"
    assert text["pool.api.health.port"] == "8081"
    assert text["pool.api.health.timeout"] == "0.5"
    assert "pool.api.health.rise" not in text  # inherited: not written, stays inherited
    assert parse_settings(text) == settings
    assert state.canonical("pool.api.health.timeout", "500ms") == "0.5"
    assert state.canonical("pool.api.maxconn", " 2 ") == "2"


def test_per_pool_is_a_set_of_option_names() -> None:
    names = {o.name for o in OPTIONS}
    assert names >= PER_POOL
    assert {"vhm.strip", "health.port"} <= PER_POOL


def test_check_names_bad_per_pool_keys(tmp_path) -> None:
    ini = tmp_path / "lb.ini"
    ini.write_text(
        "[app:main]\nuse = egg:zope_lb\nbackends =\n    127.0.0.1:8081\n    127.0.0.1:8082\n"
        "pool.api.backends = 127.0.0.1:8091\npool.api.match = path:/++api++\n"
        "pool.api.helth.path = /@@ok\npool.api.timeout.read = 3\n"
        "pool.api.health.port = 70000\npool.api.vhm.root = /Plone/++api++\n"
        "\n[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:0\n")
    problems = [str(p) for p in inicheck.check_ini(str(ini)).problems]
    text = "\n".join(problems)
    assert "pool.api.helth.path: unknown pool key; did you mean pool.api.health.path?" in text
    assert "pool.api.timeout.read: timeout.read is one value for the whole balancer" in text
    assert "pool.api.health.port '70000': must be a whole number from 0 to 65535" in text
    assert len(problems) == 3  # pool.api.vhm.root is fine


# -- vhm.strip in the VHM path (pure) ----------------------------------------------

ORIGIN = ("https", "www.example.com", "443")
API = "/VirtualHostBase/https/www.example.com:443/Plone/++api++/VirtualHostRoot"


@pytest.mark.parametrize(("target", "expected"), [
    ("/++api++/news?b_size=5", f"{API}/news?b_size=5"),
    ("/++api++", f"{API}/"),
    ("/++api++/", f"{API}/"),
    ("/%2B%2Bapi%2B%2B/news", f"{API}/news"),  # compared decoded, as the rule matches
    ("/++api++/caf%C3%A9/%2F", f"{API}/caf%C3%A9/%2F"),  # the rest keeps its spelling
    ("/++api++x/news", f"{API}/++api++x/news"),  # only a whole segment is the prefix
    ("/news", f"{API}/news"),  # not under it: whole, never a _vh_ segment
])
def test_vhm_strip_removes_the_public_prefix_without_vh_segments(target, expected) -> None:
    from zope_lb.headers import vhm_target

    out = vhm_target(target, ORIGIN, "/Plone/++api++", strip="/++api++")
    assert out == expected
    assert "_vh_" not in out
