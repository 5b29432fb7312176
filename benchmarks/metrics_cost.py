#!/usr/bin/env python
"""What the metrics observer costs a proxied request, in microseconds per call.

``MetricsObserver.request`` runs once per attempt on the request path (a
counter increment and a histogram observe); the target is under ~5 us.
No sockets: the observer is called directly, as ``Proxy.forward`` calls it.

    python benchmarks/metrics_cost.py                     # one process
    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) python benchmarks/metrics_cost.py
                                                          # multiprocess mode (mmap files)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zope_lb import LoadBalancer  # noqa: E402
from zope_lb.metrics import Metrics  # noqa: E402


def per_call(call, calls: int, repeat: int) -> float:
    """Best of ``repeat`` runs, in microseconds per call (best: least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call(calls)
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4,
                        help="threads calling at once in the contended run")
    parser.add_argument("--limit", type=float, default=5.0, help="target, us per call")
    args = parser.parse_args(argv)

    # Port 9 (discard) on 127.0.0.1: never contacted, only named.
    balancer = LoadBalancer(["127.0.0.1:9 id=c0", "127.0.0.1:10 id=c1"], health_interval=0)
    metrics = Metrics(balancer)
    observer = metrics.observer

    def empty(n: int) -> None:
        for _ in range(n):
            pass

    def request(n: int) -> None:
        record = observer.request
        for i in range(n):
            record("default", "c0" if i & 1 else "c1", 200, 0.0123)

    def contended(n: int) -> None:
        threads = [threading.Thread(target=request, args=(n // args.threads,))
                   for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    loop = per_call(empty, args.calls, args.repeat)
    results = {
        "mode": "multiprocess" if metrics.multiproc_dir else "single process",
        "request_us": round(per_call(request, args.calls, args.repeat) - loop, 3),
        f"request_us_{args.threads}_threads": round(
            per_call(contended, args.calls, args.repeat) - loop, 3),
        "retry_us": round(per_call(
            lambda n: [observer.retry("default", "c0") for _ in range(n)],
            args.calls, args.repeat) - loop, 3),
        "limit_us": args.limit,
    }
    metrics.close()
    balancer.close()
    print(json.dumps(results, indent=2))
    return 0 if results["request_us"] <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
