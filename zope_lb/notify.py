"""Where state changes go: the log, a webhook, a command.

The health checker builds an event with ``make_event`` (and ``ClusterWatch``
for the cluster-wide degraded/recovered pair) and hands it to a
``Dispatcher``. Event dicts are JSON-serialisable::

    {"event": "backend.down", "backend": "client2", "address": "127.0.0.1:8082",
     "old": "up", "new": "down", "reason": "connection refused",
     "healthy": 2, "total": 3, "time": "2024-05-01T12:00:00Z"}

Theory of operation: notifiers do slow, failure-prone I/O (an HTTP POST to a
chat server, a script that sends mail), and the health checker must never wait
for them, let alone the request path. ``Dispatcher.dispatch`` only puts the
event on a bounded queue; one daemon thread takes events off it and calls each
notifier in turn. When the queue is full (a notifier hangs while backends
flap) new events are dropped with a WARNING rather than piling up in memory or
blocking the caller. Each notifier bounds its own work (timeouts, a fixed
number of attempts) and logs its failures instead of raising, so one broken
webhook never silences the others. ``close(timeout)`` lets the thread drain
what is queued, but gives up at the deadline: shutting down is bounded too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Protocol
from urllib.parse import urlsplit

import urllib3

log = logging.getLogger(__name__)

__all__ = [
    "EVENTS",
    "ClusterWatch",
    "CommandNotifier",
    "Dispatcher",
    "LogNotifier",
    "Notifier",
    "WebhookNotifier",
    "make_event",
    "utc_now_iso",
]

EVENTS = frozenset({
    "backend.down",
    "backend.up",
    "backend.draining",
    "backend.disabled",
    "cluster.degraded",
    "cluster.recovered",
})
# Events an operator must act on: logged at WARNING, the rest at INFO.
ALARMS = frozenset({"backend.down", "cluster.degraded"})
FIELDS = ("event", "backend", "address", "old", "new", "reason", "healthy", "total", "time")


def _user_agent() -> str:
    try:
        version = metadata.version("zope_lb")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        version = "dev"
    return f"zope_lb/{version} (notify)"


USER_AGENT = _user_agent()


class Notifier(Protocol):
    """Something that wants to hear about state changes. ``send`` must not raise."""

    def send(self, event: dict[str, Any]) -> None: ...


def utc_now_iso(clock: Callable[[], float] = time.time) -> str:
    """The current time as ISO-8601 UTC with a ``Z``, the form events carry."""
    moment = datetime.fromtimestamp(clock(), tz=timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def make_event(
    event: str,
    *,
    time: str,
    backend: str | None = None,
    address: str | None = None,
    old: str | None = None,
    new: str | None = None,
    reason: str = "",
    healthy: int = 0,
    total: int = 0,
) -> dict[str, Any]:
    """Build one event dict with every field present, so consumers never guess."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}: expected one of {sorted(EVENTS)}")
    return {
        "event": event,
        "backend": backend,
        "address": address,
        "old": old,
        "new": new,
        "reason": reason,
        "healthy": int(healthy),
        "total": int(total),
        "time": time,
    }


def describe(event: Mapping[str, Any]) -> str:
    """One human line for an event, used by the log and command failures."""
    kind = event.get("event", "?")
    counts = f"{event.get('healthy')}/{event.get('total')} healthy"
    reason = event.get("reason") or ""
    if str(kind).startswith("cluster."):
        text = f"cluster {str(kind).split('.', 1)[1]}: {counts}"
        return f"{text} ({reason})" if reason else text
    name = event.get("backend") or "?"
    address = event.get("address")
    where = f"{name} ({address})" if address and address != name else str(name)
    text = f"backend {where} {event.get('old')} -> {event.get('new')}"
    if reason:
        text += f": {reason}"
    return f"{text} [{counts}]"


class ClusterWatch:
    """Turns healthy-primary counts into ``cluster.degraded``/``cluster.recovered``.

    Degraded means ``healthy <= min_healthy``. An event is emitted only when the
    count crosses that line, never again while it stays on one side, so a flapping
    backend above the line makes no cluster noise. The first ``update`` sets the
    baseline silently: per-backend events already say what the checker found at
    start-up. Pure: the caller passes the time in.
    """

    def __init__(self, min_healthy: int = 1):
        if min_healthy < 0:
            raise ValueError(f"min_healthy must be >= 0, got {min_healthy}")
        self.min_healthy = min_healthy
        self.degraded: bool | None = None  # None until the first update

    def update(self, healthy: int, total: int, now_iso: str) -> list[dict[str, Any]]:
        """Record the current count; return the cluster events it causes (0 or 1)."""
        degraded = healthy <= self.min_healthy
        previous, self.degraded = self.degraded, degraded
        if previous is None or previous == degraded:
            return []
        kind = "cluster.degraded" if degraded else "cluster.recovered"
        relation = "at or below" if degraded else "above"
        reason = (
            f"{healthy} of {total} primaries healthy, "
            f"{relation} notify.min_healthy={self.min_healthy}"
        )
        return [make_event(kind, time=now_iso, reason=reason, healthy=healthy, total=total)]


class LogNotifier:
    """Logs each event once: WARNING for down and degraded, INFO otherwise."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or log

    def send(self, event: dict[str, Any]) -> None:
        level = logging.WARNING if event.get("event") in ALARMS else logging.INFO
        self.logger.log(level, "%s", describe(event))


def _redact(url: str) -> str:
    """Scheme and host only: webhook paths often carry a secret token (Slack, Teams)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."


# Worth trying again: the server is overloaded, restarting, or asks us to wait.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebhookNotifier:
    """POSTs the event as JSON; a few bounded attempts, then logs and gives up."""

    def __init__(
        self,
        url: str,
        timeout: float = 2.0,
        attempts: int = 3,
        backoff: float = 0.5,
        *,
        http: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook URL must be http:// or https://, got {_redact(url)!r}")
        if attempts < 1:
            raise ValueError(f"webhook attempts must be >= 1, got {attempts}")
        self.url = url
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep
        # total= bounds the whole exchange, so a server trickling bytes cannot hold us.
        self.http = http or urllib3.PoolManager(
            num_pools=2, timeout=urllib3.Timeout(total=timeout), retries=False
        )

    def send(self, event: dict[str, Any]) -> None:
        body = json.dumps(event).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        problem = ""
        for attempt in range(1, self.attempts + 1):
            retry = True
            try:
                response = self.http.request(
                    "POST", self.url, body=body, headers=headers,
                    redirect=False, retries=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= response.status < 300:
                    log.debug("webhook %s accepted %s (attempt %d)",
                              _redact(self.url), event.get("event"), attempt)
                    return
                problem = f"HTTP {response.status}"
                retry = response.status in _RETRY_STATUSES
            if not retry or attempt == self.attempts:
                break
            log.info("webhook %s attempt %d failed (%s), retrying",
                     _redact(self.url), attempt, problem)
            self.sleep(self.backoff * 2 ** (attempt - 1))
        log.warning("webhook %s gave up on %s after %d attempt(s): %s",
                    _redact(self.url), event.get("event"), attempt, problem)


def event_environment(event: Mapping[str, Any]) -> dict[str, str]:
    """The ``ZOPE_LB_*`` variables a command sees; None becomes the empty string."""
    env = {f"ZOPE_LB_{name.upper()}": "" if event.get(name) is None else str(event[name])
           for name in FIELDS}
    env["ZOPE_LB_JSON"] = json.dumps(event)
    return env


class CommandNotifier:
    """Runs a command (no shell) with the event in ``ZOPE_LB_*`` environment variables.

    The command runs in its own session so a timeout kills the whole process
    group: killing only ``sh`` would leave its children holding our pipes open.
    """

    def __init__(self, command: str, timeout: float = 10.0):
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("notify.command is empty")
        self.command = command
        self.timeout = timeout

    def send(self, event: dict[str, Any]) -> None:
        env = {**os.environ, **event_environment(event)}
        try:
            proc = subprocess.Popen(
                self.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            log.error("notify command %r could not start: %s", self.argv[0], exc)
            return
        try:
            output, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            log.warning("notify command %r timed out after %gs on %s; killed",
                        self.argv[0], self.timeout, event.get("event"))
            return
        if proc.returncode != 0:
            tail = output.decode("utf-8", "replace").strip()[-500:]
            log.warning("notify command %r exited %d on %s: %s",
                        self.argv[0], proc.returncode, event.get("event"), tail)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signal.SIGKILL)
            else:  # pragma: no cover - Windows
                proc.kill()
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            log.error("notify command %r did not die", proc.args)


_STOP = object()


class Dispatcher:
    """Hands events to notifiers on a background thread; ``dispatch`` never blocks."""

    def __init__(self, notifiers: Iterable[Notifier], queue_size: int = 100):
        self.notifiers = list(notifiers)
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="zope_lb-notify", daemon=True)
        self._thread.start()

    def dispatch(self, event: dict[str, Any]) -> None:
        """Queue the event for the notifiers; drop it (WARNING) if the queue is full."""
        if self._closed:
            log.debug("notify dispatcher closed, not sending %s", event.get("event"))
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            log.warning("notify queue full (%d), dropped %s",
                        self._queue.maxsize, describe(event))

    send = dispatch  # a Dispatcher is itself a Notifier

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued, then stop; give up after ``timeout`` seconds.

        Returns True if everything queued was handled and the thread stopped.
        """
        if not self._closed:
            self._closed = True
            self._deadline = time.monotonic() + timeout
            # If the queue stays full the worker sees the deadline and stops on its own.
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout)
        remaining = (self._deadline or 0) - time.monotonic()
        self._thread.join(max(0.0, remaining))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=0.1 if self._closed else None)
            except queue.Empty:
                event = None
            if event is _STOP:
                return
            if self._deadline is not None and time.monotonic() >= self._deadline:
                log.warning("notify dispatcher closed with %d event(s) undelivered",
                            self._queue.qsize() + (event is not None))
                return
            if event is None:
                continue
            for notifier in self.notifiers:
                try:
                    notifier.send(event)
                except Exception:
                    log.exception("notifier %r failed on %s", notifier, event.get("event"))
