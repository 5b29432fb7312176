"""The waitress server of ``zope-lb serve`` (and of ``[server:main] use =
egg:zope_lb#server`` under pserve), set up the way a balancer in production needs.

What it changes from a plain ``egg:waitress#main``, each overridable by the same
key in ``[server:NAME]``:

- ``clear_untrusted_proxy_headers = false``: waitress would delete every
  ``X-Forwarded-*`` header before the balancer sees it; zope_lb itself decides,
  by ``forwarded.trusted``, which to believe.
- ``connection_limit`` from the file descriptors the process may open (the soft
  ``RLIMIT_NOFILE`` raised to the hard one), with ``poll()`` instead of
  ``select()`` once descriptors can pass ``FD_SETSIZE``.
- ``outbuf_high_watermark``: the answer of a slow reader is spooled (memory,
  then a temp file) up to this bound, so its thread and backend slot are free
  as soon as the backend has sent everything.
- ``max_request_body_size``: a saner cap on spooled uploads than waitress's 1 GB.

Theory of operation. Deadlines are checked in waitress's maintenance pass (once
a second, in the loop thread), never per byte: ``timeout.request`` closes a
connection whose request head is not complete that long after its first byte
(or after the previous answer, on a kept-alive connection); ``timeout.client``
cuts a connection whose pending output has not moved for that long, or whose
request body stopped coming. Cutting closes the socket at once (a stalled
socket is never writable, so waitress's ``will_close`` flag would never be
acted on) and wakes the worker thread blocked in ``write_soon``, which then
closes the answer's iterable: the backend slot is released.

waitress's loop runs as it would alone (no per-pass cost of ours); it leaves
its pass by ``ExitNow`` for a stop signal, or to switch from ``select()`` to
``poll()`` when an accepted descriptor passes ``FD_SETSIZE``. A stop signal
only bumps a counter: the loop is woken through ``signal.set_wakeup_fd``, so no
lock is taken in a signal handler. The first
SIGTERM/SIGINT closes the listening sockets (a new connection is refused at
once), closes idle connections, stops reading new requests and lets the
requests in flight finish, up to ``shutdown.timeout``; a second signal cuts them.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from .errors import ConfigError
from .settings import Settings

try:
    import resource
except ImportError:  # pragma: no cover (Windows)
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Above this many connections the loop, which walks every connection on each
#: pass, costs more than the connections are worth; set connection_limit to go past.
CONNECTION_CEILING = 10_000
#: Descriptors kept for other things than client connections (backends, logs,
#: the state file, imports), plus this many per worker thread.
RESERVED_FDS = 100
RESERVED_PER_THREAD = 4
#: Connections accepted in one pass of the loop.
ACCEPT_BATCH = 64
#: select() cannot watch a descriptor numbered this or more.
FD_SETSIZE = 1024
#: Bytes of one answer spooled for a slow reader before its thread waits.
OUTBUF_HIGH_WATERMARK = 32 * 1024 * 1024
#: Bytes of one request body spooled before the app sees it (waitress: 1 GB).
MAX_REQUEST_BODY_SIZE = 256 * 1024 * 1024

TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
               b"Content-Type: text/plain\r\nContent-Length: 16\r\n\r\nRequest Timeout\n")


# -- pure: what waitress is told --------------------------------------------------


def connection_limit(nofile: int, threads: int) -> int:
    """Client connections the process can hold with ``nofile`` descriptors: each
    may also spool its answer to a temp file, so two descriptors each."""
    spare = nofile - RESERVED_FDS - RESERVED_PER_THREAD * threads
    return max(100, min(CONNECTION_CEILING, spare // 2))


def waitress_options(ini: Mapping[str, Any], nofile: int) -> dict[str, Any]:
    """The waitress adjustments of ``zope-lb serve``: our defaults, then the
    ``[server:NAME]`` values (``ini``), which always win."""
    threads = int(ini.get("threads", Adjustments.threads))
    limit = connection_limit(nofile, threads)
    options: dict[str, Any] = {
        "clear_untrusted_proxy_headers": False,
        "connection_limit": limit,
        # descriptors can pass FD_SETSIZE, which select() cannot watch
        "asyncore_use_poll": limit + RESERVED_FDS + RESERVED_PER_THREAD * threads
                             >= FD_SETSIZE,
        "outbuf_high_watermark": OUTBUF_HIGH_WATERMARK,
        "max_request_body_size": MAX_REQUEST_BODY_SIZE,
        "cleanup_interval": 1,  # the deadlines are checked in the maintenance pass
    }
    options.update({k: v for k, v in ini.items() if not k.startswith("_")})
    return options


@dataclass(frozen=True)
class Deadlines:
    request: float = 10.0
    client: float = 60.0
    shutdown: float = 30.0


def overdue(channel: Any, now: float, deadlines: Deadlines) -> str | None:
    """Which deadline ``channel`` broke at ``now``: ``"client"`` (its answer did not
    move for ``timeout.client``), ``"body"`` (no byte of its request body came for
    ``timeout.client``), ``"request"`` (its request head took longer than
    ``timeout.request``), or None."""
    if channel.total_outbufs_len:  # an answer is on its way: only the reader counts
        return "client" if now - channel.last_activity > deadlines.client else None
    if channel.requests:
        return None  # the app works on it; the backend's own timeouts apply
    request = channel.request
    if request is not None and request.headers_finished:  # its body is on its way
        return "body" if now - channel.last_activity > deadlines.client else None
    started = channel.head_started
    if started is None and channel.request is None and channel.served:
        started = channel.last_activity  # kept alive: from the end of the last answer
    if started is not None and now - started > deadlines.request:
        return "request"
    return None


def in_flight(channel: Any) -> bool:
    """Whether a stop must wait for ``channel``: a request is being answered or
    its body is arriving, or an answer is still being sent."""
    request = channel.request
    return bool(channel.requests or channel.total_outbufs_len
                or (request is not None and request.headers_finished))


# -- the waitress pieces --------------------------------------------------------------


class Channel(HTTPChannel):
    """A waitress channel that knows when its current request head began."""

    head_started: float | None = None  # time.time() of the head's first byte
    served = False  # a request head was received whole: idle now means kept alive

    def received(self, data: bytes) -> bool:
        if self.request is None:
            self.head_started = time.time()
        result = super().received(data)
        request = self.request
        if request is None or request.headers_finished:
            self.head_started = None
            self.served = True
        return bool(result)

    def readable_while_draining(self) -> bool:
        """Stopping: read only a request body already on its way, no new request.
        (Set as the instance's ``readable`` at the stop: no cost before it.)"""
        request = self.request
        if request is None or not request.headers_finished:
            return False
        return bool(HTTPChannel.readable(self))

    def cut(self, reason: str) -> None:
        """Close now; a worker blocked writing to this channel wakes up."""
        if reason == "request" and self.request is not None:
            with contextlib.suppress(OSError):
                self.socket.send(TIMEOUT_408)
        self.handle_close()


class Listener(TcpWSGIServer):
    """A waitress TCP server whose maintenance pass also enforces the deadlines."""

    channel_class = Channel

    def __init__(self, *args: Any, deadlines: Callable[[], Deadlines], **kw: Any):
        self.deadlines = deadlines
        super().__init__(*args, **kw)

    selecting = False  # the loop uses select() now: no descriptor may pass FD_SETSIZE
    past_select = False  # a connection was accepted that select() cannot watch

    def accept(self) -> tuple[socket.socket, Any] | None:
        pair = super().accept()
        if pair is not None and self.selecting and pair[0].fileno() >= FD_SETSIZE:
            self.past_select = True
        return pair

    def handle_accept(self) -> None:
        """Accept up to ``ACCEPT_BATCH`` connections a pass, not one: with
        thousands of connections open a pass is slow, and a flood of new ones
        would wait in the backlog (then in SYN retries) behind it."""
        for _ in range(ACCEPT_BATCH):
            before = len(self._map)
            if before >= self.adj.connection_limit:
                return
            super().handle_accept()
            if len(self._map) == before:  # nothing more to accept now
                return
            if self.past_select:
                self.past_select = False
                raise wasyncore.ExitNow("switch to poll()")  # Server.run loops again

    def maintenance(self, now: float) -> None:
        """Cut the connections past a deadline. Through the trigger, so it happens
        in this pass's event handling: closing one now, while the pass gathers
        descriptors, would hand select() a closed one."""
        super().maintenance(now)
        deadlines = self.deadlines()
        late = [(channel, reason) for channel in self.active_channels.values()
                if (reason := overdue(channel, now, deadlines))]
        if late:
            self.trigger.pull_trigger(lambda: self.cut(late, deadlines))

    def cut(self, late: list[tuple[Channel, str]], deadlines: Deadlines) -> None:
        """Close ``late``; one log line per deadline and pass (at most one a
        second), never one per connection: an attack would flood the log."""
        cut: dict[str, list[Channel]] = {}
        for channel, reason in late:
            if channel.socket is None:
                continue  # closed meanwhile
            channel.cut(reason)
            cut.setdefault(reason, []).append(channel)
        for reason, channels in cut.items():
            if reason == "client":
                log.info("closed %d connection(s) whose client read nothing of its answer "
                         "for timeout.client (%g s), e.g. from %s", len(channels),
                         deadlines.client, _peer(channels[0]))
            elif reason == "body":
                log.info("closed %d connection(s) whose client sent nothing of its request "
                         "body for timeout.client (%g s), e.g. from %s", len(channels),
                         deadlines.client, _peer(channels[0]))
            else:
                log.info("closed %d connection(s) whose request head took longer than "
                         "timeout.request (%g s), e.g. from %s", len(channels),
                         deadlines.request, _peer(channels[0]))


def _peer(channel: Any) -> str:
    addr = channel.addr
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)


class _Wakeup(wasyncore.dispatcher):
    """The read end of ``signal.set_wakeup_fd``: a signal wakes the loop at once,
    and a stop signal ends the loop's pass (ExitNow is re-raised by wasyncore)."""

    def __init__(self, sock: socket.socket, server: Server):
        super().__init__(sock, map=server.map)
        self.server = server

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        with contextlib.suppress(OSError):
            while self.socket.recv(512):
                pass
        if self.server.signals:
            raise wasyncore.ExitNow("stop signal")


# -- running ---------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard one; return what we may open."""
    if resource is None:  # pragma: no cover
        return FD_SETSIZE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def deadlines_of(app: Any) -> Callable[[], Deadlines]:
    """Read the deadlines from the balancer's current settings (a reload changes them)."""
    top = app
    for _ in range(10):  # down through filters, bounded
        if top is None or isinstance(getattr(top, "settings", None), Settings):
            break
        top = getattr(top, "app", None) or getattr(top, "application", None)

    def current() -> Deadlines:
        settings = getattr(top, "settings", None) if top is not None else None
        if not isinstance(settings, Settings):
            return Deadlines()
        return Deadlines(settings.timeout_request, settings.timeout_client,
                         settings.shutdown_timeout)

    return current


class Server:
    """``zope-lb serve``'s server: waitress listeners, their workers, and a stop
    that drains. ``run()`` returns the exit status."""

    def __init__(self, app: Any, options: Mapping[str, Any], *,
                 deadlines: Callable[[], Deadlines] | None = None):
        self.app = app
        self.adj = Adjustments(**options)
        self.deadlines = deadlines or deadlines_of(app)
        self.map: dict[int, Any] = {}
        self.signals = 0
        self.dispatcher = ThreadedTaskDispatcher()
        self.dispatcher.set_thread_count(self.adj.threads)
        self.listeners: list[Listener] = []
        try:
            for sockinfo in self.adj.listen:
                self.listeners.append(Listener(app, self.map, dispatcher=self.dispatcher,
                                               adj=self.adj, sockinfo=sockinfo,
                                               deadlines=self.deadlines))
            for sock in self.adj.sockets:
                sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
                self.listeners.append(Listener(app, self.map, _sock=sock,
                                               dispatcher=self.dispatcher, adj=self.adj,
                                               sockinfo=sockinfo, bind_socket=False,
                                               deadlines=self.deadlines))
        except BaseException:
            self._close_all()
            raise
        if not self.listeners:
            self._close_all()
            raise ConfigError("listen", None, "zope-lb serve needs a TCP address to listen on")

    @property
    def addresses(self) -> list[str]:
        return [f"http://[{s.effective_host}]:{s.effective_port}"
                if ":" in str(s.effective_host) else
                f"http://{s.effective_host}:{s.effective_port}" for s in self.listeners]

    def describe(self) -> str:
        """The start-up line: where it listens, threads, limits and deadlines."""
        d = self.deadlines()
        adj = self.adj
        loop = "poll() once descriptors pass 1024" if adj.asyncore_use_poll else "select()"
        return (f"zope-lb serves on {', '.join(self.addresses)}: threads {adj.threads}, "
                f"connection limit {adj.connection_limit} ({loop}), "
                f"timeout.request {d.request:g} s, timeout.client {d.client:g} s, "
                f"shutdown.timeout {d.shutdown:g} s, "
                f"upload limit {adj.max_request_body_size // (1024 * 1024)} MB, "
                f"answers spooled up to {adj.outbuf_high_watermark // (1024 * 1024)} MB "
                f"per connection")

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT, then drain; returns 0."""
        log.info("%s", self.describe())
        restore = self._catch_signals()
        try:
            while not self.signals:
                self._loop(self.adj.asyncore_loop_timeout, passes=1_000_000)
            self.drain()
        finally:
            restore()
            self._close_all()
        return 0

    def _loop(self, timeout: float, passes: int) -> None:
        """Run the loop until ``passes`` passes, a stop signal or a descriptor
        select() cannot watch. poll() costs 7-10 us a request more than select()
        in wasyncore: it is used only while a descriptor is past FD_SETSIZE."""
        use_poll = self.adj.asyncore_use_poll and max(self.map) >= FD_SETSIZE
        for listener in self.listeners:
            listener.selecting = not use_poll
        with contextlib.suppress(wasyncore.ExitNow):
            wasyncore.loop(timeout=timeout, map=self.map, use_poll=use_poll, count=passes)

    def _catch_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signals go to the main thread only

        def stop(signum: int, frame: Any) -> None:
            self.signals += 1  # nothing else here: no lock may be taken in a handler

        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        _Wakeup(reader, self)
        previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        previous = {signum: signal.signal(signum, stop)
                    for signum in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_fd)
            writer.close()

        return restore

    def drain(self) -> None:
        """Stop accepting, close idle connections, wait for the requests in flight
        up to ``shutdown.timeout`` (or a second signal), then cut the rest."""
        for listener in self.listeners:
            listener.accepting = False
            wasyncore.dispatcher.close(listener)  # not listener.close(): the trigger stays
        for channel in self._channels():
            channel.readable = channel.readable_while_draining  # type: ignore[method-assign]
        timeout = self.deadlines().shutdown
        busy = self._close_idle()
        log.info("stopping: no new connections; waiting up to %g s (shutdown.timeout) "
                 "for %d request(s) in flight", timeout, len(busy))
        started = time.monotonic()
        deadline = started + timeout
        while busy and self.signals < 2 and time.monotonic() < deadline:
            self._loop(min(0.1, max(0.0, deadline - time.monotonic())), passes=1)
            busy = self._close_idle()
        if busy:
            why = ("a second stop signal" if self.signals >= 2
                   else f"shutdown.timeout ({timeout:g} s)")
            log.warning("stopped after %s: cut %d request(s) still in flight", why, len(busy))
            for channel in busy:
                channel.handle_close()
        else:
            log.info("stopped: every request finished (%.1f s)", time.monotonic() - started)

    def _channels(self) -> list[Channel]:
        return [c for s in self.listeners for c in list(s.active_channels.values())]

    def _close_idle(self) -> list[Channel]:
        busy = []
        for channel in self._channels():
            if in_flight(channel):
                busy.append(channel)
            else:
                channel.handle_close()
        return busy

    def _close_all(self) -> None:
        self.dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(self.map)  # listeners, their triggers, connections


def serve(app: Any, ini: Mapping[str, Any]) -> int:
    """Serve ``app`` with the ``[server:NAME]`` values ``ini``; the exit status."""
    return Server(app, waitress_options(ini, raise_nofile())).run()


def server_factory(global_conf: Mapping[str, str], **local_conf: str) -> Callable[[Any], int]:
    """``[server:main] use = egg:zope_lb#server`` (or ``call:zope_lb.server:server_factory``):
    pserve runs the same server as ``zope-lb serve``, drain and deadlines included."""
    check_options(local_conf, "main")

    def run(app: Any) -> int:
        try:
            return serve(app, local_conf)
        finally:  # pserve does not close the app: pools and health checker
            close = getattr(app, "close", None)
            if close is not None:
                close()

    return run


def check_options(ini: Mapping[str, Any], name: str) -> None:
    """A typo or a bad value in ``[server:NAME]`` fails before the app runs."""
    if ini.get("unix_socket"):
        raise ConfigError(f"[server:{name}] unix_socket", ini["unix_socket"],
                          "zope-lb serve listens on TCP only; use listen = 127.0.0.1:PORT "
                          "(nginx proxies to it as well)")
    try:
        Adjustments(**waitress_options(ini, FD_SETSIZE))
    except ValueError as exc:
        raise ConfigError(f"[server:{name}]", None, str(exc)) from None


def bind_server(uri: str, name: str, app: Any) -> Callable[[], int]:
    """``[server:NAME]`` of ``uri`` made ready to serve ``app``: for waitress (or
    ours) the listening sockets are bound here, so an address in use raises
    OSError now, in the caller's thread, before anything serves; the result runs
    the server and returns the exit status. Any other server binds when run."""
    options = _waitress_section(uri, name)
    if options is None:
        runner = _other_runner(uri, name)
        return lambda: runner(app)
    return Server(app, options).run


def _waitress_section(uri: str, name: str) -> dict[str, Any] | None:
    """The waitress options of ``[server:NAME]`` (checked), or None when the
    section names another server."""
    import waitress
    from paste.deploy.loadwsgi import SERVER, loadcontext

    context = loadcontext(SERVER, uri, name=name)
    if getattr(context, "object", None) not in (waitress.serve_paste, server_factory):
        return None
    ini = dict(context.local_conf)
    check_options(ini, name)
    return waitress_options(ini, raise_nofile())


def _other_runner(uri: str, name: str) -> Callable[[Any], int]:
    from paste.deploy import loadserver

    log.warning("[server:%s] is not waitress: the deadlines, the connection limit "
                "and the graceful stop of zope-lb serve do not apply", name)
    runner = loadserver(uri, name=name)

    def other(app: Any) -> int:
        runner(app)
        return 0

    return other
