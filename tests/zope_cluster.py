"""A real ZEO server and real Zope clients, for the ``zope`` tests.

Theory of operation: everything lives in one temp folder.  The Zope
clients listen on 127.0.0.1 port 0, so their ports are never guessed: each
one's port is read from its log ("Serving on http://127.0.0.1:N").  runzeo
logs the port it was asked for, not the one it got, so it is given a free
port picked just before, and another if that one was taken meanwhile.
Instances are made with ``mkwsgiinstance`` and their ``zope.conf`` (a
``<zeoclient>``) and ``zope.ini`` (the listen address) rewritten.

The first client to open a new ZEO storage creates the root objects; two
clients doing that at once get a ConflictError and one dies.  So the first
shared client is started and waited for alone, then the rest together.

Every wait is bounded, and every process is stopped by its PID (SIGTERM,
a bounded wait, SIGKILL) in ``ZopeCluster.stop``, which the fixture calls
even when start-up failed.  On Linux the children also get SIGKILL if the
test process dies without cleaning up.

:class:`RelStorageCluster` does the same for clients on RelStorage: they
share one PostgreSQL database (tests/postgres.py starts the server); the
first client creates RelStorage's schema and the root objects, alone.

For the failure tests, a cluster can be hurt and healed: ``restart`` starts
a stopped client again on its old port, ``stop_zeo``/``start_zeo`` take the
ZEO server away and bring it back on the same port with the same Data.fs,
``frozen`` holds a client in SIGSTOP (it still accepts TCP connections, the
kernel does that, but never answers) and always sends SIGCONT on the way
out, and ``heal`` puts everything back as it was, each wait bounded.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servers import free_port

BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0  # seconds for a server to answer
STOP_TIMEOUT = 10.0  # seconds a server gets after SIGTERM
USER, PASSWORD = "admin", "secret"


def zope_installed() -> bool:
    """True when Zope's and ZEO's scripts are in this venv (the ``zope`` extra)."""
    return all((BIN / name).exists() for name in ("mkwsgiinstance", "runwsgi", "runzeo"))


def relstorage_installed() -> bool:
    """True when RelStorage and psycopg2 are importable here (the ``zope`` extra)."""
    import importlib.util

    return zope_installed() and all(importlib.util.find_spec(name) is not None
                                    for name in ("relstorage", "psycopg2"))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    """One running process with its log file; ``port`` once it has announced it."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)  # more environment, kept for restarts

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM by PID, a bounded wait, then SIGKILL."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
            os.kill(self.pid, signal.SIGCONT)  # a frozen process must run to see SIGTERM
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)


def _spawn(name: str, argv: list[str], log: Path, cwd: Path,
           env: dict[str, str] | None = None) -> Server:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, env={**os.environ, **env} if env else None,
        )
    return Server(name, process, log, env=dict(env or {}))


def _wait_for_port(server: Server, pattern: str, deadline: float) -> None:
    """Read the port the server announced in its log."""
    while True:
        match = re.search(pattern, server.log.read_text(errors="replace"))
        if match:
            server.port = int(match[1])
            return
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} did not start in time:\n{server.log_tail()}")
        time.sleep(0.05)


def _wait_for_connect(server: Server, deadline: float) -> None:
    """Until the port accepts a TCP connection."""
    while True:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            return
        except OSError:
            pass
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} did not listen in time:\n{server.log_tail()}")
        time.sleep(0.05)


def _wait_for_http(server: Server, deadline: float) -> None:
    """Until GET / answers (Zope opens its database before it serves)."""
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            try:
                conn.request("GET", "/")
                if conn.getresponse().status < 500:
                    return
            finally:
                conn.close()
        except OSError:
            pass
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} did not answer in time:\n{server.log_tail()}")
        time.sleep(0.1)


ZEO_CLIENT = """<zodb_db main>
  mount-point /
  <zeoclient>
    server {server}
    storage 1
  </zeoclient>
</zodb_db>"""


RELSTORAGE_CLIENT = """%import relstorage
<zodb_db main>
  mount-point /
  <relstorage>
    <postgresql>
      dsn {dsn}
    </postgresql>
  </relstorage>
</zodb_db>"""


def make_instance(base: Path, name: str, zodb_db: str | None, bin_dir: Path = BIN) -> Path:
    """``mkwsgiinstance`` (from ``bin_dir``) in ``base/name``, listening on
    127.0.0.1 port 0, its ``<zodb_db main>`` replaced by ``zodb_db`` (None: its
    own FileStorage). Returns the zope.ini to run."""
    home = base / name
    subprocess.run(
        [str(bin_dir / "mkwsgiinstance"), "-d", str(home), "-u", f"{USER}:{PASSWORD}"],
        check=True, capture_output=True, timeout=60,
    )
    if zodb_db is not None:
        conf = home / "etc" / "zope.conf"
        text, count = re.subn(r"<zodb_db main>.*?</zodb_db>", lambda _: zodb_db,
                              conf.read_text(), count=1, flags=re.S)
        assert count == 1, "mkwsgiinstance's zope.conf has no <zodb_db main>"
        conf.write_text(text)
    ini = home / "etc" / "zope.ini"
    text, count = re.subn(r"(?m)^host = .*\nport = .*$", "listen = 127.0.0.1:0",
                          ini.read_text())
    assert count == 1, "mkwsgiinstance's zope.ini has no host/port lines"
    ini.write_text(text)
    return ini


@dataclass
class ZopeCluster:
    """A ZEO server, Zope clients sharing it, and clients with their own storage."""

    base: Path
    zeo: Server | None = None
    clients: list[Server] = field(default_factory=list)  # shared, through ZEO
    loners: list[Server] = field(default_factory=list)  # each with its own Data.fs
    extras: list[Server] = field(default_factory=list)  # shared, added by a test
    start_timeout: float = START_TIMEOUT  # seconds for a server to answer
    bin_dir: Path = BIN  # the venv whose runzeo, mkwsgiinstance and runwsgi are run

    @property
    def addresses(self) -> list[str]:
        return [c.address for c in self.clients]

    def start(self, shared: int = 2, own_storage: int = 1) -> ZopeCluster:
        """Start ZEO, ``shared`` clients on it and ``own_storage`` loners."""
        deadline = time.monotonic() + self.start_timeout
        self.zeo = self._start_zeo(deadline)
        loners = [self._client(f"own{i}", shared=False) for i in range(own_storage)]
        first = self._client("client0", shared=True)
        self._announced(first, deadline)  # alone: it creates the root objects
        rest = [self._client(f"client{i}", shared=True) for i in range(1, shared)]
        for server in [*loners, *rest]:
            self._announced(server, deadline)
        return self

    def _start_zeo(self, deadline: float) -> Server:
        """runzeo logs the port it was given, not the one it got: so give it a
        free one, and try another if something took it in between."""
        for attempt in range(3):
            port = free_port()
            zeo = _spawn("zeo", [str(self.bin_dir / "runzeo"), "-a", f"127.0.0.1:{port}",
                                 "-f", str(self.base / "Data.fs")],
                         self.base / f"zeo{attempt}.log", self.base)
            self.zeo = zeo  # stop() finds it whatever happens next
            try:
                _wait_for_port(zeo, rf"listening on \('127\.0\.0\.1', ({port})\)", deadline)
                _wait_for_connect(zeo, deadline)
                return zeo
            except RuntimeError:
                zeo.stop()
                if time.monotonic() > deadline or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def add_client(self, name: str, zeo_host: str) -> Server:
        """Start one more client on the ZEO server, naming it ``zeo_host``
        (e.g. ``localhost``) in its zope.conf; kept out of ``clients``."""
        deadline = time.monotonic() + self.start_timeout
        server = self._client(name, shared=True, zeo_host=zeo_host)
        self._announced(server, deadline)
        return server

    def remove_client(self, server: Server) -> None:
        """Stop a client made by :meth:`add_client`."""
        server.stop()
        self.extras.remove(server)

    def _client(self, name: str, shared: bool, zeo_host: str | None = None) -> Server:
        home = self.base / name
        zodb_db = None
        if shared:
            assert self.zeo is not None
            zodb_db = ZEO_CLIENT.format(server=f"{zeo_host or '127.0.0.1'}:{self.zeo.port}")
        ini = make_instance(self.base, name, zodb_db, self.bin_dir)
        env = self.prepare_client(name, home)
        server = _spawn(name, [str(self.bin_dir / "runwsgi"), str(ini)],
                        self.base / f"{name}.log", home, env)
        group = self.extras if zeo_host else self.clients if shared else self.loners
        group.append(server)  # stop() finds it
        return server

    def prepare_client(self, name: str, home: Path) -> dict[str, str]:
        """A hook for a cluster of another kind (tests/plone_cluster.py): change the
        instance in ``home`` before it first starts; returns more environment
        variables for its process, kept for restarts."""
        return {}

    def _announced(self, server: Server, deadline: float) -> None:
        _wait_for_port(server, r"Serving on http://127\.0\.0\.1:(\d+)", deadline)
        _wait_for_http(server, deadline)

    def stop(self) -> None:
        """Clients first, then ZEO; each by PID, each wait bounded."""
        for server in [*self.clients, *self.loners, *self.extras]:
            server.stop()
        if self.zeo is not None:
            self.zeo.stop()


    # -- hurting and healing (the failure tests) --------------------------------------

    def restart(self, server: Server) -> None:
        """Start a stopped shared client again, on the port it had."""
        server.stop()
        home = self.base / server.name
        ini = home / "etc" / "zope.ini"
        text, count = re.subn(r"(?m)^listen = .*$", f"listen = {server.address}",
                              ini.read_text())
        assert count == 1, f"{ini} has no listen line"
        ini.write_text(text)
        fresh = _spawn(server.name, [str(self.bin_dir / "runwsgi"), str(ini)],
                       self._next_log(server.name), home, server.env)
        server.process, server.log = fresh.process, fresh.log
        deadline = time.monotonic() + self.start_timeout
        _wait_for_port(server, rf"Serving on http://127\.0\.0\.1:({server.port})\b", deadline)
        _wait_for_http(server, deadline)

    def stop_zeo(self) -> None:
        """Stop the ZEO server (SIGTERM); the clients keep running, disconnected."""
        assert self.zeo is not None
        self.zeo.stop()

    def start_zeo(self) -> None:
        """Start the ZEO server again on its old port, with the same Data.fs."""
        assert self.zeo is not None
        port = self.zeo.port
        self.zeo.stop()
        zeo = _spawn("zeo", [str(self.bin_dir / "runzeo"), "-a", f"127.0.0.1:{port}",
                             "-f", str(self.base / "Data.fs")],
                     self._next_log("zeo"), self.base)
        self.zeo = zeo  # stop() finds it whatever happens next
        deadline = time.monotonic() + self.start_timeout
        _wait_for_port(zeo, rf"listening on \('127\.0\.0\.1', ({port})\)", deadline)
        _wait_for_connect(zeo, deadline)

    def heal(self, timeout: float = START_TIMEOUT) -> None:
        """Everything running and every shared client connected to ZEO again."""
        assert self.zeo is not None
        if self.zeo.process.poll() is not None:
            self.start_zeo()
        for server in self.clients:
            if server.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.pid, signal.SIGCONT)
            else:
                self.restart(server)
        deadline = time.monotonic() + timeout
        for server in self.clients:
            _wait_for_http(server, deadline)
            wait_for_zeo(server, deadline)

    def _next_log(self, name: str) -> Path:
        for n in range(1, 1000):
            path = self.base / f"{name}.restart{n}.log"
            if not path.exists():
                return path
        raise RuntimeError(f"too many restarts of {name}")


ZEO_PAGE = "/Control_Panel/Database/main/manage_main"


def zeo_state(server: Server, timeout: float = 5.0) -> str | None:
    """``connected``, ``disconnected``, or None when the page could not be read."""
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        try:
            conn.request("GET", ZEO_PAGE, headers={"Authorization": f"Basic {token}"})
            page = conn.getresponse().read().decode("utf-8", "replace")
        finally:
            conn.close()
    except OSError:
        return None
    match = re.search(r"\((connected|disconnected)\)", page)
    return match[1] if match else None


def wait_for(server: Server, ready: Callable[[], bool], deadline: float, late: str,
             interval: float = 0.1) -> None:
    """Until ``ready()``; a RuntimeError with the client's log tail if its process
    exits first, or, saying it was ``late``, once ``deadline`` passed."""
    while not ready():
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} {late}:\n{server.log_tail()}")
        time.sleep(interval)


def wait_for_zeo(server: Server, deadline: float, state: str = "connected") -> None:
    """Until the client's Control Panel shows its ZEO connection in ``state``."""
    wait_for(server, lambda: zeo_state(server) == state, deadline,
             f"not {state} to ZEO in time")


@contextlib.contextmanager
def frozen(server: Server):
    """Hold ``server`` in SIGSTOP: the kernel still accepts TCP connections for it,
    nothing answers them. SIGCONT on the way out, whatever happened."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGCONT)


@contextlib.contextmanager
def running_cluster(base: Path, shared: int = 2, own_storage: int = 1):
    """A started :class:`ZopeCluster`, stopped on exit whatever happened."""
    cluster = ZopeCluster(base)
    try:
        yield cluster.start(shared, own_storage)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def zope_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Two Zope clients on one ZEO server and one on its own FileStorage,
    built once per test run."""
    if not zope_installed():
        pytest.skip("Zope and ZEO are not installed: pip install -e '.[zope]'")
    with running_cluster(tmp_path_factory.mktemp("zope")) as cluster:
        yield cluster


@dataclass
class RelStorageCluster:
    """Zope clients on RelStorage in one PostgreSQL server (``dsn(dbname, host)``
    makes each client's DSN), and clients with a storage of their own."""

    base: Path
    dsn: Any  # (dbname, host) -> a libpq DSN, e.g. Postgres.dsn
    clients: list[Server] = field(default_factory=list)  # sharing database 'zodb'
    others: list[Server] = field(default_factory=list)  # on their own storage

    @property
    def addresses(self) -> list[str]:
        return [c.address for c in self.clients]

    def start(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
              own_storage: int = 1, other_database: str = "") -> RelStorageCluster:
        """One shared client per entry of ``hosts`` (the name its DSN gives the
        server), ``own_storage`` clients on a FileStorage, and one on
        ``other_database`` when given.  The first shared client starts alone
        (it creates the schema and the root objects), the rest together."""
        deadline = time.monotonic() + START_TIMEOUT
        first = self._client("rs0", self.dsn("zodb", hosts[0]), self.clients)
        others = [self._client(f"own{i}", None, self.others) for i in range(own_storage)]
        if other_database:
            others.append(self._client("rsother", self.dsn(other_database, hosts[0]),
                                       self.others))
        _wait_for_port(first, r"Serving on http://127\.0\.0\.1:(\d+)", deadline)
        _wait_for_http(first, deadline)
        rest = [self._client(f"rs{i}", self.dsn("zodb", host), self.clients)
                for i, host in enumerate(hosts[1:], start=1)]
        for server in [*others, *rest]:
            _wait_for_port(server, r"Serving on http://127\.0\.0\.1:(\d+)", deadline)
            _wait_for_http(server, deadline)
        return self

    def _client(self, name: str, dsn: str | None, group: list[Server]) -> Server:
        zodb_db = None if dsn is None else RELSTORAGE_CLIENT.format(dsn=dsn)
        ini = make_instance(self.base, name, zodb_db)
        server = _spawn(name, [str(BIN / "runwsgi"), str(ini)], self.base / f"{name}.log",
                        self.base / name)
        group.append(server)  # stop() finds it
        return server

    def stop(self) -> None:
        """Every client by PID, each wait bounded."""
        for server in [*self.clients, *self.others]:
            server.stop()
