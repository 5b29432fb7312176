"""The errors zope_lb raises, and what each means for the client.

The whole tree::

    ZopeLBError
    ├── ConfigError              bad setting: stops start-up, refuses an edit
    ├── StateSaveError           an admin edit could not be kept in the state
    │                              file: refused (500), nothing changed
    └── UpstreamError            a request could not be answered by a backend
        ├── NoBackendAvailable   503: every backend is down, cooling or full
        ├── BackendConnectError  502: connect refused / timed out / DNS failed;
        │                              nothing was sent, any method may fail over
        ├── BackendDisconnected  502: the connection broke before a response;
        │                              the request may have been sent
        ├── BackendTimeout       504: no response within timeout.read
        └── BackendProtocolError 502: the backend answered with garbage

Each ``UpstreamError`` knows its HTTP ``status`` and whether the request was
possibly seen by the backend (``sent``), which is what the retry rules need.
Its message (``str()``, for the log) names the backend by id and address;
``label`` and ``public`` are what an error page may show instead: the
backend's public label and a reason free of addresses and exception text.
urllib3's exceptions are turned into these in exactly one place,
:func:`zope_lb.proxy.translated`.
"""

from __future__ import annotations


class ZopeLBError(Exception):
    """Base of every error zope_lb raises on purpose."""


class ConfigError(ZopeLBError, ValueError):
    """A setting broke a rule. The message names the key, the value and the rule."""

    def __init__(self, key: str, value: object, rule: str, line: int | None = None):
        self.key = key
        self.value = value
        self.rule = rule
        self.line = line
        where = f"{key} line {line}" if line is not None else key
        super().__init__(f"{where} {value!r}: {rule}")


class StateSaveError(ZopeLBError):
    """An admin edit could not be written to the state file, so it was not made:
    an edit that answered 200 and was lost at the next restart would be worse."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"the change was not made: the state file {path} cannot be "
                         f"written ({problem})")


class UpstreamError(ZopeLBError):
    """A request could not be answered by a backend."""

    status = 502
    #: True when the backend may have received (part of) the request.
    sent = True

    #: What a page says when no ``public`` reason was given for a backend's error.
    summary = "the application server failed"

    def __init__(self, reason: str, backend: str | None = None, *, label: str | None = None,
                 public: str | None = None):
        self.reason = reason
        self.backend = backend
        self.label = label
        # An error about a backend may carry library text with its address:
        # the page then says only what kind of failure it was.
        self.public = public if public is not None else (self.summary if backend else reason)
        super().__init__(f"{backend}: {reason}" if backend else reason)


class NoBackendAvailable(UpstreamError):
    status = 503
    sent = False

    #: Why, as a bounded word for metrics: no_backend, queue_full,
    #: queue_timeout, shutdown or unreachable.
    def __init__(self, reason: str, backend: str | None = None, kind: str = "no_backend"):
        super().__init__(reason, backend, public=reason)
        self.kind = kind


class BackendConnectError(UpstreamError):
    sent = False
    summary = "could not connect"


class BackendDisconnected(UpstreamError):
    summary = "the connection broke before an answer"


class BackendTimeout(UpstreamError):
    status = 504
    summary = "no answer in time"


class BackendProtocolError(UpstreamError):
    summary = "the answer was not valid HTTP"
