"""The barest waitress + urllib3 round-robin proxy: the CPU reference for zope_lb.

No settings, no health checks, no error handling. zope_lb's CPU per proxied
request is compared against this loop, measured in the same run.

Run:  python benchmarks/bare_loop.py 127.0.0.1:8081 127.0.0.1:8082 --threads 16
"""

import argparse
import itertools
import logging

import urllib3
import waitress

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization"}
HOP |= {"te", "trailer", "trailers", "transfer-encoding", "upgrade"}


class Body:
    def __init__(self, resp):
        self.resp = resp

    def __iter__(self):
        return self.resp.stream(65536)

    def close(self):
        self.resp.release_conn()


def make_app(backends, threads):
    pools = itertools.cycle(
        [
            urllib3.HTTPConnectionPool(h, int(p), maxsize=threads, retries=False)
            for h, p in (b.rsplit(":", 1) for b in backends)
        ]
    )

    def app(environ, start_response):
        headers = {
            k[5:].replace("_", "-"): v
            for k, v in environ.items()
            if k.startswith("HTTP_") and k[5:].lower() not in HOP
        }
        for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(k):
                headers[k.replace("_", "-")] = environ[k]
        body = environ["wsgi.input"] if environ.get("CONTENT_LENGTH") else None
        resp = next(pools).urlopen(
            environ["REQUEST_METHOD"],
            environ["REQUEST_URI"],
            body=body,
            headers=headers,
            preload_content=False,
            redirect=False,
        )
        start_response(
            f"{resp.status} {resp.reason}",
            [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP],
        )
        return Body(resp)

    return app


def arguments() -> argparse.ArgumentParser:
    """The command line of this loop (and of ceiling_loop.py, which adds to it)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("backends", nargs="+")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--threads", type=int, default=16)
    return ap


def serve(app, a: argparse.Namespace) -> None:
    """Serve app with waitress, its queue warnings quieted, and say where."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = waitress.create_server(
        app,
        host=a.host,
        port=a.port,
        threads=a.threads,
        max_request_body_size=1 << 40,
    )
    print(f"LISTENING {a.host}:{server.effective_port}", flush=True)
    server.run()


if __name__ == "__main__":
    args = arguments().parse_args()
    serve(make_app(args.backends, args.threads), args)
