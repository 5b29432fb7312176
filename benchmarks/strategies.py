"""Cost of one pick per strategy, and what uri_hash buys a Zope cluster.

    python benchmarks/strategies.py

1. Microseconds per pick for each built-in strategy with 3 and 30 backends
   (median of 5 runs of 20,000 picks; pure CPU, no network).
2. Cache affinity on a Zipf-distributed path sample (the shape of real site
   traffic): the share of requests for a path that land on the backend that
   served that path before (a warm ZODB object cache), for round_robin and
   uri_hash, and the max/mean of in-flight load, which uri_hash's bounded
   loads keep under hash.load_factor.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from dataclasses import dataclass

from zope_lb.settings import parse_settings
from zope_lb.strategies import BUILTIN, make_strategy


@dataclass(eq=False)
class Fake:
    id: str
    weight: int = 1
    active: int = 0
    maxconn: int = 0


def pick_cost(name: str, count: int, picks: int = 20000, runs: int = 5) -> float:
    settings = parse_settings({"backends": "a:1\nb:2"})
    strategy = make_strategy(name, settings)
    candidates = [Fake(f"client{i}", weight=1 + i % 3, active=i % 4) for i in range(count)]
    environs = [{"PATH_INFO": f"/site/page-{i}", "REMOTE_ADDR": f"10.0.{i % 200}.{i % 250}"}
                for i in range(256)]
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        for i in range(picks):
            strategy.pick(candidates, environs[i & 255])
        timings.append((time.perf_counter() - started) / picks * 1e6)
    return statistics.median(timings)


def zipf_paths(count: int, distinct: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (rank ** 1.1) for rank in range(1, distinct + 1)]
    return [f"/Plone/doc-{i}" for i in rng.choices(range(distinct), weights=weights, k=count)]


def affinity(name: str, backends: int = 4, requests: int = 20000, in_flight: int = 16,
             load_factor: float = 1.25) -> dict[str, float]:
    """Replay paths with ``in_flight`` requests open at a time (a sliding window)."""
    settings = parse_settings({"backends": "a:1\nb:2", "hash.load_factor": load_factor})
    strategy = make_strategy(name, settings)
    candidates = [Fake(f"client{i}") for i in range(backends)]
    last: dict[str, str] = {}
    window: list[Fake] = []
    same = repeated = 0
    ratios = []
    for path in zipf_paths(requests, distinct=2000):
        if len(window) >= in_flight:
            window.pop(0).active -= 1
        choice = strategy.pick(candidates, {"PATH_INFO": path})
        choice.active += 1
        window.append(choice)
        if path in last:
            repeated += 1
            same += last[path] == choice.id
        last[path] = choice.id
        if len(window) == in_flight:  # steady state: the window is full
            mean = in_flight / backends
            ratios.append(max(b.active for b in candidates) / mean)
    return {"same_backend_share": same / repeated, "max_over_mean": max(ratios)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    costs = {name: {n: round(pick_cost(name, n), 2) for n in (3, 30)} for name in BUILTIN}
    hit = {name: affinity(name) for name in ("round_robin", "least_connections", "uri_hash")}
    hit["uri_hash (load_factor 2.0)"] = affinity("uri_hash", load_factor=2.0)
    if args.json:
        print(json.dumps({"pick_us": costs, "affinity": hit}, indent=2))
        return 0
    print("pick cost, microseconds (median of 5 x 20,000 picks)")
    print(f"{'strategy':<20}{'3 backends':>12}{'30 backends':>13}")
    for name, row in costs.items():
        print(f"{name:<20}{row[3]:>12.2f}{row[30]:>13.2f}")
    print()
    print("Zipf paths (20,000 requests, 2,000 pages, 4 backends, 16 in flight)")
    print(f"{'strategy':<28}{'same backend as last time':>27}{'max/mean load':>15}")
    for name, row in hit.items():
        print(f"{name:<28}{row['same_backend_share']:>26.1%}{row['max_over_mean']:>15.2f}")
    # uri_hash's promise (bounded loads): no backend above load_factor x the mean
    # (rounded up to whole requests, as the algorithm does)
    bounds = {"uri_hash": 1.25, "uri_hash (load_factor 2.0)": 2.0}
    kept = True
    for name, factor in bounds.items():
        ceiling = math.ceil(factor * 16 / 4) / (16 / 4)
        ok = hit[name]["max_over_mean"] <= ceiling + 1e-9
        kept &= ok
        print(f"bound {name}: max/mean {hit[name]['max_over_mean']:.2f} <= {ceiling:.2f}: "
              f"{'PASS' if ok else 'FAIL'}")
    return 0 if kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
