"""SIGHUP: the whole ini read again and applied in place, or refused whole.

Theory of operation: the ini is checked exactly as ``zope-lb config`` checks
it (:func:`zope_lb.inifile.check_ini`). With any problem, one ERROR line names
the file and every problem, and the running configuration stays. Otherwise
each zope_lb balancer of the app (an ``[app:*]`` or a ``[filter:*]`` of a
pipeline) gets its section's options, with the state file on top, like an
admin edit: removed backends drain, requests in flight finish. What a running
process cannot change (the ``[server:*]`` keys, the app's sections and
factories, the logging sections) is named in a WARNING for the next restart.
The reload thread survives anything a reload raises, so the next SIGHUP works.

Live balancers are matched to sections once, at start: the app's chain of
wrapped apps (``.app``), outermost first, against the balancer sections in
pipeline order. gunicorn handles SIGHUP itself, by starting new workers.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from .errors import ConfigError
from .inicheck import check_ini
from .inifile import IniReport, collected

log = logging.getLogger(__name__)


def reload_on_sighup(app: object, uri: str, app_name: str, *,
                     server_name: str | None = "main",
                     pending: threading.Event | None = None) -> Callable[[], None]:
    """Re-read the ini on SIGHUP; returns what stops that. ``pending`` set: a
    SIGHUP came during start-up; it is applied at once.

    The handler only sets an event and a thread of its own does the work: a
    Python signal handler runs in the main thread between two bytecodes, maybe
    while that thread holds a lock the reload needs too (logging's, a pool's),
    which would deadlock. The thread also keeps the server's loop free.
    """
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return lambda: None  # Windows, or called from a test thread
    wake = threading.Event()
    stopping = threading.Event()

    def work() -> None:
        # The ini as it was at start is read here, off the main thread, which
        # goes on to serve at once.
        reloader = Reloader(app, uri, app_name, server_name=server_name)
        while True:
            wake.wait()
            wake.clear()
            if stopping.is_set():
                return
            reloader.reload()

    thread = threading.Thread(target=work, daemon=True, name="zope-lb-sighup")
    thread.start()
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: wake.set())
    if pending is not None and pending.is_set():
        wake.set()

    def stop() -> None:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
        stopping.set()
        wake.set()
        thread.join(10)

    return stop


def ini_path(uri: str) -> str:
    """``config:/path/x.ini`` (or a plain path) -> the path."""
    return uri[len("config:"):] if uri.startswith("config:") else uri


def balancers_of(app: object) -> list[Any]:
    """The LoadBalancers an app is made of, outermost first, following ``.app``."""
    from .app import LoadBalancer

    found: list[Any] = []
    seen: set[int] = set()
    current: object = app
    for _ in range(64):  # a bounded walk down the wrapped apps
        if current is None or id(current) in seen:
            break
        seen.add(id(current))
        if isinstance(current, LoadBalancer):
            found.append(current)
        current = getattr(current, "app", None) or getattr(current, "application", None)
    return found


class Reloader:
    """Applies the ini to the running balancers; ``reload()`` never raises."""

    def __init__(self, app: object, uri: str, app_name: str, *,
                 server_name: str | None = "main"):
        self.path = ini_path(uri)
        self.app_name = app_name
        self.server_name = server_name
        with collected([]):  # loading the app has logged its warnings already
            self.started = check_ini(self.path, app_name, server_name)
        live = balancers_of(app)
        sections = [b.section for b in self.started.balancers]
        self.live: dict[str, Any] = dict(zip(sections, live, strict=False))
        if len(live) != len(sections):
            log.warning("SIGHUP will not apply %s: %d balancer sections but %d running "
                        "balancers (%s)", self.path, len(sections), len(live),
                        ", ".join(sections) or "none")
            self.live = {}

    def reload(self) -> bool:
        """Check and apply the ini; True if applied. One ERROR line if not."""
        try:
            return self._reload()
        except Exception as exc:  # the reload thread must outlive any one reload
            log.error("SIGHUP: %s not applied, the running configuration stays: %s: %s",
                      self.path, type(exc).__name__, exc)
            return False

    def _reload(self) -> bool:
        with collected([]):  # applying logs the warnings that still hold
            report = check_ini(self.path, self.app_name, self.server_name)
        if not report.ok:
            log.error("SIGHUP: %s not applied, the running configuration stays: %s",
                      self.path, "; ".join(str(p) for p in report.problems))
            return False
        for line in restart_needed(self.started, report):
            log.warning("SIGHUP: %s: takes effect after a restart", line)
        if not self.live:
            log.error("SIGHUP: %s not applied, the running configuration stays: no running "
                      "zope_lb balancer to apply it to", self.path)
            return False
        if not any(b.section in self.live for b in report.balancers):
            log.warning("SIGHUP: %s not applied: none of its balancer sections (%s) is the "
                        "one running (%s); restart to use it", self.path,
                        ", ".join(f"[{b.section}]" for b in report.balancers) or "none",
                        ", ".join(f"[{s}]" for s in self.live))
            return False
        changed: list[str] = []
        for balancer in report.balancers:
            live = self.live.get(balancer.section)
            if live is None:
                continue
            before = live.current_options()
            try:
                state = getattr(live, "state_file", None)
                if state is not None:
                    state.reload_ini(balancer.local_conf)
                else:
                    live.apply(balancer.local_conf, replace=True)
            except ConfigError as exc:
                log.error("SIGHUP: %s not applied, the running configuration stays: "
                          "[%s] %s", self.path, balancer.section, exc)
                return False
            after = live.current_options()
            keys = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
            if keys:
                changed.append(f"[{balancer.section}] {', '.join(keys)}")
        log.info("SIGHUP: applied %s: %s", self.path,
                 "; ".join(changed) if changed else "no balancer option changed")
        return True


def restart_needed(started: IniReport, now: IniReport) -> list[str]:
    """What differs between the ini at start and now that a running process
    cannot apply: the app's structure, the server keys, the logging sections."""
    lines: list[str] = []
    if started.chain != now.chain:
        lines.append(f"the app changed from {_chain(started)} to {_chain(now)}")
    old_paths = {b.section: b.state_path for b in started.balancers}
    for balancer in now.balancers:
        old_path = old_paths.get(balancer.section, balancer.state_path)
        if old_path != balancer.state_path:
            lines.append(f"[{balancer.section}] state_file changed from {old_path} to "
                         f"{balancer.state_path}")
    old_servers = {s.section: s.local_conf for s in started.servers}
    for server in now.servers:
        old = old_servers.get(server.section, {})
        for key in sorted({*old, *server.local_conf}):
            if old.get(key) != server.local_conf.get(key):
                lines.append(f"[{server.section}] {key} changed from "
                             f"{_shown(old.get(key))} to {_shown(server.local_conf.get(key))}")
    if started.logging_sections != now.logging_sections:
        names = sorted(s for s in {*started.logging_sections, *now.logging_sections}
                       if started.logging_sections.get(s) != now.logging_sections.get(s))
        lines.append("the logging sections changed (" + ", ".join(f"[{n}]" for n in names)
                     + ")")
    return lines


def _chain(report: IniReport) -> str:
    return " -> ".join(f"[{section}]" + (f" {use}" if use else "")
                       for section, use in report.chain) or "(none)"


def _shown(value: str | None) -> str:
    return "(not set)" if value is None else " ".join(value.split())
