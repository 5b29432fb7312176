"""A tiny stand-in for one Zope client, used by ``zope-lb demo``.

Several of these share one SQLite file the way Zope clients share one ZODB
through ZEO: text edited through any client is seen by all of them.  Each
page says, in big letters, which client served it and shows how many pages
each client has served, so a reload makes load balancing visible.

SQLite is opened per request in WAL mode with a busy timeout, and every write
is one short transaction, so several processes can write safely.

Run one with ``python -m zope_lb.demo_backend --name client1 --port 8081
--db FILE``.
"""

from __future__ import annotations

import argparse
import errno
import html
import logging
import os
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from webob import Request, Response

log = logging.getLogger(__name__)

__all__ = ["init_db", "make_demo_backend", "main"]

DEFAULT_TEXT = (
    "Hello from the shared database! Edit this text through any client: "
    "every client shows the change, as Zope clients sharing one ZODB do."
)
MAX_TEXT = 10_000  # characters kept from an edit; a demo needs no more
BUSY_TIMEOUT = 5.0  # seconds a writer waits for another process's lock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS page (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    text TEXT NOT NULL,
    edited_by TEXT,
    edited_at REAL
);
CREATE TABLE IF NOT EXISTS hits (
    client TEXT PRIMARY KEY,
    port INTEGER,
    count INTEGER NOT NULL DEFAULT 0
);
"""

StartResponse = Callable[..., Any]


def _connect(db_path: str) -> sqlite3.Connection:
    # isolation_level=None: we open explicit short transactions ourselves.
    return sqlite3.connect(db_path, timeout=BUSY_TIMEOUT, isolation_level=None)


def init_db(db_path: str) -> None:
    """Create the shared tables once; safe to call from every process."""
    conn = _connect(db_path)
    try:
        # WAL lets readers and one writer work at the same time; the mode
        # is stored in the file, so setting it again is a cheap no-op.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        conn.execute("INSERT OR IGNORE INTO page (id, text) VALUES (1, ?)", (DEFAULT_TEXT,))
    finally:
        conn.close()


def _hue(name: str) -> int:
    """A stable colour per client, so a reload visibly changes the page."""
    return zlib.crc32(name.encode("utf-8")) % 360


_CSS = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 46rem;
       margin: 2rem auto; padding: 0 1rem; color: #222; }
.who { background: hsl(%(hue)d, 60%%, 92%%);
       border-left: .6rem solid hsl(%(hue)d, 60%%, 45%%);
       padding: .5rem 1rem; border-radius: .3rem; }
.who h1 { font-size: 3rem; margin: 0; }
.text { white-space: pre-wrap; background: #f6f6f6; padding: 1rem;
        border-radius: .3rem; }
textarea { width: 100%%; box-sizing: border-box; font: inherit; }
table { border-collapse: collapse; }
td, th { padding: .2rem .8rem; text-align: left; }
tr.me { font-weight: bold; }
.hint { color: #555; font-size: .95rem; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>zope_lb demo: %(name)s</title>
<style>%(css)s</style></head>
<body>
<div class="who">
<p>This response was served by</p>
<h1 class="client" data-client="%(name)s">%(name)s</h1>
<p>port %(port)s, pid %(pid)d</p>
</div>
<h2>Shared page text</h2>
<div class="text" id="text">%(text)s</div>
<p class="hint">%(edited)s</p>
<form method="post" action="%(action)s">
<textarea name="text" rows="4" maxlength="%(max)d">%(text)s</textarea>
<p><button type="submit">Save through %(name)s</button></p>
</form>
<h2>Pages served per client</h2>
<table><tr><th>client</th><th>port</th><th>pages</th></tr>
%(rows)s
</table>
<p class="hint">Reload this page: the balancer sends each request to the next
client. Then stop one client (<code>kill PID</code>, printed by
<code>zope-lb demo</code>) and reload: the balancer skips it and keeps serving
from the others. The text lives in one SQLite file shared by all clients,
standing in for the shared ZODB.</p>
</body></html>
"""


def _render(
    name: str,
    port: str,
    action: str,
    text: str,
    edited_by: str | None,
    hits: Iterable[tuple[str, int | None, int]],
) -> str:
    esc = html.escape
    rows = "\n".join(
        f'<tr class="{"me" if client == name else ""}"><td>{esc(client)}</td>'
        f"<td>{esc(str(p or ''))}</td><td>{count:d}</td></tr>"
        for client, p, count in hits
    )
    edited = f"Last edited through {esc(edited_by)}." if edited_by else "Not edited yet."
    return _PAGE % {
        "css": _CSS % {"hue": _hue(name)},
        "name": esc(name),
        "port": esc(port),
        "pid": os.getpid(),
        "text": esc(text),
        "edited": edited,
        "action": esc(action),
        "max": MAX_TEXT,
        "rows": rows,
    }


def _counts_as_hit(request: Request) -> bool:
    """Only pages a person asked for count: not HEAD, not health probes."""
    agent = request.user_agent or ""
    return request.method == "GET" and not agent.lower().startswith("zope_lb")


def make_demo_backend(
    name: str, db_path: str, port: int | None = None
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """Build the WSGI app for one demo client named ``name``.

    ``port`` is only shown on the page; without it the port the request
    arrived on (``SERVER_PORT``) is shown.
    """
    init_db(db_path)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        shown_port = str(port) if port is not None else environ.get("SERVER_PORT", "")
        if request.path_info != "/":
            response = Response("Not found\n", status=404, content_type="text/plain")
        elif request.method in ("GET", "HEAD"):
            response = _show(request, shown_port)
        elif request.method == "POST":
            response = _edit(request)
        else:
            response = Response("Method not allowed\n", status=405, content_type="text/plain")
            response.allow = ("GET", "HEAD", "POST")
        # Every reload must reach the balancer, never the browser cache.
        response.cache_control = "no-store"
        response.headers["X-Demo-Client"] = name
        # Not response(environ, ...): WebOb would make Location absolute from
        # this client's own host and port, sending the browser past the
        # balancer.  A relative Location stays right behind any proxy.
        start_response(response.status, response.headerlist)
        return [] if request.method == "HEAD" else response.app_iter

    def _show(request: Request, shown_port: str) -> Response:
        conn = _connect(db_path)
        try:
            if _counts_as_hit(request):
                conn.execute(
                    "INSERT INTO hits (client, port, count) VALUES (?, ?, 1) "
                    "ON CONFLICT(client) DO UPDATE SET count = count + 1, "
                    "port = excluded.port",
                    (name, shown_port or None),
                )
            text, edited_by = conn.execute(
                "SELECT text, edited_by FROM page WHERE id = 1"
            ).fetchone()
            hits = conn.execute("SELECT client, port, count FROM hits ORDER BY client").fetchall()
        finally:
            conn.close()
        body = _render(name, shown_port, request.script_name + "/", text, edited_by, hits)
        return Response(body, content_type="text/html", charset="utf-8")

    def _edit(request: Request) -> Response:
        text = request.POST.get("text")
        if not isinstance(text, str):
            return Response("Missing form field 'text'\n", status=400, content_type="text/plain")
        text = text.replace("\r\n", "\n")[:MAX_TEXT]
        conn = _connect(db_path)
        try:
            conn.execute(
                "UPDATE page SET text = ?, edited_by = ?, edited_at = ? WHERE id = 1",
                (text, name, time.time()),
            )
        finally:
            conn.close()
        log.info("%s: page text edited (%d characters)", name, len(text))
        # 303 so a reload after saving does not post the form again.
        response = Response(status=303)
        response.headers["Location"] = request.script_name + "/"
        return response

    return app


def _exit_with_parent(parent: int) -> None:
    """Stop when the demo process that started us is gone (no orphans)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Serve one demo client with waitress until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m zope_lb.demo_backend",
        description="One demo Zope client for `zope-lb demo`.",
    )
    parser.add_argument("--name", required=True, help="client name, e.g. client1")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--db", required=True, help="shared SQLite file")
    parser.add_argument(
        "--parent", type=int, default=None, help="exit when this process id is gone"
    )
    args = parser.parse_args(argv)

    from waitress import create_server

    app = make_demo_backend(args.name, args.db, port=args.port)
    try:
        server = create_server(app, host=args.host, port=args.port, threads=4, ident="zope_lb-demo")
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"{args.name}: port {args.port} on {args.host} is already in use",
                file=sys.stderr,
            )
        else:
            print(
                f"{args.name}: cannot listen on {args.host}:{args.port}: {exc}",
                file=sys.stderr,
            )
        return 1
    if args.parent is not None:
        _exit_with_parent(args.parent)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
