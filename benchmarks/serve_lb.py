"""Serve ``zope_lb.LoadBalancer`` as ``zope-lb serve`` serves it, for the benchmarks.

    python benchmarks/serve_lb.py 127.0.0.1:8081 127.0.0.1:8082 \\
        --port 0 --threads 16 --strategy round_robin --opt maxconn=8 --opt retries=1

``--opt key=value`` is passed to ``LoadBalancer`` as a keyword argument; the
value is read as a Python literal when it is one (``8``, ``1.5``, ``True``,
``None``, ``[1, 2]``), otherwise it stays a string. Prints
``LISTENING 127.0.0.1:PORT`` once it accepts connections.

The server is ``zope-lb serve``'s own (``zope_lb.server.Server``) with the
waitress options it sets: X-Forwarded-* headers kept for zope_lb to judge,
the deadline pass once a second, the connection limit from RLIMIT_NOFILE,
SIGTERM drains. Only the upload limit is raised (the 1 GiB upload).
``--app bare`` serves the bare loop on plain ``waitress.create_server``
instead, as ``bare_loop.py`` does.

Logging is configured as ``zope-lb serve`` configures it without a
``[loggers]`` section (INFO, its format, waitress's queue warning quieted),
but into ``--log-file`` (default: stderr), so the access log (logger
``zope_lb.access``) is really formatted and written, as in production.
``--access-log combined|json|off`` is passed on only when this zope_lb has
the ``access_log`` option (``default``: leave it at zope_lb's default).

``--cprofile FILE`` profiles every thread with cProfile (per-thread CPU
clock) and writes merged pstats to FILE on SIGTERM/SIGINT (used by
profile_hot_path.py).
"""

from __future__ import annotations

import argparse
import ast
import logging
import signal
import sys
import threading
import time


def parse_opts(pairs: list[str]) -> dict:
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--opt wants key=value, got {pair!r}")
        try:
            opts[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            opts[key.strip()] = value.strip()
    return opts


DEFAULT_FORMAT = "%(asctime)s %(levelname)-5.5s [%(name)s] %(message)s"  # older zope_lb


def has_option(name: str) -> bool:
    """Whether this zope_lb's settings table has option ``name``."""
    from zope_lb import settings

    return any(option.name == name for option in getattr(settings, "OPTIONS", ()))


def setup_logging(log_file: str | None) -> None:
    """INFO, as ``zope-lb serve`` logs without a ``[loggers]`` section."""
    try:  # zope-lb serve's own formatter, where this zope_lb has one
        from zope_lb.logsetup import LOG_FORMAT, SecondFormatter
    except ImportError:
        LOG_FORMAT, SecondFormatter = DEFAULT_FORMAT, logging.Formatter
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(SecondFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


class ThreadProfiles:
    """One cProfile.Profile per thread, merged into one pstats file at the end."""

    def __init__(self) -> None:
        import cProfile

        self._cls = cProfile.Profile
        self.profiles: list = []
        self._lock = threading.Lock()

    def _bootstrap(self, *_args) -> None:
        # Runs once as the first profile event in each new thread. The timer
        # is the thread's CPU clock, so time blocked in I/O or waiting for the
        # GIL is not charged to whatever function happens to be waiting.
        sys.setprofile(None)
        prof = self._cls(time.thread_time)
        with self._lock:
            self.profiles.append(prof)
        prof.enable()

    def start(self) -> None:
        threading.setprofile(self._bootstrap)
        self._bootstrap()  # main thread

    def dump(self, path: str) -> None:
        import pstats

        threading.setprofile(None)
        stats = None
        with self._lock:
            for prof in self.profiles:
                prof.disable()
                prof.create_stats()
                if not prof.stats:
                    continue
                if stats is None:
                    stats = pstats.Stats(prof)
                else:
                    stats.add(prof)
        if stats is not None:
            stats.dump_stats(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("backends", nargs="+", help="host:port of each backend")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = ephemeral")
    ap.add_argument("--threads", type=int, default=16, help="waitress threads")
    ap.add_argument("--strategy", default="round_robin")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--cprofile", metavar="FILE")
    ap.add_argument("--log-file", metavar="FILE",
                    help="where the log goes, access log included (default stderr)")
    ap.add_argument("--access-log", default="default",
                    help="combined, json, off, or default (zope_lb's default); passed "
                    "only when zope_lb has the access_log option")
    ap.add_argument(
        "--cpu",
        default="auto",
        help="as zope-lb serve --cpu: auto (one allowed core, the default), all, or N",
    )
    ap.add_argument(
        "--app",
        choices=("zope_lb", "bare"),
        default="zope_lb",
        help="serve bare_loop's app instead (to profile the reference)",
    )
    args = ap.parse_args(argv)

    setup_logging(args.log_file)

    if args.app == "zope_lb":  # as zope-lb serve does, before any thread starts
        from zope_lb.affinity import confine, parse_cpu

        cpu = confine(parse_cpu(args.cpu))
        if cpu is not None:
            print(f"zope_lb confined to CPU {cpu}", file=sys.stderr, flush=True)

    profiles = None
    if args.cprofile:
        profiles = ThreadProfiles()
        profiles.start()

    if args.app == "bare":
        from bare_loop import make_app

        app = make_app(args.backends, args.threads)
    else:
        from zope_lb import LoadBalancer

        opts = parse_opts(args.opt)
        if args.access_log != "default" and has_option("access_log"):
            opts.setdefault("access_log", args.access_log)
        app = LoadBalancer(args.backends, strategy=args.strategy, **opts)
    if args.app == "bare":
        run_waitress(app, args, profiles)
    else:
        run_zope_lb_server(app, args, profiles)


def run_zope_lb_server(app, args, profiles) -> None:
    """zope_lb as ``zope-lb serve`` serves it: its own waitress server
    (``zope_lb.server``), with the options ``zope-lb serve`` gives waitress
    (X-Forwarded-* kept for zope_lb to judge, deadlines, the connection limit
    from RLIMIT_NOFILE), and its stop: SIGTERM drains."""
    from zope_lb.server import Server, raise_nofile, waitress_options

    options = waitress_options({
        "listen": f"{args.host}:{args.port}",
        "threads": args.threads,
        "max_request_body_size": 1 << 40,  # the benchmark uploads 1 GiB
    }, raise_nofile())
    server = Server(app, options)
    port = server.listeners[0].effective_port
    print(f"LISTENING {args.host}:{port}", flush=True)
    try:
        server.run()
    finally:
        if profiles is not None:
            profiles.dump(args.cprofile)
        app.close()


def run_waitress(app, args, profiles) -> None:
    """The bare loop, on waitress as ``create_server`` sets it up."""
    import waitress

    server = waitress.create_server(
        app,
        host=args.host,
        port=args.port,
        threads=args.threads,
        max_request_body_size=1 << 40,  # the benchmark uploads 1 GiB
    )

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"LISTENING {args.host}:{server.effective_port}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if profiles is not None:
            profiles.dump(args.cprofile)
        server.close()

if __name__ == "__main__":
    main()
