"""Strategies pick the backend for one request, from the candidates they are handed.

A strategy only picks: it never sleeps, does no I/O and changes no backend
state. The pool hands it the backends that may take a request now (up, with
a free slot, primaries before backups, in configuration order); the strategy
chooses among them, skipping any in ``avoid`` (backends a retry must not go
back to) and, defensively, any that is full.

Third-party strategies register under the ``zope_lb.strategies`` entry point
group: the entry point's name is what ``strategy = NAME`` selects, its object
a class (or any callable) that takes the balancer's
:class:`~zope_lb.settings.Settings` and returns an object with ``pick``.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar, runtime_checkable

from .converters import Network
from .headers import client_address

ENTRY_POINT_GROUP = "zope_lb.strategies"


class Candidate(Protocol):
    """What a strategy may read of a backend."""

    id: str
    active: int
    maxconn: int  # 0: unlimited

    @property
    def weight(self) -> float: ...  # below the configured one during slow start


C = TypeVar("C", bound=Candidate)


class StrategySettings(Protocol):
    """What the built-in strategies read of the balancer's
    :class:`~zope_lb.settings.Settings` (which is what they and plugins are
    given). A protocol, so this module does not import the schema that
    lists the strategy names."""

    @property
    def forwarded_trusted(self) -> tuple[Network, ...]: ...

    @property
    def hash_load_factor(self) -> float: ...


@runtime_checkable
class Strategy(Protocol):
    def pick(
        self,
        candidates: Sequence[C],
        environ: Mapping[str, Any],
        avoid: Collection[C] = (),
    ) -> C | None:
        """Return one of ``candidates`` not in ``avoid``, or None if none fits."""


def usable(backend: Candidate, avoid: Collection[Any]) -> bool:
    """Takes new requests (weight above 0), has a free slot and is not avoided."""
    return (
        backend.weight > 0
        and (not backend.maxconn or backend.active < backend.maxconn)
        and backend not in avoid
    )


class RoundRobin:
    """Smooth weighted round robin, as nginx interleaves it.

    Weights 5, 1, 1 give ``a a b a c a a``, not ``a a a a a b c``: each pick adds
    every candidate's weight to its running score, takes the highest, and
    subtracts the total from the winner. Over a full cycle each backend gets
    exactly its share. Scores are kept by backend id, so candidates may come
    and go between picks.
    """

    def __init__(self, settings: StrategySettings | None = None) -> None:
        self._score: dict[str, int] = {}
        self._lock = threading.Lock()

    def pick(self, candidates, environ, avoid=()):  # type: ignore[no-untyped-def]
        with self._lock:
            score = self._score
            best = None
            best_score = 0
            total = 0
            for backend in candidates:
                if not usable(backend, avoid):
                    continue
                weight = backend.weight
                current = score.get(backend.id, 0) + weight
                score[backend.id] = current
                total += weight
                if best is None or current > best_score:
                    best, best_score = backend, current
            if best is not None:
                score[best.id] = best_score - total
                if len(score) > 4 * len(candidates) + 16:
                    # Forget backends removed long ago; the rest keep their score.
                    keep = {b.id for b in candidates}
                    self._score = {k: v for k, v in score.items() if k in keep}
            return best


class LeastConnections:
    """Fewest active requests relative to weight; ties broken round robin.

    The best choice when requests differ a lot in cost (a Plone search next to
    a cached image): a client busy with slow requests gets fewer new ones.
    """

    def __init__(self, settings: StrategySettings | None = None) -> None:
        self._turn = itertools.count()

    def pick(self, candidates, environ, avoid=()):  # type: ignore[no-untyped-def]
        count = len(candidates)
        if not count:
            return None
        start = next(self._turn) % count
        best = None
        best_load = 0.0
        for i in range(count):
            backend = candidates[(start + i) % count]
            if not usable(backend, avoid):
                continue
            load = backend.active / backend.weight
            if best is None or load < best_load:
                best, best_load = backend, load
        return best


class RandomTwo:
    """Power of two random choices: draw two (by weight), take the less loaded.

    Nearly as even as least_connections, without its herd effect when several
    balancer processes each see only their own counts.
    """

    def __init__(self, settings: StrategySettings | None = None, *,
                 rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates, environ, avoid=()):  # type: ignore[no-untyped-def]
        pool = [b for b in candidates if usable(b, avoid)]
        if len(pool) < 2:
            return pool[0] if pool else None
        first, second = self._rng.choices(pool, weights=[b.weight for b in pool], k=2)
        if first is second:
            second = pool[(pool.index(first) + 1 + self._rng.randrange(len(pool) - 1))
                          % len(pool)]
        if second.active / second.weight < first.active / first.weight:
            return second
        return first


class First:
    """HAProxy's ``first``: the first backend (in configuration order) with a
    free slot, so the last clients stay idle and can be shut down at night.
    Give each backend a ``maxconn``: without one, the first takes everything."""

    def __init__(self, settings: StrategySettings | None = None) -> None:
        pass

    def pick(self, candidates, environ, avoid=()):  # type: ignore[no-untyped-def]
        for backend in candidates:
            if usable(backend, avoid):
                return backend
        return None


# -- consistent hashing -----------------------------------------------------------


def hash64(text: str) -> int:
    """A stable 64-bit hash (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "big")


class HashRing:
    """Backends placed on a ring at ``points`` positions per unit of weight.

    A key goes to the first backend clockwise from its hash; removing one of n
    backends moves only the keys that were on it (about 1/n of them).
    """

    POINTS = 100

    def __init__(self, members: Sequence[tuple[str, int]]):
        ring = sorted(
            (hash64(f"{member}#{i}"), member)
            for member, weight in members
            for i in range(self.POINTS * weight)
        )
        self._hashes = [h for h, _ in ring]
        self._members = [m for _, m in ring]
        self._count = len({m for _, m in ring})

    def walk(self, key: str) -> Iterator[str]:
        """Every member once, in ring order starting at ``key``'s position."""
        members = self._members
        if not members:
            return
        start = bisect.bisect(self._hashes, hash64(key))
        seen: set[str] = set()
        size = len(members)
        for i in range(size):
            member = members[(start + i) % size]
            if member not in seen:
                seen.add(member)
                yield member
                if len(seen) == self._count:
                    return


@lru_cache(maxsize=16)
def ring_for(members: tuple[tuple[str, int], ...]) -> HashRing:
    """Rings are cached by membership: candidates change rarely (a backend down)."""
    return HashRing(members)


class _Hashing:
    """Shared walk over the ring for the candidates of one pick."""

    def _walk(self, candidates: Sequence[Any], key: str) -> Iterator[Any]:
        by_id = {b.id: b for b in candidates if b.weight > 0}
        # ring points per backend: whole units of weight (slow start: at least one)
        members = tuple((b.id, max(1, round(b.weight))) for b in candidates if b.weight > 0)
        for member in ring_for(members).walk(key):
            yield by_id[member]


class SourceIP(_Hashing):
    """The same client IP goes to the same backend (consistent hashing).

    The client is the first untrusted address of X-Forwarded-For read from the
    right, or REMOTE_ADDR; so clients behind a trusted proxy are told apart.
    """

    def __init__(self, settings: StrategySettings | None = None) -> None:
        self._trusted = settings.forwarded_trusted if settings is not None else ()

    def pick(self, candidates, environ, avoid=()):  # type: ignore[no-untyped-def]
        key = client_address(environ, self._trusted)
        for backend in self._walk(candidates, key):
            if usable(backend, avoid):
                return backend
        return None


class URIHash(_Hashing):
    """The same path goes to the same backend, so each Zope client keeps a warm
    ZODB object cache for its share of the site; with bounded loads.

    Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam
    2018): a backend takes the request only while its active requests stay
    below ``ceil(load_factor * (all active + 1) * weight / total weight)``;
    otherwise the next backend on the ring does. So a hot path cannot pile
    onto one client, and the cache affinity is kept for everything else.
    """

    def __init__(self, settings: StrategySettings | None = None) -> None:
        self.load_factor = settings.hash_load_factor if settings is not None else 1.25

    def pick(self, candidates, environ, avoid=()):  # type: ignore[no-untyped-def]
        live = [b for b in candidates if b.weight > 0]
        if not live:
            return None
        total_weight = sum(b.weight for b in live)
        balls = sum(b.active for b in live) + 1
        factor = self.load_factor * balls / total_weight
        key = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        for backend in self._walk(live, key):
            if usable(backend, avoid) and backend.active < math.ceil(factor * backend.weight):
                return backend
        return None


BUILTIN: dict[str, Callable[..., Strategy]] = {
    "round_robin": RoundRobin,
    "least_connections": LeastConnections,
    "random_two": RandomTwo,
    "source_ip": SourceIP,
    "uri_hash": URIHash,
    "first": First,
}


@lru_cache(maxsize=1)
def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_strategies() -> set[str]:
    """Names ``strategy =`` accepts: the built-ins and every registered plugin."""
    return set(BUILTIN) | set(_plugins())


def make_strategy(name: str, settings: StrategySettings | None = None) -> Strategy:
    """A fresh strategy object for ``name`` (built-ins win over plugins)."""
    factory = BUILTIN.get(name)
    if factory is None:
        factory = _plugins()[name].load()
    strategy = factory(settings)
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy {name!r} has no pick(candidates, environ, avoid) method")
    return strategy
