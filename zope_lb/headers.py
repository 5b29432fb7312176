"""Pure request and response rewriting: no sockets, no clock.

- Hop-by-hop headers (RFC 9110 section 7.6.1, and every header the
  ``Connection`` header names) never cross the balancer, in either direction.
- ``X-Forwarded-For`` is extended when the peer is a trusted proxy and
  replaced otherwise, so a client cannot forge the address Zope logs.
- The upstream request target is rebuilt from the WSGI path, never taken from
  an absolute-form request line, so a request can only reach a configured
  backend. The client's own percent-encoding is kept where it agrees with the
  decoded path (``%2F`` stays ``%2F``); a latin-1 WSGI path is quoted as the
  bytes it stands for, never re-encoded as UTF-8.
- Dot segments (``.``, ``..``, also spelt ``%2e``, and ``%2f`` counted as a
  slash) are resolved before a path is matched or put under ``vhm.root``
  (:func:`dot_free_path`): Zope resolves ``..`` over the whole
  VirtualHostMonster path, so one left in would climb out of the site.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from .converters import Network

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-connection",  # not in the RFC, but sent by old clients with that meaning
})

_HOP_ENVIRON = frozenset("HTTP_" + h.upper().replace("-", "_") for h in HOP_BY_HOP)
_FORWARDED_ENVIRON = frozenset({
    "HTTP_HOST", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT",
})
_SKIP_ENVIRON = _HOP_ENVIRON | _FORWARDED_ENVIRON

# RFC 3986 pchar, plus '/' between segments: what may stand unquoted in a path.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def connection_tokens(value: str) -> frozenset[str]:
    """Lower-case header names listed in a ``Connection`` header value."""
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


@lru_cache(maxsize=512)
def header_name(environ_key: str) -> str:
    """``HTTP_X_FOO_BAR`` -> ``X-Foo-Bar``."""
    return environ_key[5:].replace("_", "-").title()


#: environ key -> the header it forwards as, or None (not a header, or one
#: zope_lb sets or drops itself); filled as keys are seen, up to a bound, so a
#: client inventing header names cannot grow it.
_FORWARDED_NAMES: dict[str, str | None] = {}
_FORWARDED_NAMES_LIMIT = 2048
_UNSEEN = "\x00unseen"  # no header name: names hold no NUL


def _forwarded_name(key: str) -> str | None:
    """The header an environ key is forwarded as (None: not forwarded), remembered."""
    name = header_name(key) if key.startswith("HTTP_") and key not in _SKIP_ENVIRON else None
    if len(_FORWARDED_NAMES) < _FORWARDED_NAMES_LIMIT:
        _FORWARDED_NAMES[key] = name
    return name


@lru_cache(maxsize=256)
def _peer_in(peer: str, trusted: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def is_trusted(peer: str, trusted: Sequence[Network]) -> bool:
    """Whether ``peer`` (REMOTE_ADDR) is one of the trusted proxies."""
    return bool(trusted) and _peer_in(peer, tuple(trusted))


def client_address(environ: Mapping[str, Any], trusted: Sequence[Network] = ()) -> str:
    """The client's IP: the first untrusted address of X-Forwarded-For read from
    the right when the peer is a trusted proxy, else the peer itself."""
    peer = environ.get("REMOTE_ADDR", "")
    if not trusted or not is_trusted(peer, trusted):
        return peer
    chain = [a.strip() for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    chain = [a for a in chain if a]
    for address in reversed(chain):
        if not is_trusted(address, trusted):
            return address
    return chain[0] if chain else peer


def request_scheme(environ: Mapping[str, Any], trusted: Sequence[Network] = ()) -> str:
    """``http`` or ``https`` as the client used it (a trusted proxy may say)."""
    if trusted and is_trusted(environ.get("REMOTE_ADDR", ""), trusted):
        forwarded = environ.get("HTTP_X_FORWARDED_PROTO")
        if forwarded:
            return forwarded.split(",")[0].strip().lower()
    return environ.get("wsgi.url_scheme", "http")


def request_headers(
    environ: Mapping[str, Any],
    trusted: tuple[Network, ...] = (),
    preserve_host: bool = True,
) -> dict[str, str]:
    """The headers to send upstream for this WSGI request."""
    connection = environ.get("HTTP_CONNECTION")
    if connection:
        skip = _SKIP_ENVIRON | {"HTTP_" + t.upper().replace("-", "_")
                                for t in connection_tokens(connection)}
        headers = {
            header_name(key): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and key not in skip
        }
    else:
        headers = {}
        names = _FORWARDED_NAMES
        for key, value in environ.items():
            name = names.get(key, _UNSEEN)
            if name is _UNSEEN:
                name = _forwarded_name(key)
            if name is not None:
                headers[name] = value
    content_type = environ.get("CONTENT_TYPE")
    if content_type:
        headers["Content-Type"] = content_type

    host = environ.get("HTTP_HOST") or _server_host(environ)
    if preserve_host:
        headers["Host"] = host
    peer = environ.get("REMOTE_ADDR", "")
    if trusted and is_trusted(peer, trusted):
        chain = environ.get("HTTP_X_FORWARDED_FOR")
        headers["X-Forwarded-For"] = f"{chain}, {peer}" if chain else peer
        headers["X-Forwarded-Proto"] = (
            environ.get("HTTP_X_FORWARDED_PROTO") or environ.get("wsgi.url_scheme", "http")
        )
        headers["X-Forwarded-Host"] = environ.get("HTTP_X_FORWARDED_HOST") or host
        headers["X-Forwarded-Port"] = (
            environ.get("HTTP_X_FORWARDED_PORT") or environ.get("SERVER_PORT", "")
        )
    else:
        headers["X-Forwarded-For"] = peer
        headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
        headers["X-Forwarded-Host"] = host
        headers["X-Forwarded-Port"] = environ.get("SERVER_PORT", "")
    return headers


def _server_host(environ: Mapping[str, Any]) -> str:
    name = environ.get("SERVER_NAME", "localhost")
    port = environ.get("SERVER_PORT", "")
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return name if not port or port == default else f"{name}:{port}"


def response_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response headers minus hop-by-hop ones; repeated headers (Set-Cookie) kept."""
    kept = []
    connection = ""
    for name, value in items:
        low = name.lower()
        if low in HOP_BY_HOP:
            if low == "connection":
                connection = f"{connection},{value}" if connection else value
            continue
        kept.append((name, value))
    if connection:  # rare: headers the backend named as hop-by-hop
        named = connection_tokens(connection)
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    return kept


def upstream_target(environ: Mapping[str, Any]) -> str:
    """Path and query to request from the backend (origin-form, ASCII)."""
    target = raw_path(environ)
    query = environ.get("QUERY_STRING")
    if not query:
        return target
    if not query.isascii():  # raw bytes (waitress lets them through after "//"):
        # escaped as the bytes they are, not re-encoded as UTF-8 by urllib3
        query = "".join(c if c < "\x80" else f"%{ord(c):02X}" for c in query)
    return f"{target}?{query}"


def raw_path(environ: Mapping[str, Any]) -> str:
    """The request's path, percent-encoded (ASCII): the client's own spelling
    when the server kept it and it agrees with the WSGI path, else the WSGI
    path quoted as the bytes it stands for."""
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    target = _raw_path(environ.get("REQUEST_URI") or environ.get("RAW_URI"), path)
    if target is None:
        target = quote(path.encode("latin-1"), safe=_PATH_SAFE) or "/"
    return target


def _raw_path(raw: str | None, path: str) -> str | None:
    """The client's own spelling of ``path``, if the server kept it and it agrees."""
    if not raw:
        return None
    if not raw.startswith("/"):
        # absolute-form ("http://host/p?q"): keep only the path; the host is ignored
        scheme, sep, rest = raw.partition("://")
        if not sep:
            return None
        slash = rest.find("/")
        raw = rest[slash:] if slash >= 0 else "/"
    raw_path = raw.split("?", 1)[0]
    agrees = raw_path == path or (
        "%" in raw_path and unquote_to_bytes(raw_path.encode("latin-1")).decode("latin-1") == path)
    if not agrees:
        return None
    # raw non-ASCII bytes (not valid on the wire) are escaped; the client's escapes kept
    return raw_path if raw_path.isascii() else quote(raw_path.encode("latin-1"),
                                                     safe=_PATH_SAFE + "%")


# -- dot segments --------------------------------------------------------------------
#
# RFC 3986 section 5.2.4 on the decoded path: a segment is a dot segment when
# it decodes to "." or ".." (so "%2e%2E" is one), and "%2F" separates segments
# as "/" does, because the backend's WSGI server decodes it to "/" before Zope
# splits the path. Each segment keeps the client's spelling, separators too.

class PathEscapes(ValueError):
    """A path whose ``..`` segments climb above its root."""


_SEPARATOR = re.compile(r"(/|%2[fF])")
_DOTS = frozenset({b".", b".."})


_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")


def has_dot_segment(path: str) -> bool:
    """Whether a decoded path (WSGI ``PATH_INFO``, where ``%2e`` is already
    ``.`` and ``%2f`` already ``/``) has a ``.`` or ``..`` segment; cheap for
    the usual path, which has no ``/.`` at all (``/.well-known`` has no dot
    segment)."""
    return ("/." in path or path.startswith(".")) and _DOT_SEGMENT.search(path) is not None


def dot_free_path(raw: str) -> str:
    """``raw`` (a percent-encoded path) with its dot segments resolved.

    ``/a/b/../c`` -> ``/a/c``, ``/a/%2e/`` -> ``/a/``, ``/a/..%2Fb`` -> ``/b``;
    other segments and separators keep the client's spelling. Raises
    :class:`PathEscapes` when a ``..`` would climb above ``/``: RFC 3986 would
    stop at the root, but no browser sends such a path (they resolve dot
    segments themselves), so it is refused rather than guessed at.
    """
    parts = _SEPARATOR.split(raw)  # [segment, separator, segment, separator, ...]
    out: list[str] = [parts[0]] if parts[0] else []
    if parts[0] and _dot(parts[0]):
        raise PathEscapes(f"the path {raw!r} does not start with '/'")
    last = len(parts) - 2
    for i in range(1, len(parts), 2):
        separator, segment = parts[i], parts[i + 1]
        dots = _dot(segment)
        if dots == b"..":
            if not out:
                raise PathEscapes(f"the path {raw!r} climbs above the root")
            out.pop()
        if dots:
            if i == last:  # "/a/b/.." is "/a/": the directory stays a directory
                out.append(separator)
        else:
            out.append(separator + segment)
    return "".join(out) or "/"


def _dot(segment: str) -> bytes | None:
    """``b"."`` or ``b".."`` for a dot segment in any spelling, else None."""
    if segment in (".", ".."):
        return segment.encode()
    if "%" in segment and len(segment) <= 6:  # "%2e%2e" is the longest spelling
        decoded = unquote_to_bytes(segment)
        if decoded in _DOTS:
            return decoded
    return None


# -- Zope's VirtualHostMonster ------------------------------------------------------
#
# Zope ignores X-Forwarded-Host and -Proto: it builds every URL from the Host
# header or from a VirtualHostMonster path, /VirtualHostBase/SCHEME/HOST:PORT
# /SITE/VirtualHostRoot/_vh_PREFIX/PATH. These functions build that path.

_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")
_DEFAULT_PORT = {"http": "80", "https": "443"}


def split_host(host: str, scheme: str) -> tuple[str, str]:
    """``www.example.com:8080`` -> (``www.example.com``, ``8080``); the scheme's
    default port when none is given; IPv6 stays in brackets."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, port or _DEFAULT_PORT.get(scheme, "80")


def public_origin(environ: Mapping[str, Any], trusted: Sequence[Network] = (),
                  base: str = "auto") -> tuple[str, str, str]:
    """(scheme, host, port) the client used, or those of a fixed ``base`` URL.

    With ``auto`` they come from the request, and from X-Forwarded-Proto, -Host
    and -Port only when the peer is a trusted proxy. A Host header that is not
    a plain host name falls back to the server's name.
    """
    if base and base != "auto":
        scheme, _, rest = base.partition("://")
        host, port = split_host(rest, scheme)
        return scheme, host, port
    from_proxy = bool(trusted) and is_trusted(environ.get("REMOTE_ADDR", ""), trusted)
    scheme = request_scheme(environ, trusted)
    if scheme not in _DEFAULT_PORT:
        scheme = "http"
    host_header = (from_proxy and environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
                   ) or environ.get("HTTP_HOST") or _server_host(environ)
    host, port = split_host(host_header, scheme)
    if from_proxy and environ.get("HTTP_X_FORWARDED_PORT"):
        port = environ["HTTP_X_FORWARDED_PORT"].split(",")[0].strip()
    if not _HOST.fullmatch(host):
        host = environ.get("SERVER_NAME", "localhost")
    if not port.isdigit():
        port = _DEFAULT_PORT[scheme]
    return scheme, host, port


def vhm_target(target: str, origin: tuple[str, str, str], root: str = "",
               prefix: str = "", strip: str = "") -> str:
    """Rewrite an origin-form target (``/foo?q``) into VirtualHostMonster form.

    ``root`` is the site's path in Zope (``/Plone``); ``prefix`` the public
    sub-path the site lives under (``/site``): stripped from a path under it
    and added back as ``_vh_site`` so Zope's URLs keep it (a path outside it
    is passed whole, without ``_vh_``). ``strip`` (``/++api++``) is removed
    the same way but not added back: Zope's URLs leave it out. The path and
    query pass through untouched, percent-encoding and all. The path is
    already free of dot segments (requestcheck), and what is left after a
    removed prefix is a tail of its segments: nothing can climb out of ``root``.
    """
    if not target.startswith("/"):  # "OPTIONS *": no path to put under the root
        return target
    path, sep, query = target.partition("?")
    vh = ""
    if strip:
        path = _without_prefix(path, strip) or path
    elif prefix:
        rest = _without_prefix(path, prefix)
        if rest is not None:
            path = rest
            vh = _prefix_segments(prefix)[1]
    scheme, host, port = origin
    root = root.rstrip("/")  # "/" is the Zope root
    rewritten = f"/VirtualHostBase/{scheme}/{host}:{port}{root}/VirtualHostRoot{vh}{path}"
    return f"{rewritten}?{query}" if sep else rewritten


def _without_prefix(path: str, prefix: str) -> str | None:
    """``path`` without the public ``prefix``, or None when it is not under it."""
    wanted = _prefix_segments(prefix)[0]
    segments = path.split("/")  # ["", "site", "foo"]
    count = len(wanted)
    # segment by segment, compared decoded: /caf%C3%A9, /caf%c3%a9 and a
    # prefix written /café in the ini are the same path
    if len(segments) > count and all(
            unquote_to_bytes(segments[i + 1]) == wanted[i] for i in range(count)):
        return "/" + "/".join(segments[count + 1:])
    return None


@lru_cache(maxsize=16)
def _prefix_segments(prefix: str) -> tuple[tuple[bytes, ...], str]:
    """``vhm.prefix``'s segments as bytes, and its ``/_vh_...`` form (ASCII)."""
    wanted = tuple(unquote_to_bytes(part) for part in prefix.split("/") if part)
    return wanted, "".join(f"/_vh_{quote(part, safe=_PATH_SAFE)}" for part in wanted)


LOCATION_HEADERS = frozenset({"location", "content-location", "refresh"})


def rewrite_locations(items: list[tuple[str, str]], backend_address: str,
                      origin: tuple[str, str, str]) -> list[tuple[str, str]]:
    """Location, Content-Location and Refresh naming the backend's own host:port
    point at the public URL instead (what Apache calls ProxyPassReverse).

    Only a URL whose authority is exactly the backend's is rewritten: backend
    ``10.0.0.1:8080`` leaves ``http://10.0.0.1:80801/`` alone, and a backend on
    port 80 (443) also matches ``http://host/`` (``https://host/``)."""
    scheme, host, port = origin
    public = f"{scheme}://{host}" if port == _DEFAULT_PORT[scheme] else f"{scheme}://{host}:{port}"
    pattern = _own_url(backend_address)
    out = []
    for name, value in items:
        if name.lower() in LOCATION_HEADERS:
            value = pattern.sub(public, value)
        out.append((name, value))
    return out


@lru_cache(maxsize=256)
def _own_url(backend_address: str) -> re.Pattern[str]:
    host, port = backend_address.rsplit(":", 1)
    host = re.escape(host)
    http = f"{host}(?::{port})?" if port == "80" else f"{host}:{port}"
    https = f"{host}(?::{port})?" if port == "443" else f"{host}:{port}"
    # the authority ends the URL or is followed by its path, query or fragment
    # (or, in Refresh, by whatever follows the URL)
    return re.compile(f"(?:http://{http}|https://{https})(?![\\w.:@-])", re.IGNORECASE)
