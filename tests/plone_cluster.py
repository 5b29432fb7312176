"""A real Plone 6 site on two Zope clients sharing one ZEO server, for the ``plone`` tests.

Built on :class:`zope_cluster.ZopeCluster` (the same ZEO server, instances
made by ``mkwsgiinstance``, ports read from the logs, bounded waits, PIDs
stopped at teardown). What a Plone cluster adds:

- each client's ``zope.ini`` gets plone.observability's health server in its
  WSGI pipeline (``egg:plone.observability#healthserver``), on 127.0.0.1 and a
  free port of its own, given by ``PLONE_OBSERVABILITY_HEALTH_HOST`` and
  ``..._PORT`` (the add-on reads only the environment; its default is
  0.0.0.0:8081, and port 0 turns it off). It answers ``/live``, ``/ready``
  (opens a ZODB connection) and ``/startup`` in its own thread;
- the site ``Plone`` (Classic UI: plone.app.contenttypes, barceloneta,
  plone.restapi for the JWT login of ``/++api++/@login``) is made by
  ``zconsole run`` with ``Products.CMFPlone.factory.addPloneSite``, as the
  Zope root's ``admin`` (``mkwsgiinstance -u``), after the clients are up (ZEO
  sends them the new objects); about 7-10 s. It gets a Plone user
  ``siteadmin`` (role Manager) whom the tests log in as: a site user gets a
  signed plone.session ticket in ``__ac`` and a JWT, as editors do (the Zope
  root's ``admin`` would get its password in the cookie).

Plone lives in a venv of its own, not in the one pytest runs in: installed
beside Zope it changes bare Zope too (plone.protect's CSRF guard aborts the
ZMI writes of the ``zope`` tests, and every client loads Plone's ZCML). Only
processes run from it (runzeo, mkwsgiinstance, runwsgi, zconsole); the tests
and ``zope-lb serve`` run in pytest's venv. It is found as
``$PLONE_VENV``, else ``.plone-venv`` at the top of the checkout, else
pytest's own venv if Plone is there (make one with ``python3 -m venv
.plone-venv && .plone-venv/bin/pip install -e '.[zope,plone]'``).

Start-up of a Plone client loads much more ZCML than a bare Zope, so the
waits are longer than the ``zope`` tests' but still bounded.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from servers import free_port
from zope_cluster import PASSWORD, USER, Server, ZopeCluster, wait_for

SITE = "Plone"
SITE_USER, SITE_PASSWORD = "siteadmin", "plone-secret-42"  # a Manager of the site
START_TIMEOUT = 180.0  # seconds for a Plone client to answer (2 cores, shared)
SITE_TIMEOUT = 240.0  # seconds for zconsole to make the site
PROFILES = (  # what plone.classicui's "classic" distribution installs, and the REST API
    "plone.app.contenttypes:default",
    "plone.app.layout:default",
    "plonetheme.barceloneta:default",
    "plone.restapi:default",
)

CREATE_SITE = """\
import sys
import transaction
from AccessControl.SecurityManagement import newSecurityManager
from Products.CMFPlone.factory import addPloneSite
from Testing.makerequest import makerequest

from plone import api
from zope.component.hooks import setSite
from zope.globalrequest import setRequest

site_id, profiles, manager, user, password = sys.argv[-5:]  # zconsole's own argv first
app = makerequest(app)  # noqa: F821 (zconsole run provides app)
setRequest(app.REQUEST)
newSecurityManager(None, app.acl_users.getUser(manager).__of__(app.acl_users))
if site_id not in app.objectIds():
    addPloneSite(app, site_id, title="zope_lb test site", extension_ids=profiles.split(","),
                 default_language="en")
    transaction.commit()
setSite(app[site_id])
if api.user.get(username=user) is None:
    api.user.create(email=f"{user}@example.com", username=user, password=password,
                    roles=("Manager",))
    transaction.commit()
print("site ready:", site_id)
"""

HEALTH_FILTER = """
[filter:healthserver]
use = egg:plone.observability#healthserver
"""


CHECKOUT = Path(__file__).resolve().parent.parent
SCRIPTS = ("runzeo", "mkwsgiinstance", "runwsgi", "zconsole", "python")


@functools.cache
def plone_bin() -> Path | None:
    """The ``bin`` folder of the venv with Plone (see the module's docstring), or
    None when there is none with Zope, ZEO, Plone and plone.observability."""
    named = os.environ.get("PLONE_VENV")  # not ZOPE_LB_*: that prefix is the notifier's
    venvs = [Path(named)] if named else [CHECKOUT / ".plone-venv",
                                         Path(sys.executable).parent.parent]
    for venv in venvs:
        bin_dir = venv / "bin"
        if not all((bin_dir / name).exists() for name in SCRIPTS):
            continue
        check = subprocess.run(
            [str(bin_dir / "python"), "-c", "import Products.CMFPlone, plone.observability"],
            capture_output=True, timeout=120, check=False)
        if check.returncode == 0:
            return bin_dir
    return None


@dataclass
class PloneCluster(ZopeCluster):
    """ZEO and Zope clients that each load Plone and run plone.observability's
    health server on a port of their own (``health_ports``, by client name)."""

    start_timeout: float = START_TIMEOUT
    health_ports: dict[str, int] = field(default_factory=dict)

    def prepare_client(self, name: str, home: Path) -> dict[str, str]:
        """Put the health server in the client's pipeline, on a free loopback port."""
        ini = home / "etc" / "zope.ini"
        text, count = re.subn(r"(?m)^(pipeline =\n(?:.*\n)*?)(    zope\n)",
                              r"\1    healthserver\n\2", ini.read_text(), count=1)
        assert count == 1, "mkwsgiinstance's zope.ini has no pipeline ending in zope"
        ini.write_text(text + HEALTH_FILTER)
        port = free_port()
        self.health_ports[name] = port
        return {"PLONE_OBSERVABILITY_HEALTH_HOST": "127.0.0.1",
                "PLONE_OBSERVABILITY_HEALTH_PORT": str(port)}

    def health_port(self, server: Server) -> int:
        return self.health_ports[server.name]

    def create_site(self, site_id: str = SITE) -> None:
        """``zconsole run`` with client0's zope.conf (a ZEO client like the others)."""
        script = self.base / "create_site.py"
        script.write_text(CREATE_SITE)
        conf = self.base / "client0" / "etc" / "zope.conf"
        log = self.base / "create_site.log"
        with open(log, "wb") as out:
            done = subprocess.run(
                [str(self.bin_dir / "zconsole"), "run", str(conf), str(script), site_id,
                 ",".join(PROFILES), USER, SITE_USER, SITE_PASSWORD],
                cwd=self.base, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=SITE_TIMEOUT, check=False)
        text = log.read_text(errors="replace")
        if done.returncode != 0 or f"site ready: {site_id}" not in text:
            raise RuntimeError(f"zconsole could not make the site ({done.returncode}):\n"
                               + "\n".join(text.splitlines()[-30:]))

    def wait_for_site(self, site_id: str = SITE) -> None:
        """Until every client serves the site's ``@@ok`` view (bounded)."""
        deadline = time.monotonic() + 60
        for server in self.clients:
            wait_for(server,
                     lambda port=server.port: get_status(port, f"/{site_id}/@@ok") == 200,
                     deadline, f"does not serve /{site_id}", interval=0.2)

    def wait_for_health_servers(self) -> None:
        """Until each client's health server answers ``/live`` (bounded)."""
        deadline = time.monotonic() + 30
        for server in self.clients:
            while get_status(self.health_port(server), "/live") != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name}'s health server does not answer:\n"
                                       f"{server.log_tail()}")
                time.sleep(0.1)


def get_status(port: int, path: str, timeout: float = 10.0) -> int | None:
    """The status of ``GET path`` on 127.0.0.1:port, or None when nothing answered."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()
    except OSError:
        return None


@dataclass(frozen=True)
class PloneSite:
    """What the tests get: the cluster, the site's path and the admin's login."""

    cluster: PloneCluster
    site: str = SITE
    user: str = SITE_USER  # a Plone user with the Manager role in the site
    password: str = SITE_PASSWORD
    zope_user: str = USER  # the Zope root's Manager (mkwsgiinstance -u)
    zope_password: str = PASSWORD

    @property
    def addresses(self) -> list[str]:
        return self.cluster.addresses

    @property
    def clients(self) -> list[Server]:
        return self.cluster.clients


@contextlib.contextmanager
def running_plone(base: Path, bin_dir: Path, clients: int = 2) -> Iterator[PloneSite]:
    """A started :class:`PloneCluster` with the site made, stopped on exit whatever happened."""
    cluster = PloneCluster(base, bin_dir=bin_dir)
    try:
        cluster.start(shared=clients, own_storage=0)
        cluster.create_site()
        cluster.wait_for_site()
        cluster.wait_for_health_servers()
        yield PloneSite(cluster)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def plone_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PloneSite]:
    """A Plone site ``/Plone`` on two Zope clients sharing one ZEO server, built once
    per test run; the admin's login is ``plone_site.user``/``.password``."""
    bin_dir = plone_bin()
    if bin_dir is None:
        pytest.skip("no venv with Plone: python3 -m venv .plone-venv && "
                    ".plone-venv/bin/pip install -e '.[zope,plone]' (or set PLONE_VENV)")
    with running_plone(tmp_path_factory.mktemp("plone"), bin_dir) as site:
        yield site
