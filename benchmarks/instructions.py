#!/usr/bin/env python
"""Instructions per proxied request, counted by valgrind: a cost that noise cannot move.

Time on this kind of machine moves by 10 % and more from one run to the next,
so a change that saves 3 % cannot be seen in req/s or in CPU seconds. The
instructions a request executes stay within 1 % from run to run, so they
show such a change at once. They are not time (a cache miss costs many
instructions' worth and is not counted): use them to compare two versions of
the code, and ``run.py`` for what the machine does with them.

Two counts, each as (instructions for 50 + N requests - for 50) / N:

- ``app``: ``LoadBalancer.__call__`` called in-process on a waitress-like
  environ, the body read and closed, against a fast backend in another
  process; access log ``combined`` (to a file, ``zope-lb serve``'s format),
  then ``off``. The user-space instructions of zope_lb's own path.
- ``process``: the whole server, as ``run.py`` serves it (``serve_lb.py``,
  zope-lb serve's waitress server, access log on), and the waitress ceiling
  loop, each asked N requests one after the other on one kept-alive
  connection: waitress's share included.

    python benchmarks/instructions.py [--requests 1000] [--only app,process]

Needs valgrind (Debian package ``valgrind``); each count takes 10 to 60 s.
Contacts only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness as h

WARMUP = 50
VALGRIND = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
REFS = re.compile(r"I\s+refs:\s+([\d,]+)")

ENVIRON = {
    "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/x", "REQUEST_URI": "/x",
    "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080",
    "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_SOFTWARE": "waitress",
    "REMOTE_ADDR": "127.0.0.1", "REMOTE_HOST": "127.0.0.1", "REMOTE_PORT": "40000",
    "HTTP_HOST": "127.0.0.1:8080", "HTTP_USER_AGENT": "wrk", "HTTP_ACCEPT": "*/*",
    "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": True,
    "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.input_terminated": True,
}
REQUEST = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"


def child_app(backend: str, access_log: str, requests: int, log_file: str) -> None:
    """Runs under valgrind: WARMUP + ``requests`` calls of the app, then exits."""
    from serve_lb import setup_logging

    setup_logging(log_file)
    from zope_lb import LoadBalancer

    app = LoadBalancer([backend], maxconn=8, access_log=access_log)

    def start_response(status, headers, exc_info=None):
        return None

    for _ in range(WARMUP + requests):
        environ = dict(ENVIRON, **{"wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr})
        body = app(environ, start_response)
        for _chunk in body:
            pass
        body.close()
    os._exit(0)  # no teardown: only the requests are counted


def refs(log: Path) -> int:
    match = REFS.search(log.read_text())
    if match is None:
        raise h.HarnessError(f"no instruction count in {log}:\n{log.read_text()[-2000:]}")
    return int(match.group(1).replace(",", ""))


def count_app(backend: str, access_log: str, requests: int, tmp: Path) -> float:
    totals = []
    for n in (0, requests):
        log = tmp / f"app-{access_log}-{n}.vg"
        subprocess.run(
            [*VALGRIND, f"--log-file={log}", h.PY, __file__, "--child", backend, access_log,
             str(n), str(tmp / "access.log")],
            check=True, cwd=h.REPO, env=h.child_env(), timeout=600,
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        totals.append(refs(log))
    return (totals[1] - totals[0]) / requests


def ask(port: int, requests: int) -> None:
    """``requests`` GETs one after the other on one kept-alive connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for _ in range(requests):
            sock.sendall(REQUEST)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise h.HarnessError("the server closed the connection")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
            while len(body) < length:
                body += sock.recv(65536)


def count_process(name: str, backend: str, requests: int, tmp: Path) -> float:
    totals = []
    for n in (0, requests):
        log = tmp / f"{name}-{n}.vg"
        port = h.free_port()
        if name == "zope_lb":
            argv = [h.PY, str(h.HERE / "serve_lb.py"), backend, "--port", str(port),
                    "--threads", "16", "--opt", "maxconn=8", "--access-log", "combined",
                    "--log-file", str(tmp / "server.log")]
        else:
            argv = [h.PY, str(h.HERE / "ceiling_loop.py"), backend, "--port", str(port),
                    "--threads", "16", "--maxconn", "8"]
        proc = subprocess.Popen([*VALGRIND, f"--log-file={log}", *argv], cwd=h.REPO,
                                env=h.child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            if not h.wait_port(port, time.monotonic() + 120):
                raise h.HarnessError(f"{name} did not listen on {port} under valgrind")
            ask(port, WARMUP)
            if n:
                ask(port, n)
        finally:
            proc.terminate()  # zope_lb drains and exits; valgrind writes its count
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        totals.append(refs(log))
    return (totals[1] - totals[0]) / requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--only", default="app,process", help="comma list of app,process")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    with tempfile.TemporaryDirectory(prefix="zope_lb-instr-") as tmpdir:
        tmp = Path(tmpdir)
        with h.Procs(tmp) as procs:
            backend = procs.start("backend", [h.PY, str(h.HERE / "backends.py")])
            address = f"127.0.0.1:{backend.port}"
            print(f"instructions per request ({args.requests} requests after {WARMUP}):")
            if "app" in wanted:
                for mode in ("combined", "off"):
                    value = count_app(address, mode, args.requests, tmp)
                    print(f"  app      zope_lb, access log {mode:8} {value:9,.0f}", flush=True)
            if "process" in wanted:
                for name in ("zope_lb", "ceiling"):
                    value = count_process(name, address, args.requests, tmp)
                    print(f"  process  {name:30} {value:9,.0f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child_app(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
