"""A real DNS server on loopback for the ``resolve`` tests: Debian's dnsmasq.

It answers from a hosts file the test rewrites (:meth:`DnsServer.set_hosts`,
which reloads it with SIGHUP), with a TTL of 1 s so answers expire, and SRV
records given at start. Nothing is forwarded anywhere (``--no-resolv``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.resolver

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq"
                                      if os.path.exists("/usr/sbin/dnsmasq") else None)


def _free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port for dnsmasq")


class DnsServer:
    def __init__(self, directory: Path, srv: tuple[str, ...] = ()):
        self.directory = Path(directory)
        self.hosts_file = self.directory / "dns.hosts"
        self.pid_file = self.directory / "dnsmasq.pid"
        self.log_file = self.directory / "dnsmasq.log"
        self.srv = srv  # --srv-host values: "_http._tcp.NAME,TARGET,PORT[,PRIORITY]"
        self.port = _free_udp_and_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.hosts_file.write_text("")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> DnsServer:
        assert DNSMASQ is not None
        command = [
            DNSMASQ, f"--port={self.port}", "--listen-address=127.0.0.1",
            "--bind-interfaces", "--no-resolv", "--no-hosts",
            f"--addn-hosts={self.hosts_file}", "--keep-in-foreground",
            f"--pid-file={self.pid_file}", "--user=root" if os.geteuid() == 0 else "",
            "--local-ttl=1", f"--log-facility={self.log_file}",
            *(f"--srv-host={value}" for value in self.srv),
        ]
        self.process = subprocess.Popen([c for c in command if c], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"dnsmasq exited: {err}")
            if self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not answer in time")

    def _answers(self) -> bool:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = 0.5
        try:
            resolver.resolve("zope-lb-probe.test", "A")
        except dns.resolver.NXDOMAIN:
            return True
        except dns.exception.DNSException as exc:  # REFUSED: up, just not for this name
            return "REFUSED" in str(exc)
        return True

    def set_hosts(self, entries: dict[str, list[str]]) -> None:
        """Answer ``name -> [ip, ...]`` from now on (a hosts file, then SIGHUP)."""
        lines = [f"{ip} {name}" for name, ips in entries.items() for ip in ips]
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.hosts_file)
        if self.process is not None and self.process.poll() is None:
            reads = self._reads()
            self.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while self._reads() == reads and time.monotonic() < deadline:
                time.sleep(0.02)

    def _reads(self) -> int:
        """How often dnsmasq logged reading the hosts file (it does on SIGHUP)."""
        try:
            return self.log_file.read_text().count(f"read {self.hosts_file}")
        except OSError:
            return 0

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stderr is not None:
            process.stderr.close()
