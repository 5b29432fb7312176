"""Backends found by DNS: a ``resolve`` line is one backend per address of its name.

Theory of operation
-------------------
A backend line with ``resolve`` (``backend:8080 resolve``) names a service,
not a server: every A/AAAA address the name has is a backend of its own,
with the line's flags and an id made of the line's ``id=`` (or the name) and
the address, ``backend@10.0.0.7``. With ``resolve=srv``
(``_http._tcp.backend.local resolve=srv``) the SRV records give the targets
and their ports (``backend@10.0.0.7:8081``); records of a less preferred
priority are backups. The ``@`` keeps these ids apart from every configured
id, which may not contain one.

One :class:`Discovery` per balancer owns the lookups. A single background
thread looks each name up every ``resolve.interval`` seconds (sooner when the
answer's TTL is shorter, never more often than once a second), so no request
ever waits on DNS. When an answer differs from the last one, the balancer is
told (``on_change``) and re-expands its lines through :meth:`Discovery.expand`
(pure: the last good answers, no I/O) into the existing
``BackendPool.reconfigure``: unchanged addresses keep their backend, its
connections and state; a new one joins; a vanished one drains.

A lookup that fails, or answers no address, keeps the last good answer: a DNS
outage must never empty the cluster. The first failure of a streak is logged
at WARNING, the recovery at INFO, nothing in between.

The configured text never changes: the settings keep the ``resolve`` line as
written (the admin's Basic tab, the state file), only the pools hold the
expansion.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from .backendlines import BackendSpec, url_host
from .errors import ConfigError
from .settings import Settings

log = logging.getLogger(__name__)

#: Never look a name up more often than this, whatever its TTL says.
MIN_INTERVAL = 1.0
#: Seconds one lookup (each query of it) may take.
LOOKUP_TIMEOUT = 2.0

Key = tuple[str, int, str]  # (name, port, "a" or "srv")


@dataclass(frozen=True, order=True)
class Target:
    """One address a name resolved to."""

    host: str  # an IP address
    port: int
    backup: bool = False  # SRV: a record of a less preferred priority


@dataclass(frozen=True)
class Answer:
    targets: tuple[Target, ...]
    ttl: float | None  # None: the system resolver, which does not tell


class LookupFailed(Exception):
    """A lookup that gave no usable answer; the message says why."""


def key_of(spec: BackendSpec) -> Key:
    return spec.host.lower(), spec.port, spec.resolve


def resolved_id(spec: BackendSpec, target: Target) -> str:
    """``NAME@ADDRESS``: the line's ``id=`` (or its name), then the address
    (with the port when SRV records gave it, since it may differ per record)."""
    base = spec.id if spec.id != spec.address else spec.host
    where = target.host if spec.resolve == "a" else _shown(target)
    return f"{base}@{where}"


def expand(spec: BackendSpec, targets: Iterable[Target]) -> tuple[BackendSpec, ...]:
    """One backend spec per target, with the line's flags (pure)."""
    return tuple(
        BackendSpec(t.host, t.port, weight=spec.weight, backup=spec.backup or t.backup,
                    maxconn=spec.maxconn, id=resolved_id(spec, t))
        for t in targets
    )


def _identity(spec: BackendSpec) -> tuple[object, int]:
    """One server, however its address is spelled (``::1`` is ``0::1``)."""
    try:
        return ipaddress.ip_address(spec.host), spec.port
    except ValueError:
        return spec.host.lower(), spec.port


def expand_all(specs: Iterable[BackendSpec],
               answers: Mapping[Key, Sequence[Target]]) -> tuple[BackendSpec, ...]:
    """The pool's backends: fixed lines as they are, ``resolve`` lines expanded
    with their last answer (none yet: nothing). An address already in the pool
    (a fixed line, or an earlier name) is not added twice (pure)."""
    out: list[BackendSpec] = []
    seen: set[object] = set()
    for spec in specs:
        for one in (expand(spec, answers.get(key_of(spec), ())) if spec.resolve else (spec,)):
            identity = _identity(one)
            if identity not in seen:
                seen.add(identity)
                out.append(one)
    return tuple(out)


def next_lookup(interval: float, ttl: float | None) -> float:
    """Seconds until a name is looked up again: the interval, or the TTL when
    shorter, but never less than :data:`MIN_INTERVAL` (pure)."""
    if ttl is None:
        return interval
    return max(MIN_INTERVAL, min(interval, ttl))


# -- lookups (I/O) ----------------------------------------------------------------------


def make_resolver(server: str, timeout: float = LOOKUP_TIMEOUT) -> dns.resolver.Resolver:
    """A dnspython resolver asking ``server`` (``IP:PORT``), or the system's
    name servers (/etc/resolv.conf) when it is empty; it keeps no cache, so
    every lookup sees the current answer."""
    if server:
        resolver = dns.resolver.Resolver(configure=False)
        host, _, port = server.rpartition(":")
        resolver.nameservers = [host.strip("[]")]
        resolver.port = int(port)
    else:
        resolver = dns.resolver.Resolver()
    resolver.timeout = resolver.lifetime = timeout
    resolver.cache = None
    return resolver


def _system_addresses(name: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos}, key=lambda ip: (":" in ip, ip))


def _dns_addresses(resolver: dns.resolver.Resolver, name: str) -> tuple[list[str], float]:
    """A and AAAA of ``name``. A type the server has nothing for, or refuses
    (dnsmasq refuses AAAA for a name it knows only by IPv4), is fine when the
    other type gives addresses; no address at all is a failure."""
    addresses: list[str] = []
    ttls: list[float] = []
    errors: list[dns.exception.DNSException] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise LookupFailed(f"{name}: no such name (NXDOMAIN)") from None
        except dns.exception.Timeout:
            raise  # the server is gone: no second wait for the other type
        except dns.exception.DNSException as exc:
            errors.append(exc)
            continue
        if answer.rrset is not None:
            addresses.extend(str(rr.address) for rr in answer.rrset)
            ttls.append(float(answer.rrset.ttl))
    if errors and not addresses:
        raise errors[0]
    return addresses, min(ttls, default=0.0)


def _srv(resolver: dns.resolver.Resolver | None, name: str, server: str) -> Answer:
    resolver = resolver or make_resolver(server)
    try:
        answer = resolver.resolve(name, "SRV")
    except dns.resolver.NXDOMAIN:
        raise LookupFailed(f"{name}: no such name (NXDOMAIN)") from None
    assert answer.rrset is not None  # raise_on_no_answer: NoAnswer otherwise
    records = [rr for rr in answer.rrset if rr.target != dns.name.root]  # "." : no service
    if not records:
        return Answer((), float(answer.rrset.ttl))
    best = min(rr.priority for rr in records)
    # The server often sends the targets' addresses along: no second query then.
    extra: dict[str, list[str]] = {}
    ttls = [float(answer.rrset.ttl)]
    for rrset in answer.response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            extra.setdefault(rrset.name.to_text(), []).extend(str(rr.address) for rr in rrset)
            ttls.append(float(rrset.ttl))
    targets: set[Target] = set()
    for rr in records:
        target = rr.target.to_text()
        addresses = extra.get(target)
        if addresses is None:
            if server:
                addresses, ttl = _dns_addresses(resolver, target)
                ttls.append(ttl)
            else:
                addresses = _system_addresses(target, rr.port)
        targets.update(Target(ip, rr.port, rr.priority > best) for ip in addresses)
    return Answer(tuple(sorted(targets)), min(ttls))


def lookup(key: Key, server: str = "",
           resolver: dns.resolver.Resolver | None = None) -> Answer:
    """Resolve one ``resolve`` line now; LookupFailed says why it could not.

    A/AAAA: from ``server`` with dnspython (the answer's TTL), or the system
    resolver (getaddrinfo: /etc/hosts and Docker's DNS too, no TTL). SRV: always
    dnspython, from ``server`` or the system's name servers."""
    name, port, kind = key
    try:
        if kind == "srv":
            return _srv(resolver, name, server)
        if server:
            addresses, ttl = _dns_addresses(resolver or make_resolver(server), name)
            return Answer(tuple(sorted({Target(ip, port) for ip in addresses})), ttl)
        return Answer(tuple(Target(ip, port) for ip in _system_addresses(name, port)), None)
    except dns.resolver.NoAnswer:
        raise LookupFailed(f"{name}: no {'SRV' if kind == 'srv' else 'address'} records") from None
    except dns.resolver.NoNameservers as exc:
        raise LookupFailed(f"{name}: the DNS server gave no answer ({exc})") from None
    except dns.exception.Timeout:
        raise LookupFailed(f"{name}: the DNS server did not answer in time") from None
    except dns.exception.DNSException as exc:
        raise LookupFailed(f"{name}: {exc}") from None
    except OSError as exc:  # socket.gaierror, refused
        raise LookupFailed(f"{name}: {exc.strerror or exc}") from None


def resolve_specs(specs: Iterable[BackendSpec], server: str = "") -> tuple[BackendSpec, ...]:
    """Expand ``resolve`` lines once, now (``zope-lb verify``); a name that does
    not resolve is a ConfigError naming its line."""
    specs = tuple(specs)
    answers: dict[Key, Sequence[Target]] = {}
    for spec in specs:
        if spec.resolve:
            try:
                answer = lookup(key_of(spec), server)
            except LookupFailed as exc:
                raise ConfigError("backends", spec.line, f"does not resolve: {exc}") from None
            if not answer.targets:
                raise ConfigError("backends", spec.line, "resolves to no address")
            answers[key_of(spec)] = answer.targets
    return expand_all(specs, answers)


# -- the thread ---------------------------------------------------------------------------


def resolve_keys(settings: Settings) -> set[Key]:
    """Every name the settings' ``resolve`` lines ask for, in every pool."""
    specs = [*settings.backends, *(s for pool in settings.pools for s in pool.backends)]
    return {key_of(s) for s in specs if s.resolve}


class Discovery:
    """Follows the ``resolve`` lines of one balancer in one background thread.

    ``lookup`` and ``clock`` are the test seams (production defaults).
    """

    def __init__(self, on_change: Callable[[], None], *,
                 lookup: Callable[..., Answer] = lookup,
                 clock: Callable[[], float] = time.monotonic):
        self._on_change = on_change
        self._lookup = lookup
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: dict[Key, tuple[Target, ...]] = {}
        self._due: dict[Key, float] = {}
        self._failing: set[Key] = set()
        self._interval = 5.0
        self._server = ""
        self._resolver: dns.resolver.Resolver | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    def start(self) -> Discovery:
        """Start following (the thread runs only while there are names)."""
        with self._lock:
            self._started = True
        self._start_thread()
        return self

    def _start_thread(self) -> None:
        with self._lock:
            if not (self._started and self._due and self._thread is None
                    and not self._stop.is_set()):
                return
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="zope-lb-resolve")
        self._thread.start()

    def follow(self, settings: Settings) -> None:
        """Follow the names of ``settings`` (called at start and on each change):
        new names are looked up at once (by the thread), dropped ones forgotten."""
        keys = resolve_keys(settings)
        with self._lock:
            if settings.resolve_server != self._server:
                self._resolver = None
                self._due = dict.fromkeys(self._due, 0.0)  # ask the new server now
            if settings.resolve_interval < self._interval:  # shorter: not after the old one
                soon = self._clock() + settings.resolve_interval
                self._due = {k: min(when, soon) for k, when in self._due.items()}
            self._interval = settings.resolve_interval
            self._server = settings.resolve_server
            for key in list(self._due):
                if key not in keys:
                    del self._due[key]
                    self._answers.pop(key, None)
                    self._failing.discard(key)
            for key in keys:
                self._due.setdefault(key, 0.0)
        self._wake.set()
        self._start_thread()

    def resolve_now(self) -> None:
        """Look every followed name up once, now, in this thread (start-up,
        before the first request: the pools start with the addresses)."""
        with self._lock:
            keys = [k for k in self._due if k not in self._answers]
        self._look_up(keys)

    def expand(self, specs: Iterable[BackendSpec]) -> tuple[BackendSpec, ...]:
        """The backend specs for a pool's lines, from the last good answers."""
        with self._lock:
            answers = dict(self._answers)
        return expand_all(specs, answers)

    def answers(self) -> dict[Key, tuple[Target, ...]]:
        with self._lock:
            return dict(self._answers)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread within ``timeout`` (a lookup in flight is bounded by
        its own timeout, the system resolver's by the system). Safe twice."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self._clock()
            with self._lock:
                due = [k for k, when in self._due.items() if when <= now]
                next_due = min(self._due.values(), default=now + self._interval)
            if due:
                if self._look_up(due) and not self._stop.is_set():
                    try:
                        self._on_change()
                    except Exception:  # the thread must outlive one bad update
                        log.exception("could not apply the resolved addresses")
                continue
            self._wake.wait(max(0.05, min(self._interval, next_due - now)))
            self._wake.clear()

    def _look_up(self, keys: Iterable[Key]) -> bool:
        """Look ``keys`` up, record the answers; True if any address set changed."""
        changed = False
        for key in keys:
            if self._stop.is_set():
                break
            with self._lock:
                server, interval, resolver = self._server, self._interval, self._resolver
            answer: Answer | None = None
            try:
                if resolver is None and (server or key[2] == "srv"):
                    resolver = make_resolver(server)  # no /etc/resolv.conf: an error here
                    with self._lock:
                        if server == self._server:
                            self._resolver = resolver
                answer = self._lookup(key, server, resolver)
                error = "" if answer.targets else f"{key[0]}: the answer has no address"
            except LookupFailed as exc:
                error = str(exc)
            except Exception as exc:  # a resolver bug must not end the thread
                log.debug("lookup of %s crashed", key[0], exc_info=True)
                error = f"{key[0]}: {type(exc).__name__}: {exc}"
            changed |= self._record(key, answer, error, interval)
        return changed

    def _record(self, key: Key, answer: Answer | None, error: str, interval: float) -> bool:
        name = key[0]
        with self._lock:
            if key not in self._due:  # no longer followed
                return False
            old = self._answers.get(key)
            if error or answer is None:
                self._due[key] = self._clock() + interval
                first = key not in self._failing
                self._failing.add(key)
            else:
                self._due[key] = self._clock() + next_lookup(interval, answer.ttl)
                recovered = key in self._failing
                self._failing.discard(key)
                self._answers[key] = answer.targets
        if error or answer is None:
            if first:
                kept = len(old) if old else 0
                log.warning("resolve %s failed: %s; keeping the last %d address%s "
                            "until it answers again", name, error, kept, "es" * (kept != 1))
            return False
        if recovered:
            log.info("resolve %s answers again: %d address%s", name, len(answer.targets),
                     "es" * (len(answer.targets) != 1))
        if old == answer.targets:
            return False
        before, after = set(old or ()), set(answer.targets)
        log.info("resolve %s: %d address%s%s%s", name, len(after), "es" * (len(after) != 1),
                 "".join(f", +{_shown(t)}" for t in sorted(after - before)),
                 "".join(f", -{_shown(t)}" for t in sorted(before - after)))
        return True


def _shown(target: Target) -> str:
    return f"{url_host(target.host)}:{target.port}"


__all__ = ["Answer", "Discovery", "LookupFailed", "Target", "expand", "expand_all",
           "lookup", "next_lookup", "resolve_specs", "resolved_id"]
