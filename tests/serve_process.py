"""``zope-lb serve`` as a real process, run the way an operator runs it.

The ini is written like the README's production one (waitress from
``[server:main]``, logging from ``[loggers]``), with no test-only server
settings; the process is the installed console script, driven by signals.
Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOGGING = """
[loggers]
keys = root, zope_lb, waitress_queue

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = INFO
handlers = console

[logger_zope_lb]
level = INFO
handlers =
qualname = zope_lb

[logger_waitress_queue]
level = ERROR
handlers =
qualname = waitress.queue

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(asctime)s %(levelname)-5.5s [%(name)s] %(message)s
"""


def production_ini(backends: list[str], port: int, *, app: str = "", server: str = "",
                   logging: bool = True, threads: int = 16) -> str:
    """An ini like the README's production one: ``backends`` lines (with their
    flags), more ``[app:main]`` lines in ``app``, more ``[server:main]`` lines in
    ``server``, and pserve-style logging sections."""
    lines = "\n    ".join(backends)
    text = (f"[app:main]\nuse = egg:zope_lb\nbackends =\n    {lines}\n{app.strip()}\n\n"
            f"[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:{port}\n"
            f"threads = {threads}\n{server.strip()}\n")
    return text + (LOGGING if logging else "")


def console_script() -> str:
    """The installed ``zope-lb`` beside this Python, as a user would run it."""
    found = shutil.which("zope-lb", path=os.path.dirname(sys.executable))
    if found is None:
        raise RuntimeError("zope-lb is not installed in this Python's environment")
    return found


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ServeProcess:
    """``zope-lb serve INI [ARGS]``: stdout and stderr go to ``log_path``."""

    def __init__(self, ini_path: str | os.PathLike[str], port: int, *,
                 args: tuple[str, ...] = ("--cpu", "all"), log_path: str | None = None,
                 env: dict[str, str] | None = None):
        self.ini_path = str(ini_path)
        self.port = port
        self.args = args
        self.log_path = log_path or self.ini_path + ".log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServeProcess:
        """Start and wait until the port accepts connections (or the process ended)."""
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [console_script(), "serve", self.ini_path, *self.args],
            stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, cwd=os.path.dirname(self.ini_path),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zope-lb serve exited with {self.proc.returncode}:\n"
                                   + self.log())
            if listening(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"zope-lb serve did not listen within {timeout} s:\n" + self.log())

    def log(self) -> str:
        """Everything the process wrote so far."""
        return Path(self.log_path).read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> bool:
        """Whether ``pattern`` (a regex) appears ``count`` times in the log within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.log())) >= count:
                return True
            time.sleep(0.05)
        return False

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit status; raises subprocess.TimeoutExpired if it runs on."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """End the process whatever state it is in (teardown): SIGTERM, then SIGKILL."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
