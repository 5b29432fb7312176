"""What a request must be before it is forwarded (pure, no I/O).

zope_lb reads a request as its WSGI server (waitress) parsed it and sends a
new one to the backend. Where the client's bytes could mean one thing to
zope_lb, a front proxy or the backend and another to a second one, the
request is refused with 400, as HAProxy does, instead of being guessed at:

- two ``Host`` headers: waitress joins them as ``a, evil.example``, and a
  host name never holds a comma (nor a space, which a folded one would);
- a target that is not a path: authority form (``GET host:80``) outside
  CONNECT, ``*`` outside OPTIONS, a scheme other than http(s), or an
  absolute URI (``GET http://a/x``) whose host is not the ``Host`` header;
- a ``Transfer-Encoding`` in an HTTP/1.0 request (RFC 9112 section 6.1):
  waitress does not decode it there, so the body would be dropped and its
  bytes read as the next request on the connection;
- a path whose ``..`` segments climb above ``/``.

A path with dot segments is otherwise resolved (``/a/../b`` is ``/b``) before
anything looks at it: admin and health paths, ``prefix``, routing rules,
``vhm.root``. The caller's environ is never changed: a copy carries the
resolved ``PATH_INFO`` and ``REQUEST_URI``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from .headers import PathEscapes, dot_free_path, has_dot_segment, raw_path

_DEFAULT_PORT = {"http": ":80", "https": ":443"}


class BadRequest(Exception):
    """The request is refused with 400; the message says why, for the client."""


def check_request(environ: dict[str, Any]) -> dict[str, Any]:
    """``environ`` itself when the request may go on as it is; a copy with
    its dot segments resolved when it has some. Raises :class:`BadRequest`."""
    if "HTTP_TRANSFER_ENCODING" in environ and environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        raise BadRequest("an HTTP/1.0 request cannot have a Transfer-Encoding")
    host = environ.get("HTTP_HOST")
    if host is not None:
        if "," in host:
            raise BadRequest("the request has more than one Host header")
        if " " in host or "\t" in host:  # a folded Host header: "a\r\n :80"
            raise BadRequest("the Host header is not a host name")
    method = environ.get("REQUEST_METHOD", "")
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if method != "CONNECT" and (not raw or raw[0] != "/"):
        _check_target(raw, environ.get("PATH_INFO", ""), method, host)
    path = environ.get("PATH_INFO", "")
    if has_dot_segment(path):
        return _dot_free(environ)
    return environ


def _check_target(raw: str | None, path: str, method: str, host: str | None) -> None:
    """A request target other than a plain path: ``*``, or an absolute URI."""
    target = raw or path
    if target == "*":
        if method != "OPTIONS":
            raise BadRequest("the target '*' is only for OPTIONS")
        return
    if not raw:
        if path and not path.startswith("/"):
            raise BadRequest("the request target must be a path")
        return
    scheme, sep, rest = raw.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORT:
        raise BadRequest("the request target must be a path "
                         "(host:port is only for CONNECT, which is not served)")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    authority = rest[:end].lower()
    if not authority or "@" in authority:
        raise BadRequest("the request target names no host, or a user")
    if host is not None and _without_default_port(authority, scheme) != \
            _without_default_port(host.lower(), scheme):
        raise BadRequest("the host in the request target is not the Host header")


def _without_default_port(authority: str, scheme: str) -> str:
    default = _DEFAULT_PORT[scheme]
    return authority[:-len(default)] if authority.endswith(default) else authority


def _dot_free(environ: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``environ`` whose path has no dot segment, spelt as the client
    spelt the rest of it."""
    target = raw_path(environ)
    if not target.startswith("/"):
        raise BadRequest("the request target must be a path")
    try:
        target = dot_free_path(target)
    except PathEscapes as exc:
        raise BadRequest("the path climbs above the site's root ('..')") from exc
    decoded = unquote_to_bytes(target).decode("latin-1")
    script = environ.get("SCRIPT_NAME", "")
    if script and decoded != script and not decoded.startswith(script + "/"):
        raise BadRequest("the path climbs above the site's root ('..')")
    copy = dict(environ)
    copy["PATH_INFO"] = decoded[len(script):]
    query = environ.get("QUERY_STRING")
    uri = f"{target}?{query}" if query else target
    for key in ("REQUEST_URI", "RAW_URI"):
        if key in environ:
            copy[key] = uri
    if "REQUEST_URI" not in environ and "RAW_URI" not in environ:
        copy["REQUEST_URI"] = uri
    return copy
