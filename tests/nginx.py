"""A real Debian nginx as the front proxy, the way operators put one before zope_lb.

Each instance has its own prefix (config, pid, logs, temp dirs) under a test's
``tmp_path``, listens on a free loopback port with plain HTTP, and proxies to
``upstream`` sending the headers a TLS-terminating nginx sends. Every wait is
bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from serve_process import listening
from servers import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """
{user}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
{headers}
        }}
    }}
}}
"""


def available() -> bool:
    return os.path.exists(NGINX)


class Nginx:
    """``nginx -p PREFIX -c CONF`` in front of ``127.0.0.1:upstream``; ``headers``
    are more ``proxy_set_header`` pairs (the public scheme and host)."""

    def __init__(self, prefix: Path, upstream: int, headers: dict[str, str] | None = None):
        self.prefix = Path(prefix)
        self.upstream = upstream
        self.headers = headers if headers is not None else {
            "X-Forwarded-Proto": "https", "X-Forwarded-Host": "www.example.org"}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Nginx:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        lines = "\n".join(f"            proxy_set_header {name} {value};"
                          for name, value in self.headers.items())
        # as root the workers would run as nobody, who cannot enter tmp_path
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.prefix / "nginx.conf"
        conf.write_text(CONFIG.format(user=user, prefix=self.prefix, port=self.port,
                                      upstream=self.upstream, headers=lines))
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n" + self.log())
            if listening(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen within {timeout} s:\n" + self.log())

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGKILL: bounded either way."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
