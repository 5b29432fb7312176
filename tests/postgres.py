"""A real PostgreSQL for the RelStorage tests: Debian's binaries, a cluster of
its own in a temp dir, on a free port on 127.0.0.1.

Theory of operation: PostgreSQL refuses to run as root, so when the tests run
as root the data directory is given to the ``postgres`` user (``chown``) and
``initdb``/``pg_ctl`` run through ``runuser -u postgres``.  The server listens
on 127.0.0.1 only (no unix socket in /var/run, which a second test run or
Debian's own cluster may hold: the socket goes into the data directory).
The folder is a fresh ``tempfile.mkdtemp`` in /tmp, not under pytest's
temp dir: pytest resets /tmp/pytest-of-USER to mode 0700 whenever a session
starts (another test run on the machine included), which would lock the
``postgres`` user out of its own data mid-test.  ``initdb`` runs once per
cluster; ``stop``/``start`` keep the data, so a test can take the database
away and bring it back on the same port.
``pg_ctl -w`` waits for the server, bounded by ``-t``; ``stop -m fast``
disconnects the clients at once, as an operator's restart or a crash does.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from servers import free_port

START_TIMEOUT = 30  # seconds pg_ctl waits for the server
CMD_TIMEOUT = 60  # seconds any one command may take


def pg_bin() -> Path | None:
    """Debian's PostgreSQL binaries (the newest installed), else None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def postgres_installed() -> bool:
    return pg_bin() is not None and (os.geteuid() != 0 or shutil.which("runuser") is not None)


@dataclass
class Postgres:
    """One PostgreSQL cluster in ``base``; ``dsn(dbname)`` for RelStorage."""

    base: Path
    port: int = 0
    host: str = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run one PostgreSQL command, as ``postgres`` when we are root."""
        bindir = pg_bin()
        assert bindir is not None, "PostgreSQL is not installed"
        command = [str(bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=CMD_TIMEOUT,
                              cwd="/")
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}\n{self.log_tail()}")
        return done

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> Postgres:
        """``initdb`` a fresh cluster: trust for local connections (loopback only)."""
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        return self

    def start(self) -> None:
        """Start the server (on a fresh free port the first time, the same one after)."""
        if not self.port:
            self.port = free_port()
        options = (f"-p {self.port} -h {self.host} -k {self.data} "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(START_TIMEOUT), "start")

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: every client connection is cut at once."""
        if not (self.data / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w",
                  "-t", str(START_TIMEOUT), "stop")

    def kill(self) -> None:
        """The last resort at teardown: SIGKILL the postmaster by its PID."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 9)

    def pids(self) -> list[int]:
        """The postmaster's PID and its children's (the backends, by their parent)."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:  # the field after the state is ppid
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    @contextlib.contextmanager
    def frozen(self):
        """Hold the server and its backends in SIGSTOP: the kernel still accepts
        TCP connections, nothing answers (a hung database, a partition that
        drops packets). SIGCONT to each on the way out, whatever happened."""
        pids = self.pids()
        assert pids, "PostgreSQL is not running"
        stopped = []
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            yield self
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def createdb(self, name: str) -> None:
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", "postgres", name)

    def dsn(self, dbname: str, host: str | None = None) -> str:
        return (f"dbname='{dbname}' user='postgres' host='{host or self.host}' "
                f"port='{self.port}'")

    def running(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True


@contextlib.contextmanager
def running_postgres(databases: tuple[str, ...] = ()):
    """A started :class:`Postgres` in a fresh temp dir with ``databases``
    created; on exit, whatever happened, stopped (``pg_ctl stop``, then SIGKILL
    by PID if that failed) and its folder removed."""
    server = Postgres(Path(tempfile.mkdtemp(prefix="zope_lb-pg-")))
    try:
        server.init()
        server.start()
        for name in databases:
            server.createdb(name)
        yield server
    finally:
        try:
            server.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            server.kill()
        deadline = time.monotonic() + 10
        while server.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(server.base, ignore_errors=True)
