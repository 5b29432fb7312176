#!/usr/bin/env python
"""CPU per request of the balancer's side of one exchange with a backend:
urllib3's ``urlopen`` (as zope_lb called it until 2026-12-01) against
``zope_lb.exchange.send``, on the same pooled ``KeptAliveConnection``.

A keep-alive backend thread on 127.0.0.1 answers every request with a small
canned page; the measuring thread sends a proxied GET's headers, reads the
answer to its end and gives the connection back. Its own CPU clock
(``time.thread_time``) is read, so the backend thread's work does not count;
kernel time of the client's send and recv does, alike for both ways. The two
ways alternate, ``--rounds`` times, and the median of each is printed.

    python benchmarks/exchange_cost.py [--requests 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

from urllib3 import Retry

from zope_lb.backend import BackendConnectionPool
from zope_lb.exchange import send

BODY = b"x" * 128
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
          b"Server: bench\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n" % len(BODY)) + BODY
HEADERS = {"Host": "www.example.org", "Accept": "*/*", "User-Agent": "wrk",
           "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http",
           "X-Forwarded-Host": "www.example.org", "X-Forwarded-Port": "80"}
NO_RETRIES = Retry(False, redirect=False)


def backend(listener: socket.socket, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        threading.Thread(target=answer_all, args=(conn, stop), daemon=True).start()


def answer_all(conn: socket.socket, stop: threading.Event) -> None:
    conn.settimeout(1)
    buffer = b""
    with conn:
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\r\n\r\n" in buffer:
                _, _, buffer = buffer.partition(b"\r\n\r\n")
                conn.sendall(ANSWER)


def via_urlopen(pool: BackendConnectionPool) -> bytes:
    response = pool.urlopen("GET", "/Plone/front-page?x=1", headers=HEADERS,
                            retries=NO_RETRIES, redirect=False, assert_same_host=False,
                            preload_content=False, decode_content=False)
    data = response.read1(65536, decode_content=False)
    response.release_conn()
    return data


def via_send(pool: BackendConnectionPool) -> bytes:
    answer = send(pool, "GET", "/Plone/front-page?x=1", HEADERS, None, False, 5.0, 30.0)
    data = answer.read1(65536)
    answer.release_conn()
    return data


def cost(way, port: int, requests: int) -> float:
    """µs of this thread's CPU per request."""
    pool = BackendConnectionPool("127.0.0.1", port, maxsize=1, block=False, timeout=5,
                                 retries=False)
    try:
        for _ in range(200):  # connect, warm caches
            assert way(pool) == BODY
        started = time.thread_time()
        for _ in range(requests):
            way(pool)
        return (time.thread_time() - started) / requests * 1e6
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()
    thread = threading.Thread(target=backend, args=(listener, stop), daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    results: dict[str, list[float]] = {"urlopen": [], "exchange.send": []}
    try:
        for _ in range(args.rounds):
            results["urlopen"].append(cost(via_urlopen, port, args.requests))
            results["exchange.send"].append(cost(via_send, port, args.requests))
    finally:
        stop.set()
        thread.join(2)
        listener.close()
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"{name:14} {value:7.1f} µs CPU per request "
              f"(runs: {', '.join(f'{v:.0f}' for v in results[name])})")
    saved = medians["urlopen"] - medians["exchange.send"]
    print(f"saved          {saved:7.1f} µs ({saved / medians['urlopen']:.0%})")


if __name__ == "__main__":
    main()
