"""Routing rules (``pool.NAME.match``), pure: which requests a rule takes."""

from __future__ import annotations

import pytest

from zope_lb.routing import matches_all, parse_rules


def environ(path="/", method="GET", **headers):
    env = {"PATH_INFO": path, "SCRIPT_NAME": "", "REQUEST_METHOD": method}
    env.update({k: v for k, v in headers.items()})
    return env


@pytest.mark.parametrize(("rules", "env", "taken"), [
    # a path prefix is a plain string prefix (like HAProxy's path_beg)
    ("path:/manage", environ("/manage"), True),
    ("path:/manage", environ("/manage/x"), True),
    ("path:/manage", environ("/manage_main"), True),
    ("path:/manage", environ("/Plone/manage"), False),
    # a glob matches the whole path
    ("path:*/manage*", environ("/Plone/manage_main"), True),
    ("path:*/@@export*", environ("/Plone/folder/@@export-data"), True),
    ("path:*/@@export*", environ("/Plone/export"), False),
    # methods, as a list
    ("method:POST,PUT", environ(method="PUT"), True),
    ("method:POST,PUT", environ(method="GET"), False),
    # a header present, or with an exact value
    ("header:X-Editor", environ(HTTP_X_EDITOR="1"), True),
    ("header:X-Editor", environ(), False),
    ("header:X-Editor=yes", environ(HTTP_X_EDITOR="yes"), True),
    ("header:X-Editor=yes", environ(HTTP_X_EDITOR="no"), False),
    ("header:Content-Type=text/xml", environ(CONTENT_TYPE="text/xml"), True),
    # a cookie present (by name, not by a name that merely contains it)
    ("cookie:__ac", environ(HTTP_COOKIE="a=1; __ac=abc"), True),
    ("cookie:__ac", environ(HTTP_COOKIE="__ac_name=bob"), False),
    ("cookie:__ac", environ(), False),
    # every rule of a match must hold
    ("cookie:__ac method:POST", environ(method="POST", HTTP_COOKIE="__ac=x"), True),
    ("cookie:__ac method:POST", environ(method="GET", HTTP_COOKIE="__ac=x"), False),
])
def test_which_requests_a_rule_takes(rules, env, taken):
    assert matches_all(parse_rules(rules), env) is taken
