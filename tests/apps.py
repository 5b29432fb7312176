"""Tiny WSGI apps that stand in for Zope clients in the tests."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from typing import Any


def _body_of(environ: dict) -> bytes:
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if length:
        return stream.read(int(length))
    return stream.read()


class Echo:
    """Answers JSON describing the request it received; counts requests."""

    def __init__(self, name: str = "echo"):
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        body = _body_of(environ)
        headers = {
            k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        record = {
            "backend": self.name,
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "uri": environ.get("REQUEST_URI"),
            "query": environ.get("QUERY_STRING", ""),
            "headers": headers,
            "content_type": environ.get("CONTENT_TYPE", ""),
            "content_length": environ.get("CONTENT_LENGTH", ""),
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        with self.lock:
            self.requests.append(record)
        data = json.dumps(record).encode()
        start_response("200 OK", [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("X-Backend", self.name),
        ])
        if environ["REQUEST_METHOD"] == "HEAD":
            return [b""]
        return [data]


def routes(name: str = "backend") -> Any:
    """One app with many behaviours, chosen by path: /echo, /slow, /big, ..."""
    echo = Echo(name)

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        query_string = environ.get("QUERY_STRING", "")
        query = dict(p.split("=", 1) for p in query_string.split("&") if "=" in p)
        if path.startswith("/slow"):
            time.sleep(float(query.get("s", "1")))
            start_response("200 OK", [("Content-Type", "text/plain"), ("X-Backend", name)])
            return [b"slow done"]
        if path.startswith("/big"):
            size = int(query.get("n", str(1024 * 1024)))
            chunk = int(query.get("chunk", "65536"))
            delay = float(query.get("delay", "0"))

            def body():
                sent = 0
                block = b"x" * chunk
                while sent < size:
                    part = block[: min(chunk, size - sent)]
                    sent += len(part)
                    yield part
                    if delay:
                        time.sleep(delay)

            headers = [("Content-Type", "application/octet-stream"), ("X-Backend", name)]
            if query.get("length", "1") == "1":
                headers.append(("Content-Length", str(size)))
            start_response("200 OK", headers)
            return body()
        if path.startswith("/gzip"):
            data = gzip.compress(b"hello gzip " * 100)
            start_response("200 OK", [
                ("Content-Type", "text/plain"), ("Content-Encoding", "gzip"),
                ("Content-Length", str(len(data))), ("X-Backend", name),
            ])
            return [data]
        if path.startswith("/cookies"):
            start_response("200 OK", [
                ("Content-Type", "text/plain"), ("Set-Cookie", "a=1; Path=/"),
                ("Set-Cookie", "b=2; Path=/; HttpOnly"), ("X-Backend", name),
            ])
            return [b"cookies"]
        if path.startswith("/hop"):
            start_response("200 OK", [
                ("Content-Type", "text/plain"), ("X-Secret-Hop", "1"),
                ("Connection", "X-Secret-Hop"), ("Keep-Alive", "timeout=5"),
                ("X-Backend", name),
            ])
            return [b"hop"]
        if path.startswith("/redirect"):
            start_response("302 Found", [("Location", "http://example.org/target"),
                                         ("Content-Length", "0"), ("X-Backend", name)])
            return [b""]
        if path.startswith("/notmodified"):
            start_response("304 Not Modified", [("ETag", '"abc"'), ("X-Backend", name)])
            return [b""]
        if path.startswith("/status"):
            code = query.get("code", "500")
            start_response(f"{code} Whatever", [("Content-Type", "text/plain"),
                                               ("X-Backend", name)])
            return [f"status {code}".encode()]
        if environ["REQUEST_METHOD"] == "PROPFIND":
            _body_of(environ)
            data = (b'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:">'
                    b"<d:response><d:href>" + path.encode() + b"</d:href></d:response>"
                    b"</d:multistatus>")
            start_response("207 Multi-Status", [("Content-Type", "text/xml"),
                                                ("Content-Length", str(len(data))),
                                                ("X-Backend", name)])
            return [data]
        return echo(environ, start_response)

    app.echo = echo  # type: ignore[attr-defined]
    return app


def local_app_factory(global_conf: dict, **local_conf: str) -> Any:
    """The app a filter wraps in the PasteDeploy tests: says who answered."""

    def local(environ, start_response):
        body = f"local app: {environ['PATH_INFO']}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return local
