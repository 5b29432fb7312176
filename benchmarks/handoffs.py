"""Where a proxied request's time goes inside a waitress-served proxy.

With two Zope-like 20 ms backends, requests per second follow the time each
connection's request cycle takes, not CPU: a delay anywhere between a
request's arrival and the moment waitress reads that client's next request
costs throughput. This runs zope_lb (``serve_lb.py``) and the ceiling loop
side by side, unpinned, each with timestamps taken at waitress's hand-off
points, and prints each segment's mean and percentiles:

  read+parse      the loop thread reads and parses the request head
  dispatch        until a worker thread starts on it
  before backend  the app, until the request is sent to the backend
  backend+wake    the backend's 20 ms, and the worker getting the GIL back
  after backend   until the answer's first write
  writes          writing the answer to the client's socket
  after writes    from the last byte out to the worker being done, which is
                  when waitress reads this connection's next request

The timestamps cost some CPU of their own: compare the two columns, not
with runs made without them. Found with it on 2026-12-01: writing the access
line in the request's thread made *after writes* 0.7 ms on average (18 ms at
the 99th percentile); zope_lb now hands the line to a writer thread.

Run:  python benchmarks/handoffs.py [--reps 4] [--access-log-flush 0]
(``--worker`` is how it starts each server, with the timestamps in place.)
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

SEGMENTS = (("t0", "t1", "read+parse"), ("t1", "t2", "dispatch"),
            ("t2", "bs", "before backend"), ("bs", "br", "backend+wake"),
            ("br", "w1", "after backend"), ("w1", "wn", "writes"),
            ("wn", "end", "after writes"), ("t0", "wn", "arrival..sent"))


def instrument(out: str) -> None:
    """Patch waitress and socket in this process to time each request; the
    records are dumped to ``out`` (JSON) once a second."""
    from waitress import channel as wch
    from waitress import task as wtask

    now = time.perf_counter_ns
    local = threading.local()
    records: list[dict] = []

    handle_read = wch.HTTPChannel.handle_read
    received = wch.HTTPChannel.received
    execute = wtask.WSGITask.execute
    write = wtask.Task.write
    sendall = socket.socket.sendall

    def timed_handle_read(self):
        self._t_read = now()
        return handle_read(self)

    def timed_received(self, data):
        before = len(self.requests)
        result = received(self, data)
        if len(self.requests) > before:
            self._t0, self._t1 = getattr(self, "_t_read", 0), now()
        return result

    def timed_execute(self):
        rec = {"t0": self.channel._t0, "t1": self.channel._t1, "t2": now()}
        local.rec = rec
        try:
            return execute(self)
        finally:
            rec["end"] = now()
            local.rec = None
            records.append(rec)

    def timed_write(self, data):
        rec = getattr(local, "rec", None)
        if rec is not None and "w1" not in rec:
            rec["w1"] = now()
        result = write(self, data)
        if rec is not None:
            rec["wn"] = now()
        return result

    def timed_sendall(self, *args):
        rec = getattr(local, "rec", None)
        if rec is not None and "bs" not in rec:
            rec["bs"] = now()
        return sendall(self, *args)

    def timed_recv(name):
        original = getattr(socket.socket, name)

        def recv(self, *args):
            result = original(self, *args)
            rec = getattr(local, "rec", None)
            if rec is not None and "bs" in rec and "br" not in rec:
                rec["br"] = now()
            return result
        return recv

    wch.HTTPChannel.handle_read = timed_handle_read
    wch.HTTPChannel.received = timed_received
    wtask.WSGITask.execute = timed_execute
    wtask.Task.write = timed_write
    socket.socket.sendall = timed_sendall
    socket.socket.recv = timed_recv("recv")
    socket.socket.recv_into = timed_recv("recv_into")

    def dump():
        while True:
            time.sleep(1)
            with open(out + ".tmp", "w") as fh:
                json.dump(list(records), fh)
            os.replace(out + ".tmp", out)

    threading.Thread(target=dump, daemon=True).start()


def segment(records: list[dict], a: str, b: str) -> tuple[float, float, float, float]:
    values = sorted((r[b] - r[a]) / 1000 for r in records if a in r and b in r)
    pick = lambda q: values[min(len(values) - 1, int(len(values) * q))]  # noqa: E731
    return statistics.mean(values), pick(0.5), pick(0.9), pick(0.99)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=4, help="5 s wrk runs per server (4)")
    ap.add_argument("--access-log-flush", help="zope_lb's access_log.flush (default its own)")
    ap.add_argument("--access-log", default="combined", help="zope_lb's access_log")
    args = ap.parse_args(argv)

    import harness as h

    logdir = Path(tempfile.mkdtemp(prefix="zope_lb-handoffs-"))
    me = [h.PY, str(Path(__file__).resolve()), "--worker"]
    found: dict[str, list[dict]] = {}
    rps: dict[str, list[float]] = {}
    with h.Procs(logdir) as procs:
        backends = [h.start_backend(procs, f"zope{i}", None, 0.020, 8) for i in (1, 2)]
        addrs = [f"127.0.0.1:{b.port}" for b in backends]
        lb_opts = ["--opt", "maxconn=8"]
        if args.access_log_flush is not None:
            lb_opts += ["--opt", f"access_log_flush={args.access_log_flush}"]
        servers = {
            "ceiling": [str(h.HERE / "ceiling_loop.py"), *addrs, "--threads", "16",
                        "--maxconn", "8"],
            "zope_lb": [str(h.HERE / "serve_lb.py"), *addrs, "--threads", "16",
                        "--log-file", str(logdir / "zope_lb.log"),
                        "--access-log", args.access_log, *lb_opts],
        }
        targets = {}
        for name, argv_ in servers.items():
            out = str(logdir / f"{name}.json")
            targets[name] = procs.start(name, [*me, out, *argv_], timeout=30)
        for proc in targets.values():
            h.run_wrk(f"http://127.0.0.1:{proc.port}/", 2, 16)
        for rep in range(args.reps):
            order = list(targets.items())
            for name, proc in order if rep % 2 == 0 else order[::-1]:
                out = logdir / f"{name}.json"
                time.sleep(1.2)  # a fresh dump
                before = len(json.loads(out.read_text()))
                rps.setdefault(name, []).append(
                    h.run_wrk(f"http://127.0.0.1:{proc.port}/", 5, 16)["rps"])
                time.sleep(1.2)
                found.setdefault(name, []).extend(json.loads(out.read_text())[before:])
    print("req/s per run: " + "; ".join(f"{n} {', '.join(f'{x:.0f}' for x in v)}"
                                        for n, v in rps.items()))
    print(f"{'segment':16}" + "".join(f"{n:>34}" for n in found))
    print(f"{'':16}" + "   mean    p50    p90     p99 (us)" * len(found))
    for a, b, label in SEGMENTS:
        cells = "".join("".join(f"{v:7.0f}" for v in segment(recs, a, b)).rjust(34)
                        for recs in found.values())
        print(f"{label:16}{cells}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        instrument(sys.argv[2])
        script = sys.argv[3]
        sys.argv = sys.argv[3:]
        sys.path.insert(0, os.path.dirname(script))
        runpy.run_path(script, run_name="__main__")
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        main()
