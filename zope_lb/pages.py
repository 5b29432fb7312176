"""The small pages zope_lb answers itself: errors, never a traceback."""

from __future__ import annotations

from typing import Any

from webob import exc

from .errors import UpstreamError

#: Seconds a client is asked to wait after a 503.
RETRY_AFTER = 5

_BY_STATUS = {
    400: exc.HTTPBadRequest,
    404: exc.HTTPNotFound,
    405: exc.HTTPMethodNotAllowed,
    502: exc.HTTPBadGateway,
    503: exc.HTTPServiceUnavailable,
    504: exc.HTTPGatewayTimeout,
}

_EXPLAIN = {
    502: "The site's application servers could not answer this request",
    503: "No application server of this site is available right now",
    504: "The site's application server took too long to answer",
}


def error_page(status: int, detail: str, **headers: str) -> Any:
    """A WSGI app answering ``status`` with a one-sentence reason (HTML or text,
    as the client accepts), never a traceback; the reason is escaped."""
    page = _BY_STATUS[status](detail=detail)
    page.cache_control = "no-store"
    for name, value in headers.items():
        page.headers[name.replace("_", "-")] = value
    return page


def upstream_error_page(error: UpstreamError) -> Any:
    """The page for a request no backend could answer."""
    detail = f"{_EXPLAIN[error.status]}: {error.reason}."
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
