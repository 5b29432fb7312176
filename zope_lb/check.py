"""``zope-lb check URL``: a Nagios/Icinga plugin for the balancer's health endpoint.

Plone shops already run Nagios, Icinga or a compatible monitor; a plugin that
prints one line with performance data and exits 0/1/2/3 lets them watch the
cluster with no new tooling. ``evaluate`` is the pure part (payload in, exit
code and line out); ``fetch`` is the only I/O. The endpoint names the backends
that are not up (and why) only to addresses in the balancer's ``admin.allow``;
from elsewhere the line has the counts alone.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import urllib3

log = logging.getLogger(__name__)

HEALTH_PATH = "/__zope_lb__/health"
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
MAX_BODY = 1 << 20  # a health answer is small; never read an unbounded body


class CheckError(Exception):
    """The endpoint could not give us a health payload: the result is UNKNOWN."""


def health_url(url: str) -> str:
    """Accept a base URL (or bare ``host:port``) and point it at the health endpoint."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CheckError(f"not an http(s) URL: {url}")
    if parts.path in ("", "/"):
        parts = parts._replace(path=HEALTH_PATH)
    return urlunsplit(parts)


def _clean(text: Any) -> str:
    """Plugin output is one line and ``|`` starts the performance data."""
    return " ".join(str(text).split()).replace("|", "/")


def _line(code: int, text: str, perfdata: str = "") -> str:
    line = f"ZOPE_LB {LABELS[code]} - {_clean(text)}"
    return f"{line} | {perfdata}" if perfdata else line


def _count(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckError(f"health JSON has no valid {key!r} count")
    return value


def evaluate(
    payload: Any,
    warning: int | None = None,
    critical: int | None = None,
    *,
    http_status: int = 200,
) -> tuple[int, str]:
    """Exit code and output line for a health payload.

    WARNING when healthy <= ``warning`` (default: any backend not healthy),
    CRITICAL when healthy <= ``critical`` (default: none healthy), and always
    when the balancer answered 503 (it says nothing can be served: trust it over
    the counts). A payload without usable ``healthy``/``total`` counts is UNKNOWN.
    """
    try:
        if not isinstance(payload, dict):
            raise CheckError("health answer is not a JSON object")
        healthy = _count(payload, "healthy")
        total = _count(payload, "total")
        if healthy > total:
            raise CheckError(f"health JSON says {healthy} of {total} healthy")
        backends = payload.get("backends", [])
        if not isinstance(backends, list) or not all(isinstance(b, dict) for b in backends):
            raise CheckError("health JSON 'backends' is not a list of objects")
    except CheckError as exc:
        return UNKNOWN, _line(UNKNOWN, str(exc))

    warn = total - 1 if warning is None else warning
    crit = 0 if critical is None else critical
    if healthy <= crit or http_status == 503:
        code = CRITICAL
    elif healthy <= warn:
        code = WARNING
    else:
        code = OK
    text = f"{healthy} of {total} backends healthy"
    if code != OK:
        trouble = [_describe(b) for b in backends if b.get("state") != "up"]
        if trouble:
            text += ": " + ", ".join(trouble)
        elif "backends" not in payload:
            text += " (which, and why: only from an address in the balancer's admin.allow)"
    perfdata = f"healthy={healthy};{warn};{crit};0;{total} total={total}"
    return code, _line(code, text, perfdata)


def _describe(backend: dict[str, Any]) -> str:
    name = backend.get("id") or backend.get("address") or "?"
    text = f"{name} {backend.get('state') or 'unknown'}"
    reason = backend.get("reason")
    return f"{text}: {reason}" if reason else text


def fetch(url: str, timeout: float, *, http: Any = None) -> tuple[int, Any]:
    """GET the health endpoint; return (HTTP status, decoded JSON) or raise CheckError."""
    http = http or urllib3.PoolManager(
        num_pools=1, timeout=urllib3.Timeout(total=timeout), retries=False
    )
    try:
        response = http.request(
            "GET", url, headers={"Accept": "application/json", "User-Agent": "zope_lb check"},
            redirect=False, retries=False, preload_content=False,
        )
        try:
            body = response.read(MAX_BODY)
        finally:
            response.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        raise CheckError(f"cannot reach {url}: {_reason(exc)}") from exc
    if response.status not in (200, 503):
        raise CheckError(f"{url} answered HTTP {response.status}")
    try:
        return response.status, json.loads(body)
    except ValueError as exc:
        raise CheckError(f"{url} answered HTTP {response.status} with no valid JSON") from exc


def _reason(exc: Exception) -> str:
    """The innermost cause, e.g. 'connection refused', not urllib3's whole repr."""
    reason: object = exc
    while isinstance(getattr(reason, "reason", None), Exception):
        reason = getattr(reason, "reason")  # noqa: B009
    text = str(reason)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    return text.rpartition(": ")[2] or text


def _nonnegative(text: str) -> int:
    if not text.isascii() or not text.strip().lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}")
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``zope-lb check`` options."""
    parser.add_argument(
        "url", help=f"balancer URL, e.g. http://127.0.0.1:6543 ({HEALTH_PATH} is added "
                    "when the path is empty) or the full health URL")
    parser.add_argument(
        "-w", "--warning", type=_nonnegative, default=None, metavar="N",
        help="WARNING when healthy backends <= N (default: any backend not healthy)")
    parser.add_argument(
        "-c", "--critical", type=_nonnegative, default=None, metavar="N",
        help="CRITICAL when healthy backends <= N (default: 0, none healthy)")
    parser.add_argument(
        "-t", "--timeout", type=float, default=5.0, metavar="SECONDS",
        help="give up (UNKNOWN) after this many seconds (default 5)")


def run(
    args: argparse.Namespace,
    *,
    fetcher: Callable[[str, float], tuple[int, Any]] = fetch,
    out: Callable[[str], None] = print,
) -> int:
    """Print the one-line result and return the plugin exit code."""
    try:
        status, payload = fetcher(health_url(args.url), args.timeout)
    except CheckError as exc:
        code, line = UNKNOWN, _line(UNKNOWN, str(exc))
    else:
        code, line = evaluate(payload, args.warning, args.critical, http_status=status)
    out(line)
    return code
