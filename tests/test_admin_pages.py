"""Admin pages: status, Basic and Balancing tabs, actions, escaping; pure rendering and
through the app over real backends."""

from __future__ import annotations

import html
import re
from collections import Counter

import pytest
from admin_support import ADMIN, PASSWORD, admin_balancer
from webtest import TestApp

from zope_lb.admin import AdminApp
from zope_lb.admin.pages import Field, Frame, balancing_page, basic_page, status_page

FRAME = Frame(ADMIN, "admin", "basic", "tok")
EVIL = '<script>alert("x")</script>'


@pytest.fixture
def lb(backends):
    balancer = admin_balancer(backends)
    yield balancer
    balancer.close()


def admin(balancer):
    app = TestApp(AdminApp(balancer), extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    app.authorization = ("Basic", ("admin", PASSWORD))
    return app


def row(**changes):
    base = {"id": "c0", "address": "127.0.0.1:8081", "pool": "default", "role": "primary",
            "state": "up", "reason": "", "weight": 1, "base_weight": 1, "maxconn": 4,
            "active": 1, "queued": 0, "requests": 9, "requests_1m": 9, "errors_1m": 0,
            "p50_ms": 3.2, "p95_ms": 11.0, "last_probe": None}
    return {**base, **changes}


HEALTHY = {"status": "ok", "healthy": 1, "total": 1}


def served(balancer, n=6):
    app = TestApp(balancer)
    return Counter(app.get("/echo").headers["X-Backend"] for _ in range(n))


# -- pure rendering -----------------------------------------------------------------


def test_status_page_escapes_every_string_from_a_stats_row():
    page = status_page(FRAME, {"status": "degraded", "healthy": 0, "total": 1}, [row(
        id=EVIL, address=f"{EVIL}:80", reason=f"probe said {EVIL}", state="down",
        last_probe={"seconds_ago": 1.5, "passed": False, "detail": EVIL})])
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 5
    assert "%3Cscript%3E" in page  # the id in the action URLs is quoted


def test_status_page_shows_summary_row_fields_and_refreshes():
    page = status_page(FRAME, HEALTHY, [row(weight=0.25, base_weight=2, last_probe={
        "seconds_ago": 2.1, "passed": True, "detail": "200"})])
    assert '<meta http-equiv="refresh" content="5; url=/__zope_lb__/">' in page
    assert "<strong>1 of 1</strong> primary backends up" in page and 'role="alert"' not in page
    assert "0.25 <span" in page and "of 2 (slow start)" in page
    assert "3.2&nbsp;ms" in page and "11.0&nbsp;ms" in page
    assert "passed</span> 2.1&nbsp;s ago: 200" in page
    assert 'name="viewport"' in page


def test_degraded_cluster_raises_an_alarm_naming_the_backends_down():
    page = status_page(FRAME, {"status": "degraded", "healthy": 1, "total": 2}, [
        row(), row(id="c1", state="down", reason="3 probes failed: connection refused")])
    alarm = re.search(r'<div class="notice error" role="alert">(.*?)</div>', page).group(1)
    assert "Cluster degraded" in alarm and "c1 down: 3 probes failed" in alarm
    assert "site is down" in status_page(FRAME, {"status": "down", "healthy": 0, "total": 1},
                                         [row(state="down")])


@pytest.mark.parametrize("state, offered", [
    ("up", {"disable", "drain"}), ("down", {"disable", "drain"}),
    ("draining", {"enable", "disable"}), ("disabled", {"enable", "drain"}),
])
def test_only_actions_that_change_something_are_offered(state, offered):
    page = status_page(FRAME, HEALTHY, [row(state=state)])
    assert set(re.findall(r"/backends/c0/(\w+)\"", page)) == offered
    assert page.count('name="csrf" value="tok"') == len(offered)


def test_basic_page_keeps_the_users_text_escaped_and_its_first_newline():
    page = basic_page(FRAME, f"\n127.0.0.1:1\n</textarea>{EVIL}", error=f"Line 2 ({EVIL}): no")
    assert "<script>" not in page and "</textarea><script" not in page
    assert 'wrap="off">\n\n127.0.0.1:1\n&lt;/textarea&gt;' in page
    assert "Nothing was changed" in page or "nothing was changed" in page


def test_balancing_page_marks_the_field_in_error():
    page = balancing_page(FRAME, [("Timeouts", [
        Field("timeout.read", "soon", "Seconds to wait; then `504`."),
        Field("strategy", "first", "", ("first", "round_robin"))])],
        error="timeout.read: must be a duration", error_field="timeout.read")
    assert 'name="timeout.read" aria-invalid="true"' in page
    assert 'value="soon"' in page and "<code>504</code>" in page
    assert "<option selected>first</option><option>round_robin</option>" in page


# -- through the app ----------------------------------------------------------------


def test_status_page_lists_every_backend_with_its_numbers(lb):
    served(lb, 4)
    page = admin(lb).get(f"{ADMIN}/")
    assert page.content_type == "text/html"
    for backend in lb.stats():
        assert f"<strong>{backend['id']}</strong>" in page.text
        assert backend["address"] in page.text
    assert page.text.count('data-label="Req/1m">2<') == 2
    assert "<strong>2 of 2</strong>" in page.text


def test_markup_in_stats_is_shown_as_text(lb):
    class Marked:
        settings = property(lambda self: lb.settings)

        def stats(self):
            return [row(id=EVIL, reason=EVIL, address=EVIL)]

        def health(self):
            return {"status": "degraded", "healthy": 0, "total": 1}

    page = admin(Marked()).get(f"{ADMIN}/")
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text


def test_basic_tab_saves_a_valid_list_at_once(lb, backends):
    app = admin(lb)
    form = app.get(f"{ADMIN}/basic/").forms[0]
    assert form["backends"].value.splitlines()[0].startswith(backends[0].address)
    form["backends"] = (f"# the new list\n{backends[1].address} id=c1\n\n"
                        f"{backends[2].address}  id=c2 weight=2\n")
    response = form.submit(status=303)
    assert response.location.endswith(f"{ADMIN}/basic/?saved=1")
    assert "Saved and applied" in response.follow().text
    assert served(lb, 6) == {"b1": 2, "b2": 4}
    assert lb.current_options()["backends"].splitlines() == [
        f"{backends[1].address}  id=c1", f"{backends[2].address}  id=c2  weight=2"]


@pytest.mark.parametrize("text, line, rule", [
    ("{0}\nhttp://{1}", 2, "drop the 'http://' prefix"),
    ("\n\n{0}\n{1}\n127.0.0.1", 5, "always include the port number"),
    ("{0}\n{1} wieght=2", 2, "unknown flag 'wieght=2'"),
    ("{0}\n{0}", 2, "duplicate backend"),
])
def test_basic_tab_refuses_a_bad_list_whole_and_keeps_the_text(lb, backends, text, line, rule):
    app = admin(lb)
    before, options = lb.settings, lb.current_options()
    form = app.get(f"{ADMIN}/basic/").forms[0]
    form["backends"] = text.format(backends[0].address, backends[2].address)
    page = form.submit(status=400)
    assert f"Line {line} (" in page.text and html.escape(rule) in page.text
    assert "nothing was changed" in page.text
    assert page.forms[0]["backends"].value == form["backends"].value.replace("\r\n", "\n")
    assert lb.settings is before and lb.current_options() == options
    assert served(lb) == {"b0": 3, "b1": 3}


def test_an_empty_list_is_refused(lb):
    app = admin(lb)
    form = app.get(f"{ADMIN}/basic/").forms[0]
    form["backends"] = "  \n# nothing\n"
    assert "at least one backend" in form.submit(status=400).text
    assert len(lb.settings.backends) == 2


def test_balancing_tab_shows_current_values_and_applies_a_valid_form(lb):
    app = admin(lb)
    form = app.get(f"{ADMIN}/balancing/").forms[0]
    assert form["strategy"].value == "round_robin" and form["timeout.read"].value == "300"
    assert "least_connections" in [value for value, _, _ in form["strategy"].options]
    form["strategy"] = "first"
    form["timeout.read"] = "45s"
    form["health.path"] = "/@@ok"
    response = form.submit(status=303)
    assert "Saved and applied" in response.follow().text
    assert (lb.settings.strategy, lb.settings.timeout_read, lb.settings.health_path) == (
        "first", 45.0, "/@@ok")
    assert served(lb) == {"b0": 6}


def test_balancing_tab_refuses_a_bad_value_and_changes_nothing(lb):
    app = admin(lb)
    before = lb.settings
    form = app.get(f"{ADMIN}/balancing/").forms[0]
    form["strategy"] = "first"
    form["timeout.read"] = "soon"
    page = form.submit(status=400)
    assert "timeout.read: must be a duration" in page.text
    assert 'name="timeout.read" aria-invalid="true"' in page.text
    assert page.forms[0]["timeout.read"].value == "soon"
    assert page.forms[0]["strategy"].value == "first"  # the user's choice is kept
    assert lb.settings is before


def test_action_buttons_disable_enable_and_drain(lb):
    app = admin(lb)
    page = app.get(f"{ADMIN}/")
    disable = next(f for f in page.forms.values() if f.action.endswith("/c0/disable"))
    response = disable.submit(status=303)
    assert "c0: disable done." in response.follow().text
    assert served(lb) == {"b1": 6}
    page = app.get(f"{ADMIN}/")
    assert '<span class="state disabled">disabled</span>' in page.text
    enable = next(f for f in page.forms.values() if f.action.endswith("/c0/enable"))
    enable.submit(status=303)
    assert served(lb) == {"b0": 3, "b1": 3}
    drain = next(f for f in app.get(f"{ADMIN}/").forms.values()
                 if f.action.endswith("/c1/drain"))
    drain.submit(status=303)
    assert lb.stats()[1]["state"] == "draining"
    token = page.forms[0]["csrf"].value
    assert "No backend" in app.post(f"{ADMIN}/backends/nope/drain", {"csrf": token},
                                    status=404).text
    app.get(f"{ADMIN}/backends/c0/drain", status=405)


def test_the_stylesheet_is_served_and_fits_a_phone(lb):
    css = TestApp(AdminApp(lb), extra_environ={"REMOTE_ADDR": "127.0.0.1"}).get(
        f"{ADMIN}/admin.css")
    assert css.content_type == "text/css"
    assert "@media (max-width:760px)" in css.text
