#!/usr/bin/env python
"""What following a ``resolve`` line costs: CPU of one core, in percent.

A balancer follows one name with 20 addresses, looked up every second
(``resolve.interval = 1``) from a real dnsmasq on loopback (Debian's; answers
with a TTL of 1 s). The process does nothing else (no health checks, no
requests), so its CPU time over the window is the discovery thread's. Two
windows: ``steady`` (the answer never changes: a lookup and a comparison) and
``churn`` (one address replaced every second: a lookup, the pool reconfigured,
one backend joining and one draining). The target is at most 1 % of one core.

    python benchmarks/resolve_cost.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from dns_server import DNSMASQ, DnsServer  # noqa: E402

from zope_lb import LoadBalancer  # noqa: E402

NAME = "svc.test"


def addresses(first: int, count: int = 20) -> list[str]:
    return [f"127.0.1.{n}" for n in range(first, first + count)]


def window(seconds: float, step=None) -> float:
    """Percent of one core this process used over ``seconds`` of wall time."""
    cpu, wall = time.process_time(), time.monotonic()
    end = wall + seconds
    tick = 0
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        tick += 1
        if step is not None:
            step(tick)
    return (time.process_time() - cpu) / (time.monotonic() - wall) * 100


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if DNSMASQ is None:
        print("needs Debian's dnsmasq", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        dns = DnsServer(Path(tmp)).start()
        try:
            dns.set_hosts({NAME: addresses(1)})
            lb = LoadBalancer(f"{NAME}:8080 resolve", resolve_server=dns.address,
                              resolve_interval=1, health_interval=0)
            try:
                assert len(lb.pool.backends) == 20
                steady = window(args.seconds)

                def replace_one(tick: int) -> None:
                    # The dnsmasq reload is another process: not counted here.
                    dns.set_hosts({NAME: addresses(1 + tick)})

                churn = window(args.seconds, replace_one)
                assert len(lb.pool.backends) == 20
            finally:
                lb.close()
        finally:
            dns.stop()
    print(json.dumps({"addresses": 20, "interval_s": 1, "seconds": args.seconds,
                      "steady_cpu_percent": round(steady, 3),
                      "churn_cpu_percent": round(churn, 3), "target_percent": 1.0}))
    return 0 if max(steady, churn) <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
