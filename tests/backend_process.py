"""A backend in a process of its own, for tests that kill backends for real.

    python tests/backend_process.py --port PORT --name NAME --log FILE

Answers every request with its name; appends the body of each POST (a
request id) to FILE, one per line, flushed before answering, so a test can
prove no POST ran twice even across kills and restarts.
"""

from __future__ import annotations

import argparse
import os
import threading

import waitress


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    lock = threading.Lock()
    log = open(args.log, "a", buffering=1)  # noqa: SIM115  (open for the process's life)

    def app(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if environ["REQUEST_METHOD"] == "POST":
            with lock:
                log.write(body.decode() + "\n")
                log.flush()
                os.fsync(log.fileno())
        data = args.name.encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(data)))])
        return [data]

    server = waitress.create_server(app, host="127.0.0.1", port=args.port, threads=8)
    print("READY", flush=True)
    server.run()


if __name__ == "__main__":
    main()
