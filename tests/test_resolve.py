"""Backends found by DNS (``resolve`` lines), against a real dnsmasq on loopback.

The backends are echo servers on 127.0.0.2, 127.0.0.3, ... (all of
127.0.0.0/8 is loopback), one port for all, as the replicas of one service.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import urllib3
from apps import routes
from dns_server import DNSMASQ, DnsServer
from servers import ServerThread, wait_until
from webtest import TestApp

from zope_lb import LoadBalancer
from zope_lb.state import StateFile
from zope_lb.verify import verify_cluster

pytestmark = [
    pytest.mark.dns,
    pytest.mark.skipif(DNSMASQ is None, reason="needs Debian's dnsmasq"),
]

NAME = "backend.test"
HOSTS = [f"127.0.0.{n}" for n in range(2, 7)]


@pytest.fixture
def dns_server(tmp_path):
    server = DnsServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def replicas():
    """Five echo backends, one port, on 127.0.0.2-6; named by their address."""
    for _ in range(20):
        first = ServerThread(routes(HOSTS[0]), host=HOSTS[0]).start()
        servers = [first]
        try:
            for host in HOSTS[1:]:
                servers.append(ServerThread(routes(host), host=host, port=first.port).start())
        except OSError:  # that port is taken on another address: try another
            for server in servers:
                server.stop()
            continue
        break
    else:
        pytest.fail("no port free on all of 127.0.0.2-6")
    yield servers
    for server in servers:
        server.stop()


class Load:
    """Clients sending GETs through the balancer until stopped (bounded in time)."""

    def __init__(self, url: str, clients: int = 4, limit: float = 60.0):
        self.url = url
        self.results: list[tuple[float, int, str]] = []  # (when sent, status, backend)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(clients)]
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self) -> None:
        http = urllib3.PoolManager(retries=False, timeout=10)
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            sent = time.monotonic()
            try:
                response = http.request("GET", self.url + "/echo")
                row = (sent, response.status, response.headers.get("X-Backend", ""))
            except Exception as exc:  # every request must be answered: kept, then failed
                with self._lock:
                    self.errors.append(exc)
                continue
            with self._lock:
                self.results.append(row)
            time.sleep(0.005)

    def first_seen(self, backend: str, since: float) -> float | None:
        with self._lock:
            times = [when for when, _, who in self.results if who == backend and when >= since]
        return min(times) if times else None


def _lb(dns_server, port, **options):
    options.setdefault("resolve_interval", 1)
    options.setdefault("health_interval", 1)
    return LoadBalancer(f"{NAME}:{port}  resolve", resolve_server=dns_server.address,
                        **options)


def _served(lb):
    return sorted(b.address.rsplit(":", 1)[0] for b in lb.pool.backends)


def test_scale_from_2_to_4_and_back_to_1_under_load(dns_server, replicas):
    port = replicas[0].port
    dns_server.set_hosts({NAME: HOSTS[:2]})
    lb = _lb(dns_server, port, strategy="round_robin")
    front = ServerThread(lb, threads=16).start()
    try:
        assert _served(lb) == HOSTS[:2]
        with Load(front.url) as load:
            time.sleep(0.5)
            # 2 -> 4: the new replicas get requests within resolve.interval + 1 s.
            scaled = time.monotonic()
            dns_server.set_hosts({NAME: HOSTS[:4]})
            assert wait_until(lambda: all(load.first_seen(h, scaled) for h in HOSTS[2:4]), 5)
            for host in HOSTS[2:4]:
                assert load.first_seen(host, scaled) - scaled <= 1 + 1, host
            assert [b.id for b in lb.pool.backends] == [f"{NAME}@{h}" for h in HOSTS[:4]]

            # Requests in flight on replicas about to be removed.
            slow: list[tuple[int, str]] = []

            def slow_request() -> None:
                r = urllib3.request("GET", front.url + "/slow?s=2", timeout=10, retries=False)
                slow.append((r.status, r.headers.get("X-Backend", "")))

            slow_threads = [threading.Thread(target=slow_request) for _ in range(8)]
            for thread in slow_threads:
                thread.start()
            time.sleep(0.3)
            # 4 -> 1: the others drain; requests in flight on them finish.
            dns_server.set_hosts({NAME: HOSTS[:1]})
            assert wait_until(lambda: _served(lb) == HOSTS[:1], 5)
            removed = [b for b in replicas[1:4]]
            for thread in slow_threads:
                thread.join(15)
            assert sorted(status for status, _ in slow) == [200] * 8
            assert {who for _, who in slow} & set(HOSTS[1:4]), slow  # some were on removed ones
            drained = time.monotonic()
            counts = [len(server.app.echo.requests) for server in removed]
            time.sleep(1.5)
            assert [len(server.app.echo.requests) for server in removed] == counts
            assert not [r for r in load.results if r[0] > drained and r[2] != HOSTS[0]]
        assert not load.errors, load.errors[:3]
        assert load.results and {status for _, status, _ in load.results} == {200}
        # The configured text is the line as written, not the expansion.
        assert lb.current_options()["backends"] == f"{NAME}:{port}  resolve"
    finally:
        front.stop()
        lb.close()


def test_dns_server_stopped_keeps_the_cluster_with_one_warning(dns_server, replicas, caplog):
    port = replicas[0].port
    dns_server.set_hosts({NAME: HOSTS[:2]})
    lb = _lb(dns_server, port)
    try:
        assert _served(lb) == HOSTS[:2]
        caplog.set_level(logging.INFO, logger="zope_lb.discovery")
        dns_server.stop()

        def warnings():
            return [r for r in caplog.records
                    if r.name == "zope_lb.discovery" and r.levelno == logging.WARNING]

        # A lookup times out after 2 s; then two more fail (or more: interval 1 s).
        assert wait_until(warnings, 8)
        time.sleep(5)
        assert len(warnings()) == 1, [r.getMessage() for r in warnings()]
        warnings = warnings()
        assert NAME in warnings[0].getMessage() and "keeping the last 2" in (
            warnings[0].getMessage())
        assert _served(lb) == HOSTS[:2]
        app = TestApp(lb)
        seen = {app.get("/echo").headers["X-Backend"] for _ in range(6)}
        assert seen == set(HOSTS[:2])
        # Back again: INFO, and changes are followed again.
        dns_server.start()
        dns_server.set_hosts({NAME: HOSTS[:3]})
        assert wait_until(lambda: _served(lb) == HOSTS[:3], 5)
        assert any("answers again" in r.getMessage() and r.levelno == logging.INFO
                   for r in caplog.records if r.name == "zope_lb.discovery")
    finally:
        lb.close()


def test_srv_records_give_addresses_and_two_ports(tmp_path):
    a = ServerThread(routes("srv-a"), host="127.0.0.2").start()
    b = ServerThread(routes("srv-b"), host="127.0.0.3").start()
    c = ServerThread(routes("srv-c"), host="127.0.0.4").start()
    name = "_http._tcp.plone.test"
    server = DnsServer(tmp_path, srv=(f"{name},a.plone.test,{a.port},0",
                                      f"{name},b.plone.test,{b.port},0",
                                      f"{name},c.plone.test,{c.port},10")).start()
    server.set_hosts({"a.plone.test": ["127.0.0.2"], "b.plone.test": ["127.0.0.3"],
                      "c.plone.test": ["127.0.0.4"]})
    lb = LoadBalancer(f"{name} resolve=srv", resolve_server=server.address,
                      health_interval=0)
    try:
        rows = {row["id"]: row for row in lb.stats()}
        assert set(rows) == {f"{name}@127.0.0.2:{a.port}", f"{name}@127.0.0.3:{b.port}",
                             f"{name}@127.0.0.4:{c.port}"}
        assert rows[f"{name}@127.0.0.4:{c.port}"]["role"] == "backup"  # less preferred
        app = TestApp(lb)
        seen = {app.get("/echo").headers["X-Backend"] for _ in range(6)}
        assert seen == {"srv-a", "srv-b"}
        assert lb.current_options()["backends"] == f"{name}  resolve=srv"
    finally:
        lb.close()
        server.stop()
        for s in (a, b, c):
            s.stop()


def test_admin_state_follows_the_address_through_the_state_file(dns_server, replicas,
                                                                tmp_path):
    port = replicas[0].port
    dns_server.set_hosts({NAME: HOSTS[:3]})
    line = f"{NAME}:{port} resolve"
    lb = _lb(dns_server, port)
    state = StateFile(str(tmp_path / "lb.state.json"), lb,
                      {"backends": line, "resolve.server": dns_server.address,
                       "resolve.interval": "1", "health.interval": "1"},
                      poll_interval=0).start()
    lb.state_file = state
    try:
        gone = f"{NAME}@{HOSTS[2]}"
        lb.backend_action(gone, "disable")
        saved = json.loads((tmp_path / "lb.state.json").read_text())
        assert saved["backends"] == {gone: "disabled"}
        assert "backends" not in saved["options"]  # the expansion is never saved as config
        dns_server.set_hosts({NAME: HOSTS[:2]})
        assert wait_until(lambda: _served(lb) == HOSTS[:2], 5)
        dns_server.set_hosts({NAME: HOSTS[:3]})
        assert wait_until(lambda: _served(lb) == HOSTS[:3], 5)
        back = lb.find_backends(gone)[0][1]
        assert back.state.value == "disabled"
        others = [b.state.value for b in lb.pool.backends if b.id != gone]
        assert others == ["up", "up"]
        assert {b["id"] for b in lb.health()["backends"]} == {
            f"{NAME}@{h}" for h in HOSTS[:3]}
    finally:
        lb.close()


def test_the_admin_api_disables_one_resolved_address(dns_server, replicas):
    from admin_support import PASSWORD, USERS

    port = replicas[0].port
    dns_server.set_hosts({NAME: HOSTS[:2]})
    lb = _lb(dns_server, port, admin_users=USERS, health_interval=0)
    try:
        admin = TestApp(lb, extra_environ={"REMOTE_ADDR": "127.0.0.1"})
        admin.authorization = ("Basic", ("admin", PASSWORD))
        one = f"{NAME}@{HOSTS[1]}"
        admin.post(f"/__zope_lb__/api/backends/{one}/disable")
        # The Basic tab's lines are the line as written; the status has each address.
        assert admin.get("/__zope_lb__/api/backends").json["backends"] == [
            f"{NAME}:{port}  resolve"]
        rows = admin.get("/__zope_lb__/api/status").json["backends"]
        assert {(r["id"], r["address"], r["state"]) for r in rows} == {
            (f"{NAME}@{HOSTS[0]}", f"{HOSTS[0]}:{port}", "up"),
            (one, f"{HOSTS[1]}:{port}", "disabled")}
        app = TestApp(lb)
        assert {app.get("/echo").headers["X-Backend"] for _ in range(4)} == {HOSTS[0]}
        metrics = admin.get("/__zope_lb__/metrics").text
        assert f'backend="{one}"' in metrics
    finally:
        lb.close()


def test_a_new_address_joins_with_slowstart(dns_server, replicas):
    port = replicas[0].port
    dns_server.set_hosts({NAME: HOSTS[:2]})
    lb = _lb(dns_server, port, slowstart=30)
    try:
        assert all(b.weight == 1 for b in lb.pool.backends)  # the start is not a join
        dns_server.set_hosts({NAME: HOSTS[:3]})
        assert wait_until(lambda: len(lb.pool.backends) == 3, 5)
        new = lb.find_backends(f"{NAME}@{HOSTS[2]}")[0][1]
        assert 0.05 <= new.weight < 0.5
    finally:
        lb.close()


def test_verify_checks_every_resolved_address(dns_server, replicas):
    port = replicas[0].port
    dns_server.set_hosts({NAME: HOSTS[:3]})
    report = verify_cluster([f"{NAME}:{port} resolve"], resolve_server=dns_server.address)
    assert [c.probe.address for c in report.clients] == [f"{h}:{port}" for h in HOSTS[:3]]


def test_verify_names_a_line_that_does_not_resolve(dns_server):
    from zope_lb.errors import ConfigError

    with pytest.raises(ConfigError, match="does not resolve"):
        verify_cluster(["nothere.test:8080 resolve"], resolve_server=dns_server.address)


class Hook:
    """A webhook receiver that keeps each event it is sent."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.events.append(json.loads(environ["wsgi.input"].read(length)))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"thanks"]


@pytest.mark.slow
def test_zope_lb_serve_follows_dns_and_probes_each_address(dns_server, replicas,
                                                            serve_process):
    port = replicas[0].port
    dns_server.set_hosts({NAME: HOSTS[:2]})
    hook = Hook()
    receiver = ServerThread(hook).start()
    try:
        lb = serve_process(
            [f"{NAME}:{port}  resolve"],
            app=f"resolve.server = {dns_server.address}\nresolve.interval = 1\n"
                f"health.interval = 1\nhealth.fall = 1\nnotify.webhook = {receiver.url}/hook",
        )
        http = urllib3.PoolManager(retries=False, timeout=5)

        def health():
            return json.loads(http.request("GET", lb.url + "/__zope_lb__/health").data)

        assert {b["id"] for b in health()["backends"]} == {f"{NAME}@{h}" for h in HOSTS[:2]}
        dns_server.set_hosts({NAME: HOSTS[:4]})
        # Serving on all 4 within resolve.interval + health.interval + 1 s.
        scaled = time.monotonic()
        seen: set[str] = set()
        while time.monotonic() - scaled < 1 + 1 + 1 and len(seen) < 4:
            seen.add(http.request("GET", lb.url + "/echo").headers["X-Backend"])
        assert seen == set(HOSTS[:4])
        # A replica that dies is probed down on its own; the event names the address.
        replicas[3].stop()
        assert wait_until(lambda: any(
            b["id"] == f"{NAME}@{HOSTS[3]}" and b["state"] == "down"
            for b in health()["backends"]), 8)
        assert wait_until(lambda: any(e.get("event") == "backend.down" for e in hook.events), 8)
        down = [e for e in hook.events if e.get("event") == "backend.down"]
        assert {(e["backend"], e["address"]) for e in down} == {
            (f"{NAME}@{HOSTS[3]}", f"{HOSTS[3]}:{port}")}
        others = [b["state"] for b in health()["backends"] if b["id"] != f"{NAME}@{HOSTS[3]}"]
        assert others == ["up", "up", "up"]
    finally:
        receiver.stop()


def test_a_resolve_line_added_at_run_time_and_in_a_named_pool(dns_server, replicas):
    port = replicas[0].port
    dns_server.set_hosts({NAME: HOSTS[:2], "api.test": HOSTS[3:5]})
    lb = LoadBalancer(replicas[4].address, resolve_server=dns_server.address,
                      resolve_interval=1, health_interval=0,
                      **{"pool.api.backends": f"api.test:{port} resolve",
                         "pool.api.match": "path:/++api++"})
    try:
        api = lb.proxy.routes[0].pool
        assert sorted(b.id for b in api.backends) == [f"api.test@{h}" for h in HOSTS[3:5]]
        # An admin edit adds a name: the thread looks it up, the request does not wait.
        lb.apply({"backends": f"{NAME}:{port} resolve"})
        assert wait_until(lambda: _served(lb) == HOSTS[:2], 5)
        dns_server.set_hosts({NAME: HOSTS[:2], "api.test": HOSTS[3:4]})
        assert wait_until(lambda: [b.id for b in api.backends] == [f"api.test@{HOSTS[3]}"], 5)
        app = TestApp(lb)
        assert app.get("/++api++/echo").headers["X-Backend"] == HOSTS[3]
    finally:
        lb.close()


def test_zope_lb_verify_of_an_ini_checks_every_address_from_its_resolve_server(
        dns_server, replicas, tmp_path, capsys):
    from zope_lb.cli import main

    port = replicas[0].port
    dns_server.set_hosts({NAME: HOSTS[:3]})
    ini = tmp_path / "production.ini"
    ini.write_text(f"[app:main]\nuse = egg:zope_lb\nbackends =\n    {NAME}:{port}  resolve\n"
                   f"resolve.server = {dns_server.address}\n")
    status = main(["verify", str(ini), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 3  # reachable; the storage checks need --user
    assert [c["address"] for c in report["clients"]] == [f"{h}:{port}" for h in HOSTS[:3]]
