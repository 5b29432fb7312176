"""``zope-lb``: serve an ini, run the demo, check a balancer, verify a cluster.

``main(argv) -> int`` so it can be called from tests; configuration errors
print one line naming the key and the rule, never a traceback.
"""

from __future__ import annotations

import _thread
import argparse
import configparser
import logging
import logging.config
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .affinity import confine, parse_cpu
from .errors import ConfigError

log = logging.getLogger(__name__)


def setup_logging(ini_path: str) -> None:
    """Logging from the ini's ``[loggers]`` sections (as pserve does), else INFO
    to stderr. waitress's per-queued-request warning is quieted either way."""
    parser = configparser.ConfigParser()
    parser.read(ini_path)
    if parser.has_section("loggers"):
        here = os.path.dirname(ini_path)
        logging.config.fileConfig(
            ini_path, {"__file__": ini_path, "here": here}, disable_existing_loggers=False
        )
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)-5.5s [%(name)s] %(message)s"
        )
    queue_logger = logging.getLogger("waitress.queue")
    if queue_logger.level == logging.NOTSET:
        queue_logger.setLevel(logging.ERROR)


def serve(args: argparse.Namespace) -> int:
    from paste.deploy import loadapp, loadserver

    from .server import load_server
    from .state import reload_on_sighup

    ini_path = os.path.abspath(args.ini)
    if not os.path.isfile(ini_path):
        print(f"zope-lb: no such file: {args.ini}", file=sys.stderr)
        return 2
    setup_logging(ini_path)
    try:
        # Before the app exists: a thread inherits its CPU set when it starts,
        # and the balancer starts its health checker while loading.
        cpu = confine(parse_cpu(args.cpu))
    except ConfigError as exc:
        print(f"zope-lb: {exc}", file=sys.stderr)
        return 2
    if cpu is not None:
        log.info("zope-lb runs on CPU core %d (--cpu all lets it float)", cpu)
    uri = f"config:{ini_path}"
    try:
        app = loadapp(uri, name=args.app_name)
        server = load_server(uri, args.server_name)  # waitress, drained on SIGTERM/SIGINT
        # more [app:NAME] + [server:NAME] pairs in this process: the admin
        # (egg:zope_lb#admin) on a port of its own reaches the balancer here
        also = [(name, loadapp(uri, name=name), loadserver(uri, name=name))
                for name in args.also]
    except ConfigError as exc:
        print(f"zope-lb: configuration error in {args.ini}: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"zope-lb: {args.ini}: {exc}", file=sys.stderr)
        return 2
    failed: list[str] = []
    for name, extra_app, extra_server in also:
        threading.Thread(target=_serve_also, args=(name, extra_server, extra_app, failed),
                         name=f"zope-lb-{name}", daemon=True).start()
    stop_reloading = reload_on_sighup(app, uri, args.app_name)
    try:
        status = server(app)
    except OSError as exc:
        print(f"zope-lb: cannot listen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        status = 0
    finally:
        stop_reloading()
        close = getattr(app, "close", None)
        if close is not None:
            close()
    if failed:
        print(f"zope-lb: {failed[0]}", file=sys.stderr)
        return 1
    return status


def _serve_also(name: str, server: Any, app: Any, failed: list[str]) -> None:
    """One of the ``--also`` servers, in its own thread; it ends with the process.
    One that cannot listen stops the whole process, as the main one would."""
    try:
        server(app)
    except OSError as exc:
        failed.append(f"[server:{name}] cannot listen: {exc}")
        _thread.interrupt_main()


def demo(args: argparse.Namespace) -> int:
    from . import demo as demo_module

    return demo_module.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zope-lb", description="A load balancer for Zope and Plone clusters."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("serve", help="serve the balancer of an ini file with waitress")
    p.add_argument("ini", help="PasteDeploy ini file, e.g. development.ini")
    p.add_argument("--app-name", default="main", help="[app:NAME] to load (default main)")
    p.add_argument("--server-name", default="main",
                   help="[server:NAME] to use (default main)")
    p.add_argument("--also", action="append", default=[], metavar="NAME",
                   help="also serve [app:NAME] with [server:NAME] in this process, e.g. "
                        "the admin (egg:zope_lb#admin) on a port of its own; repeatable")
    p.add_argument("--cpu", default="auto", metavar="auto|all|N",
                   help="CPU core to run on: auto (one of those allowed, the default; "
                        "Python threads spread over cores cost 2-3x the CPU), all, or N")
    p.set_defaults(func=serve)

    from . import demo as demo_module

    p = commands.add_parser(
        "demo", help="start three demo backends and the balancer, open in a browser"
    )
    demo_module.add_arguments(p)
    p.set_defaults(func=demo)

    from . import check as check_module

    p = commands.add_parser(
        "check", help="Nagios/Icinga check of a running balancer's health endpoint"
    )
    check_module.add_arguments(p)
    p.set_defaults(func=check_module.run)

    from . import verify as verify_module

    p = commands.add_parser("verify", help="check that Zope clients can be load balanced")
    verify_module.add_arguments(p)
    p.set_defaults(func=verify_module.run)

    from . import passwd as passwd_module

    p = commands.add_parser("passwd", help="print a name:HASH line for admin.users "
                                           "(reads the password; piped: its first line)")
    passwd_module.add_arguments(p)
    p.set_defaults(func=passwd_module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
