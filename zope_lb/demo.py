"""``zope-lb demo``: three demo Zope clients and a balancer, in one command.

Theory of operation: each demo client (``zope_lb.demo_backend``) runs as its
own subprocess, so stopping one (``kill PID``) shows the balancer's failover
exactly as a crashed Zope client would.  The clients share one SQLite file,
standing in for the shared ZODB.  The balancer is built from
``development.ini`` (or in code when there is no ini) and served by waitress
in the foreground.  Ctrl-C or SIGTERM unwinds everything in reverse order:
balancer, clients (terminate, bounded wait, kill), temp dir.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import errno
import http.client
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zope_lb.backendlines import url_host
from zope_lb.demo_backend import init_db
from zope_lb.errors import ConfigError
from zope_lb.logsetup import setup_logging

log = logging.getLogger(__name__)

__all__ = ["add_arguments", "run"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORTS = (8081, 8082, 8083)
DEFAULT_BALANCER_PORT = 6543
DEFAULT_THREADS = 16  # waitress threads for the balancer when the ini has none
START_TIMEOUT = 10.0  # seconds to wait for all clients to answer
STOP_TIMEOUT = 3.0  # seconds a client gets to exit before it is killed


class DemoError(Exception):
    """A start-up problem worth one line to the user, not a traceback."""


class _Stop(KeyboardInterrupt):
    """Raised from the SIGTERM handler to unwind exactly like Ctrl-C.

    A KeyboardInterrupt, because waitress's loop swallows (logs) ordinary
    exceptions raised in its callbacks and re-raises only this kind.
    """


@dataclass
class _Client:
    name: str
    port: int
    process: subprocess.Popen[bytes]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser`` (used by ``zope_lb.cli``)."""
    parser.add_argument(
        "--ini",
        default=None,
        help="balancer config (default: development.ini in the current "
        "directory; without it the balancer is built in code)",
    )
    parser.add_argument(
        "--host",
        default=None,
        help=f"address for the clients and the balancer (default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--ports",
        default=None,
        type=_parse_ports,
        help="comma-separated ports for the demo clients (default 8081,8082,8083); "
        "given, they replace the ini's backends",
    )
    parser.add_argument(
        "--port",
        default=None,
        type=int,
        help="balancer port (default: the ini's [server:main] listen, else 6543)",
    )
    parser.add_argument(
        "--db",
        default=None,
        help="shared SQLite file (default: a file in a new temp dir, removed on exit)",
    )


def _parse_ports(value: str) -> list[int]:
    try:
        ports = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: write ports as numbers separated by commas, e.g. 8081,8082"
        ) from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"{value!r}: ports must be 1-65535")
    if len(set(ports)) != len(ports):
        raise argparse.ArgumentTypeError(f"{value!r}: ports must differ")
    return ports


def run(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C or SIGTERM; 0 on a clean stop, 1 on error."""
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # signal handlers can only be set from the main thread
        saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_stop)
        # Ctrl-C must stop the demo even if we were started with SIGINT
        # ignored (a background job of a non-interactive shell).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as stack:
            try:
                _run(args, stack)  # returns when waitress stops on Ctrl-C
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as _Stop
                pass
            except DemoError as exc:
                _ignore_interrupts(main_thread)
                print(f"zope-lb demo: error: {exc}", file=sys.stderr, flush=True)
                return 1
            _ignore_interrupts(main_thread)
            print("\nStopping the demo...", flush=True)
            return 0
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, saved[0])
            signal.signal(signal.SIGTERM, saved[1])


def _ignore_interrupts(main_thread: bool) -> None:
    """A second Ctrl-C must not cut the cleanup short and leave clients running."""
    if main_thread:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    host = args.host or DEFAULT_HOST
    ports = list(args.ports or DEFAULT_PORTS)
    ini = os.path.abspath(args.ini or "development.ini")
    have_ini = os.path.isfile(ini)
    if args.ini and not have_ini:  # only the default may be missing
        raise DemoError(f"no such file: {args.ini}")
    server_conf = _server_conf(ini) if have_ini else {}
    ini_host, ini_port = _listen(server_conf)
    lb_host = args.host or ini_host or DEFAULT_HOST
    lb_port = args.port or ini_port or DEFAULT_BALANCER_PORT
    if lb_port in ports:
        raise DemoError(f"the balancer port {lb_port} is also a client port")

    # Find a busy port before anything starts: one clear line, no cleanup.
    for port in [*ports, lb_port]:
        _check_free(lb_host if port == lb_port else host, port)

    if args.db:
        db = os.path.abspath(args.db)
    else:
        tmp = tempfile.mkdtemp(prefix="zope_lb-demo-")
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        db = os.path.join(tmp, "demo.sqlite")
    try:
        init_db(db)  # once here, so the clients never race to create the tables
    except sqlite3.Error as exc:
        raise DemoError(f"cannot use {db} as the shared database: {exc}") from None

    setup_logging(ini)  # the ini's logging, or INFO to stderr without one

    clients = _start_clients(host, ports, db, stack)
    _wait_until_up(host, clients)

    override = args.ports is not None or args.host is not None
    backends = [f"{host}:{c.port}  id={c.name}" for c in clients]
    try:
        app, source = _build_balancer(ini if have_ini else None, backends, override)
    except ConfigError as exc:
        raise DemoError(f"configuration error in {ini}: {exc}") from None
    except LookupError as exc:  # e.g. an egg: or section the ini names is missing
        raise DemoError(f"{ini}: {exc}") from None
    close = getattr(app, "close", None)
    if callable(close):
        stack.callback(close)

    from waitress import create_server

    threads = _int(server_conf.get("threads"), DEFAULT_THREADS)
    try:
        server = create_server(app, host=lb_host, port=lb_port, threads=threads)
    except OSError as exc:
        raise DemoError(_bind_message(lb_host, lb_port, exc)) from None
    stack.callback(server.close)

    _print_banner(f"http://{url_host(lb_host)}:{lb_port}/", source, db, clients)
    server.run()  # waitress itself catches KeyboardInterrupt and returns


def _server_conf(ini: str) -> dict[str, str]:
    """The ini's ``[server:main]`` options (raw; PasteDeploy is not needed)."""
    parser = configparser.RawConfigParser()
    try:
        parser.read(ini, encoding="utf-8")
    except configparser.Error as exc:
        raise DemoError(f"{ini}: {exc}") from None
    if not parser.has_section("server:main"):
        return {}
    return dict(parser.items("server:main"))


def _listen(conf: dict[str, str]) -> tuple[str | None, int | None]:
    """Host and port from ``listen = host:port`` (first entry) or host/port."""
    listen = conf.get("listen", "").split()
    if listen:
        host, _, port = listen[0].rpartition(":")
        return (host.strip("[]") or None), _int(port, None)
    return conf.get("host") or None, _int(conf.get("port"), None)


def _int(value: str | None, default: Any) -> Any:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _bind_message(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (is another demo running?)"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _check_free(host: str, port: int) -> None:
    """Raise DemoError if ``port`` cannot be bound, as waitress would bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # waitress sets SO_REUSEADDR too: TIME_WAIT leftovers are not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DemoError(_bind_message(host, port, exc)) from None


def _start_clients(
    host: str, ports: Sequence[int], db: str, stack: contextlib.ExitStack
) -> list[_Client]:
    clients = []
    for i, port in enumerate(ports, start=1):
        name = f"client{i}"
        cmd = [
            sys.executable, "-m", "zope_lb.demo_backend",
            "--name", name, "--host", host, "--port", str(port),
            "--db", db, "--parent", str(os.getpid()),
        ]  # fmt: skip
        # A session of its own: a terminal's Ctrl-C reaches only us, and we
        # stop the clients in order; --parent stops them if we are killed.
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        stack.callback(_stop_process, process)
        clients.append(_Client(name, port, process))
    return clients


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a client, wait a bounded time, then kill it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT)


def _wait_until_up(host: str, clients: Sequence[_Client]) -> None:
    """Wait (bounded) until every client answers HTTP, or say which did not."""
    deadline = time.monotonic() + START_TIMEOUT
    waiting = list(clients)
    while waiting:
        for client in list(waiting):
            code = client.process.poll()
            if code is not None:
                raise DemoError(f"{client.name} exited with status {code} at start-up")
            if _answers(host, client.port):
                waiting.remove(client)
        if waiting:
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in waiting)
                raise DemoError(f"{names} did not answer within {START_TIMEOUT:g}s")
            time.sleep(0.05)


def _answers(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("HEAD", "/")  # HEAD is not counted as a page view
        return conn.getresponse().status < 500
    except OSError:
        return False
    finally:
        conn.close()


def _build_balancer(ini: str | None, backends: list[str], override: bool) -> tuple[Any, str]:
    """The balancer WSGI app and a few words on where its config came from."""
    if ini is None:
        from zope_lb import LoadBalancer

        return LoadBalancer(backends, strategy="round_robin"), (
            "no ini found, so built in code with strategy round_robin"
        )

    from paste.deploy.loadwsgi import APP, loadcontext

    uri = "config:" + ini
    if not override:
        from paste.deploy import loadapp

        return loadapp(uri), os.path.basename(ini)
    # Keep every other option of the ini; only the backend list changes.
    context = loadcontext(APP, uri)
    if context.object_type is not APP or "backends" not in context.local_conf:
        raise DemoError(f"{ini}: --ports/--host need an [app:main] section with 'backends'")
    context.local_conf["backends"] = "\n".join(backends)
    return context.create(), f"{os.path.basename(ini)}, backends from --ports"


def _print_banner(url: str, source: str, db: str, clients: Sequence[_Client]) -> None:
    lines = [
        "",
        "zope_lb demo",
        f"  shared database (the 'ZODB'): {db}",
    ]
    for c in clients:
        lines.append(f"  {c.name}: port {c.port}, pid {c.process.pid}")
    first = clients[0]
    lines += [
        f"  balancer: {url}",
        f"    ({source})",
        "",
        f"Open {url} and reload a few times: each page names the",
        "client that served it. Edit the text through any client and every",
        "client shows it, as Zope clients sharing one ZODB do.",
        f"Stop one client (kill {first.process.pid} stops {first.name}) and reload:",
        "the balancer notices and keeps serving from the others.",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    print("\n".join(lines), flush=True)
