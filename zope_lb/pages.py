"""The small pages zope_lb answers itself: errors, never a traceback.

A page is HTML, JSON or plain text, as the client's ``Accept`` header prefers
(no header: plain text, for scripts and monitors). Pages name a backend only
by its public label (its ``id=``, else ``backend 1``, ``backend 2``... in
listed order, see ``pool.py``), never by its address: the address is for the
operator's log, not for visitors. They are built here rather than by WebOb's
``HTTPException``, whose plain-text template leaks ``<br />`` into JSON.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

from webob.acceptparse import create_accept_header

from .errors import UpstreamError

#: Seconds a client is asked to wait after a 503.
RETRY_AFTER = 5

TITLES = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_EXPLAIN = {
    502: "The site's application servers could not answer this request",
    503: "No application server of this site is available right now",
    504: "The site's application server took too long to answer",
}

_OFFERS = ("text/html", "application/json", "text/plain")


def page_type(accept: str | None) -> str:
    """The media type to answer with: the client's best of HTML, JSON and text;
    plain text without an Accept header or when it accepts none of them."""
    if not accept:
        return "text/plain"
    offers = create_accept_header(accept).acceptable_offers(_OFFERS)
    return offers[0][0] if offers else "text/plain"


def render(status: int, detail: str, media_type: str) -> bytes:
    """The page's body: the status, its title and a one-sentence reason, escaped."""
    title = TITLES[status]
    if media_type == "application/json":
        return json.dumps({"code": status, "title": title, "message": detail}).encode()
    if media_type == "text/html":
        head = f"{status} {html.escape(title)}"
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{head}"
                f"</title></head>\n<body><h1>{head}</h1>\n<p>{html.escape(detail)}</p>"
                "</body></html>\n").encode()
    return f"{status} {title}\n\n{detail}\n".encode()


class ErrorPage:
    """A WSGI app answering ``status`` with ``detail``, as the client accepts."""

    def __init__(self, status: int, detail: str, headers: dict[str, str]):
        self.status = status
        self.detail = detail
        self.headers = headers

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        media_type = page_type(environ.get("HTTP_ACCEPT"))
        body = render(self.status, self.detail, media_type)
        charset = "" if media_type == "application/json" else "; charset=UTF-8"
        start_response(f"{self.status} {TITLES[self.status]}", [
            ("Content-Type", media_type + charset),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Vary", "Accept"),
            *self.headers.items(),
        ])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def error_page(status: int, detail: str, **headers: str) -> ErrorPage:
    """A WSGI app answering ``status`` with a one-sentence reason (HTML, JSON or
    text, as the client accepts), never a traceback; the reason is escaped."""
    return ErrorPage(status, detail, {k.replace("_", "-"): v for k, v in headers.items()})


def upstream_error_page(error: UpstreamError) -> ErrorPage:
    """The page for a request no backend could answer: the backend by its label,
    the reason in words safe to show (``error.public``)."""
    who = f"{error.label}: " if error.label else ""
    detail = f"{_EXPLAIN[error.status]}: {who}{error.public}."
    if error.status == 503:
        return error_page(503, detail, Retry_After=str(RETRY_AFTER))
    return error_page(error.status, detail)


def refusal_page(detail: str) -> Any:
    """A 400 for a request zope_lb will not forward, sent without a
    Content-Length, so that the server closes the connection after it (its
    framing is not to be trusted: the rest could be read as a request)."""
    page = error_page(400, detail)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        def without_length(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Any:
            kept = [(k, v) for k, v in headers if k.lower() != "content-length"]
            return start_response(status, kept, exc_info)

        body = page(environ, without_length)
        return (chunk for chunk in body)  # not a list: the server cannot count it

    return app
