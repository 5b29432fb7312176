"""Tests for ``zope_lb.settings``: the option schema, its strict converters and
the backend-line rules. Pure: no sockets, no clock."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

import pytest

from zope_lb import settings
from zope_lb.backendlines import BackendSpec, parse_backend_line, parse_backends
from zope_lb.errors import ConfigError, ZopeLBError
from zope_lb.settings import OPTIONS, Settings, parse_settings


def _config_error(values: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_settings(values)
    return info.value


def _backends_error(value: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_backends(value)
    return info.value


# -- backend lines: every rule ------------------------------------------------

# (the bad line, words its rule must contain)
BAD_BACKEND_LINES = [
    ("http://a:8080", "drop the 'http://' prefix"),
    ("https://a:8080", "drop the 'https://' prefix"),
    ("HTTP://a:8080", "drop the 'HTTP://' prefix"),
    ("zope1", "always include the port number"),
    ("[::1]", "always include the port number"),
    ("[::1]8080", "always include the port number"),
    ("zope1:0", "the port must be a number from 1 to 65535"),
    ("zope1:65536", "the port must be a number from 1 to 65535"),
    ("zope1:http", "the port must be a number from 1 to 65535"),
    ("zope1:", "the port must be a number from 1 to 65535"),
    ("zope1:-1", "the port must be a number from 1 to 65535"),
    ("[::1]:x", "the port must be a number from 1 to 65535"),
    ("zope1:8080/site", "without a path"),
    ("::1:8080", "write IPv6 addresses in brackets"),
    ("fe80::1:8080", "write IPv6 addresses in brackets"),
    ("[::g]:8080", "'::g' is not an IPv6 address"),
    ("[10.0.0.1]:8080", "'10.0.0.1' is not an IPv6 address"),
    ("[::1:8080", "missing its closing ']'"),
    ("zope_1:8080", "'zope_1' is not a valid host name"),
    ("-zope:8080", "'-zope' is not a valid host name"),
    ("zope..one:8080", "'zope..one' is not a valid host name"),
    ("z\u00f6pe:8080", "is not a valid host name"),
    (":8080", "the host is missing"),
    ("999.1.1.1:8080", "'999.1.1.1' is not a valid IPv4 address"),
    ("10.0.0:8080", "'10.0.0' is not a valid IPv4 address"),
    ("a:80 weight=x", "'weight=x': must be a whole number"),
    ("a:80 weight=-1", "'weight=-1': must be a whole number from 0 to 100"),
    ("a:80 weight=", "'weight=': must be a whole number"),
    ("a:80 maxconn=many", "'maxconn=many': must be a whole number"),
    ("a:80 maxconn=-2", "'maxconn=-2': must be a whole number from 0 to 10000"),
    ("a:80 id=-x", "'id=-x': an id is 1-64 letters, digits"),
    ("a:80 id=", "'id=': an id is 1-64 letters, digits"),
    ("a:80 id=a/b", "'id=a/b': an id is 1-64 letters, digits"),
    ("a:80 id=" + "x" * 65, "an id is 1-64 letters, digits"),
    ("a:80 heavy", "unknown flag 'heavy'; known flags: weight=N, backup"),
    ("a:80 backup=yes", "unknown flag 'backup=yes'"),
    ("a:80 weight", "unknown flag 'weight'"),
    ("a:80 weight=2 weight=3", "flag 'weight' is given twice"),
    ("a:80 backup backup", "flag 'backup' is given twice"),
    ("a:80 id=x id=y", "flag 'id' is given twice"),
    ("a:80 maxconn=1 maxconn=1", "flag 'maxconn' is given twice"),
]


@pytest.mark.parametrize("line, rule", BAD_BACKEND_LINES)
def test_bad_backend_line_names_key_line_value_and_rule(line: str, rule: str) -> None:
    error = _config_error({"backends": f"good:8080\n{line}"})
    message = str(error)
    assert message.startswith("backends line 2 ")
    assert repr(line) in message
    assert rule in message
    assert (error.key, error.value, error.line) == ("backends", line, 2)
    assert rule in error.rule


def test_config_error_is_a_value_error_and_a_zope_lb_error() -> None:
    error = _backends_error("http://a:80")
    assert isinstance(error, ValueError)
    assert isinstance(error, ZopeLBError)
    assert (
        str(error)
        == "backends line 1 'http://a:80': drop the 'http://' prefix, write host:port"
    )


def test_line_numbers_count_blank_and_comment_lines() -> None:
    error = _backends_error("# the cluster\n\na:80\n  \nb:80 flag  # oops\n")
    assert error.line == 5
    assert error.value == "b:80 flag"  # the comment is not part of the value


def test_ini_value_counts_from_the_line_under_backends() -> None:
    # An ini "backends =" value starts with an empty line; line 1 is the first backend.
    error = _backends_error("\na:80\nhttp://b:80")
    assert error.line == 2
    assert str(error).startswith("backends line 2 'http://b:80'")


@pytest.mark.parametrize(
    "lines, first, again, rule",
    [
        ("a:80\nb:80\na:80", 1, 3, "duplicate backend 'a:80', already on line 1"),
        (
            "a:80\n\nb:80 id=x\na:80 weight=3",
            1,
            4,
            "duplicate backend 'a:80', already on line 1",
        ),
        (
            "[::1]:80\n[::1]:80 backup",
            1,
            2,
            "duplicate backend '[::1]:80', already on line 1",
        ),
        (
            "a:80 id=one\nb:80\nc:80 id=one",
            1,
            3,
            "duplicate id 'one', already on line 1",
        ),
    ],
)
def test_duplicate_backend_or_id_names_the_first_line(
    lines: str, first: int, again: int, rule: str
) -> None:
    error = _backends_error(lines)
    assert error.line == again
    assert rule in str(error)
    assert f"line {first}" in error.rule


@pytest.mark.parametrize(
    "lines",
    [
        # Host names are case-insensitive (RFC 4343): the same Zope client twice.
        "Zope1:8080\nzope1:8080",
        # The same IPv6 address spelled twice.
        "[::1]:8080\n[0:0::1]:8080",
    ],
)
def test_duplicate_backend_spelled_differently_is_refused(lines: str) -> None:
    error = _backends_error(lines)
    assert error.line == 2
    assert "duplicate backend" in error.rule
    assert "already on line 1" in error.rule


@pytest.mark.parametrize("value", ["", "\n\n", "# nobody here\n   \n", [], ["", "# x"]])
def test_empty_backend_list_is_refused(value: object) -> None:
    error = _backends_error(value)
    assert error.key == "backends"
    assert error.line is None
    assert "at least one backend 'host:port' is required" in str(error)
    assert str(error).startswith(f"backends {value!r}")


def test_non_string_list_item_is_refused_with_its_line() -> None:
    error = _backends_error(["a:80", 8080])
    assert error.line == 2
    assert "each backend must be a 'host:port' string" in str(error)
    assert "8080" in str(error)


def test_backends_are_required() -> None:
    error = _config_error({"strategy": "round_robin"})
    assert error.key == "backends"
    assert "is required" in str(error)


# -- backend lines: valid -----------------------------------------------------


@pytest.mark.parametrize(
    "line, host, port",
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("10.0.0.255:1", "10.0.0.255", 1),
        ("zope1:65535", "zope1", 65535),
        ("localhost:8080", "localhost", 8080),
        ("zope-1.cluster.example.org:8080", "zope-1.cluster.example.org", 8080),
        ("ZOPE1:8080", "ZOPE1", 8080),
        ("[::1]:8080", "::1", 8080),
        ("[fe80::1:2]:80", "fe80::1:2", 80),
        ("[::ffff:10.0.0.1]:80", "::ffff:10.0.0.1", 80),
    ],
)
def test_valid_addresses(line: str, host: str, port: int) -> None:
    (spec,) = parse_backends(line)
    assert (spec.host, spec.port) == (host, port)
    assert spec.id == spec.address
    assert (spec.weight, spec.backup, spec.maxconn) == (1, False, None)


def test_flags_are_parsed_in_any_order() -> None:
    spec = parse_backend_line("zope2:8081  backup id=z2.b maxconn=8 weight=0")
    assert spec == BackendSpec(
        "zope2", 8081, weight=0, backup=True, maxconn=8, id="z2.b"
    )


@pytest.mark.parametrize(
    "spec, address",
    [
        (BackendSpec("zope1", 8080), "zope1:8080"),
        (BackendSpec("10.0.0.1", 80), "10.0.0.1:80"),
        (BackendSpec("::1", 8080), "[::1]:8080"),
        (BackendSpec("fe80::2", 1), "[fe80::2]:1"),
    ],
)
def test_backend_spec_address(spec: BackendSpec, address: str) -> None:
    assert spec.address == address


@pytest.mark.parametrize(
    "line, expected",
    [
        ("a:80", "a:80"),
        ("[::1]:80", "[::1]:80"),
        ("a:80 weight=1 backup", "a:80  backup"),
        (
            "a:80 backup maxconn=0 weight=3 id=first",
            "a:80  id=first  weight=3  maxconn=0  backup",
        ),
    ],
)
def test_backend_spec_line_round_trips(line: str, expected: str) -> None:
    spec = parse_backend_line(line)
    assert spec.line == expected
    assert parse_backend_line(spec.line) == spec


def test_comments_and_blank_lines_are_skipped() -> None:
    text = """
        # primaries
        zope1:8080   # the first one
        zope2:8080

        # and a spare
        zope3:8080 backup
    """
    specs = parse_backends(text)
    assert [s.address for s in specs] == ["zope1:8080", "zope2:8080", "zope3:8080"]
    assert [s.backup for s in specs] == [False, False, True]


def test_list_input_is_accepted_like_text() -> None:
    from_list = parse_backends(["a:80", "  ", "b:81 weight=2", "# c:82"])
    from_text = parse_backends("a:80\n  \nb:81 weight=2\n# c:82")
    assert from_list == from_text
    assert parse_settings({"backends": ("a:80", "b:81")}).backends == parse_backends(
        "a:80\nb:81"
    )


def test_backend_specs_are_frozen() -> None:
    spec = parse_backend_line("a:80")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.port = 81  # type: ignore[misc]


# -- options ------------------------------------------------------------------


def test_defaults() -> None:
    result = parse_settings({"backends": "a:80\nb:80"})
    assert result == Settings(backends=parse_backends("a:80\nb:80"))
    assert result.strategy == "round_robin"
    assert result.maxconn == 4
    assert result.timeout_connect == 5.0
    assert result.timeout_read == 300.0
    assert result.retries == 2
    assert result.preserve_host is True
    assert result.forwarded_trusted == ()
    assert result.prefix == "/"
    assert result.fallback is False
    assert result.passive_fall == 3
    assert result.passive_cooldown == 10.0


def test_defaults_the_issues_name() -> None:
    """The defaults issues 3 to 6 give, checked against their own text."""
    result = parse_settings({"backends": "a:80\nb:80"})
    assert (result.queue_size, result.queue_timeout) == (256, 30.0)
    assert result.hash_load_factor == 1.25
    assert result.health_path == "/" and result.health_method == "GET"
    assert (result.health_interval, result.health_timeout) == (5.0, 2.0)
    assert (result.health_rise, result.health_fall) == (2, 3)
    assert result.notify_min_healthy == 1
    assert result.admin_path == "/__zope_lb__"


@pytest.mark.parametrize(("values", "key", "rule"), [
    ({"pool.zmi.backends": "z:1"}, "pool.zmi.match", "is required for a named pool"),
    ({"pool.zmi.match": "path:/manage*"}, "pool.zmi.backends", "is required for a named pool"),
    ({"pool.zmi.backends": "z:1", "pool.zmi.match": "path:/x", "pool.zmi.weight": "2"},
     "pool.zmi.weight", "unknown pool key"),
    ({"pool.zmi.backends": "z:1", "pool.zmi.match": "url:/manage"},
     "pool.zmi.match", "is not a rule; write path:/prefix"),
    ({"pool.zmi.backends": "z:1", "pool.zmi.match": "path:manage"},
     "pool.zmi.match", "a path rule starts with '/'"),
    ({"pool.zmi.backends": "z:1", "pool.zmi.match": "method:post"},
     "pool.zmi.match", "methods are upper-case names"),
    ({"pool.zmi.backends": "z:1", "pool.zmi.match": "header:X(Bad)"},
     "pool.zmi.match", "is not a header name"),
    ({"pool.zmi.backends": "z:1", "pool.zmi.match": "cookie:"},
     "pool.zmi.match", "needs an argument"),
    ({"pool.zmi.backends": "http://z:1", "pool.zmi.match": "path:/manage"},
     "pool.zmi.backends", "drop the 'http://'"),
])
def test_bad_pool_refused_at_start_up_naming_key_and_rule(values, key, rule) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"backends": "a:80\nb:80", **values})
    assert caught.value.key == key
    assert rule in str(caught.value)


def test_settings_defaults_agree_with_the_options_table() -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    # named pools come from pool.NAME.* keys, not from one option
    assert set(fields) == {o.attribute for o in OPTIONS} | {"pools"}
    for option in OPTIONS:
        if option.default is settings.REQUIRED:
            assert fields[option.attribute].default is dataclasses.MISSING
        else:
            assert fields[option.attribute].default == option.default, option.name


def test_settings_are_frozen() -> None:
    result = parse_settings({"backends": "a:80\nb:80"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.maxconn = 9  # type: ignore[misc]


def test_dotted_and_underscore_names_are_both_accepted() -> None:
    result = parse_settings(
        {
            "backends": "a:80\nb:80",
            "timeout.read": "60",
            "timeout_connect": "2",
            "passive.fall": "5",
            "passive_cooldown": "1m",
            "forwarded_trusted": "10.0.0.1",
        }
    )
    assert result.timeout_read == 60.0
    assert result.timeout_connect == 2.0
    assert result.passive_fall == 5
    assert result.passive_cooldown == 60.0
    assert result.forwarded_trusted == (ipaddress.ip_network("10.0.0.1"),)


def test_python_values_are_accepted_as_well_as_strings() -> None:
    result = parse_settings(
        {
            "backends": ["a:80", "b:80"],
            "maxconn": 8,
            "timeout_read": 2.5,
            "preserve_host": False,
            "retries": 0,
        }
    )
    assert (
        result.maxconn,
        result.timeout_read,
        result.preserve_host,
        result.retries,
    ) == (
        8,
        2.5,
        False,
        0,
    )


def test_maxconn_of_falls_back_to_the_global_maxconn() -> None:
    result = parse_settings(
        {"backends": "a:80\nb:80 maxconn=1\nc:80 maxconn=0", "maxconn": "6"}
    )
    a, b, c = result.backends
    assert result.maxconn_of(a) == 6
    assert result.maxconn_of(b) == 1
    assert (
        result.maxconn_of(c) == 0
    )  # 0 on the line means unlimited, not "use the global"


def test_unknown_option_names_it_and_lists_the_known_ones() -> None:
    error = _config_error({"backends": "a:80", "timeout": "5"})
    message = str(error)
    assert message.startswith("timeout '5': unknown option; known options: ")
    for option in OPTIONS:
        assert option.name in message


@pytest.mark.parametrize(
    "values, key, other",
    [
        ({"timeout.read": "5", "timeout_read": "6"}, "timeout_read", "timeout.read"),
        # "also as" must name the *other* spelling, the one given first.
        ({"passive_fall": "5", "passive.fall": "6"}, "passive.fall", "passive_fall"),
        (
            {"forwarded.trusted": "", "forwarded_trusted": "10.0.0.1"},
            "forwarded_trusted",
            "forwarded.trusted",
        ),
    ],
)
def test_option_given_twice_is_refused(values: dict, key: str, other: str) -> None:
    error = _config_error({"backends": "a:80", **values})
    assert error.key == key
    assert error.value == values[key]
    assert f"given twice (also as {other!r})" in str(error)
    assert str(error).startswith(f"{key} {values[key]!r}: ")


@pytest.mark.parametrize(
    "text, expected",
    [
        *[(t, True) for t in ("yes", "YES", "on", "On", "1", "true", "True", " true ")],
        *[
            (t, False)
            for t in ("no", "No", "off", "OFF", "0", "false", "False", " no ")
        ],
        (True, True),
        (False, False),
        (1, True),
        (0, False),
    ],
)
def test_booleans_accepted(text: object, expected: bool) -> None:
    assert (
        parse_settings({"backends": "a:80\nb:80", "fallback": text}).fallback
        is expected
    )
    assert (
        parse_settings({"backends": "a:80\nb:80", "preserve_host": text}).preserve_host
        is expected
    )


@pytest.mark.parametrize(
    "text", ["yes please", "", "y", "n", "2", "truee", "none", None]
)
@pytest.mark.parametrize("key", ["preserve_host", "fallback"])
def test_booleans_are_strict(key: str, text: object) -> None:
    error = _config_error({"backends": "a:80", key: text})
    assert error.key == key
    assert (
        str(error)
        == f"{key} {text!r}: must be true or false (also yes/no, on/off, 1/0)"
    )


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("5", 5.0),
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        (" 10 s ", 10.0),
        (".5", 0.5),
        ("1.", 1.0),
        (7, 7.0),
        (0.25, 0.25),
    ],
)
@pytest.mark.parametrize("key", ["timeout.connect", "timeout.read", "passive.cooldown"])
def test_durations_accepted(key: str, text: object, seconds: float) -> None:
    result = parse_settings({"backends": "a:80\nb:80", key: text})
    assert getattr(result, key.replace(".", "_")) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text, rule",
    [
        ("0", "must be from 1 ms to 1 day"),
        ("0ms", "must be from 1 ms to 1 day"),
        (0, "must be from 1 ms to 1 day"),
        (-1, "must be from 1 ms to 1 day"),
        ("-1", "must be a duration such as 5, 2.5, 500ms, 30s or 2m"),
        ("5h", "must be a duration such as 5, 2.5, 500ms, 30s or 2m"),
        ("abc", "must be a duration such as 5, 2.5, 500ms, 30s or 2m"),
        ("", "must be a duration such as 5, 2.5, 500ms, 30s or 2m"),
        ("1e3", "must be a duration such as 5, 2.5, 500ms, 30s or 2m"),
        (True, "must be a duration such as 5, 2.5, 500ms, 30s or 2m"),
    ],
)
@pytest.mark.parametrize("key", ["timeout.connect", "timeout.read", "passive.cooldown"])
def test_durations_refused(key: str, text: object, rule: str) -> None:
    error = _config_error({"backends": "a:80", key: text})
    assert str(error) == f"{key} {text!r}: {rule}"


@pytest.mark.parametrize(
    "key, text, rule",
    [
        ("maxconn", "four", "must be a whole number (digits 0-9)"),
        ("maxconn", "-1", "must be a whole number from 0 to 10000"),
        ("maxconn", "2.5", "must be a whole number (digits 0-9)"),
        ("maxconn", True, "must be a whole number"),
        ("retries", "-1", "must be a whole number from 0 to 100"),
        ("retries", "", "must be a whole number (digits 0-9)"),
        ("passive.fall", "0", "must be a whole number from 1 to 100"),
        ("passive.fall", 0, "must be a whole number from 1 to 100"),
    ],
)
def test_whole_numbers_refused(key: str, text: object, rule: str) -> None:
    error = _config_error({"backends": "a:80", key: text})
    assert str(error) == f"{key} {text!r}: {rule}"


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("maxconn", "0", 0),
        ("maxconn", " 12 ", 12),
        ("retries", "0", 0),
        ("passive.fall", "1", 1),
    ],
)
def test_whole_numbers_accepted(key: str, text: str, expected: int) -> None:
    result = parse_settings({"backends": "a:80\nb:80", key: text})
    assert getattr(result, key.replace(".", "_")) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", ()),
        ("10.0.0.1", ("10.0.0.1/32",)),
        ("10.0.0.0/8 192.168.1.7", ("10.0.0.0/8", "192.168.1.7/32")),
        ("10.0.0.0/8,::1", ("10.0.0.0/8", "::1/128")),
        ("\n  10.1.2.3/16\n  fd00::/8\n", ("10.1.0.0/16", "fd00::/8")),
        (
            ["10.0.0.1", "10.0.0.2, 10.0.0.3"],
            ("10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"),
        ),
    ],
)
def test_forwarded_trusted_accepted(value: object, expected: tuple[str, ...]) -> None:
    result = parse_settings({"backends": "a:80\nb:80", "forwarded.trusted": value})
    assert result.forwarded_trusted == tuple(ipaddress.ip_network(n) for n in expected)


@pytest.mark.parametrize(
    "bad", ["proxy.example.org", "10.0.0.0/33", "300.1.1.1", "10.0.0.1/x"]
)
def test_forwarded_trusted_refused(bad: str) -> None:
    error = _config_error({"backends": "a:80", "forwarded.trusted": f"10.0.0.1 {bad}"})
    assert error.key == "forwarded.trusted"
    assert error.value == f"10.0.0.1 {bad}"
    assert (
        f"{bad!r} is not an IP address or network (e.g. 10.0.0.1, 10.0.0.0/8)"
        in str(error)
    )


@pytest.mark.parametrize(
    "value, expected", [("/", "/"), ("/plone", "/plone"), (" /a/b/ ", "/a/b/")]
)
def test_prefix_accepted(value: str, expected: str) -> None:
    assert (
        parse_settings({"backends": "a:80\nb:80", "prefix": value}).prefix == expected
    )


@pytest.mark.parametrize(
    "value, rule",
    [
        ("plone", "must be a path starting with '/'"),
        ("", "must be a path starting with '/'"),
        ("http://x/plone", "must be a path starting with '/'"),
        ("/a b", "must be a plain path, without spaces, '?' or '#'"),
        ("/a?b=1", "must be a plain path, without spaces, '?' or '#'"),
        ("/a#top", "must be a plain path, without spaces, '?' or '#'"),
        ("/a\tb", "must be a plain path, without spaces, '?' or '#'"),
    ],
)
def test_prefix_refused(value: str, rule: str) -> None:
    error = _config_error({"backends": "a:80", "prefix": value})
    assert str(error) == f"prefix {value!r}: {rule}"


def test_strategy_accepted() -> None:
    assert parse_settings(
        {"backends": "a:80\nb:80", "strategy": " round_robin "}
    ).strategy == ("round_robin")


def test_unknown_strategy_lists_the_known_ones() -> None:
    error = _config_error({"backends": "a:80", "strategy": "fastest"})
    assert error.key == "strategy"
    assert str(error).startswith(
        "strategy 'fastest': unknown strategy; choose one of: "
    )
    assert "round_robin" in str(error)


# -- the single-primary warning -----------------------------------------------


@pytest.mark.parametrize(
    "backends, primaries",
    [("a:80", 1), ("a:80\nb:80 backup", 1), ("a:80 backup\nb:80 backup", 0)],
)
def test_fewer_than_two_primaries_is_warned_about(
    caplog: pytest.LogCaptureFixture, backends: str, primaries: int
) -> None:
    with caplog.at_level(logging.WARNING, logger="zope_lb.settings"):
        parse_settings({"backends": backends})
    records = [r for r in caplog.records if r.name == "zope_lb.settings"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert f"only {primaries} primary backend" in records[0].getMessage()
    assert "two or more" in records[0].getMessage()


@pytest.mark.parametrize("backends", ["a:80\nb:80", "a:80\nb:80\nc:80 backup"])
def test_two_primaries_are_not_warned_about(
    caplog: pytest.LogCaptureFixture, backends: str
) -> None:
    with caplog.at_level(logging.DEBUG, logger="zope_lb.settings"):
        parse_settings({"backends": backends})
    assert [r for r in caplog.records if r.name == "zope_lb.settings"] == []


# -- the README option table --------------------------------------------------


def test_options_table_lists_every_option() -> None:
    table = settings.options_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert table.startswith("#### Balancing\n\n| option | default | meaning |\n|---|---|---|\n")
    assert len(rows) == len(OPTIONS) + len(settings.POOL_FIELDS) + 1  # + pool.NAME.OPTION
    for field in settings.POOL_FIELDS:
        assert sum(row.startswith(f"| `pool.NAME.{field}` | ") for row in rows) == 1
    for option in OPTIONS:
        (row,) = [row for row in rows if row.startswith(f"| `{option.name}` | ")]
        assert option.doc in row
        assert (option.default_text or str(option.default)) in row
    assert "(required)" in rows[0]


@pytest.mark.parametrize("values, key", [
    ({"backends": 5}, "backends"),
    ({"backends": "a:80\nb:80", "forwarded.trusted": 5}, "forwarded.trusted"),
])
def test_values_of_the_wrong_type_are_config_errors(values, key):
    with pytest.raises(ConfigError) as info:
        parse_settings(values)
    assert info.value.key == key


def test_a_clear_text_admin_password_is_refused_and_never_echoed():
    with pytest.raises(ConfigError) as info:
        parse_settings({"backends": "a:80\nb:80", "admin.users": "admin:hunter2"})
    assert "hunter2" not in str(info.value)
    assert "zope-lb passwd" in str(info.value)


# -- bounds on every number (issue 11 item 6) ------------------------------------------

RANGE = "must be a whole number from"


@pytest.mark.parametrize(
    "key, text, rule",
    [
        ("maxconn", "100000000", f"{RANGE} 0 to 10000"),
        ("maxconn", "10001", f"{RANGE} 0 to 10000"),
        ("retries", "101", f"{RANGE} 0 to 100"),
        ("queue.size", "100001", f"{RANGE} 0 to 100000"),
        ("health.rise", "101", f"{RANGE} 1 to 100"),
        ("health.fall", "0", f"{RANGE} 1 to 100"),
        ("passive.fall", "1000", f"{RANGE} 1 to 100"),
        ("notify.min_healthy", "1001", f"{RANGE} 0 to 1000"),
        ("health.interval", "0.0001", "must be from 100 ms to 1 day"),
        ("health.interval", "50ms", "must be from 100 ms to 1 day"),
        ("health.interval", "1441m", "must be from 100 ms to 1 day"),
        ("timeout.read", "0.0001", "must be from 1 ms to 1 day"),
        ("timeout.read", "86401", "must be from 1 ms to 1 day"),
        ("timeout.connect", float("inf"), "must be from 1 ms to 1 day"),
        ("timeout.connect", float("nan"), "must be from 1 ms to 1 day"),
        ("queue.timeout", "1441m", "must be from 1 ms to 1 day"),
        ("health.timeout", "999999", "must be from 1 ms to 1 day"),
        ("passive.cooldown", "0.5ms", "must be from 1 ms to 1 day"),
        ("slowstart", "86401", "must be from 1 ms to 1 day"),
        ("hash.load_factor", "nan", "must be a number such as 1.25"),
        ("hash.load_factor", "1_5", "must be a number such as 1.25"),
    ],
)
def test_numbers_out_of_bounds_are_refused(key: str, text: object, rule: str) -> None:
    error = _config_error({"backends": "a:80\nb:80", key: text})
    assert (error.key, error.rule) == (key, rule)
    assert str(error) == f"{key} {text!r}: {rule}"


@pytest.mark.parametrize(
    "key, text",
    [
        ("maxconn", "10000"), ("maxconn", "0"), ("retries", "100"),
        ("queue.size", "100000"), ("health.rise", "100"), ("passive.fall", "100"),
        ("health.interval", "100ms"), ("health.interval", "0"), ("health.interval", "1440m"),
        ("timeout.read", "86400"), ("timeout.connect", "1ms"), ("slowstart", "0"),
        ("notify.min_healthy", "1000"),
    ],
)
def test_numbers_at_their_bounds_are_accepted(key: str, text: str) -> None:
    parse_settings({"backends": "a:80\nb:80", key: text})


@pytest.mark.parametrize(
    "values",
    [
        {"maxconn": "\uff18"},  # fullwidth 8
        {"retries": "\u0663"},  # Arabic-Indic 3
        {"health.rise": "\u0969"},  # Devanagari 3
        {"timeout.read": "\uff13\uff10"},
        {"queue.timeout": "\u0663s"},
        {"hash.load_factor": "\u0661.5"},
        {"health.expect": "\u0662\u0660\u0660"},
        {"passive.status": "50\u0662"},
        {"vhm.base": "https://www.example.com:\uff18\uff10"},
        {"health.host": "www.example.org:\uff18\uff10"},
        {"health.host": "www.example.org:70000"},
    ],
)
def test_unicode_digits_are_not_numbers(values: dict) -> None:
    error = _config_error({"backends": "a:80\nb:80", **values})
    assert error.key == next(iter(values))


@pytest.mark.parametrize(
    "line, rule",
    [
        ("a:\uff18\uff10\uff18\uff11", "the port must be a number from 1 to 65535"),
        ("a:\u0668\u0660", "the port must be a number from 1 to 65535"),
        ("a:80 weight=\u0663", "must be a whole number (digits 0-9)"),
        ("a:80 maxconn=\uff14", "must be a whole number (digits 0-9)"),
        ("a:80 weight=101", f"{RANGE} 0 to 100"),
        ("a:80 weight=1000000", f"{RANGE} 0 to 100"),
        ("a:80 maxconn=100000000", f"{RANGE} 0 to 10000"),
        ("a:080808", "the port must be a number from 1 to 65535"),
        ("\u0661\u0660.0.0.1:80", "is not a valid host name"),
    ],
)
def test_backend_line_numbers_are_ascii_and_bounded(line: str, rule: str) -> None:
    error = _backends_error(f"b:80\n{line}")
    assert error.line == 2 and rule in error.rule


def test_weights_and_maxconn_at_their_bounds_are_accepted() -> None:
    spec = parse_backend_line("a:65535 weight=100 maxconn=10000")
    assert (spec.port, spec.weight, spec.maxconn) == (65535, 100, 10000)


@pytest.mark.parametrize(
    "values, key",
    [
        ({"backends": "a:80 weight=0\nb:80 weight=0"}, "backends"),
        ({"backends": "a:80 weight=0\nc:80 weight=0 backup"}, "backends"),
        ({"backends": "a:80\nb:80", "pool.api.backends": "c:80 weight=0\nd:80 weight=0",
          "pool.api.match": "path:/++api++"}, "pool.api.backends"),
    ],
)
def test_every_backend_at_weight_zero_is_refused(values: dict, key: str) -> None:
    error = _config_error(values)
    assert error.key == key and "every backend has weight=0" in error.rule


@pytest.mark.parametrize("lines, weights", [
    ("a:80 weight=0\nb:80\nc:80 weight=0 backup", [0, 1, 0]),
    ("a:80 weight=0\nc:80 weight=3 backup", [0, 3]),  # the backup serves
])
def test_some_backends_at_weight_zero_are_fine(lines: str, weights: list) -> None:
    assert [b.weight for b in parse_settings({"backends": lines}).backends] == weights


@pytest.mark.parametrize("path", ["/", "//", "/./", "/a/../"])
def test_admin_path_must_not_take_every_request(path: str) -> None:
    error = _config_error({"backends": "a:80\nb:80", "admin.path": path})
    assert error.key == "admin.path"
    assert "every request" in error.rule or "segments" in error.rule


def test_admin_path_of_its_own_is_accepted() -> None:
    result = parse_settings({"backends": "a:80\nb:80", "admin.path": "/lb-admin/"})
    assert result.admin_path == "/lb-admin/"
