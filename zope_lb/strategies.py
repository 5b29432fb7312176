"""Strategies pick the backend for one request, from the candidates they are handed.

A strategy only picks: it never sleeps, does no I/O and changes no backend
state. The pool hands it the backends that may take a request now (up, not
full, primaries before backups); the strategy chooses among them, skipping
any in ``avoid`` (the backends a retry must not go back to).

Third-party strategies register under the ``zope_lb.strategies`` entry point
group: the name is what ``strategy = NAME`` selects, the object is a class
(or any callable) returning a :class:`Strategy` when called with no arguments.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar, runtime_checkable

ENTRY_POINT_GROUP = "zope_lb.strategies"


class Candidate(Protocol):
    """What a strategy may read of a backend."""

    id: str
    weight: int
    active: int


C = TypeVar("C", bound=Candidate)


@runtime_checkable
class Strategy(Protocol):
    def pick(
        self,
        candidates: Sequence[C],
        environ: Mapping[str, Any],
        avoid: Collection[C] = (),
    ) -> C | None:
        """Return one of ``candidates`` not in ``avoid``, or None if none fits."""


class RoundRobin:
    """Smooth weighted round robin, as nginx interleaves it.

    Weights 5, 1, 1 give ``a a b a c a a``, not ``a a a a a b c``: each pick adds
    every candidate's weight to its running score, takes the highest, and
    subtracts the total from the winner. Over a full cycle each backend gets
    exactly its share. Scores are kept by backend id, so candidates may come
    and go between picks. Weight 0 means "no new requests".
    """

    def __init__(self) -> None:
        self._score: dict[str, int] = {}
        self._lock = threading.Lock()

    def pick(self, candidates, environ, avoid=()):  # type: ignore[no-untyped-def]
        with self._lock:
            score = self._score
            best = None
            best_score = 0
            total = 0
            for backend in candidates:
                weight = backend.weight
                if weight <= 0 or backend in avoid:
                    continue
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


BUILTIN: dict[str, Callable[[], Strategy]] = {
    "round_robin": RoundRobin,
}


@lru_cache(maxsize=1)
def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_strategies() -> set[str]:
    """Names ``strategy =`` accepts: the built-ins and every registered plugin."""
    return set(BUILTIN) | set(_plugins())


def make_strategy(name: str) -> Strategy:
    """A fresh strategy object for ``name`` (built-ins win over plugins)."""
    factory = BUILTIN.get(name)
    if factory is None:
        factory = _plugins()[name].load()
    strategy = factory()
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy {name!r} has no pick(candidates, environ, avoid) method")
    return strategy
