"""Routing rules: which named pool takes a request (pure, no I/O).

Enfold Proxy let a site define several request schedulers, each with its own
backends and rules matched against the request. A pool's ``match`` is a list
of rules, one per line or separated by spaces, and all must match:

- ``path:/prefix`` the path starts with ``/prefix``; ``path:*/manage*`` a glob
  (``*``, ``?``, ``[...]``) over the whole path;
- ``method:POST`` or ``method:PUT,DELETE``;
- ``header:X-Name`` the header is present; ``header:X-Name=glob`` with a value
  matching the glob;
- ``cookie:__ac`` the cookie is present (Plone's login cookie).

A path is matched as Zope will traverse it: ``/public/../manage_main`` is
``/manage_main`` and ``//manage_main`` is ``/manage_main``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

_GLOB = re.compile(r"[*?\[]")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_METHOD = re.compile(r"[A-Z][A-Z-]*")
KINDS = ("path", "method", "header", "cookie")


@dataclass(frozen=True)
class Rule:
    kind: str
    name: str  # path pattern, header name (environ key), cookie name
    values: tuple[str, ...] = ()  # methods, or a header value glob
    glob: bool = False
    text: str = ""  # as written, so a running configuration can be written back

    def matches(self, environ: Mapping[str, Any]) -> bool:
        if self.kind == "path":
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            if "/." in path or "//" in path:
                path = traversed_path(path)
            return fnmatchcase(path, self.name) if self.glob else path.startswith(self.name)
        if self.kind == "method":
            return environ.get("REQUEST_METHOD", "") in self.values
        if self.kind == "header":
            value = environ.get(self.name)
            if value is None:
                return False
            return not self.values or fnmatchcase(value, self.values[0])
        return has_cookie(environ.get("HTTP_COOKIE", ""), self.name)


def traversed_path(path: str) -> str:
    """A decoded path as Zope traverses it: ``.`` and empty segments skipped,
    ``..`` dropping the one before (never above ``/``), so that ``..`` or
    ``//`` cannot step around a ``path:`` rule."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    resolved = "/" + "/".join(segments)
    if segments and path.endswith(("/", "/.", "/..")):
        resolved += "/"
    return resolved


def has_cookie(header: str, name: str) -> bool:
    """Whether a Cookie header carries ``name`` (without parsing the values)."""
    for part in header.split(";"):
        key, sep, _ = part.strip().partition("=")
        if sep and key == name:
            return True
    return False


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header, or None."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def parse_rule(text: str) -> Rule:
    """One ``kind:argument`` rule; ValueError names what is wrong."""
    kind, sep, argument = text.partition(":")
    if not sep or kind not in KINDS:
        raise ValueError(
            f"{text!r} is not a rule; write path:/prefix, path:*/glob*, method:POST, "
            "header:X-Name[=value], or cookie:name"
        )
    if not argument:
        raise ValueError(f"{text!r}: the rule needs an argument after '{kind}:'")
    if kind == "path":
        if not argument.startswith(("/", "*")):
            raise ValueError(f"{text!r}: a path rule starts with '/' (or '*' for a glob)")
        return Rule("path", argument, glob=bool(_GLOB.search(argument)), text=text)
    if kind == "method":
        methods = tuple(m.strip() for m in argument.split(",") if m.strip())
        bad = [m for m in methods if not _METHOD.fullmatch(m)]
        if bad or not methods:
            raise ValueError(f"{text!r}: methods are upper-case names, e.g. method:PUT,DELETE")
        return Rule("method", "", methods, text=text)
    if kind == "header":
        name, eq, value = argument.partition("=")
        if not _HEADER.fullmatch(name):
            raise ValueError(f"{text!r}: {name!r} is not a header name")
        key = "HTTP_" + name.upper().replace("-", "_")
        if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
            key = key[5:]
        return Rule("header", key, (value,) if eq else (), text=text)
    if not _HEADER.fullmatch(argument):
        raise ValueError(f"{text!r}: {argument!r} is not a cookie name")
    return Rule("cookie", argument, text=text)


def parse_rules(text: str) -> tuple[Rule, ...]:
    """A whole ``match`` value: rules separated by spaces or lines, all required."""
    rules = tuple(parse_rule(word) for word in text.split())
    if not rules:
        raise ValueError("give at least one rule, e.g. path:/manage*")
    return rules


def matches_all(rules: tuple[Rule, ...], environ: Mapping[str, Any]) -> bool:
    return all(rule.matches(environ) for rule in rules)
