"""The admin Verify tab: ``zope-lb verify`` over the default pool, from a form.

Against plain waitress backends (no Zope): reachability is checked and passes,
the storage checks are reported skipped without a login, and fail by name
with one. The login typed into the form is used for the run and never shown,
logged or kept. The run is bounded and one at a time. One test, marked
``zope``, runs it against real Zope clients on one ZEO server, with the write
check.
"""

from __future__ import annotations

import base64
import html
import threading
import uuid

import pytest
from admin_support import ADMIN, PASSWORD, USERS, admin_balancer
from servers import wait_until
from webtest import TestApp
from zope_cluster import PASSWORD as ZOPE_PASSWORD
from zope_cluster import USER as ZOPE_USER
from zope_cluster import zope_cluster  # noqa: F401  (a fixture)

from zope_lb import LoadBalancer
from zope_lb.admin import AdminApp
from zope_lb.verify import Probe, judge

EVIL = '<script>alert("x")</script>'


@pytest.fixture
def users():
    return USERS


@pytest.fixture
def lb(backends, users):
    balancer = admin_balancer(backends)
    yield balancer
    balancer.close()


def admin(balancer, **options):
    app = TestApp(AdminApp(balancer, **options), extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    app.authorization = ("Basic", ("admin", PASSWORD))
    return app


def verify_form(app):
    page = app.get(f"{ADMIN}/verify/")
    return next(f for f in page.forms.values() if f.action.endswith("/verify/"))


def rows(page):
    """{client address: row HTML} of the report table."""
    body = page.text.split('<table class="backends report">', 1)[1].split("</table>", 1)[0]
    found = {}
    for row in body.split("<tr>")[2:]:
        address = row.split('data-label="Client"><code>', 1)[1].split("</code>", 1)[0]
        found[html.unescape(address)] = row
    return found


def test_the_verify_tab_lists_the_clients_and_offers_an_empty_login_field(lb, backends):
    app = admin(lb)
    page = app.get(f"{ADMIN}/verify/")
    assert '<a href="/__zope_lb__/verify/" aria-current="page">Verify</a>' in page.text
    for server in backends[:2]:
        assert f"<code>{server.address}</code>" in page.text
    assert backends[2].address not in page.text
    form = verify_form(app)
    assert form.method.lower() == "post" and form["csrf"].value
    assert form["user"].value == "" and form.fields["user"][0].attrs["type"] == "password"
    assert not form["write_check"].checked
    assert "Verify cluster" in page.text
    assert '<a href="/__zope_lb__/verify/"' in app.get(f"{ADMIN}/").text  # a tab on every page


def test_without_a_login_reachability_passes_and_storage_checks_are_skipped(lb, backends):
    page = verify_form(admin(lb)).submit(status=200)
    assert "<strong>INCOMPLETE</strong>: 2 of 2 clients passed every check made." in page.text
    found = rows(page)
    assert list(found) == [b.address for b in backends[:2]]
    for row in found.values():
        assert 'data-label="Reachable">HTTP 200 in ' in row
        assert '<span class="passed">ok</span>' in row
        assert row.count('<span class="dim">skipped</span>') == 3  # location, transaction, write
    assert "storage checks skipped: give a Zope Manager login" in page.text
    assert "Storage checks: skipped; write check: skipped." in page.text
    assert 'value="" autocomplete="new-password"' in page.text


def test_the_login_is_used_once_and_never_echoed_logged_or_kept(lb, backends, caplog):
    secret = f"pw-{uuid.uuid4().hex}"
    login = f"zopeadmin:{secret}"
    app = admin(lb)
    caplog.set_level("DEBUG")
    form = verify_form(app)
    form["user"] = login
    form["write_check"] = True
    page = form.submit(status=200)
    # Plain waitress backends are no Zope clients: the storage checks fail by name.
    assert "<strong>FAIL</strong>: 0 of 2 clients" in page.text
    assert "no Database Location on /Control_Panel/Database/main/manage_main" in page.text
    # No client passed the storage checks: none is trusted to write through.
    assert "Storage checks: checked; write check: skipped." in page.text
    assert "no client passed the storage checks" in page.text
    # Used: each client got the login with its requests...
    sent = "Basic " + base64.b64encode(login.encode()).decode()
    for server in backends[:2]:
        assert any(r["headers"].get("Authorization") == sent
                   for r in server.app.echo.requests)
    # ...and never shown, logged or kept.
    for text in (page.text, caplog.text, repr(lb.current_options())):
        assert secret not in text and "zopeadmin" not in text
    again = next(f for f in page.forms.values() if f.action.endswith("/verify/"))
    assert again["user"].value == "" and again["write_check"].checked
    assert secret not in repr(vars(lb.admin)) and secret not in repr(vars(app.app))


def test_a_login_without_a_colon_is_refused_without_echoing_it(lb):
    calls = []
    app = admin(lb, verify=lambda *a, **k: calls.append(a))
    form = verify_form(app)
    form["user"] = "zopeadmin-hunter2"
    page = form.submit(status=400)
    assert "NAME:PASSWORD" in page.text and "hunter2" not in page.text
    assert calls == []


def test_an_unreachable_client_fails_by_name(lb, backends):
    backends[1].stop()
    page = verify_form(admin(lb, verify_timeout=2)).submit(status=200)
    assert "<strong>FAIL</strong>: 1 of 2 clients" in page.text
    up, down = rows(page).values()
    assert '<span class="passed">ok</span>' in up
    assert '<span class="failed">FAIL</span>' in down
    assert "reachable: connection refused" in down


def test_the_form_needs_its_csrf_token_and_the_same_origin(lb):
    calls = []
    app = admin(lb, verify=lambda *a, **k: calls.append(a))
    page = app.post(f"{ADMIN}/verify/", {"user": "", "write_check": "1"}, status=403)
    assert "security token" in page.text
    token = verify_form(app)["csrf"].value
    app.post(f"{ADMIN}/verify/", {"csrf": token}, headers={"Origin": "http://evil.example"},
             status=403)
    assert calls == []


def test_markup_in_a_report_is_shown_as_text(lb):
    def evil(addresses, **options):
        return judge([Probe(EVIL, error=EVIL), Probe(addresses[0], status=200, ms=1.0)],
                     storage_checked=False, write_checked=False)

    page = verify_form(admin(lb, verify=evil)).submit(status=200)
    assert "<script>" not in page.text
    assert page.text.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 3


def test_a_run_is_bounded_and_only_one_runs_at_a_time(lb):
    release = threading.Event()
    started = []

    def slow(addresses, **options):
        started.append(options)
        release.wait(10)
        return judge([Probe(a, status=200, ms=1.0) for a in addresses], False, False)

    app = admin(lb, verify=slow, verify_deadline=0.3)
    try:
        page = verify_form(app).submit(status=504)
        assert "did not finish within 0.3 s" in page.text
        assert started == [{"user": None, "write_check": False, "timeout": 5.0}]
        busy = verify_form(app).submit(status=409)
        assert "already running" in busy.text and len(started) == 1
    finally:
        release.set()
    assert wait_until(lambda: not app.app._verifying.locked(), 5)
    done = verify_form(app).submit(status=200)
    assert "<strong>INCOMPLETE</strong>: 2 of 2 clients" in done.text  # no login given


# ---------------------------------------------------------------- real Zope


@pytest.mark.zope
def test_a_real_zope_cluster_passes_with_the_write_check(zope_cluster, users):  # noqa: F811
    balancer = LoadBalancer([f"{a} id=c{i}" for i, a in enumerate(zope_cluster.addresses)],
                            health_interval=0, admin_users=users)
    try:
        form = verify_form(admin(balancer))
        form["user"] = f"{ZOPE_USER}:{ZOPE_PASSWORD}"
        form["write_check"] = True
        page = form.submit(status=200)
    finally:
        balancer.close()
    assert "<strong>PASS</strong>: 2 of 2 clients passed every check made." in page.text, \
        page.text
    assert "Storage checks: checked; write check: checked." in page.text
    writer, reader = rows(page).values()
    location = f"<code>[(&#x27;127.0.0.1&#x27;, {zope_cluster.zeo.port})]</code> (connected)"
    for row in (writer, reader):
        assert location in row and '<span class="passed">ok</span>' in row
        assert 'data-label="Last transaction"><code>' in row
    assert "written here" in writer and "seen after " in reader
    assert ZOPE_PASSWORD not in page.text and f"{ZOPE_USER}:" not in page.text
