"""PasteDeploy factories: they only turn ini text into ``LoadBalancer`` arguments.

``use = egg:zope_lb`` (app) and ``use = egg:zope_lb#balancer`` (filter).
Settings are validated when the ini is loaded, so a bad line stops start-up.
Admin changes kept in the state file (beside the ini) override the ini's
values; an invalid state file stops start-up too, rather than dropping edits.
"""

from __future__ import annotations

from collections.abc import Callable

from . import state
from .app import LoadBalancer, WSGIApp
from .settings import parse_settings


def _build(global_conf: dict[str, str], local_conf: dict[str, str],
           app: WSGIApp | None = None) -> LoadBalancer:
    path = state.resolve_path(local_conf.get("state_file", ""), global_conf)
    overrides = state.load_overrides(path, local_conf) if path else {}
    settings = parse_settings(state.merge(local_conf, overrides))
    balancer = LoadBalancer.from_settings(settings, app)
    if path:
        balancer.state_file = state.StateFile(path, balancer, local_conf).start()
    return balancer


def app_factory(global_conf: dict[str, str], **local_conf: str) -> LoadBalancer:
    """``[app:main] use = egg:zope_lb``."""
    return _build(global_conf, local_conf)


def filter_factory(
    global_conf: dict[str, str], **local_conf: str
) -> Callable[[WSGIApp], LoadBalancer]:
    """``[filter:lb] use = egg:zope_lb#balancer``: wraps the next app in the pipeline."""
    parse_settings(local_conf)  # a bad ini fails when loaded, not at first use

    def make_filter(app: WSGIApp) -> LoadBalancer:
        return _build(global_conf, local_conf, app)

    return make_filter
