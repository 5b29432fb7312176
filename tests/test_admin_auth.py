"""Admin access: off without users, allow-list, Basic and login form, sessions, CSRF,
same origin, the failed-login budget, no caching."""

from __future__ import annotations

import textwrap
import threading
import time

import pytest
from admin_support import ADMIN, PASSWORD, USERS, admin_balancer
from paste.deploy import loadapp
from webtest import TestApp

from zope_lb import ConfigError, LoadBalancer
from zope_lb.admin import AdminApp, Registry, admin_app_factory, registry
from zope_lb.admin.auth import Accounts, FailureBudget, allowed, same_origin
from zope_lb.converters import as_networks
from zope_lb.passwd import hash_password

LOCAL = {"REMOTE_ADDR": "127.0.0.1"}


@pytest.fixture
def users():
    return USERS


@pytest.fixture
def lb(backends, users):
    balancer = admin_balancer(backends)
    yield balancer
    balancer.close()


def client(balancer, environ=None, **options):
    return TestApp(AdminApp(balancer, **options), extra_environ={**LOCAL, **(environ or {})})


def basic(app, password=PASSWORD, name="admin"):
    app.authorization = ("Basic", (name, password))
    return app


class Wrapped:
    """The balancer, with some attributes replaced (metrics, stats)."""

    def __init__(self, balancer, **attributes):
        self._balancer = balancer
        self.__dict__.update(attributes)

    def __getattr__(self, name):
        return getattr(self._balancer, name)


def login(app, password=PASSWORD, status=303):
    form = app.get(f"{ADMIN}/login").forms[0]
    form["name"] = "admin"
    form["password"] = password
    return form.submit(status=status)


# -- off, allow-list ----------------------------------------------------------------


def test_everything_is_off_without_admin_users(backends):
    balancer = LoadBalancer([b.address for b in backends[:2]], health_interval=0)
    try:
        app = basic(client(balancer))
        for path in ("/", "/basic/", "/login", "/metrics", "/api/openapi.json"):
            assert "admin.users" in app.get(ADMIN + path, status=404).text
        assert app.get(f"{ADMIN}/api/status", status=404).json["error"].startswith("The admin")
    finally:
        balancer.close()


def test_addresses_outside_admin_allow_get_403_even_with_credentials(lb):
    app = basic(client(lb, {"REMOTE_ADDR": "192.0.2.7"}))
    assert app.get(f"{ADMIN}/", status=403).headers["Cache-Control"] == "no-store"
    assert app.get(f"{ADMIN}/api/status", status=403).json["error"].startswith("Your address")
    assert basic(client(lb, {"REMOTE_ADDR": "::1"})).get(f"{ADMIN}/").status_int == 200
    lb.apply({"admin.allow": "192.0.2.0/24"})
    assert app.get(f"{ADMIN}/").status_int == 200
    basic(client(lb)).get(f"{ADMIN}/", status=403)  # loopback no longer listed


def test_a_trusted_proxy_reports_the_client_address(lb):
    lb.apply({"forwarded.trusted": "127.0.0.1"})
    through_proxy = basic(client(lb, {"HTTP_X_FORWARDED_FOR": "198.51.100.9"}))
    through_proxy.get(f"{ADMIN}/", status=403)
    local_client = basic(client(lb, {"HTTP_X_FORWARDED_FOR": "127.0.0.5"}))
    assert local_client.get(f"{ADMIN}/").status_int == 200


def test_allowed_matches_networks_and_mapped_addresses():
    nets = as_networks("127.0.0.0/8 ::1 10.1.0.0/16")
    assert allowed("127.0.0.1", nets) and allowed("::1", nets) and allowed("10.1.2.3", nets)
    assert allowed("::ffff:10.1.2.3", nets)
    assert not allowed("10.2.0.1", nets) and not allowed("", nets) and not allowed("x", nets)


# -- credentials --------------------------------------------------------------------


def test_without_credentials_pages_show_the_login_form_and_the_api_asks_for_basic(lb):
    app = client(lb)
    page = app.get(f"{ADMIN}/basic/", status=401)
    assert page.forms[0].action == f"{ADMIN}/login"
    assert page.forms[0]["next"].value == f"{ADMIN}/basic/"
    assert not page.headers["WWW-Authenticate"].startswith("Basic")  # no browser dialog
    api = app.get(f"{ADMIN}/api/status", status=401)
    assert api.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert api.json["error"].startswith("Credentials required")
    assert app.get(f"{ADMIN}/metrics", status=401).headers["WWW-Authenticate"].startswith("Basic")


def test_basic_credentials_open_pages_and_api(lb):
    app = basic(client(lb))
    assert "c0" in app.get(f"{ADMIN}/").text
    assert app.get(f"{ADMIN}/api/status").json["total"] == 2


def budgeted(balancer, now, address="127.0.0.1", **options):
    """A client of an admin app whose failure budget runs on the clock ``now``."""
    app = AdminApp(balancer, login_clock=lambda: now[0], **options)
    return app, TestApp(app, extra_environ={"REMOTE_ADDR": address})


def test_wrong_credentials_get_401_then_429_at_once_until_the_window_frees(lb, caplog):
    now = [1000.0]
    app, attacker = budgeted(lb, now)
    basic(attacker, password="wrong")
    for _ in range(10):
        response = attacker.get(f"{ADMIN}/api/status", status=401)
    assert response.json["error"] == "Wrong name or password."
    assert "wrong name or password for 'admin' from 127.0.0.1 (10 of 10" in caplog.text
    started = time.monotonic()
    refused = attacker.get(f"{ADMIN}/api/status", status=429)
    took = time.monotonic() - started
    assert took < 0.04  # no sleep, and no scrypt check either (one costs about 50 ms)
    assert refused.headers["Retry-After"] == "60"
    assert refused.json["error"].startswith("Too many wrong passwords")
    basic(attacker).get(f"{ADMIN}/api/status", status=429)  # even the right one, for now
    operator = basic(TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.2"}))
    assert operator.get(f"{ADMIN}/api/status").json["total"] == 2  # another address
    # the right password is now remembered, but no oracle: still 429 from here
    basic(attacker).get(f"{ADMIN}/api/status", status=429)
    basic(attacker, password="wrong").get(f"{ADMIN}/api/status", status=429)
    now[0] += 30
    assert attacker.get(f"{ADMIN}/api/status", status=429).headers["Retry-After"] == "30"
    now[0] += 30  # the first failure leaves the window: one more try
    assert basic(attacker).get(f"{ADMIN}/api/status").json["total"] == 2
    basic(attacker, name="nobody").get(f"{ADMIN}/", status=401)  # unknown user: the same
    assert "for 'nobody'" in caplog.text


def test_the_login_form_and_basic_share_the_budget(lb):
    now = [0.0]
    app, browser = budgeted(lb, now, address="127.0.0.9")
    for _ in range(5):
        basic(browser, password="wrong").get(f"{ADMIN}/api/status", status=401)
    browser.authorization = None
    for _ in range(5):
        page = login(browser, password="nope", status=401)
        assert "Wrong name or password" in page.text
    started = time.monotonic()
    page = login(browser, status=429)  # the right password, but the budget is spent
    assert time.monotonic() - started < 0.5
    assert "Too many wrong passwords" in page.text and page.headers["Retry-After"] == "60"
    assert "zlb_admin=" not in page.headers.get("Set-Cookie", "")
    now[0] += 60
    login(browser)  # 303: logged in
    assert "Log out" in browser.get(f"{ADMIN}/").text


def test_forty_parallel_guesses_hold_no_thread(lb):
    """Issue 11 item 8: each wrong guess slept in a worker thread. Now the 41st
    answer comes as fast as the first, and an operator is never held up."""
    app = AdminApp(lb)
    operator = basic(TestApp(app, extra_environ=dict(LOCAL)))
    operator.get(f"{ADMIN}/api/status")  # password checked once and remembered
    attacker = basic(TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.66"}), "wrong")
    statuses = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: statuses.append(
        attacker.get(f"{ADMIN}/api/status", expect_errors=True).status_int))
        for _ in range(40)]
    for thread in threads:
        thread.start()
    operator_started = time.monotonic()
    operator.get(f"{ADMIN}/api/status")
    operator_took = time.monotonic() - operator_started
    for thread in threads:
        thread.join(10)
    took = time.monotonic() - started
    assert sorted(statuses) == [401] * 10 + [429] * 30
    assert operator_took < 1.0 and took < 5.0
    print(f"40 parallel wrong guesses answered in {took:.2f} s; operator in "
          f"{operator_took:.3f} s")


def test_failures_leave_the_window_and_memory_is_bounded():
    now = [0.0]
    budget = FailureBudget(limit=3, window=60, capacity=3, clock=lambda: now[0])
    assert [budget.charge("a") for _ in range(3)] == [0, 0, 0]
    assert budget.spent("a") == 3
    assert budget.charge("a") == pytest.approx(60)  # spent: refused, not counted
    assert budget.retry_after("a") == pytest.approx(60) and budget.retry_after("z") == 0
    assert budget.charge("b") == 0
    budget.refund("b")  # a right password is no failure
    assert budget.spent("b") == 0
    now[0] = 20
    assert budget.charge("a") == pytest.approx(40)
    now[0] = 60  # a's failures at 0 are a minute old
    assert budget.charge("a") == 0 and budget.spent("a") == 1
    for address in ("c", "d", "e"):
        budget.charge(address)
    assert len(budget._failures) == 3 and "a" not in budget._failures
    for _ in range(10):
        budget.charge("e")
    assert budget.spent("e") == 3 and len(budget._failures["e"]) == 3


# -- login form and session ---------------------------------------------------------


def test_login_form_sets_a_signed_session_cookie_and_logout_clears_it(lb):
    app = client(lb)
    response = login(app)
    assert response.location.endswith(f"{ADMIN}/")
    cookie = next(v for k, v in response.headerlist
                  if k == "Set-Cookie" and v.startswith("zlb_admin="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert f"Path={ADMIN}/" in cookie and "secure" not in cookie.lower()
    page = app.get(f"{ADMIN}/")
    assert "Log out" in page.text and "c1" in page.text
    logout = next(f for f in page.forms.values() if f.action.endswith("/logout"))
    logout.submit(status=303)
    app.get(f"{ADMIN}/", status=401)


def test_login_redirects_only_inside_the_admin_pages(lb):
    app = client(lb)
    form = app.get(f"{ADMIN}/basic/", status=401).forms[0]
    form["name"], form["password"] = "admin", PASSWORD
    assert form.submit(status=303).location.endswith(f"{ADMIN}/basic/")
    for evil in ("//evil.example/", "http://evil.example/", "/elsewhere"):
        form = client(lb).get(f"{ADMIN}/login?next={evil}").forms[0]
        assert form["next"].value == f"{ADMIN}/"


def test_wrong_login_form_password_gets_401_and_spends_the_budget(lb, caplog):
    app = client(lb)
    page = login(app, password="nope", status=401)
    assert "Wrong name or password" in page.text
    assert page.forms[0]["name"].value == "admin"
    assert "wrong name or password for 'admin' from 127.0.0.1 (1 of 10" in caplog.text
    assert "zlb_admin=" not in page.headers.get("Set-Cookie", "")


def test_login_without_its_csrf_token_is_refused(lb):
    app = client(lb)
    app.get(f"{ADMIN}/login")
    page = app.post(f"{ADMIN}/login", {"name": "admin", "password": PASSWORD}, status=403)
    assert "expired" in page.text
    fresh = client(lb)  # the form's token without its cookie
    token = client(lb).get(f"{ADMIN}/login").forms[0]["csrf"].value
    fresh.post(f"{ADMIN}/login", {"name": "admin", "password": PASSWORD, "csrf": token},
               status=403)


def test_sessions_expire_and_forged_cookies_fail(lb):
    now = [1_000_000.0]
    app = client(lb, clock=lambda: now[0])
    login(app)
    app.get(f"{ADMIN}/")
    now[0] += 8 * 3600 + 1
    app.get(f"{ADMIN}/", status=401)
    now[0] = 1_000_000.0
    value = app.cookies["zlb_admin"]
    name, issued, nonce, signature = value.split(".")
    app.set_cookie("zlb_admin", ".".join(("root", issued, nonce, signature)))
    app.get(f"{ADMIN}/", status=401)
    app.set_cookie("zlb_admin", ".".join((name, str(int(now[0]) + 60), nonce, signature)))
    app.get(f"{ADMIN}/", status=401)
    app.set_cookie("zlb_admin", value)
    assert app.get(f"{ADMIN}/").status_int == 200


def test_changing_a_password_logs_every_session_out(lb):
    app = client(lb)
    login(app)
    app.get(f"{ADMIN}/")
    lb.apply({"admin.users": f"admin:{hash_password('another one')}"})
    app.get(f"{ADMIN}/", status=401)


def test_session_key_is_shared_by_processes_reading_the_same_users(users):
    parsed = (tuple(users.split(":", 1)),)
    cookie = Accounts(parsed).new_session("admin")
    assert Accounts(parsed).session(cookie).user == "admin"  # another process, a restart
    other = (("admin", hash_password("x")),)
    assert Accounts(other).session(cookie) is None


# -- CSRF and origin ----------------------------------------------------------------


def test_forms_without_the_csrf_token_are_refused_and_change_nothing(lb):
    app = basic(client(lb))
    before = lb.settings
    app.post(f"{ADMIN}/backends/c0/disable", status=403)
    app.post(f"{ADMIN}/backends/c0/disable", {"csrf": "forged"}, status=403)
    app.post(f"{ADMIN}/basic/", {"backends": "127.0.0.1:9"}, status=403)
    assert lb.settings is before
    assert {row["state"] for row in lb.stats()} == {"up"}
    form = app.get(f"{ADMIN}/").forms[0]
    assert form.action == f"{ADMIN}/backends/c0/disable"
    form.submit(status=303)
    assert lb.stats()[0]["state"] == "disabled"


def test_the_api_with_a_session_cookie_needs_the_csrf_header(lb):
    app = client(lb)
    login(app)
    app.post(f"{ADMIN}/api/backends/c0/drain", status=403)
    page = app.get(f"{ADMIN}/")
    token = page.forms[0]["csrf"].value
    app.post(f"{ADMIN}/api/backends/c0/drain", headers={"X-CSRF-Token": token})
    assert lb.stats()[0]["state"] == "draining"


def test_cross_site_requests_are_refused_even_with_basic_credentials(lb):
    app = basic(client(lb, {"HTTP_HOST": "lb.example:6543"}))
    app.post(f"{ADMIN}/api/backends/c0/disable", headers={"Origin": "https://evil.example"},
             status=403)
    app.post(f"{ADMIN}/api/backends/c0/disable", headers={"Origin": "null"}, status=403)
    app.post(f"{ADMIN}/api/backends/c0/disable", headers={"Sec-Fetch-Site": "cross-site"},
             status=403)
    assert lb.stats()[0]["state"] == "up"
    app.post(f"{ADMIN}/api/backends/c0/disable", headers={"Origin": "http://lb.example:6543"})
    assert lb.stats()[0]["state"] == "disabled"


def test_same_origin_compares_scheme_host_and_port():
    environ = {"HTTP_HOST": "lb.example", "wsgi.url_scheme": "https"}
    assert same_origin(environ)
    assert same_origin({**environ, "HTTP_ORIGIN": "https://LB.example"})
    assert same_origin({**environ, "HTTP_ORIGIN": "https://lb.example:443"})
    assert not same_origin({**environ, "HTTP_ORIGIN": "http://lb.example"})
    assert not same_origin({**environ, "HTTP_ORIGIN": "https://lb.example:8443"})


# -- no caching, metrics ------------------------------------------------------------


class Metrics:
    def render(self, accept=""):
        if "openmetrics" in accept:
            return "application/openmetrics-text; version=1.0.0; charset=utf-8", b"# EOF\n"
        return "text/plain; version=0.0.4; charset=utf-8", b"zope_lb_backends 2\n"


def test_every_admin_response_is_no_store(lb):
    app = client(Wrapped(lb, metrics=Metrics()))
    responses = [
        app.get(f"{ADMIN}/", status=401), app.get(f"{ADMIN}/login"),
        app.get(f"{ADMIN}/admin.css"), app.get(f"{ADMIN}/api/status", status=401),
        app.get("/", status=303), app.get("/elsewhere", status=404),
    ]
    basic(app)
    responses += [
        app.get(f"{ADMIN}/"), app.get(f"{ADMIN}/basic/"), app.get(f"{ADMIN}/balancing/"),
        app.get(f"{ADMIN}/nothing", status=404), app.get(f"{ADMIN}/metrics"),
        app.get(f"{ADMIN}/api/status"), app.get(f"{ADMIN}/api/openapi.json"),
        app.get(f"{ADMIN}/api/nothing", status=404),
        app.put_json(f"{ADMIN}/api/backends", {"backends": ["http://x:1"]}, status=400),
        app.post(f"{ADMIN}/basic/", {"backends": "x",
                                     "csrf": app.get(f"{ADMIN}/").forms[0]["csrf"].value},
                 status=400),
        app.get(f"{ADMIN}/health"),
        basic(client(lb), password="bad").get(f"{ADMIN}/", status=401),
        basic(client(lb, {"REMOTE_ADDR": "192.0.2.1"})).get(f"{ADMIN}/", status=403),
    ]
    for response in responses:
        assert response.headers["Cache-Control"] == "no-store", response.request.path
        assert "script-src" not in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"


def test_real_metrics_are_served(lb):
    if getattr(lb, "metrics", None) is None:
        pytest.skip("this balancer has no metrics")
    served = basic(client(lb)).get(f"{ADMIN}/metrics")
    assert served.content_type.startswith(("text/plain", "application/openmetrics-text"))


def test_metrics_need_credentials_unless_public_and_stay_behind_the_allow_list(lb):
    wrapped = Wrapped(lb, metrics=Metrics())
    client(wrapped).get(f"{ADMIN}/metrics", status=401)
    response = basic(client(wrapped)).get(f"{ADMIN}/metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.body == b"zope_lb_backends 2\n"
    openmetrics = basic(client(wrapped)).get(
        f"{ADMIN}/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.content_type == "application/openmetrics-text"
    assert "not enabled" in basic(client(Wrapped(lb, metrics=None))).get(
        f"{ADMIN}/metrics", status=404).text
    lb.apply({"metrics.public": "true"})
    assert client(wrapped).get(f"{ADMIN}/metrics").body == b"zope_lb_backends 2\n"
    client(wrapped).get(f"{ADMIN}/", status=401)  # only the metrics are public
    client(wrapped, {"REMOTE_ADDR": "192.0.2.1"}).get(f"{ADMIN}/metrics", status=403)


# -- served on its own: the registry and the PasteDeploy factory ---------------------


def test_admin_app_factory_finds_the_balancer_by_name(lb, tmp_path):
    ini = tmp_path / "admin.ini"
    ini.write_text(textwrap.dedent("""\
        [app:admin]
        use = call:zope_lb.admin:admin_app_factory
        balancer = admin-test
        """))
    app = basic(TestApp(loadapp(f"config:{ini}", name="admin"), extra_environ=dict(LOCAL)))
    assert "admin-test" in app.get(f"{ADMIN}/", status=503).text
    registry.register("admin-test", lb)
    try:
        assert app.get(f"{ADMIN}/api/status").json["total"] == 2
        assert app.get(f"{ADMIN}/health").json["status"] == "ok"  # public on its own port
        assert app.get("/", status=303).location.endswith(f"{ADMIN}/")
    finally:
        registry.unregister("admin-test", lb)
    app.get(f"{ADMIN}/", status=503)
    with pytest.raises(ConfigError, match="admin.users"):
        admin_app_factory({}, balancer="main", **{"admin.users": "x"})


def test_registry_holds_balancers_weakly():
    class Thing:
        pass

    names = Registry()
    thing = Thing()
    names.register("main", thing)
    assert names.get("main") is thing
    names.unregister("main", Thing())  # someone else's: ignored
    assert names.names() == ["main"]
    del thing
    assert names.get("main") is None


@pytest.mark.parametrize("peer", ["127.0.0.1", "203.0.113.7"])
def test_the_health_endpoint_stays_public_when_the_admin_is_locked(lb, peer):
    """With admin.users set, the monitor still reads the health endpoint with no
    login and from outside admin.allow, while the admin pages refuse it."""
    app = TestApp(lb, extra_environ={"REMOTE_ADDR": peer})
    health = app.get(f"{ADMIN}/health")
    assert health.json["status"] == "ok" and health.json["total"] == 2
    assert "admin" not in health.text and PASSWORD not in health.text
    app.get(f"{ADMIN}/", status=401 if peer == "127.0.0.1" else 403)
    app.get(f"{ADMIN}/api/status", status=401 if peer == "127.0.0.1" else 403)


def test_parallel_calls_with_the_right_password_never_meet_the_budget(lb):
    """An API client (a script, a scraper) sends Basic on every call, maybe many at
    once: once its password passed, its calls charge nothing."""
    app = AdminApp(lb, login_limit=2)
    operator = basic(TestApp(app, extra_environ=dict(LOCAL)))
    operator.get(f"{ADMIN}/api/status")
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(
        operator.get(f"{ADMIN}/api/status", expect_errors=True).status_int))
        for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert statuses == [200] * 20
