"""``LoadBalancer``: the composition root and the WSGI callable.

It turns options into settings, builds the backend pool, the strategy and the
proxy, and dispatches each request: to the wrapped app (filter use, outside
``prefix``), or to the backends, answering with an error page (or the wrapped
app, with ``fallback``) when none can.
"""

from __future__ import annotations

import atexit
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from urllib3 import HTTPConnectionPool

from .backend import Backend, State
from .errors import UpstreamError
from .health import HealthChecker
from .notify import (
    ClusterWatch,
    CommandNotifier,
    Dispatcher,
    WebhookNotifier,
    describe,
    make_event,
    utc_now_iso,
)
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
        self._wall_clock = time.time
        self.dispatcher = _dispatcher(settings)
        self.pool = BackendPool(settings, clock=clock, pool_factory=pool_factory,
                                listener=self._backend_changed)
        self.strategy = make_strategy(settings.strategy, settings)
        named = tuple(
            Route(
                spec.name,
                BackendPool(settings, spec.backends, name=spec.name, clock=clock,
                            pool_factory=pool_factory, listener=self._backend_changed),
                make_strategy(spec.strategy, settings),
                spec.match,
            )
            for spec in settings.pools
        )
        self.proxy = Proxy(Route("default", self.pool, self.strategy), settings, named)
        self.cluster = ClusterWatch(settings.notify_min_healthy)
        self.cluster.update(*self._primary_counts(), utc_now_iso())
        self._health_endpoint = settings.health_endpoint
        self.checker: HealthChecker | None = None
        if settings.health_interval:
            self.checker = HealthChecker(
                lambda: [b for pool in self.pools for b in pool.backends], settings,
                clock=clock, pool_factory=pool_factory,
            ).start()
        self._closed = False
        _open_balancers.add(self)
        prefix = self.settings.prefix.rstrip("/")
        self._prefix = prefix
        self._prefix_slash = prefix + "/"
        log.info(
            "balancing over %s with %s",
            ", ".join(b.address for b in self.pool.backends), self.settings.strategy,
        )

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == self._health_endpoint:
            return self.health_page(environ, start_response)
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

    # -- health -------------------------------------------------------------------------

    def _primary_counts(self) -> tuple[int, int]:
        """(healthy, total) primaries of the default pool: the site's own clients."""
        primaries = [b for b in self.pool.backends if not b.backup]
        return sum(1 for b in primaries if b.state is State.UP), len(primaries)

    def _backend_changed(self, pool: BackendPool, backend: Backend, old: State, new: State,
                         reason: str) -> None:
        """Every state change: an event for the notifiers, and the cluster's view."""
        healthy, total = self._primary_counts()
        now = utc_now_iso(self._wall_clock)
        events = [make_event(f"backend.{new.value}", time=now, backend=backend.id,
                             address=backend.address, old=old.value, new=new.value,
                             reason=reason, healthy=healthy, total=total)]
        for event in self.cluster.update(healthy, total, now):
            level = logging.WARNING if event["event"] == "cluster.degraded" else logging.INFO
            log.log(level, "%s", describe(event))
            events.append(event)
        if self.dispatcher is not None:
            for event in events:
                self.dispatcher.dispatch(event)

    def health(self) -> dict[str, Any]:
        """The balancer's own health: ok, degraded (a primary is not up) or down."""
        healthy, total = self._primary_counts()
        any_up = any(b.state is State.UP for pool in self.pools for b in pool.backends)
        status = "ok" if healthy == total and healthy else ("degraded" if any_up else "down")
        return {
            "status": status,
            "healthy": healthy,
            "total": total,
            "backends": [
                {"id": b.id, "address": b.address, "pool": pool.name,
                 "role": "backup" if b.backup else "primary",
                 "state": b.state.value, "reason": b.reason}
                for pool in self.pools for b in pool.backends
            ],
        }

    def health_page(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        report = self.health()
        body = json.dumps(report).encode()
        status = "503 Service Unavailable" if report["status"] == "down" else "200 OK"
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [body]

    def close(self) -> None:
        """Stop health checks and notifiers, close every backend's connections;
        queued requests get a 503. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _open_balancers.discard(self)
        if self.checker is not None:
            self.checker.close()
        for pool in self.pools:
            pool.close()
        if self.dispatcher is not None:
            self.dispatcher.close()


def _dispatcher(settings: Settings) -> Dispatcher | None:
    notifiers: list[Any] = []
    if settings.notify_webhook:
        notifiers.append(WebhookNotifier(settings.notify_webhook))
    if settings.notify_command:
        notifiers.append(CommandNotifier(settings.notify_command))
    return Dispatcher(notifiers) if notifiers else None


#: Balancers not yet closed, closed at interpreter exit so no thread is left behind.
_open_balancers: weakref.WeakSet[LoadBalancer] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for balancer in list(_open_balancers):
        balancer.close()
