"""zope_lb: a load balancer for Zope and Plone clusters, as a WSGI library."""

import logging

from .app import LoadBalancer
from .backendlines import BackendSpec
from .errors import ConfigError, UpstreamError
from .settings import Settings, parse_settings

__version__ = "0.1.0"

__all__ = [
    "BackendSpec",
    "ConfigError",
    "LoadBalancer",
    "Settings",
    "UpstreamError",
    "parse_settings",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
