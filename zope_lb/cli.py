"""``zope-lb``: serve an ini, run the demo, check a balancer, verify a cluster.

``main(argv) -> int`` so it can be called from tests; configuration errors
print one line naming the key and the rule, never a traceback.
"""

from __future__ import annotations

import _thread
import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .affinity import confine, parse_cpu
from .errors import ConfigError
from .logsetup import setup_logging

log = logging.getLogger(__name__)


def start_up(ini_path: str, app_name: str, server_name: str, also: Sequence[str] = ()
             ) -> list[str]:
    """``serve``'s first step: the ini checked as ``zope-lb config`` checks it, then
    logging set up from it. The lines to print (serve then exits 2), or none."""
    from .inicheck import check_ini
    from .inifile import collected

    with collected([]):  # serve logs these warnings again once logging is set up
        report = check_ini(ini_path, app_name, server_name, also)
    if not report.ok:
        return [f"zope-lb: {problem}" for problem in report.problems]
    problem = setup_logging(ini_path)
    return [f"zope-lb: {problem}"] if problem else []


def config(args: argparse.Namespace) -> int:
    """``zope-lb config INI``: check it as ``serve`` would (like ``nginx -t``); print
    the configuration that would run and exit 0, or one line per problem and exit 1."""
    from .inicheck import check_ini
    from .inifile import collected, format_report

    records: list[logging.LogRecord] = []
    with collected(records):
        report = check_ini(args.ini, args.app_name, args.server_name, args.also)
    if not report.ok:
        for problem in report.problems:
            print(f"zope-lb: {problem}", file=sys.stderr)
        return 1
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    lines = [format_report(report)]
    lines += [f"# warning: {w}" for w in dict.fromkeys(warnings)]  # each once
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `zope-lb config x.ini | head` ends quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def serve(args: argparse.Namespace) -> int:
    """``zope-lb serve``. A SIGHUP from the first moment on is kept, not fatal:
    the listening socket accepts connections before reloading begins, and a
    reload sent then (``systemctl reload`` just after start) would otherwise
    end the process with the signal's default action. It is applied once
    reloading begins."""
    early = threading.Event()
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGHUP, lambda signum, frame: early.set())
        try:
            return _serve(args, early)
        finally:
            signal.signal(signal.SIGHUP, previous)
    return _serve(args, early)


def _serve(args: argparse.Namespace, early: threading.Event) -> int:
    from paste.deploy import loadapp

    from .reload import reload_on_sighup
    from .server import bind_server

    ini_path = os.path.abspath(args.ini)
    if not os.path.isfile(ini_path):
        print(f"zope-lb: no such file: {args.ini}", file=sys.stderr)
        return 2
    try:
        # Before the app exists: a thread inherits its CPU set when it starts,
        # and the balancer starts its health checker while loading.
        cpu = confine(parse_cpu(args.cpu))
    except ConfigError as exc:
        print(f"zope-lb: {exc}", file=sys.stderr)
        return 2
    problems = start_up(ini_path, args.app_name, args.server_name, args.also)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if cpu is not None:
        log.info("zope-lb runs on CPU core %d (--cpu all lets it float)", cpu)
    uri = f"config:{ini_path}"
    try:
        app = loadapp(uri, name=args.app_name)
        # more [app:NAME] + [server:NAME] pairs in this process: the admin
        # (egg:zope_lb#admin) on a port of its own reaches the balancer here
        also_apps = [(name, loadapp(uri, name=name)) for name in args.also]
    except ConfigError as exc:
        print(f"zope-lb: configuration error in {args.ini}: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"zope-lb: {args.ini}: {exc}", file=sys.stderr)
        return 2
    # Every listener is bound here, in this thread, before anything serves: an
    # address in use stops start-up with one line, whichever server has it.
    apps = [app, *(extra for _, extra in also_apps)]
    try:
        run = bind_server(uri, args.server_name, app)  # waitress, drained on SIGTERM/SIGINT
        also = []
        for name, extra_app in also_apps:
            try:
                also.append((name, bind_server(uri, name, extra_app)))
            except OSError as exc:
                raise OSError(f"[server:{name}] cannot listen: {exc}") from exc
    except OSError as exc:
        text = str(exc)
        print(f"zope-lb: {text if text.startswith('[server:') else f'cannot listen: {text}'}",
              file=sys.stderr)
        _close(apps)
        return 1
    failed: list[str] = []
    for name, run_also in also:
        threading.Thread(target=_serve_also, args=(name, run_also, failed),
                         name=f"zope-lb-{name}", daemon=True).start()
    stop_reloading = reload_on_sighup(app, uri, args.app_name, server_name=args.server_name,
                                      pending=early)
    try:
        status = run()
    except OSError as exc:
        print(f"zope-lb: cannot listen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        status = 0
    finally:
        stop_reloading()
        _close(apps)
    if failed:
        print(f"zope-lb: {failed[0]}", file=sys.stderr)
        return 1
    return status


def _close(apps: list[Any]) -> None:
    """Close what loading the apps started (pools, the health checker)."""
    for loaded in apps:
        close = getattr(loaded, "close", None)
        if close is not None:
            close()


def _serve_also(name: str, run: Callable[[], int], failed: list[str]) -> None:
    """One of the ``--also`` servers, in its own thread; it ends with the process.
    A server that is not waitress binds only now: one that cannot listen stops
    the whole process, as the main one would."""
    try:
        run()
    except OSError as exc:
        failed.append(f"[server:{name}] cannot listen: {exc}")
        _thread.interrupt_main()


def demo(args: argparse.Namespace) -> int:
    from . import demo as demo_module

    return demo_module.run(args)


def version() -> str:
    """This zope_lb's version, from the installed package's metadata."""
    from importlib import metadata

    try:
        return metadata.version("zope_lb")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zope-lb", description="A load balancer for Zope and Plone clusters."
    )
    parser.add_argument("--version", action="version", version=f"zope-lb {version()}")
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

    p = commands.add_parser("config", help="check an ini as serve would and print the "
                                           "configuration that would run (like nginx -t)")
    p.add_argument("ini", help="PasteDeploy ini file, e.g. production.ini")
    p.add_argument("--app-name", default="main", help="[app:NAME] to check (default main)")
    p.add_argument("--server-name", default="main",
                   help="[server:NAME] to check (default main)")
    p.add_argument("--also", action="append", default=[], metavar="NAME",
                   help="also check [app:NAME] and [server:NAME], as serve --also NAME")
    p.set_defaults(func=config)

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
    status = 141  # 128 + SIGPIPE: the pipe closed before the command knew its status
    try:
        status = int(args.func(args))
        sys.stdout.flush()
    except BrokenPipeError:  # `zope-lb ... | head` closed stdout: end quietly
        from .verify import quiet_stdout

        quiet_stdout()
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
