"""zope_lb in front of real Zope clients sharing one real ZEO server.

What is checked here is what only a real cluster can show: a write through
the balancer is seen through every client (ZEO invalidations), the
VirtualHostMonster rewriting makes Zope itself build public URLs, a client
that dies or hangs costs no GET, and ``health.zeo`` sees a lost ZEO server
that a plain probe cannot.

The first tests share the session cluster of ``tests/zope_cluster.py`` (two
clients on ZEO) and leave it as they found it. The failure tests hurt a
cluster of their own (three clients, built once for this module) and heal
it after each test, whatever happened: SIGCONT for a frozen client, a
restart on the same port for a stopped one, ZEO back on its port with the
same Data.fs. Every wait is bounded. All tests are marked ``zope`` and skip
when Zope is not installed (``pip install -e '.[zope]'``).
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import urllib3
from servers import ServerThread, wait_until
from webtest import TestApp
from zope_cluster import (  # noqa: F401  (zope_cluster is a fixture)
    PASSWORD,
    USER,
    ZopeCluster,
    frozen,
    running_cluster,
    zope_cluster,
    zope_installed,
)

from zope_lb import LoadBalancer
from zope_lb.pool import affinity_token

pytestmark = pytest.mark.zope

AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
PUBLIC = "https://www.example.com"
COOKIE = "zlb_backend"  # affinity.cookie's default


def lines(cluster: ZopeCluster) -> list[str]:
    """Backend lines with ids c0, c1...: the affinity token depends on the id."""
    return [f"{address}  id=c{i}" for i, address in enumerate(cluster.addresses)]


def state(lb: LoadBalancer, backend_id: str) -> dict:
    (row,) = [b for b in lb.health()["backends"] if b["id"] == backend_id]
    return row


def requests_by_backend(lb: LoadBalancer) -> dict[str, int]:
    return {row["id"]: row["requests"] for row in lb.stats()}


# ---------------------------------------------------------------- one storage


def pinned_get(lb: LoadBalancer, backend_id: str, path: str) -> bytes:
    """GET ``path`` on the client with ``backend_id``, by its affinity cookie."""
    res = TestApp(lb).get(path, headers={"Cookie": f"{COOKIE}={affinity_token(backend_id)}"},
                          status="*")
    moved = [c for c in res.headers.getall("Set-Cookie") if c.startswith(f"{COOKIE}=")]
    assert not moved, f"{backend_id} did not serve the pinned request: {moved}"
    return res.body if res.status_int == 200 else b"(HTTP %d)" % res.status_int


def seen_everywhere(lb: LoadBalancer, ids: list[str], path: str, body: bytes,
                    timeout: float = 10.0) -> dict[str, bytes]:
    """Poll each client (bounded) until it serves ``body``; what each served last."""
    last: dict[str, bytes] = {}
    for backend_id in ids:
        def fresh(backend_id: str = backend_id) -> bool:
            last[backend_id] = pinned_get(lb, backend_id, path)
            return last[backend_id] == body
        wait_until(fresh, timeout, interval=0.05)
    return last


def test_a_write_through_the_balancer_is_read_back_on_every_client(zope_cluster):  # noqa: F811
    lb = LoadBalancer(lines(zope_cluster), affinity="cookie", health_interval=0)
    ids = [f"c{i}" for i in range(len(zope_cluster.addresses))]
    token_to_id = {affinity_token(i): i for i in ids}
    name = f"zope_lb_test_{uuid.uuid4().hex[:8]}"
    first = f"first version {uuid.uuid4()}".encode()
    second = f"second version {uuid.uuid4()}".encode()
    app = TestApp(lb)
    try:
        res = app.post("/manage_addProduct/OFSP/manage_addFile", {"id": name, "title": ""},
                       upload_files=[("file", "a.txt", first, "text/plain")],
                       headers=AUTH, status=302)
        (cookie,) = [c for c in res.headers.getall("Set-Cookie") if c.startswith(COOKIE)]
        writer = token_to_id[cookie.split("=", 1)[1].split(";")[0]]

        served = seen_everywhere(lb, ids, f"/{name}", first)
        assert served == dict.fromkeys(ids, first), f"written on {writer}"

        # Change it through another client: every client, the writer too, has
        # the old version cached now, so only a ZEO invalidation shows the new one.
        editor = next(i for i in ids if i != writer)
        res = TestApp(lb).post(
            f"/{name}/manage_upload", upload_files=[("file", "b.txt", second, "text/plain")],
            headers={**AUTH, "Cookie": f"{COOKIE}={affinity_token(editor)}"}, status="*")
        assert res.status_int in (200, 302), res.status
        served = seen_everywhere(lb, ids, f"/{name}", second)
        assert served == dict.fromkeys(ids, second), f"changed on {editor}"
    finally:
        with contextlib.suppress(Exception):
            TestApp(lb).post("/manage_delObjects", {"ids:list": name}, headers=AUTH,
                             status="*")
        lb.close()


# ---------------------------------------------------------------- VirtualHostMonster

SITE = "zope_lb_site"
MARKER = "zope_lb_marker"


@pytest.fixture(scope="module")
def zmi_site(zope_cluster):  # noqa: F811
    """A folder /zope_lb_site holding a file zope_lb_marker, seen by every client;
    deleted afterwards."""
    first = zope_cluster.addresses[0]
    http = urllib3.PoolManager(headers=AUTH, timeout=10, retries=False)
    try:
        res = http.request("POST", f"http://{first}/manage_addProduct/OFSP/manage_addFolder",
                           fields={"id": SITE, "title": ""}, redirect=False)
        assert res.status == 302, res.status
        res = http.request("POST", f"http://{first}/{SITE}/manage_addProduct/OFSP/manage_addFile",
                           fields={"id": MARKER, "title": "",
                                   "file": ("m.txt", b"marker", "text/plain")}, redirect=False)
        assert res.status == 302, res.status
        for address in zope_cluster.addresses:
            assert wait_until(lambda a=address: http.request(
                "GET", f"http://{a}/{SITE}/{MARKER}").status == 200, 10), address
        yield SITE
    finally:
        http.request("POST", f"http://{first}/manage_delObjects", fields={"ids:list": SITE},
                     redirect=False)
        http.clear()


def urls_of(html: str) -> list[str]:
    return re.findall(r"""https?://[^\s"'<>)]+""", html)


@pytest.mark.parametrize("root, prefix", [
    ("/", ""),              # the Zope root as the site
    (f"/{SITE}", ""),       # a folder as the site
    (f"/{SITE}", "/site"),  # under a public sub-path
])
def test_zmi_urls_carry_the_public_host_and_no_backend_address(
        zope_cluster, zmi_site, root, prefix):  # noqa: F811
    lb = LoadBalancer(lines(zope_cluster), health_interval=0,
                      **{"vhm.root": root, "vhm.base": PUBLIC, "vhm.prefix": prefix})
    app = TestApp(lb)
    try:
        for _ in zope_cluster.addresses:  # round robin: each client answers once
            html = app.get(f"{prefix}/manage_main", headers=AUTH, status=200).text
            assert (MARKER in html) is (root != "/"), "not the site's own manage_main"
            urls = urls_of(html)
            ours = [u for u in urls if u.startswith(PUBLIC)]
            assert len(ours) >= 3, urls
            for url in ours:  # every URL of the site: public, with the prefix, no root
                path = url[len(PUBLIC):]
                assert path == "" or path.startswith("/"), url
                assert path.startswith(prefix), url
                assert f"/{SITE}" not in path or root == "/", url
            for address in zope_cluster.addresses:
                assert address not in html
            assert "127.0.0.1" not in html and "localhost" not in html
            assert "http://www.example.com" not in html

            # A redirect Zope makes is public too.
            res = app.get(f"{prefix}/manage_workspace", headers=AUTH, status=302)
            assert res.headers["Location"] == f"{PUBLIC}{prefix}/manage_main"
    finally:
        lb.close()


def test_a_redirect_naming_the_client_is_made_public(zope_cluster):  # noqa: F811
    """Without VHM and with ``preserve_host = false`` Zope's own redirect names
    the client's host:port; the balancer puts the public host in its place."""
    lb = LoadBalancer(lines(zope_cluster), health_interval=0, preserve_host=False)
    try:
        for _ in zope_cluster.addresses:
            res = TestApp(lb).get("/manage_workspace",
                                  headers={**AUTH, "Host": "www.example.com"}, status=302)
            assert res.headers["Location"] == "http://www.example.com/manage_main"
    finally:
        lb.close()


@pytest.mark.parametrize("prefix", ["", "/site"])
def test_vhm_root_slash_with_base_auto_rewrites(zope_cluster, prefix):  # noqa: F811
    lb = LoadBalancer(lines(zope_cluster), health_interval=0,
                      **{"vhm.root": "/", "vhm.prefix": prefix})
    try:
        app = TestApp(lb, extra_environ={"wsgi.url_scheme": "https"})
        res = app.get(f"{prefix}/manage_workspace",
                      headers={**AUTH, "Host": "www.example.com"}, status="*")
        assert res.status_int == 302, res.status
        assert res.headers["Location"] == f"{PUBLIC}{prefix}/manage_main"
    finally:
        lb.close()


# ---------------------------------------------------------------- failures

FAST = {
    "health.interval": "300ms", "health.timeout": "1s", "health.rise": 2, "health.fall": 2,
    "timeout.connect": "1s", "timeout.read": "1500ms", "retries": 2,
}


@pytest.fixture(scope="module")
def hurt_cluster(tmp_path_factory) -> Iterator[ZopeCluster]:
    """Three Zope clients on one ZEO server, for the tests that hurt them."""
    if not zope_installed():
        pytest.skip("Zope and ZEO are not installed: pip install -e '.[zope]'")
    with running_cluster(tmp_path_factory.mktemp("zope-hurt"), shared=3,
                         own_storage=0) as cluster:
        yield cluster


@pytest.fixture
def cluster(hurt_cluster):
    """The hurt cluster, healed before and after each test whatever happened."""
    hurt_cluster.heal()
    yield hurt_cluster
    hurt_cluster.heal()


@contextlib.contextmanager
def balancer_server(backend_lines: list[str], **options) -> Iterator[tuple[LoadBalancer, str]]:
    """A LoadBalancer served by waitress in a thread: (balancer, host:port)."""
    lb = LoadBalancer(backend_lines, **options)
    server = ServerThread(lb, threads=16)
    try:
        server.start()
        yield lb, server.address
    finally:
        server.stop()
        lb.close()


@contextlib.contextmanager
def steady_gets(address: str, threads: int = 4) -> Iterator[list]:
    """``threads`` clients doing GET / through the balancer until the block ends;
    yields the outcomes (a status, or the exception's text)."""
    outcomes: list = []
    stop = threading.Event()
    host, port = address.rsplit(":", 1)

    def run() -> None:
        pool = urllib3.HTTPConnectionPool(host, int(port), maxsize=1,
                                          timeout=urllib3.Timeout(connect=5, read=20))
        try:
            while not stop.is_set():
                try:
                    res = pool.request("GET", "/", retries=False)
                    ok = res.status == 200 and b"Auto-generated default page" in res.data
                    outcomes.append(res.status if ok else f"{res.status}: {res.data[:200]!r}")
                except Exception as exc:  # the failure is the result here
                    outcomes.append(repr(exc))
        finally:
            pool.close()

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        assert not any(w.is_alive() for w in workers), "a GET did not end"


def all_up(lb: LoadBalancer) -> bool:
    return all(b["state"] == "up" for b in lb.health()["backends"])


@pytest.mark.parametrize("hurt", ["sigterm", "sigstop"])
def test_a_dead_or_frozen_client_costs_no_get(cluster, hurt):
    victim = cluster.clients[1]
    with balancer_server(lines(cluster), **FAST) as (lb, address):
        assert wait_until(lambda: all_up(lb), 10), lb.health()
        with contextlib.ExitStack() as hurting, steady_gets(address) as outcomes:
            time.sleep(1.0)
            before = len(outcomes)
            if hurt == "sigterm":
                victim.stop()  # SIGTERM, a bounded wait
                assert victim.process.returncode is not None
            else:
                hurting.enter_context(frozen(victim))  # SIGCONT when the block ends
            assert wait_until(lambda: state(lb, "c1")["state"] == "down", 15), lb.health()
            served = requests_by_backend(lb)
            time.sleep(1.0)  # and the site keeps answering while it is out
            after = requests_by_backend(lb)
            down = state(lb, "c1")
            assert down["state"] == "down", down
        failed = [o for o in outcomes if o != 200]
        assert failed == [], f"{len(failed)} of {len(outcomes)} GETs failed: {failed[:5]}"
        assert len(outcomes) - before >= 10, "hardly any GET while the client was hurt"
        assert after["c1"] == served["c1"], "a down client still got requests"
        assert after["c0"] > served["c0"] and after["c2"] > served["c2"]

        if hurt == "sigstop":  # thawed: it answers again, and is taken back
            assert wait_until(lambda: all_up(lb), 15), lb.health()


def test_a_lost_zeo_server_takes_every_client_out_and_back(cluster):
    options = {**FAST, "health.timeout": "2s", "health.zeo": "true",
               "health.auth": f"{USER}:{PASSWORD}"}
    with balancer_server(lines(cluster), **options) as (lb, address):
        def zeo_seen() -> bool:  # the ZEO check ran and passed on every client
            return all(row["last_probe"] and "ZEO connected" in row["last_probe"]["detail"]
                       for row in lb.stats())
        assert wait_until(zeo_seen, 10), lb.stats()
        assert all_up(lb)

        cluster.stop_zeo()
        started = time.monotonic()

        def all_out() -> bool:
            return all(b["state"] == "down" and "ZEO disconnected" in b["reason"]
                       for b in lb.health()["backends"])
        assert wait_until(all_out, 20), lb.health()
        out_after = time.monotonic() - started
        assert lb.health()["status"] == "down"
        res = urllib3.request("GET", f"http://{address}/", timeout=10, retries=False)
        assert res.status == 503

        cluster.start_zeo()  # same port, same Data.fs
        assert wait_until(lambda: all_up(lb), 60), lb.health()
        res = urllib3.request("GET", f"http://{address}/", timeout=10, retries=False)
        assert res.status == 200
        assert out_after < 10
