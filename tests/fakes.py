"""Stand-ins for backends, for the pure strategy tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class Fake:
    """A candidate: what a strategy may read of a backend (identity equality)."""

    id: str
    weight: int = 1
    active: int = 0
    maxconn: int = 0
