"""The pure parts of zope_lb.server: what waitress is told, and which deadline a
connection broke at a given time (the clock is passed in, no sockets)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from zope_lb.errors import ConfigError
from zope_lb.server import (
    MAX_REQUEST_BODY_SIZE,
    OUTBUF_HIGH_WATERMARK,
    Deadlines,
    bind_server,
    connection_limit,
    in_flight,
    overdue,
    waitress_options,
)
from zope_lb.settings import parse_settings


def test_the_connection_limit_follows_the_descriptors():
    assert connection_limit(20000, 16) == (20000 - 100 - 4 * 16) // 2
    assert connection_limit(1024, 4) == (1024 - 100 - 16) // 2
    assert connection_limit(1 << 20, 16) == 10_000  # the loop's ceiling
    assert connection_limit(200, 16) == 100  # never below waitress's own default


def test_zope_lb_serve_defaults_keep_the_forwarded_headers_and_bound_things():
    options = waitress_options({"listen": "127.0.0.1:8080"}, 20000)
    assert options["clear_untrusted_proxy_headers"] is False
    assert options["connection_limit"] == connection_limit(20000, 4)
    assert options["asyncore_use_poll"] is True
    assert options["outbuf_high_watermark"] == OUTBUF_HIGH_WATERMARK
    assert options["max_request_body_size"] == MAX_REQUEST_BODY_SIZE == 256 * 1024 * 1024
    assert options["cleanup_interval"] == 1
    assert options["listen"] == "127.0.0.1:8080"


def test_select_is_kept_while_every_descriptor_fits_it():
    assert waitress_options({"threads": "4"}, 1024)["asyncore_use_poll"] is False
    assert waitress_options({"threads": "4"}, 4096)["asyncore_use_poll"] is True


def test_the_ini_always_wins():
    options = waitress_options({"clear_untrusted_proxy_headers": "true",
                                "connection_limit": "50", "asyncore_use_poll": "false",
                                "max_request_body_size": "1073741824"}, 20000)
    assert options["clear_untrusted_proxy_headers"] == "true"
    assert options["connection_limit"] == "50"
    assert options["asyncore_use_poll"] == "false"
    assert options["max_request_body_size"] == "1073741824"


def test_the_new_options_have_their_defaults_and_rules():
    settings = parse_settings({"backends": "127.0.0.1:8080\n127.0.0.1:8081"})
    assert (settings.timeout_request, settings.timeout_client,
            settings.shutdown_timeout) == (10.0, 60.0, 30.0)
    settings = parse_settings({"backends": "127.0.0.1:8080\n127.0.0.1:8081",
                               "timeout.request": "500ms", "shutdown.timeout": "2m"})
    assert settings.timeout_request == 0.5 and settings.shutdown_timeout == 120.0
    with pytest.raises(ConfigError, match="timeout.client"):
        parse_settings({"backends": "127.0.0.1:8080", "timeout.client": "0"})


def channel(**fields):
    base = dict(total_outbufs_len=0, last_activity=1000.0, requests=[], request=None,
                head_started=None, served=False)
    return SimpleNamespace(**{**base, **fields})


DEADLINES = Deadlines(request=10.0, client=60.0)
HEAD = SimpleNamespace(headers_finished=False)
BODY = SimpleNamespace(headers_finished=True)


@pytest.mark.parametrize(("fields", "now", "expected"), [
    # a request head that began 10+ s ago and is still not complete
    (dict(request=HEAD, head_started=1000.0), 1010.5, "request"),
    (dict(request=HEAD, head_started=1000.0), 1009.5, None),
    # a kept-alive connection: from the end of its previous answer
    (dict(served=True), 1010.5, "request"),
    (dict(served=True), 1009.5, None),
    # a new connection that sent nothing yet: waitress's channel_timeout, not ours
    (dict(), 5000.0, None),
    # a body on its way: the head deadline is over, timeout.client counts
    (dict(request=BODY, head_started=None), 1059.5, None),
    (dict(request=BODY, head_started=None), 1060.5, "body"),
    # the app works on a request: the backend's timeouts apply
    (dict(requests=[object()], head_started=None), 5000.0, None),
    # an answer the client does not take
    (dict(total_outbufs_len=5, requests=[object()]), 1060.5, "client"),
    (dict(total_outbufs_len=5, requests=[object()]), 1059.5, None),
    (dict(total_outbufs_len=5, served=True), 1030.0, None),  # not "request" while sending
])
def test_overdue(fields, now, expected):
    assert overdue(channel(**fields), now, DEADLINES) == expected


@pytest.mark.parametrize(("fields", "expected"), [
    (dict(), False),
    (dict(served=True), False),
    (dict(request=HEAD), False),  # half a head is not a request yet
    (dict(request=BODY), True),
    (dict(requests=[object()]), True),
    (dict(total_outbufs_len=1), True),
])
def test_in_flight(fields, expected):
    assert in_flight(channel(**fields)) is expected


def test_a_misspelt_server_setting_names_the_section(tmp_path):
    ini = tmp_path / "x.ini"
    ini.write_text("[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:0\n"
                   "conection_limit = 5\n")
    with pytest.raises(ConfigError, match=r"\[server:main\].*conection_limit"):
        bind_server(f"config:{ini}", "main", None)


def test_egg_zope_lb_server_is_the_server_factory():
    """``[server:main] use = egg:zope_lb#server`` (the entry point setup.cfg
    declares; an installed zope_lb registers it)."""
    import configparser
    from pathlib import Path

    from paste.deploy.loadwsgi import lookup_object

    from zope_lb.server import server_factory

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parent.parent / "setup.cfg")
    lines = setup["options.entry_points"]["paste.server_factory"].split("\n")
    entries = dict(line.replace(" ", "").split("=") for line in lines if line.strip())
    assert lookup_object(entries["server"]) is server_factory
