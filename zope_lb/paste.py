"""PasteDeploy factories: they only turn ini text into ``LoadBalancer`` arguments.

``use = egg:zope_lb`` (app) and ``use = egg:zope_lb#balancer`` (filter).
Settings are validated when the ini is loaded, so a bad line stops start-up.
"""

from __future__ import annotations

from collections.abc import Callable

from .app import LoadBalancer, WSGIApp
from .errors import ConfigError


def _backends(local_conf: dict[str, str]) -> str:
    try:
        return local_conf.pop("backends")
    except KeyError:
        raise ConfigError("backends", None, "is required: one host:port per line") from None


def app_factory(global_conf: dict[str, str], **local_conf: str) -> LoadBalancer:
    """``[app:main] use = egg:zope_lb``."""
    return LoadBalancer(_backends(local_conf), **local_conf)


def filter_factory(
    global_conf: dict[str, str], **local_conf: str
) -> Callable[[WSGIApp], LoadBalancer]:
    """``[filter:lb] use = egg:zope_lb#balancer``: wraps the next app in the pipeline."""
    balancer = LoadBalancer(_backends(local_conf), **local_conf)  # validates now

    def make_filter(app: WSGIApp) -> LoadBalancer:
        balancer.app = app
        return balancer

    return make_filter
