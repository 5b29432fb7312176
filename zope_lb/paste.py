"""PasteDeploy factories: they only turn ini text into ``LoadBalancer`` arguments.

``use = egg:zope_lb`` (app) and ``use = egg:zope_lb#balancer`` (filter).
Settings are validated when the ini is loaded, so a bad line stops start-up.
"""

from __future__ import annotations

from collections.abc import Callable

from .app import LoadBalancer, WSGIApp
from .settings import parse_settings


def app_factory(global_conf: dict[str, str], **local_conf: str) -> LoadBalancer:
    """``[app:main] use = egg:zope_lb``."""
    return LoadBalancer.from_settings(parse_settings(local_conf))


def filter_factory(
    global_conf: dict[str, str], **local_conf: str
) -> Callable[[WSGIApp], LoadBalancer]:
    """``[filter:lb] use = egg:zope_lb#balancer``: wraps the next app in the pipeline."""
    settings = parse_settings(local_conf)  # a bad ini fails when loaded, not at first use

    def make_filter(app: WSGIApp) -> LoadBalancer:
        return LoadBalancer.from_settings(settings, app)

    return make_filter
