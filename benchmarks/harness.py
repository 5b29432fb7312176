"""Shared plumbing for run.py and profile_hot_path.py.

Process management (every child in its own session, always reaped), wrk
runs and their parsing, /proc readings (CPU time, RSS), the haproxy config.
Linux only (taskset, /proc). Contacts only 127.0.0.1.
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
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_RE = re.compile(rb"LISTENING [\d.]+:(\d+)")


class HarnessError(RuntimeError):
    pass


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pin(argv: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    port: int = 0
    info: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Procs:
    """Starts children in their own sessions and always stops them."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[Proc] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: list[str],
        cpu: int | None = None,
        port: int | None = None,
        timeout: float = 20.0,
    ) -> Proc:
        """Start argv; wait until it prints LISTENING host:port, or, if
        ``port`` is given, until that port accepts connections."""
        log = self.logdir / f"{name}.log"
        n = 1
        while log.exists():
            n += 1
            log = self.logdir / f"{name}.{n}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                pin(argv, cpu),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
                env=child_env(),
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise HarnessError(f"{name} exited with {popen.returncode}:\n{proc.log_tail()}")
            if port is not None:
                if wait_port(port, min(deadline, time.monotonic() + 0.5)):
                    proc.port = port
                    return proc
                continue
            m = READY_RE.search(log.read_bytes()[:4096])
            if m:
                proc.port = int(m.group(1))
                return proc
            time.sleep(0.05)
        self.stop(proc)
        raise HarnessError(f"{name} not ready after {timeout}s:\n{proc.log_tail()}")

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        p = proc.popen
        if p.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C so every finally: block runs."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    # also when started in the background, where SIGINT is inherited ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)


# -- /proc -----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_kb(pid: int) -> dict:
    """VmRSS and VmHWM (peak RSS) in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


# -- wrk -------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str) -> dict:
    out: dict = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise HarnessError(f"cannot parse wrk output:\n{text}")
    out["requests"] = int(m.group(1))
    out["wrk_seconds"] = _ms(m.group(2), m.group(3)) / 1000
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        out[f"p{pct}_ms"] = _ms(m.group(1), m.group(2)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    return out


def run_wrk(
    url: str,
    seconds: float,
    connections: int,
    threads: int = 1,
    cpu: int | None = None,
    timeout_s: float = 10.0,
) -> dict:
    argv = pin(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s:g}s",
            "--latency",
            url,
        ],
        cpu,
    )
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    if res.returncode != 0:
        raise HarnessError(f"wrk failed ({res.returncode}): {res.stderr}{res.stdout}")
    return parse_wrk(res.stdout)


def measure(proc: Proc, url: str, seconds: float, connections: int, cpu: int | None):
    """One wrk run against url; CPU of proc counted around it."""
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    out = run_wrk(url, seconds, connections, cpu=cpu)
    c1, t1 = cpu_seconds(proc.pid), time.monotonic()
    out["cpu_ms"] = (c1 - c0) * 1000
    out["wall_s"] = t1 - t0
    out["cpu_ms_per_1000"] = out["cpu_ms"] / out["requests"] * 1000 if out["requests"] else None
    out["cpu_util"] = (c1 - c0) / (t1 - t0)
    return out


# -- starting the things under test ---------------------------------------------


def start_backend(
    procs: Procs, name: str, cpu: int | None, delay: float = 0.0, threads: int = 8
) -> Proc:
    argv = [
        PY,
        str(HERE / "backends.py"),
        "--delay",
        str(delay),
        "--threads",
        str(threads),
    ]
    return procs.start(name, argv, cpu=cpu)


def start_bare(
    procs: Procs,
    name: str,
    backends: list[str],
    threads: int,
    cpu: int | None,
    script: str = "bare_loop.py",
    extra: tuple[str, ...] = (),
) -> Proc:
    """A reference loop: bare_loop.py, or ceiling_loop.py with its --maxconn."""
    argv = [PY, str(HERE / script), *backends, "--threads", str(threads), *extra]
    return procs.start(name, argv, cpu=cpu)


def start_ceiling(
    procs: Procs, name: str, backends: list[str], threads: int, maxconn: int, cpu: int | None
) -> Proc:
    return start_bare(
        procs, name, backends, threads, cpu, "ceiling_loop.py", ("--maxconn", str(maxconn))
    )


def start_zope_lb(
    procs: Procs,
    name: str,
    backends: list[str],
    threads: int,
    cpu: int | None,
    strategy: str = "round_robin",
    opts: dict | None = None,
    extra: list[str] | None = None,
    access_log: str = "combined",
) -> Proc:
    """serve_lb.py, logging as ``zope-lb serve`` does (INFO, the access log on)
    into NAME.server.log in the run's log directory."""
    argv = [
        PY,
        str(HERE / "serve_lb.py"),
        *backends,
        "--threads",
        str(threads),
        "--strategy",
        strategy,
        "--log-file",
        str(procs.logdir / f"{name}.server.log"),
        "--access-log",
        access_log,
    ]
    for key, value in (opts or {}).items():
        argv += [
            "--opt",
            f"{key}={value!r}" if not isinstance(value, str) else f"{key}={value}",
        ]
    argv += extra or []
    return procs.start(name, argv, cpu=cpu, timeout=30)


HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 60s
    timeout queue 60s
    maxconn 4000

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    balance roundrobin
{servers}
"""


def start_haproxy(
    procs: Procs,
    name: str,
    backends: list[str],
    cpu: int | None,
    server_maxconn: int | None = None,
) -> Proc:
    if not shutil.which("haproxy"):
        raise HarnessError("haproxy not installed")
    port = free_port()
    limit = f" maxconn {server_maxconn}" if server_maxconn else ""
    servers = "\n".join(f"    server b{i} {addr}{limit}" for i, addr in enumerate(backends, 1))
    cfg = procs.logdir / f"{name}.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, servers=servers))
    check = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.returncode != 0:
        raise HarnessError(f"bad haproxy config {cfg}: {check.stderr}{check.stdout}")
    proc = procs.start(name, ["haproxy", "-db", "-f", str(cfg)], cpu=cpu, port=port)
    proc.info["config"] = str(cfg)
    return proc


def zope_lb_available() -> tuple[bool, str]:
    res = subprocess.run(
        [PY, "-c", "from zope_lb import LoadBalancer"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=child_env(),
        timeout=60,
    )
    return res.returncode == 0, (res.stderr.strip().splitlines() or [""])[-1]
