"""A real Plone 6 site (Classic UI and its REST API) behind zope_lb, as an operator runs it:
browser -> Debian's nginx (plain http here, sending ``X-Forwarded-Proto: https`` and
``X-Forwarded-Host: www.example.com`` as a TLS-terminating nginx does) -> the real
``zope-lb serve`` (``vhm.root = /Plone``, ``vhm.base = auto``, ``forwarded.trusted``)
-> two Zope clients with Plone, sharing one ZEO server (tests/plone_cluster.py).

A Volto-style site (a Python stand-in for the Node frontend as the default pool, an
``api`` pool with ``vhm.strip`` on the clients) and ``health.port`` on
plone.observability's ``/ready`` run through the same nginx and ``zope-lb serve``.

Zope does not say which client answered, so the tests read it from zope_lb's own
access log (``access_log = json``: one line per request, with the backend's id);
each simulated browser sends a User-Agent of its own so its lines are told apart.

All tests are marked ``plone`` and skip without the extras (``pip install -e
'.[test,zope,plone]'``) or without nginx; in CI (``ZOPE_LB_REQUIRE``) a skip
fails. The site is built once per run (about 30-60 s); every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import re
import uuid
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from apps import Echo
from nginx import Nginx, available
from plone_cluster import (  # noqa: F401  (plone_site is a fixture)
    PloneSite,
    get_status,
    plone_site,
)
from servers import ServerThread, wait_until

from zope_lb.pool import affinity_token

pytestmark = [pytest.mark.plone, pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="needs Debian's nginx")]

HOST = "www.example.com"
PUBLIC = f"https://{HOST}"
COOKIE = "zlb_backend"  # affinity.cookie's default
BALANCER = """
vhm.root = /Plone
vhm.base = auto
forwarded.trusted = 127.0.0.1
access_log = json
"""


def backend_lines(site: PloneSite) -> list[str]:
    """The clients as c0, c1...: the ids the access log and the affinity token use."""
    return [f"{address}  id=c{i}" for i, address in enumerate(site.addresses)]


@pytest.fixture
def front(serve_process, tmp_path):
    """``front(site, more_ini, backends=None, base=BALANCER)``: the real ``zope-lb
    serve`` for the site's clients (or the ``backends`` lines given), with ``base``
    then ``more_ini`` in ``[app:main]``, behind a real nginx; returns
    (balancer process, nginx)."""
    started: list[Nginx] = []

    def start(site: PloneSite, more: str = "", backends: list[str] | None = None,
              base: str = BALANCER):
        lines = backend_lines(site) if backends is None else backends
        lb = serve_process(lines, app=base + more)
        proxy = Nginx(tmp_path / "nginx", lb.port,
                      {"X-Forwarded-Proto": "https", "X-Forwarded-Host": HOST})
        started.append(proxy)
        return lb, proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


# ---------------------------------------------------------------- a small browser


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Browser:
    """Talks to nginx as a browser talks to the public site: its own cookies (kept
    raw, as Zope quotes ``__ac``) and its own User-Agent."""

    port: int
    agent: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:12]}")
    cookies: dict[str, str] = field(default_factory=dict)
    requests: int = 0  # sent so far: each gets an access line, written within 20 ms

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        self.requests += 1
        sent = {"Host": HOST, "User-Agent": self.agent, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            answer = Answer(response.status, response.getheaders(), response.read())
        finally:
            conn.close()
        for name, value in answer.headers:
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key.strip()] = rest.split(";", 1)[0]
        return answer

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, headers=headers)


def local(url: str) -> str:
    """The path and query of a public URL, to send to nginx; refuses any other."""
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", HOST), url
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Page(HTMLParser):
    """Every attribute value that is an absolute URL, and the page's forms."""

    def __init__(self, html: str):
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.forms: list[dict] = []
        self._form: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        for name, value in values.items():
            if re.match(r"(?i)(https?:)?//", value.strip()):
                self.urls.append((tag, name, value.strip()))
        if tag == "form":
            self._form = {"action": values.get("action", ""), "fields": {}, "buttons": {}}
            self.forms.append(self._form)
        elif tag in ("input", "button") and self._form is not None and values.get("name"):
            kind = values.get("type", "submit" if tag == "button" else "text").lower()
            target = "buttons" if kind == "submit" else "fields"
            if kind not in ("checkbox", "radio") or "checked" in values:
                self._form[target][values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def access_lines(lb, agent: str) -> list[dict]:
    """zope_lb's access-log entries (json) of the requests sent with User-Agent ``agent``."""
    found = []
    for line in lb.log().splitlines():
        match = re.search(r"\[zope_lb\.access\] (\{.*\})\s*$", line)
        if match:
            entry = json.loads(match[1])
            if entry.get("user_agent") == agent:
                found.append(entry)
    return found


def logged(lb, browser: Browser) -> list[dict]:
    """The access-log entries of every request ``browser`` sent, once all are
    written (the access log's thread writes them within access_log.flush)."""
    assert wait_until(lambda: len(access_lines(lb, browser.agent)) >= browser.requests, 10), (
        lb.log()[-3000:])
    return access_lines(lb, browser.agent)


def served_by(lb, who: Browser | str, count: int) -> list[str]:
    """The backend ids of the last ``count`` requests of ``who`` (a Browser, or
    the User-Agent of a real browser's page), once all are logged."""
    if isinstance(who, Browser):
        entries = logged(lb, who)
    else:
        assert wait_until(lambda: len(access_lines(lb, who)) >= count, 10), lb.log()[-3000:]
        entries = access_lines(lb, who)
    return [e["backend"] for e in entries[-count:]]


def assert_public_urls(page: Page, html: str, site: PloneSite, proxy: Nginx) -> None:
    """Every absolute URL naming this site names it as https://www.example.com;
    none names a client, the balancer or nginx, the way Zope sees them."""
    ours = [u for u in page.urls if urlsplit(u[2]).hostname == HOST]
    assert len(ours) >= 10, page.urls
    for tag, attribute, url in ours:
        assert url.startswith(f"{PUBLIC}/") or url == PUBLIC, (tag, attribute, url)
        assert "/Plone" not in urlsplit(url).path, (tag, attribute, url)  # vhm.root hidden
    for _, _, url in page.urls:
        host = urlsplit(url).hostname
        assert host not in ("127.0.0.1", "localhost"), url
    for address in [*site.addresses, f"127.0.0.1:{proxy.port}"]:
        assert address not in html
    assert f"http://{HOST}" not in html


# ---------------------------------------------------------------- Classic UI


def test_every_absolute_url_of_the_front_page_and_of_a_redirect_is_public(
        plone_site, front):  # noqa: F811
    lb, proxy = front(plone_site)
    browser = Browser(proxy.port)
    for _ in plone_site.addresses:  # round robin: each client answers once
        res = browser.get("/")
        assert res.status == 200, res.text[:500]
        assert "text/html" in (res.header("Content-Type") or "")
        page = Page(res.text)
        assert_public_urls(page, res.text, plone_site, proxy)
        links = {u for t, a, u in page.urls if t == "a" and a == "href"}
        assert f"{PUBLIC}/login" in links or f"{PUBLIC}/login_form" in links, links
    assert sorted(served_by(lb, browser, 2)) == ["c0", "c1"]

    # A page for Managers only: Plone redirects the anonymous browser to log in,
    # and every URL of the chain (and the came_from it carries) is public.
    res = browser.get("/@@overview-controlpanel")
    hops = 0
    while res.status in (301, 302, 303) and hops < 5:
        location = res.header("Location") or ""
        assert location.startswith(f"{PUBLIC}/"), location
        for values in parse_qs(urlsplit(location).query).values():
            for value in values:
                if "//" in value:
                    assert value.startswith(f"{PUBLIC}/"), location
        res = browser.get(local(location))
        hops += 1
    assert hops >= 1, "no redirect for an anonymous browser"
    assert res.status == 200
    assert 'name="__ac_password"' in res.text
    assert_public_urls(Page(res.text), res.text, plone_site, proxy)


def log_in(browser: Browser, site: PloneSite) -> Answer:
    """Plone's login form, filled in and posted as a browser does (its hidden fields
    and its submit button too)."""
    res = browser.get("/login")
    assert res.status == 200, res.text[:500]
    (form,) = [f for f in Page(res.text).forms if "__ac_password" in f["fields"]]
    fields = {**form["fields"], **form["buttons"],
              "__ac_name": site.user, "__ac_password": site.password}
    body = urlencode(fields).encode()
    return browser.request("POST", local(form["action"]), body=body,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})


def test_a_logged_in_browser_stays_on_one_client_while_anonymous_ones_spread(
        plone_site, front):  # noqa: F811
    lb, proxy = front(plone_site, "affinity = cookie\naffinity.when = __ac\n")
    anonymous = Browser(proxy.port)
    for _ in range(6):
        assert anonymous.get("/").status == 200
    assert sorted(set(served_by(lb, anonymous, 6))) == ["c0", "c1"]
    assert COOKIE not in anonymous.cookies  # no __ac: never pinned

    editor = Browser(proxy.port)
    res = log_in(editor, plone_site)
    assert res.status in (302, 303), res.text[:1000]
    location = res.header("Location") or ""
    assert location == PUBLIC or location.startswith(f"{PUBLIC}/"), location
    assert editor.cookies.get("__ac", '""') not in ("", '""'), res.headers
    for _ in range(6):
        res = editor.get("/@@overview-controlpanel")
        assert res.status == 200, "not logged in"
        assert "Site Setup" in res.text
    assert COOKIE in editor.cookies
    pinned = set(served_by(lb, editor, 6))
    assert len(pinned) == 1, pinned
    assert editor.cookies[COOKIE] == affinity_token(pinned.pop())

    for _ in range(6):  # and the anonymous browser still spreads
        assert anonymous.get("/").status == 200
    assert sorted(set(served_by(lb, anonymous, 6))) == ["c0", "c1"]


# ---------------------------------------------------------------- REST API


def api(browser: Browser, method: str, path: str, backend: str, payload: dict | None = None,
        token: str | None = None) -> Answer:
    """A REST API call through ``/++api++`` on the client ``backend`` (its affinity cookie)."""
    browser.cookies[COOKIE] = affinity_token(backend)
    headers = {"Accept": "application/json"}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(payload).encode() if payload is not None else None
    return browser.request(method, path, body=body, headers=headers)


def test_the_rest_api_logs_in_writes_through_one_client_and_reads_through_the_other(
        plone_site, front):  # noqa: F811
    lb, proxy = front(plone_site, "affinity = cookie\n")
    browser = Browser(proxy.port)

    res = api(browser, "GET", "/++api++/", "c0")
    assert res.status == 200, res.text[:500]
    assert "application/json" in (res.header("Content-Type") or "")
    root = res.json()
    assert root["@type"] == "Plone Site"
    assert root["@id"] == PUBLIC, root["@id"]  # plone.rest keeps ++api++ out of its URLs
    for address in plone_site.addresses:
        assert address not in res.text
    assert f"http://{HOST}" not in res.text

    res = api(browser, "POST", "/++api++/@login", "c0",
              {"login": plone_site.user, "password": plone_site.password})
    assert res.status == 200, res.text[:500]
    token = res.json()["token"]

    name = f"zope-lb-{uuid.uuid4().hex[:8]}"
    title = f"Written through c0 {uuid.uuid4()}"
    res = api(browser, "POST", "/++api++/", "c0",
              {"@type": "Document", "id": name, "title": title}, token)
    assert res.status == 201, res.text[:500]
    assert res.json()["@id"] == f"{PUBLIC}/{name}", res.json()["@id"]
    try:
        def read_on_c1() -> bool:
            answer = api(browser, "GET", f"/++api++/{name}", "c1", token=token)
            return (answer.status == 200 and answer.json()["title"] == title
                    and answer.json()["@id"] == f"{PUBLIC}/{name}")
        assert wait_until(read_on_c1, 15, interval=0.2)
        backends = [(e["method"], e["backend"]) for e in logged(lb, browser)]
        assert backends[:3] == [("GET", "c0"), ("POST", "c0"), ("POST", "c0")], backends
        assert backends[-1] == ("GET", "c1"), backends
    finally:
        api(browser, "DELETE", f"/++api++/{name}", "c0", token=token)


# ---------------------------------------------------------------- health


def test_each_client_answers_plone_observability_probes_on_a_port_of_its_own(
        plone_site):  # noqa: F811
    """What ``health.port`` will probe: liveness, readiness (a ZODB connection) and
    startup, answered by the add-on's own thread, not by Zope's workers."""
    for server in plone_site.clients:
        port = plone_site.cluster.health_port(server)
        assert port != server.port
        for path in ("/live", "/ready", "/startup"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", path)
                res = conn.getresponse()
                status, data = res.status, json.loads(res.read())
            finally:
                conn.close()
            assert (status, data["status"]) == (200, "ok"), (server.name, path, data)
            if path == "/ready":
                assert data["checks"]["zodb"]["ok"] is True, data
        assert get_status(port, "/Plone") == 404  # not Zope: only the probes


def balancer_health(lb) -> dict:
    """The balancer's health JSON, asked from 127.0.0.1 (in ``admin.allow``: with rows)."""
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    try:
        conn.request("GET", "/__zope_lb__/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_health_path_at_ok_takes_a_stopped_client_out_and_back(
        plone_site, front):  # noqa: F811
    """A stopped client is taken out by its probe; an editor pinned to it moves to
    the other client and stays logged in (the session secret is in the ZODB)."""
    lb, proxy = front(plone_site, "health.path = /Plone/@@ok\nhealth.interval = 0.5\n"
                                  "health.timeout = 2\nhealth.fall = 2\nhealth.rise = 2\n"
                                  "affinity = cookie\naffinity.when = __ac\n")
    browser = Browser(proxy.port)
    editor = Browser(proxy.port)
    assert log_in(editor, plone_site).status in (302, 303)
    editor.cookies[COOKIE] = affinity_token("c1")
    assert editor.get("/@@overview-controlpanel").status == 200
    assert served_by(lb, editor, 1) == ["c1"]

    def states() -> dict[str, tuple[str, str | None]]:
        return {b["id"]: (b["state"], b["reason"]) for b in balancer_health(lb)["backends"]}

    assert wait_until(lambda: [s for s, _ in states().values()] == ["up", "up"], 10), states()
    victim = plone_site.clients[1]
    try:
        victim.stop()
        assert wait_until(lambda: states()["c1"][0] == "down", 10), states()
        state, reason = states()["c1"]
        assert reason and "refused" in reason.lower(), reason
        report = balancer_health(lb)
        assert (report["status"], report["healthy"], report["total"]) == ("degraded", 1, 2)
        for _ in range(6):
            assert browser.get("/").status == 200
        assert set(served_by(lb, browser, 6)) == {"c0"}
        res = editor.get("/@@overview-controlpanel")
        assert res.status == 200 and "Site Setup" in res.text, "logged out by the move"
        assert served_by(lb, editor, 1) == ["c0"]
        assert editor.cookies[COOKIE] == affinity_token("c0")
    finally:
        plone_site.cluster.restart(victim)
    assert wait_until(lambda: states()["c1"][0] == "up", 15), states()
    for _ in range(4):
        assert browser.get("/").status == 200
    assert sorted(set(served_by(lb, browser, 4))) == ["c0", "c1"]


# ---------------------------------------------------------------- Plone 6 with Volto

# The README's Volto ini, scaled down: the default pool is the Volto (Node) frontend,
# paths unchanged and no VirtualHostMonster; the ``api`` pool takes ``/++api++`` to
# the Plone clients, rewritten and stripped; health per pool.
VOLTO = """
forwarded.trusted = 127.0.0.1
access_log = json
health.path = /
health.interval = 0.5
pool.api.match = path:/++api++
pool.api.vhm.root = /Plone/++api++
pool.api.vhm.strip = /++api++
pool.api.vhm.base = https://www.example.com
pool.api.health.path = /Plone/@@ok
pool.api.health.interval = 0.5
pool.api.affinity = cookie
"""


def all_ids(data: object) -> list[str]:
    """Every ``@id`` anywhere in a JSON document (nested objects and lists too)."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "@id" and isinstance(value, str):
                found.append(value)
            found.extend(all_ids(value))
    elif isinstance(data, list):
        for item in data:
            found.extend(all_ids(item))
    return found


def assert_public_ids(data: object) -> list[str]:
    """Every ``@id`` names the public site, without ``++api++`` or ``/Plone``."""
    ids = all_ids(data)
    for url in ids:
        assert url == PUBLIC or url.startswith(f"{PUBLIC}/"), url
        assert "++api++" not in url, url
        assert not urlsplit(url).path.startswith("/Plone"), url
    return ids


@pytest.fixture
def volto_frontend():
    """A stand-in for the Volto Node server: answers JSON describing each request it got."""
    app = Echo("volto")
    server = ServerThread(app).start()
    yield server, app
    server.stop()


def test_volto_site_api_pool_on_plone_with_public_ids_and_the_rest_to_the_frontend(
        plone_site, front, volto_frontend):  # noqa: F811
    frontend, volto = volto_frontend
    api_backends = "\n    ".join(backend_lines(plone_site))
    lb, proxy = front(plone_site, f"pool.api.backends =\n    {api_backends}\n",
                      backends=[f"{frontend.address}  id=volto"], base=VOLTO)
    browser = Browser(proxy.port)

    def states() -> dict[str, str]:
        return {b["id"]: b["state"] for b in balancer_health(lb)["backends"]}

    # health per pool: the frontend is probed at / (the Echo records it), the
    # clients at /Plone/@@ok.
    assert wait_until(lambda: states() == {"volto": "up", "c0": "up", "c1": "up"}, 10), \
        states()
    assert wait_until(lambda: any(r["path"] == "/" and r["method"] == "GET"
                                  for r in volto.requests), 5)
    assert not any(r["path"].startswith("/Plone") for r in volto.requests)

    # The API: the site's JSON, every @id public and without ++api++.
    res = api(browser, "GET", "/++api++/", "c0")
    assert res.status == 200, res.text[:500]
    assert "application/json" in (res.header("Content-Type") or "")
    root = res.json()
    assert root["@type"] == "Plone Site"
    assert root["@id"] == PUBLIC, root["@id"]
    ids = assert_public_ids(root)
    assert len(ids) >= 3, ids  # the site, its components, its items
    assert "++api++" not in res.text  # nor anywhere else in the answer
    for address in plone_site.addresses:
        assert address not in res.text

    # A token from @login; documents written through c0 are read back through c1.
    res = api(browser, "POST", "/++api++/@login", "c0",
              {"login": plone_site.user, "password": plone_site.password})
    assert res.status == 200, res.text[:500]
    token = res.json()["token"]
    tag = f"tag{uuid.uuid4().hex[:12]}"  # one word, to find exactly these documents
    names = [f"volto-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        for name in names:
            res = api(browser, "POST", "/++api++/", "c0",
                      {"@type": "Document", "id": name, "title": f"Written on c0 {tag}"},
                      token)
            assert res.status == 201, res.text[:500]
            assert res.json()["@id"] == f"{PUBLIC}/{name}", res.json()["@id"]
            assert_public_ids(res.json())
        read: list[Answer] = []

        def read_on_c1() -> bool:
            answer = api(browser, "GET", f"/++api++/{names[-1]}", "c1", token=token)
            if answer.status == 200 and tag in answer.json()["title"]:
                read.append(answer)
            return bool(read)
        assert wait_until(read_on_c1, 15, interval=0.2)
        assert read[0].json()["@id"] == f"{PUBLIC}/{names[-1]}", read[0].json()["@id"]
        assert_public_ids(read[0].json())
        assert "++api++" not in read[0].text

        # A batched search through c1: its batching links are built from the URL of
        # the request as Plone saw it, so they show what vhm.strip removed.
        res = api(browser, "GET", f"/++api++/@search?SearchableText={tag}&b_size=1",
                  "c1", token=token)
        assert res.status == 200, res.text[:500]
        found = res.json()
        assert found["items_total"] == 2, found
        assert {item["@id"] for item in found["items"]} <= {f"{PUBLIC}/{n}" for n in names}
        links = found["batching"]
        assert {"@id", "first", "next", "last"} <= set(links), links
        for key in ("@id", "first", "next", "last"):
            assert links[key].startswith(f"{PUBLIC}/@search?"), links
        assert_public_ids(found)
        assert "++api++" not in res.text

        backends = [(e["method"], e["backend"]) for e in logged(lb, browser)]
        assert backends[:4] == [("GET", "c0"), ("POST", "c0"), ("POST", "c0"),
                                ("POST", "c0")], backends
        assert backends[-2:] == [("GET", "c1"), ("GET", "c1")], backends
    finally:
        for name in names:
            api(browser, "DELETE", f"/++api++/{name}", "c0", token=token)
    assert not [r for r in volto.requests if r["headers"].get("User-Agent") == browser.agent]

    # Everything else goes to the frontend as sent: no VHM, X-Forwarded-* set.
    page = Browser(proxy.port)
    for path in ("/", "/news?b_size=5", "/news/a-page"):
        res = page.get(path)
        assert res.status == 200, res.text[:500]
        assert res.header("X-Backend") == "volto"
        got = res.json()
        sent_path, _, query = path.partition("?")
        assert (got["method"], got["path"], got["query"]) == ("GET", sent_path, query), got
        assert got["uri"] == path, got
        headers = got["headers"]
        assert headers["Host"] == HOST, headers
        assert headers["X-Forwarded-Proto"] == "https", headers
        assert headers["X-Forwarded-Host"] == HOST, headers
        assert headers["X-Forwarded-For"].split(",")[0].strip() == "127.0.0.1", headers
    assert served_by(lb, page.agent, 3) == ["volto"] * 3
    seen = [r["uri"] for r in volto.requests if r["headers"].get("User-Agent") == page.agent]
    assert seen == ["/", "/news?b_size=5", "/news/a-page"], seen
    assert not any("VirtualHost" in (r["uri"] or "") for r in volto.requests)


# ---------------------------------------------------------------- health.port


def test_health_port_probes_plone_observability_readiness_and_follows_a_stopped_client(
        plone_site, front):  # noqa: F811
    """One client, probed at plone.observability's ``/ready`` on its own port (the
    two clients of the fixture have two probe ports: one ``health.port`` each)."""
    victim = plone_site.clients[1]
    probe_port = plone_site.cluster.health_port(victim)
    assert get_status(victim.port, "/ready") == 404  # only the probe port has /ready
    lb, proxy = front(plone_site, "health.path = /ready\n"
                                  f"health.port = {probe_port}\nhealth.interval = 0.5\n"
                                  "health.timeout = 2\nhealth.fall = 2\nhealth.rise = 2\n",
                      backends=[f"{victim.address}  id=c1"])
    browser = Browser(proxy.port)

    def state() -> tuple[str, str | None]:
        (row,) = balancer_health(lb)["backends"]
        return row["state"], row["reason"]

    # up by its /ready: on the main port /ready is a 404, so only the probe port passes
    assert wait_until(lambda: state()[0] == "up", 10), state()
    seen: list[str] = []  # and stays up over several probes (a 404 is down in ~1 s)
    assert wait_until(lambda: bool(seen.append(state()[0])) or len(seen) >= 6, 10,
                      interval=0.5)
    assert set(seen) == {"up"}, seen
    assert browser.get("/").status == 200
    try:
        victim.stop()
        assert wait_until(lambda: state()[0] == "down", 10), state()
        reason = state()[1] or ""
        assert f"probe port {probe_port}" in reason, reason
        assert "refused" in reason.lower(), reason
        assert browser.get("/").status == 503
    finally:
        plone_site.cluster.restart(victim)
    plone_site.cluster.wait_for_health_servers()
    assert wait_until(lambda: state()[0] == "up", 15), state()
    assert browser.get("/").status == 200
