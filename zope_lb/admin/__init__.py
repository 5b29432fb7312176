"""The admin pages, JSON API and metrics of a balancer.

Two ways to serve them:

- inside the balancer: requests under ``admin.path`` go to ``AdminApp(balancer)``;
- on a port of their own, as a PasteDeploy app in the same process::

      [app:admin]
      use = egg:zope_lb#admin
      balancer = main

  ``balancer`` names a ``LoadBalancer`` of this process (default ``main``):
  every balancer registers itself in :data:`registry` under its name when it
  is built, and leaves it when closed. The admin app looks the name up on each
  request, so the ini may build the two in either order; until the balancer
  exists, the admin app answers 503.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ConfigError
from .app import AdminApp

__all__ = ["AdminApp", "Registry", "admin_app_factory", "registry"]

log = logging.getLogger(__name__)


class Registry:
    """The balancers of this process by name. Weak references: a balancer that is
    gone is not kept alive by being registered."""

    def __init__(self) -> None:
        self._by_name: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def register(self, name: str, balancer: Any) -> None:
        """Make ``balancer`` findable as ``name`` (the newest one with a name wins)."""
        with self._lock:
            old = self._by_name.get(name)
            self._by_name[name] = balancer
        if old is not None and old is not balancer:
            log.info("a second balancer registered as %r; the admin app now shows the "
                     "newest", name)

    def unregister(self, name: str, balancer: Any = None) -> None:
        """Forget ``name`` (only if it is still ``balancer``, when given)."""
        with self._lock:
            if balancer is None or self._by_name.get(name) is balancer:
                self._by_name.pop(name, None)

    def get(self, name: str) -> Any | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name.keys())


#: Where ``LoadBalancer`` instances register, for ``egg:zope_lb#admin``.
registry = Registry()


class NamedAdminApp:
    """An ``AdminApp`` for the balancer registered under ``name``, found per request."""

    def __init__(self, name: str, registry: Registry = registry, **options: Any):
        self.name = name
        self.registry = registry
        self.options = options
        self._app: tuple[weakref.ref[Any], AdminApp] | None = None
        self._lock = threading.Lock()

    def app(self) -> AdminApp | None:
        balancer = self.registry.get(self.name)
        if balancer is None:
            return None
        with self._lock:
            if self._app is None or self._app[0]() is not balancer:
                self._app = (weakref.ref(balancer), AdminApp(balancer, **self.options))
            return self._app[1]

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        app = self.app()
        if app is not None:
            return app(environ, start_response)
        body = (f"No balancer named {self.name!r} runs in this process "
                f"(known: {', '.join(self.registry.names()) or 'none'}).\n").encode()
        start_response("503 Service Unavailable", [
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"), ("Retry-After", "5")])
        return [body]


def admin_app_factory(global_conf: dict[str, str], **local_conf: str) -> NamedAdminApp:
    """``[app:admin] use = egg:zope_lb#admin`` with ``balancer = NAME`` (default
    ``main``): the admin of a balancer in the same process, on its own port."""
    name = local_conf.pop("balancer", "main").strip()
    for key, value in local_conf.items():
        raise ConfigError(key, value, "unknown option for egg:zope_lb#admin; it takes only "
                                      "`balancer = NAME`; the admin options (admin.users, "
                                      "admin.allow...) belong to the balancer's section")
    if not name:
        raise ConfigError("balancer", name, "name the balancer, e.g. balancer = main")
    return NamedAdminApp(name)
