from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from apps import routes  # noqa: E402
from servers import ServerThread  # noqa: E402


@pytest.fixture
def backends():
    """Three running waitress backends, named b0, b1, b2."""
    servers = [ServerThread(routes(f"b{i}")).start() for i in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def backend():
    """One running waitress backend, named solo."""
    server = ServerThread(routes("solo")).start()
    yield server
    server.stop()
