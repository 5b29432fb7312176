"""Per-pool options through real servers (issue 12): a Volto site's frontend pool
and ``/++api++`` pool, per-pool health, ``health.port``, and per-pool keys
through the admin API, the state file and a SIGHUP reload."""

from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path

import pytest
from admin_support import PASSWORD, USERS
from apps import Echo
from paste.deploy import loadapp
from servers import ServerThread, wait_until
from webtest import TestApp

from zope_lb import LoadBalancer
from zope_lb.admin import AdminApp
from zope_lb.settings import parse_settings
from zope_lb.state import StateFile, load_overrides, merge

PROBE_AGENT = "zope_lb-health"
VHM = "/VirtualHostBase/https/www.example.com:443/Plone/++api++/VirtualHostRoot"


class Site(Echo):
    """Echo, but ``.../redirect`` answers a redirect naming the backend itself
    (as a Zope client without a VHM rule does) and probes may be slowed down."""

    def __init__(self, name: str, probe_delay: float = 0.0):
        super().__init__(name)
        self.probe_delay = probe_delay
        self.address = ""

    def __call__(self, environ, start_response):
        if environ.get("HTTP_USER_AGENT") == PROBE_AGENT and self.probe_delay:
            time.sleep(self.probe_delay)
        if environ["PATH_INFO"].endswith("/redirect"):
            start_response("302 Found", [("Location", f"http://{self.address}/target"),
                                         ("Content-Length", "0")])
            return [b""]
        return super().__call__(environ, start_response)


def start_site(name: str, host: str = "127.0.0.1", **options) -> tuple[Site, ServerThread]:
    app = Site(name, **options)
    server = ServerThread(app, host=host).start()
    app.address = server.address
    return app, server


def probes(app: Echo) -> list[str]:
    return [r["path"] for r in app.requests if r["headers"].get("User-Agent") == PROBE_AGENT]


def served(app: Echo) -> list[dict]:
    return [r for r in app.requests if r["headers"].get("User-Agent") != PROBE_AGENT]


def get(port: int, target: str, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One request with exactly this target (no client-side normalisation)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", target, headers={"Accept": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def health(port: int) -> dict[str, dict]:
    status, _, body = get(port, "/__zope_lb__/health")
    return {row["id"]: row for row in json.loads(body)["backends"]}


@pytest.fixture
def stopping():
    """Servers started by a test, stopped after it."""
    servers: list[ServerThread] = []
    yield servers
    for server in servers:
        server.stop()


def volto_app_lines(apis, probe_port: int, extra: str = "") -> str:
    lines = "".join(f"\n    {s.address} id=api{i}" for i, s in enumerate(apis))
    return (f"health.interval = 0.2\nhealth.rise = 1\nhealth.fall = 1\nhealth.timeout = 1\n"
            f"pool.api.backends ={lines}\n"
            "pool.api.match = path:/++api++\n"
            "pool.api.vhm.root = /Plone/++api++\n"
            "pool.api.vhm.strip = /++api++\n"
            "pool.api.vhm.base = https://www.example.com\n"
            "pool.api.health.path = /ready\n"
            f"pool.api.health.port = {probe_port}\n{extra}")


def test_volto_frontend_and_api_pools_through_zope_lb_serve(serve_process, stopping):
    """The issue's example, run as an operator runs it: /++api++ goes to the API
    pool in VHM form without _vh_ segments, the rest to the frontend unchanged;
    each pool is probed by its own rules, the API on its probe port."""
    front_apps, api_apps = [], []
    for i in range(2):
        app, server = start_site(f"front{i}")
        front_apps.append(app)
        stopping.append(server)
    # two API backends on two loopback addresses, each with a probe server on the
    # same port of its own host (plone.observability's stand-in)
    ready0, probe0 = start_site("ready0")
    ready1, probe1 = start_site("ready1", host="127.0.0.2")
    probe1.stop()
    probe1.port = probe0.port
    probe1.start()
    stopping.extend([probe0, probe1])
    apis = []
    for i, host in enumerate(("127.0.0.1", "127.0.0.2")):
        app, server = start_site(f"api{i}", host=host)
        api_apps.append(app)
        apis.append(server)
        stopping.append(server)
    process = serve_process([f"{s.address} id=front{i}" for i, s in
                             enumerate(stopping[:2])],
                            app=volto_app_lines(apis, probe0.port))
    port = process.port

    status, headers, body = get(port, "/++api++/news?b_size=5")
    assert status == 200, body
    record = json.loads(body)
    assert record["backend"].startswith("api")
    assert record["uri"] == f"{VHM}/news?b_size=5"

    status, headers, body = get(port, "/news")
    record = json.loads(body)
    assert record["backend"].startswith("front")
    assert record["uri"] == "/news" and record["query"] == ""
    assert record["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert record["headers"]["X-Forwarded-Proto"] == "http"
    assert record["headers"]["X-Forwarded-Host"] == f"127.0.0.1:{port}"

    # the path is normalised first: nothing climbs out, nothing is smuggled in
    for target, backend, uri in [
        ("/++api++", "api", f"{VHM}/"),
        ("/++api++/a/%2e%2e/b", "api", f"{VHM}/b"),
        ("/++api++/../manage_main", "front", "/manage_main"),
        ("/x/..%2F++api++/y", "api", f"{VHM}/y"),
        ("/++api++foo", "api", f"{VHM}/++api++foo"),  # not the prefix segment: kept
    ]:
        status, _, body = get(port, target)
        record = json.loads(body)
        assert (status, record["backend"][:-1], record["uri"]) == (200, backend, uri), target
    assert get(port, "/++api++/../../etc")[0] == 400

    # answers naming the backend itself point at each pool's own public origin
    status, headers, _ = get(port, "/++api++/redirect")
    assert (status, headers["Location"]) == (302, "https://www.example.com/target")
    status, headers, _ = get(port, "/redirect")
    assert (status, headers["Location"]) == (302, f"http://127.0.0.1:{port}/target")

    # each pool probed by its own rules: the frontends at /, the API on its port
    assert wait_until(lambda: all(probes(a) for a in (*front_apps, ready0, ready1)),
                      timeout=10)
    assert {p for a in front_apps for p in probes(a)} == {"/"}
    assert set(probes(ready0)) == set(probes(ready1)) == {"/ready"}
    assert not any(probes(a) for a in api_apps)  # never on the main port

    # the probe port stops answering: that backend goes down, the reason names the
    # port, though its main port still answers; back up when the port answers again
    probe1.stop()
    expected = f"probe port {probe0.port}: connection refused"
    assert wait_until(lambda: health(port)["api1"]["state"] == "down", timeout=10)
    assert expected in health(port)["api1"]["reason"]
    assert health(port)["api0"]["state"] == "up"
    assert get(apis[1].port, "/alive", host="127.0.0.2")[0] == 200  # main port answers
    before = len(served(api_apps[1]))
    for _ in range(6):
        assert json.loads(get(port, "/++api++/x")[2])["backend"] == "api0"
    assert len(served(api_apps[1])) == before
    assert process.wait_for_log(rf"api1 .*up -> down: .*{expected}")
    probe1.start()
    assert wait_until(lambda: health(port)["api1"]["state"] == "up", timeout=10)
    assert "Traceback" not in process.log()


def test_each_pool_is_probed_with_its_own_path_and_timeout(stopping):
    """Frontends probed at / with the top-level 2 s timeout; the API at /@@ok
    with its own 0.3 s. Both answer probes in 0.8 s: only the API goes down."""
    fronts, apis = [], []
    for i in range(2):
        app, server = start_site(f"front{i}", probe_delay=0.8)
        fronts.append(app)
        stopping.append(server)
        app, server = start_site(f"api{i}", probe_delay=0.8)
        apis.append(app)
        stopping.append(server)
    lb = LoadBalancer(
        [f"{a.address} id=front{i}" for i, a in enumerate(fronts)],
        health_interval=0.2, health_rise=1, health_fall=1, health_timeout=2,
        **{"pool.api.backends": "\n".join(f"{a.address} id=api{i}"
                                          for i, a in enumerate(apis)),
           "pool.api.match": "path:/++api++",
           "pool.api.health.path": "/@@ok",
           "pool.api.health.timeout": "0.3"})
    try:
        states = {}

        def api_down() -> bool:
            states.update({b.id: b for pool in lb.pools for b in pool.backends})
            return all(states[f"api{i}"].state.value == "down" for i in range(2))

        assert wait_until(api_down, timeout=10)
        assert all(states[f"front{i}"].state.value == "up" for i in range(2))
        assert "timeout after 0.3 s" in states["api0"].reason
        assert all(probes(a) and set(probes(a)) == {"/"} for a in fronts)
        assert all(probes(a) and set(probes(a)) == {"/@@ok"} for a in apis)
    finally:
        lb.close()


def test_a_pool_may_probe_when_the_top_level_does_not(stopping):
    front, front_server = start_site("front")
    api, api_server = start_site("api")
    stopping.extend([front_server, api_server])
    lb = LoadBalancer([front.address], health_interval=0,
                      **{"pool.api.backends": api.address, "pool.api.match": "path:/++api++",
                         "pool.api.health.interval": "0.1", "pool.api.health.path": "/@@ok"})
    try:
        assert wait_until(lambda: len(probes(api)) >= 2, timeout=10)
        assert not probes(front)
        lb.apply({"pool.api.health.interval": "0"})  # and stops when it is off
        time.sleep(0.3)
        count = len(probes(api))
        time.sleep(0.5)
        assert len(probes(api)) == count
        assert lb.checker is None
    finally:
        lb.close()


def test_per_pool_vhm_and_affinity_in_process(stopping):
    """Per-pool affinity: editors stick on the API pool only; the default pool
    keeps spreading and gets no cookie."""
    fronts, apis = [], []
    for i in range(2):
        app, server = start_site(f"front{i}")
        fronts.append(app)
        stopping.append(server)
        app, server = start_site(f"api{i}")
        apis.append(app)
        stopping.append(server)
    lb = LoadBalancer(
        [f"{a.address} id=front{i}" for i, a in enumerate(fronts)], health_interval=0,
        **{"pool.api.backends": "\n".join(f"{a.address} id=api{i}"
                                          for i, a in enumerate(apis)),
           "pool.api.match": "path:/++api++", "pool.api.vhm.root": "/Plone/++api++",
           "pool.api.vhm.strip": "/++api++", "pool.api.vhm.base": "https://www.example.com",
           "pool.api.affinity": "cookie", "pool.api.affinity.when": "__ac",
           "pool.api.affinity.cookie": "zlb_api"})
    try:
        app = TestApp(lb, extra_environ={"REMOTE_ADDR": "127.0.0.1"})
        answer = app.get("/++api++/x", headers={"Cookie": "__ac=editor"})
        assert answer.json["uri"] == f"{VHM}/x"
        cookie = answer.headers["Set-Cookie"]
        assert cookie.startswith("zlb_api=")
        token = cookie.split(";")[0]
        stuck = {app.get("/++api++/x", headers={"Cookie": f"__ac=editor; {token}"}
                         ).json["backend"] for _ in range(6)}
        assert len(stuck) == 1
        spread = set()
        for _ in range(4):
            answer = app.get("/page", headers={"Cookie": "__ac=editor"})
            assert "Set-Cookie" not in answer.headers
            assert answer.json["uri"] == "/page"
            spread.add(answer.json["backend"])
        assert spread == {"front0", "front1"}
    finally:
        lb.close()


def test_admin_api_and_state_file_round_trip_a_per_pool_key(tmp_path, stopping):
    front, front_server = start_site("front")
    api, api_server = start_site("api")
    stopping.extend([front_server, api_server])
    ini = {"backends": f"{front.address} id=front", "health.interval": "0",
           "admin.users": USERS, "pool.api.backends": f"{api.address} id=api",
           "pool.api.match": "path:/++api++", "pool.api.maxconn": "2"}
    balancer = LoadBalancer.from_settings(parse_settings(ini))
    path = str(tmp_path / "lb.state.json")
    state = StateFile(path, balancer, ini, poll_interval=0).start()
    balancer.state_file = state
    try:
        client = TestApp(AdminApp(balancer), extra_environ={"REMOTE_ADDR": "127.0.0.1"})
        client.authorization = ("Basic", ("admin", PASSWORD))
        api_url = "/__zope_lb__/api/balancing"
        shown = client.get(api_url).json
        assert shown["pool.api.maxconn"] == "2" and shown["maxconn"] == "4"
        changed = client.put_json(api_url, {"pool.api.maxconn": 3,
                                            "pool.api.health.path": "/@@ok"}).json
        assert (changed["pool.api.maxconn"], changed["pool.api.health.path"]) == ("3", "/@@ok")
        [api_pool] = [p for p in balancer.pools if p.name == "api"]
        assert [b.maxconn for b in api_pool.backends] == [3]
        assert balancer.pool.backends[0].maxconn == 4  # the default pool keeps its own
        assert json.loads(Path(path).read_text())["options"] == {
            "pool.api.maxconn": "3", "pool.api.health.path": "/@@ok"}
        # refused whole, naming the key: no such pool, or not a Balancing option
        for body, key in (({"pool.nope.maxconn": 3}, "pool.nope.maxconn"),
                          ({"pool.api.vhm.root": "/x", "maxconn": 5}, "pool.api.vhm.root"),
                          ({"pool.api.maxconn": 10001}, "pool.api.maxconn")):
            error = client.put_json(api_url, body, status=400).json
            assert error["field"] == key
        assert balancer.settings.maxconn == 4
        # a new process reads them back from the state file
        again = LoadBalancer.from_settings(parse_settings(merge(ini, load_overrides(path, ini))))
        try:
            own = again.settings.pool_settings(again.settings.pools[0])
            assert (own.maxconn, own.health_path) == (3, "/@@ok")
        finally:
            again.close()
    finally:
        state.close()
        balancer.close()


def test_a_state_file_may_keep_a_running_pools_balancing_keys_only(tmp_path, stopping):
    front, front_server = start_site("front")
    api, api_server = start_site("api")
    stopping.extend([front_server, api_server])
    ini_path = tmp_path / "lb.ini"
    ini_path.write_text(
        f"[app:main]\nuse = egg:zope_lb\nbackends = {front.address}\nhealth.interval = 0\n"
        f"pool.api.backends = {api.address}\npool.api.match = path:/++api++\n")
    state_path = tmp_path / "lb.state.json"
    state_path.write_text(json.dumps({"version": 1, "options": {
        "pool.api.health.timeout": "0.5", "pool.api.slowstart": "10"}}))
    app = loadapp(f"config:{ini_path}")
    try:
        own = app.settings.pool_settings(app.settings.pools[0])
        assert (own.health_timeout, own.slowstart) == (0.5, 10.0)
    finally:
        app.state_file.close()
        app.close()
    state_path.write_text(json.dumps({"version": 1, "options": {
        "pool.api.vhm.root": "/Other"}}))
    with pytest.raises(Exception, match="may not set 'pool.api.vhm.root'"):
        loadapp(f"config:{ini_path}")


def test_sighup_applies_a_changed_per_pool_key(serve_process, stopping):
    front, front_server = start_site("front")
    api, api_server = start_site("api")
    ready, probe = start_site("ready")
    stopping.extend([front_server, api_server, probe])
    process = serve_process([f"{front.address} id=front"],
                            app=volto_app_lines([api_server], probe.port))
    status, _, body = get(process.port, "/++api++/news")
    assert json.loads(body)["uri"] == f"{VHM}/news"
    assert wait_until(lambda: "/ready" in probes(ready), timeout=10)

    ini = Path(process.ini_path)
    text = ini.read_text()
    ini.write_text(text.replace("pool.api.vhm.root = /Plone/++api++",
                                "pool.api.vhm.root = /Site/++api++")
                       .replace("pool.api.health.path = /ready",
                                "pool.api.health.path = /live"))
    process.send(signal.SIGHUP)
    assert process.wait_for_log(r"SIGHUP: applied .*pool\.api\.", timeout=10), process.log()
    status, _, body = get(process.port, "/++api++/news")
    assert json.loads(body)["uri"] == (
        "/VirtualHostBase/https/www.example.com:443/Site/++api++/VirtualHostRoot/news")
    assert wait_until(lambda: "/live" in probes(ready), timeout=10)
    assert json.loads(get(process.port, "/news")[2])["uri"] == "/news"
    assert "Traceback" not in process.log()



def test_a_changed_health_port_is_probed_at_once(stopping):
    """The probe connection is made again when the port changes at run time."""
    api, api_server = start_site("api")
    first, first_server = start_site("first")
    second, second_server = start_site("second")
    stopping.extend([api_server, first_server, second_server])
    lb = LoadBalancer([api.address], health_interval=0.1, health_path="/ready",
                      health_port=first_server.port)
    try:
        assert wait_until(lambda: probes(first), timeout=10)
        lb.apply({"health.port": str(second_server.port)})
        assert wait_until(lambda: probes(second), timeout=10)
        count = len(probes(first))
        time.sleep(0.4)
        assert len(probes(first)) == count
        assert lb.pool.backends[0].last_probe[2].startswith(
            f"probe port {second_server.port}: status 200")
        assert not probes(api)
    finally:
        lb.close()
