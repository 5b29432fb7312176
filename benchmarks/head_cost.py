#!/usr/bin/env python
"""What reading a backend's answer head costs, in microseconds per answer.

http.client's ``HTTPResponse`` against zope_lb's ``StrictResponse`` (strict
parse, byte counting for clean reuse), each reading a whole small answer from
a socket pair; and the liveness check before a pooled connection is reused
(urllib3's ``wait_for_read`` against the per-connection ``poll(0)``). The time
to send and receive the bytes alone is measured and subtracted. No network.

    python benchmarks/head_cost.py
"""

from __future__ import annotations

import argparse
import http.client
import os
import select
import socket
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from urllib3.util.wait import wait_for_read  # noqa: E402

from zope_lb.upstream import StrictResponse  # noqa: E402

SMALL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
PLONE = (b"HTTP/1.1 200 OK\r\nServer: waitress\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n"
         b"Content-Type: text/html; charset=utf-8\r\nContent-Length: 5\r\n"
         b"X-Frame-Options: SAMEORIGIN\r\nCache-Control: max-age=0, must-revalidate, private\r\n"
         b"Expires: Sun, 01 Dec 2024 00:00:00 GMT\r\nContent-Language: en\r\n"
         b"Vary: Accept-Encoding\r\nX-Powered-By: Zope\r\nSet-Cookie: a=b; Path=/\r\n\r\nhello")


def best(loop: Callable[[int], None], calls: int, repeat: int) -> float:
    """Best of ``repeat`` runs, in microseconds per call."""
    fastest = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        loop(calls)
        fastest = min(fastest, time.perf_counter() - started)
    return fastest / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    ours, theirs = socket.socketpair()
    ours.settimeout(30)

    def transfer(data: bytes) -> Callable[[int], None]:
        def loop(calls: int) -> None:
            for _ in range(calls):
                theirs.sendall(data)
                ours.recv(65536)
        return loop

    def read(response_class: type, data: bytes) -> Callable[[int], None]:
        def loop(calls: int) -> None:
            for _ in range(calls):
                theirs.sendall(data)
                response = response_class(ours, method="GET")
                response.begin()
                response.read1(65536)
                response.close()
        return loop

    for name, data in (("3 headers", SMALL), ("12 headers", PLONE)):
        base = best(transfer(data), args.calls, args.repeat)
        stock = best(read(http.client.HTTPResponse, data), args.calls, args.repeat) - base
        strict = best(read(StrictResponse, data), args.calls, args.repeat) - base
        print(f"answer with {name}: http.client {stock:.1f} us, StrictResponse {strict:.1f} us")

    poller = select.poll()
    poller.register(ours, select.POLLIN)
    checks = {
        "urllib3 wait_for_read": lambda calls: [wait_for_read(ours, timeout=0.0)
                                                for _ in range(calls)],
        "poll(0) per connection": lambda calls: [poller.poll(0) for _ in range(calls)],
    }
    for name, loop in checks.items():
        print(f"liveness check, {name}: {best(loop, args.calls * 10, args.repeat):.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
