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
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .accesslog import AccessLog, Entry, LoggedBody, LoggedList
from .accesswriter import LineWriter
from .admin import AdminApp, registry
from .admin.auth import allowed
from .backend import Backend, BackendConnectionPool, State
from .backendlines import BackendSpec
from .discovery import Discovery
from .errors import BackendTimeout, NoBackendAvailable, UpstreamError
from .headers import client_address
from .health import HealthChecker
from .metrics import Metrics
from .notify import (
    ClusterWatch,
    CommandNotifier,
    Dispatcher,
    WebhookNotifier,
    describe,
    make_event,
    utc_now_iso,
)
from .pages import error_page, refusal_page, upstream_error_page
from .pool import BackendPool
from .proxy import SUMMARY, ClientBodyError, Proxy, RequestObserver, Route
from .requestcheck import BadRequest, check_request
from .settings import PoolSpec, Settings, format_options, parse_settings
from .state import StateFile
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
        pool_factory: Callable[..., Any] = BackendConnectionPool,
        name: str = "main",
        **options: Any,
    ):
        settings = parse_settings({"backends": backends, **options})
        self._setup(settings, app, clock, pool_factory, name)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        app: WSGIApp | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        pool_factory: Callable[..., Any] = BackendConnectionPool,
        name: str = "main",
    ) -> LoadBalancer:
        """A balancer for already validated settings (the PasteDeploy factories
        use this, so no ini key can ever reach a keyword meant for tests)."""
        balancer = cls.__new__(cls)
        balancer._setup(settings, app, clock, pool_factory, name)
        return balancer

    def _setup(self, settings: Settings, app: WSGIApp | None,
               clock: Callable[[], float], pool_factory: Callable[..., Any],
               name: str) -> None:
        self.name = name  # how egg:zope_lb#admin finds it (admin.registry)
        self.settings = settings
        self.app = app
        self._clock = clock
        self._pool_factory = pool_factory
        self._wall_clock = time.time
        # Every change of configuration, re-entrant: the state file saves a change
        # under it before the change is made, and applies the file's under it.
        self.apply_lock = threading.RLock()
        self.observer: RequestObserver | None = None
        self.on_apply: list[Callable[[Settings], None]] = []
        self.dispatcher = _dispatcher(settings)
        # `resolve` lines: looked up once now, before the first request, then
        # followed by the discovery thread (no request ever waits on DNS).
        self.discovery = Discovery(self._resolved_changed, clock=clock)
        self.discovery.follow(settings)
        self.discovery.resolve_now()
        self.pool = self._new_pool(settings, self.discovery.expand(settings.backends), "default")
        self.strategy = make_strategy(settings.strategy, settings)
        named = tuple(self._route(spec, settings.pool_settings(spec))
                      for spec in settings.pools)
        self.proxy = Proxy(Route("default", self.pool, self.strategy), settings, named)
        self.cluster = ClusterWatch(settings.notify_min_healthy)
        self._changes_lock = threading.Lock()
        self.cluster.update(*self.pool.primary_counts(), utc_now_iso())
        self.checker: HealthChecker | None = None
        self.access_writer: LineWriter | None = None
        self._closed = False
        self._use(settings)
        self.state_file: StateFile | None = None  # set by the PasteDeploy factory
        self.metrics = Metrics(self)
        self.set_observer(self.metrics.observer)
        self.admin = AdminApp(self)
        self.discovery.start()
        _open_balancers.add(self)
        registry.register(name, self)
        log.info(
            "balancing over %s with %s",
            ", ".join(b.address for b in self.pool.backends), self.settings.strategy,
        )

    def _route(self, spec: PoolSpec, settings: Settings, pool: BackendPool | None = None
               ) -> Route:
        """A named pool's route; ``settings`` are the pool's own (per-pool options)."""
        if pool is None:
            pool = self._new_pool(settings, self.discovery.expand(spec.backends), spec.name)
        return Route(spec.name, pool, make_strategy(spec.strategy, settings), spec.match,
                     settings)

    def _new_pool(self, settings: Settings, specs: tuple[BackendSpec, ...],
                  name: str) -> BackendPool:
        return BackendPool(settings, specs, name=name, clock=self._clock,
                           pool_factory=self._pool_factory, listener=self._backend_changed)

    def _use(self, settings: Settings) -> None:
        """Point the parts that read settings on every request at ``settings``."""
        self.settings = settings
        logging_on = settings.access_log != "off"
        writer = self._access_writer_for(settings.access_log_flush if logging_on else 0.0)
        # one assignment: a request running during a reload sees the old or the new log
        self.access = (AccessLog(settings.access_log, settings.forwarded_trusted,
                                 clock=self._clock, wall_clock=self._wall_clock,
                                 writer=writer) if logging_on else None)
        self._health_endpoint = settings.health_endpoint
        self._admin_path = settings.admin_path.rstrip("/")
        self._admin_slash = self._admin_path + "/"
        prefix = settings.prefix.rstrip("/")
        self._prefix = prefix
        self._prefix_slash = prefix + "/"
        # a pool may probe while the top level does not (health.interval per pool)
        probing = any(pool.settings.health_interval for pool in self.pools)
        if probing and self.checker is None:
            self.checker = HealthChecker(
                lambda: [b for pool in self.pools for b in pool.backends], settings,
                clock=self._clock, pool_factory=self._pool_factory, on_probe=self._probed,
                settings_of=self._settings_of,
            ).start()
        elif self.checker is not None:
            if probing:
                self.checker.settings = settings
            else:
                self.checker.close()
                self.checker = None

    def _access_writer_for(self, flush: float) -> LineWriter | None:
        """The access log's writer thread for ``access_log.flush`` (one per
        balancer, kept across reloads); None, and any old one closed, for 0."""
        writer = self.access_writer
        if flush and not self._closed:
            if writer is None:
                writer = self.access_writer = LineWriter(flush)
            writer.interval = flush
            return writer
        if writer is not None:  # lines of requests still in flight are written at once
            self.access_writer = None
            writer.close()
        return None

    # -- changes at run time --------------------------------------------------------------

    def current_options(self) -> dict[str, str]:
        """The running configuration as ini text (forms, the state file)."""
        return format_options(self.settings)

    def apply(self, changes: Mapping[str, object], replace: bool = False) -> Settings:
        """Change options at run time, validated whole first, then applied at once.

        ``changes`` maps option names (as in the ini) to new values; the rest
        stay as they are, or, with ``replace``, go back to their defaults (a
        reloaded ini, a state file). A ConfigError (naming key, value, rule and
        line) leaves everything running unchanged. Unchanged backends keep
        their connections and state; new ones take requests at once; removed
        ones drain. Returns the new settings. With a state file, the change is
        saved first: StateSaveError (not writable) leaves everything unchanged too.
        """
        with self.apply_lock:
            values: dict[str, object] = (
                dict(changes) if replace else {**self.current_options(), **changes})
            settings = parse_settings(values)
            if self.state_file is not None:  # kept first: what cannot be kept is not made
                settings = self.state_file.saving(settings)
            self._switch(settings)
        for callback in self.on_apply:
            callback(settings)
        return settings

    def _switch(self, settings: Settings) -> None:
        old = self.settings
        self.discovery.follow(settings)
        self.pool.reconfigure(settings, self.discovery.expand(settings.backends))
        routes = {route.name: route for route in self.proxy.routes}
        named = []
        for spec in settings.pools:
            own = settings.pool_settings(spec)
            route = routes.pop(spec.name, None)
            if route is not None:
                route.pool.reconfigure(own, self.discovery.expand(spec.backends))
            named.append(self._route(spec, own, route.pool if route else None))
        for gone in routes.values():
            gone.pool.reconfigure(settings, ())  # drains, then closes, every backend
        for pool in (self.pool, *(route.pool for route in named)):
            for backend in pool.backends:
                backend.configure(pool.settings)
        self.strategy = make_strategy(settings.strategy, settings)
        self.proxy = Proxy(Route("default", self.pool, self.strategy), settings,
                           tuple(named), self.observer)
        if (settings.notify_webhook, settings.notify_command) != (
                old.notify_webhook, old.notify_command):
            if self.dispatcher is not None:
                self.dispatcher.close()
            self.dispatcher = _dispatcher(settings)
        self.cluster.min_healthy = settings.notify_min_healthy
        self._use(settings)
        log.info("configuration applied: %d backends, strategy %s",
                 len(settings.backends), settings.strategy)

    def _resolved_changed(self) -> None:
        """The discovery thread's answer changed: each pool whose expansion
        differs is reconfigured in place (unchanged addresses keep their
        backend; new ones join with slow start; vanished ones drain). The
        settings, and so the configured text, stay as they are."""
        joined = False
        with self.apply_lock:
            if self._closed:
                return
            settings = self.settings
            lines = {spec.name: spec.backends for spec in settings.pools}
            for pool, specs in ((self.pool, settings.backends),
                                *((r.pool, lines.get(r.name, ())) for r in self.proxy.routes)):
                expanded = self.discovery.expand(specs)
                if expanded == tuple(b.spec for b in pool.backends):
                    continue
                before = set(pool.backends)
                pool.reconfigure(pool.settings, expanded)  # its own (per-pool) settings
                for backend in pool.backends:
                    if backend not in before:
                        backend.start_slowly()
                        joined = True
        if joined and self.state_file is not None:
            self.state_file.sync_backends()  # an admin state kept for a returning address

    def _settings_of(self, backend: Backend) -> Settings:
        """The settings of the pool ``backend`` is in (its per-pool options)."""
        for pool in self.pools:
            if backend in pool.backends:  # by identity: pool names need not differ
                return pool.settings
        return self.settings

    def _probed(self, backend: Backend, passed: bool) -> None:
        observer = self.observer
        if observer is not None:
            observer.probe(backend.pool_name, backend.id, passed)

    def set_observer(self, observer: RequestObserver | None) -> None:
        """Install the metrics observer (called on every proxied attempt)."""
        self.observer = observer
        self.proxy.observer = observer

    def find_backends(self, backend_id: str) -> list[tuple[BackendPool, Backend]]:
        """Every (pool, backend) with this id: the same client may be in several pools."""
        return [(pool, b) for pool in self.pools for b in pool.backends if b.id == backend_id]

    def backend_action(self, backend_id: str, action: str) -> list[Backend]:
        """``enable``, ``disable`` or ``drain`` a backend by id (in every pool).
        Raises KeyError for an unknown id and ValueError for an unknown action."""
        if action not in ("enable", "disable", "drain"):
            raise ValueError(f"unknown action {action!r}: use enable, disable or drain")
        found = self.find_backends(backend_id)
        if not found:
            raise KeyError(backend_id)
        if self.state_file is not None:  # kept first (StateSaveError: nothing done)
            self.state_file.save_backend(backend_id, _ADMIN_STATE[action])
        for _, backend in found:
            if action == "drain":
                backend.drain("drained by an administrator")
            else:
                getattr(backend, action)()
        return [backend for _, backend in found]

    def stats(self) -> list[dict[str, Any]]:
        """One row per backend for the status page and the API."""
        now = self._clock()
        rows = []
        for pool in self.pools:
            for b in pool.backends:
                probe = None
                if b.last_probe is not None:
                    at, passed, detail = b.last_probe
                    probe = {"seconds_ago": round(now - at, 1), "passed": passed,
                             "detail": detail}
                rows.append({
                    "id": b.id, "address": b.address, "pool": pool.name,
                    "role": "backup" if b.backup else "primary",
                    "state": b.state.value, "reason": b.reason,
                    "weight": round(b.weight, 2), "base_weight": b.base_weight,
                    "maxconn": b.maxconn, "active": b.active, "queued": pool.queued,
                    "requests": b.requests, **b.stats.snapshot(), "last_probe": probe,
                })
        return rows

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        access = self.access
        entry = access.open(environ) if access is not None else None
        if entry is None:
            return self._dispatch(environ, start_response, None)
        try:
            return self._dispatch(environ, start_response, entry)
        except BaseException:
            entry.status = 500
            entry.end = "error"
            entry.finish()
            raise

    def _dispatch(self, environ: dict, start_response: Callable[..., Any],
                  entry: Entry | None) -> Iterable[bytes]:
        try:
            environ = check_request(environ)
        except BadRequest as exc:
            return _local(refusal_page(str(exc)), environ, start_response, entry,
                          "bad_request")
        path = environ.get("PATH_INFO", "")
        if path == self._health_endpoint:
            return _local(self.health_page, environ, start_response, entry, "local")
        if path.startswith(self._admin_slash) or path == self._admin_path:
            return _local(self.admin, environ, start_response, entry, "local")
        if self._prefix and not self._wanted(environ):
            if self.app is not None:
                return _local(self.app, environ, start_response, entry, "local")
            return _local(error_page(404, "This path is not served here."), environ,
                          start_response, entry, "local")
        if environ["REQUEST_METHOD"] == "CONNECT":
            page = error_page(405, "CONNECT is not supported by this balancer.")
            return _local(page, environ, start_response, entry, "bad_request")
        try:
            return self.proxy.forward(environ, start_response, entry)
        except UpstreamError as exc:
            if self.app is not None and self.settings.fallback and not exc.sent:
                SUMMARY.info(("fallback", self, type(exc)),
                             "%s: answered by the wrapped app (fallback)", exc)
                return _local(self.app, environ, start_response, entry, "local")
            return _local(upstream_error_page(exc), environ, start_response, entry,
                          _end_of(exc))
        except ValueError:
            return _local(error_page(400, "The Content-Length header is not valid."),
                          environ, start_response, entry, "bad_request")
        except ClientBodyError as exc:
            return _local(error_page(400, f"{exc}."), environ, start_response, entry,
                          "bad_request")

    def _wanted(self, environ: dict) -> bool:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        return path == self._prefix or path.startswith(self._prefix_slash)

    def reconfigure(self, backends: Iterable[str] | str) -> None:
        """Replace the backend list at once: validated whole first, then applied;
        new backends take requests, removed ones drain. ConfigError leaves the
        running list unchanged."""
        self.apply({"backends": backends if isinstance(backends, str) else list(backends)})

    @property
    def pools(self) -> tuple[BackendPool, ...]:
        """The default pool first, then the named pools."""
        return (self.pool, *(route.pool for route in self.proxy.routes))

    # -- health -------------------------------------------------------------------------

    def _backend_changed(self, pool: BackendPool, backend: Backend, old: State, new: State,
                         reason: str) -> None:
        """Every state change: an event for the notifiers, and the cluster's view.

        The event carries the counts of the backend's own pool; the cluster
        watch follows the default pool, the site. Changes come from request
        threads and the health checker at once: the lock keeps each count and
        the watch's verdict in step, so no cluster event is doubled or lost."""
        with self._changes_lock:
            healthy, total = pool.primary_counts()
            now = utc_now_iso(self._wall_clock)
            events = [make_event(f"backend.{new.value}", time=now, backend=backend.id,
                                 address=backend.address, old=old.value, new=new.value,
                                 reason=reason, healthy=healthy, total=total)]
            site_healthy, site_total = (healthy, total) if pool is self.pool else (
                self.pool.primary_counts())
            for event in self.cluster.update(site_healthy, site_total, now):
                level = logging.WARNING if event["event"] == "cluster.degraded" else logging.INFO
                log.log(level, "%s", describe(event))
                events.append(event)
        if self.dispatcher is not None:
            for event in events:
                self.dispatcher.dispatch(event)

    def health(self) -> dict[str, Any]:
        """The balancer's own health: ok, degraded (a primary is not up) or down."""
        healthy, total = self.pool.primary_counts()
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
        """The health as JSON: ``status``, ``healthy`` and ``total`` for anyone; the
        per-backend rows (addresses, failure texts) only for a client the admin
        pages would answer (``admin.allow``, decided as the admin decides)."""
        report = self.health()
        settings = self.settings
        if not allowed(client_address(environ, settings.forwarded_trusted),
                       settings.admin_allow):
            report = {key: report[key] for key in PUBLIC_HEALTH}
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
        registry.unregister(self.name, self)
        if self.state_file is not None:
            self.state_file.close()
        self.discovery.close()
        if self.checker is not None:
            self.checker.close()
        for pool in self.pools:
            pool.close()
        self.metrics.close()
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.access_writer is not None:  # last: the lines of the requests just cut
            self.access_writer.close()


#: What the health endpoint tells a client outside ``admin.allow``.
PUBLIC_HEALTH = ("status", "healthy", "total")

#: The state a backend action leaves a backend in, as the state file keeps it.
_ADMIN_STATE = {"enable": None, "disable": "disabled", "drain": "draining"}


def _end_of(error: UpstreamError) -> str:
    """The access log's ``end`` word for a request no backend answered."""
    if isinstance(error, NoBackendAvailable):
        return error.kind if error.kind in ("queue_full", "queue_timeout") else "no_backend"
    return "timeout" if isinstance(error, BackendTimeout) else "backend_error"


def _local(app: WSGIApp, environ: dict, start_response: Callable[..., Any],
           entry: Entry | None, end: str) -> Iterable[bytes]:
    """Answer with ``app`` (a page of zope_lb's own, the admin, the wrapped app);
    with an access log entry, note its status and bytes and write the line at
    close."""
    if entry is None:
        return app(environ, start_response)
    entry.end = end

    def noting_status(status: str, headers: list[tuple[str, str]],
                      exc_info: Any = None) -> Any:
        entry.status = int(status[:3])
        return start_response(status, headers, exc_info)

    body = app(environ, noting_status)
    if type(body) is list:
        return LoggedList(body, entry)
    return LoggedBody(body, entry)


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
