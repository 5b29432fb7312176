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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from .settings import Network

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
    skip = _SKIP_ENVIRON
    connection = environ.get("HTTP_CONNECTION")
    if connection:
        skip = skip | {"HTTP_" + t.upper().replace("-", "_")
                       for t in connection_tokens(connection)}
    headers = {
        header_name(key): value
        for key, value in environ.items()
        if key.startswith("HTTP_") and key not in skip
    }
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
    items = list(items)
    drop = HOP_BY_HOP
    for name, value in items:
        if name.lower() == "connection":
            drop = drop | connection_tokens(value)
    return [(name, value) for name, value in items if name.lower() not in drop]


def upstream_target(environ: Mapping[str, Any]) -> str:
    """Path and query to request from the backend (origin-form, ASCII)."""
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    target = _raw_path(environ.get("REQUEST_URI") or environ.get("RAW_URI"), path)
    if target is None:
        target = quote(path.encode("latin-1"), safe=_PATH_SAFE) or "/"
    query = environ.get("QUERY_STRING")
    return f"{target}?{query}" if query else target


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
    if raw_path == path:
        return raw_path if raw_path.isascii() else quote(raw_path.encode("latin-1"),
                                                         safe=_PATH_SAFE + "%")
    if "%" in raw_path and unquote_to_bytes(raw_path.encode("latin-1")).decode("latin-1") == path:
        if raw_path.isascii():
            return raw_path
        return quote(raw_path.encode("latin-1"), safe=_PATH_SAFE + "%")
    return None
