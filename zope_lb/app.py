"""``LoadBalancer``: the composition root and the WSGI callable.

It turns options into settings, builds the backend pool, the strategy and the
proxy, and dispatches each request: to the wrapped app (filter use, outside
``prefix``), or to the backends, answering with an error page (or the wrapped
app, with ``fallback``) when none can.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from urllib3 import HTTPConnectionPool

from .errors import UpstreamError
from .pages import error_page, upstream_error_page
from .pool import BackendPool
from .proxy import ClientBodyError, Proxy, Route
from .settings import Settings, parse_backends, parse_settings
from .strategies import make_strategy

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


class LoadBalancer:
    """A WSGI app that spreads requests over Zope clients.

    ``LoadBalancer(["127.0.0.1:8081", "127.0.0.1:8082"], strategy="round_robin")``;
    option names are those of the ini (``timeout.read``) or the same with
    underscores (``timeout_read=30``). With ``app``, it is a filter: requests
    outside ``prefix`` go to ``app``.
    """

    def __init__(
        self,
        backends: Iterable[str] | str,
        app: WSGIApp | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        pool_factory: Callable[..., Any] = HTTPConnectionPool,
        **options: Any,
    ):
        settings = parse_settings({"backends": backends, **options})
        self._setup(settings, app, clock, pool_factory)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        app: WSGIApp | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        pool_factory: Callable[..., Any] = HTTPConnectionPool,
    ) -> LoadBalancer:
        """A balancer for already validated settings (the PasteDeploy factories
        use this, so no ini key can ever reach a keyword meant for tests)."""
        balancer = cls.__new__(cls)
        balancer._setup(settings, app, clock, pool_factory)
        return balancer

    def _setup(self, settings: Settings, app: WSGIApp | None,
               clock: Callable[[], float], pool_factory: Callable[..., Any]) -> None:
        self.settings = settings
        self.app = app
        self.pool = BackendPool(settings, clock=clock, pool_factory=pool_factory)
        self.strategy = make_strategy(settings.strategy, settings)
        named = tuple(
            Route(
                spec.name,
                BackendPool(settings, spec.backends, name=spec.name, clock=clock,
                            pool_factory=pool_factory),
                make_strategy(spec.strategy, settings),
                spec.match,
            )
            for spec in settings.pools
        )
        self.proxy = Proxy(Route("default", self.pool, self.strategy), settings, named)
        prefix = self.settings.prefix.rstrip("/")
        self._prefix = prefix
        self._prefix_slash = prefix + "/"
        log.info(
            "balancing over %s with %s",
            ", ".join(b.address for b in self.pool.backends), self.settings.strategy,
        )

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._prefix and not self._wanted(environ):
            if self.app is not None:
                return self.app(environ, start_response)
            return error_page(404, "This path is not served here.")(environ, start_response)
        if environ["REQUEST_METHOD"] == "CONNECT":
            page = error_page(405, "CONNECT is not supported by this balancer.")
            return page(environ, start_response)
        try:
            return self.proxy.forward(environ, start_response)
        except UpstreamError as exc:
            if self.app is not None and self.settings.fallback and not exc.sent:
                log.info("%s: answered by the wrapped app (fallback)", exc)
                return self.app(environ, start_response)
            return upstream_error_page(exc)(environ, start_response)
        except ValueError:
            return error_page(400, "The Content-Length header is not valid.")(
                environ, start_response)
        except ClientBodyError as exc:
            return error_page(400, f"{exc}.")(environ, start_response)

    def _wanted(self, environ: dict) -> bool:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        return path == self._prefix or path.startswith(self._prefix_slash)

    def reconfigure(self, backends: Iterable[str] | str) -> None:
        """Replace the backend list at once: validated whole first, then applied;
        new backends take requests, removed ones drain. ConfigError leaves the
        running list unchanged."""
        settings = replace(self.settings, backends=parse_backends(backends))
        self.pool.reconfigure(settings)
        self.settings = settings

    @property
    def pools(self) -> tuple[BackendPool, ...]:
        """The default pool first, then the named pools."""
        return (self.pool, *(route.pool for route in self.proxy.routes))

    def close(self) -> None:
        """Close every backend's connections; queued requests get a 503."""
        for pool in self.pools:
            pool.close()
