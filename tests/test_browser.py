"""The admin pages in a real browser: Debian's Chromium, driven by Playwright.

One story, as an operator lives it, against a balancer served by waitress on
127.0.0.1 in front of three real waitress backends (b0, b1, b2; the balancer
starts with b0 and b1):

1. log in through the login form;
2. add b2 on the Basic tab, save, and see requests reach it (X-Backend) and
   its row on the Status page;
3. stop b1's server and see the Status page mark it down (and no request
   reach it);
4. delete b0's line while a slow request is in flight on it: the request
   finishes on b0 (it drains), new requests never reach b0 again, and its row
   leaves the Status page.

Every effect is checked twice: through real HTTP requests to the balancer and
on the page. Every wait is bounded (Playwright: 10 s).

Chromium is found as ``chromium`` on the PATH (``apt-get install chromium``)
or at /usr/bin/chromium. Without it, or without Playwright for Python, the
test skips with the reason; with ``ZOPE_LB_REQUIRE=browser`` (CI) that skip
is a failure (see conftest.py).

``ZOPE_LB_SCREENSHOT=1 python -m pytest tests/test_browser.py`` also saves
docs/status-page.png (1200x800, full page) and docs/status-page-phone.png
(390 px wide): the Status page with b1 down and b0, b2 up.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
import urllib3
from servers import ServerThread, wait_until

from zope_lb import LoadBalancer
from zope_lb.passwd import hash_password

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the skip below says so
    expect = sync_playwright = None

pytestmark = pytest.mark.browser

PASSWORD = "s3cret pass"
ADMIN = "/__zope_lb__"
TIMEOUT_MS = 10_000
DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-sync",
]
# Probes every 200 ms; two failures take a backend out, so "down" shows within a second.
FAST_HEALTH = {"health_interval": "200ms", "health_timeout": "1s", "health_fall": 2,
               "health_rise": 1}


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium with a fresh profile (Playwright's own temp user-data-dir)."""
    if sync_playwright is None:
        pytest.skip("Playwright for Python is not installed (pip install playwright); "
                    "the browser tests need it and Debian's chromium")
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): no `chromium` "
                    "on the PATH and no /usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True,
                                             args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def balancer(backends):
    """b0 and b1 behind a balancer served on 127.0.0.1, with an admin user."""
    b0, b1, _ = backends
    lb = LoadBalancer([f"{b0.address}  id=b0", f"{b1.address}  id=b1"],
                      admin_users=f"admin:{hash_password(PASSWORD)}", **FAST_HEALTH)
    server = ServerThread(lb, threads=16).start()
    yield lb, server
    server.stop()
    lb.close()


@pytest.fixture
def page(chromium, balancer):
    _, server = balancer
    context = chromium.new_context(base_url=server.url, viewport={"width": 1200, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def row(page, backend_id):
    """The Status page's row of ``backend_id`` (found by the id it shows)."""
    return page.locator("table.backends tbody tr").filter(
        has=page.get_by_text(backend_id, exact=True))


def cell(page, backend_id, column):
    return row(page, backend_id).locator(f'td[data-label="{column}"]')


def state_of(lb, backend_id):
    return next(r["state"] for r in lb.stats() if r["id"] == backend_id)


def active_on(lb, backend_id):
    return next((r["active"] for r in lb.stats() if r["id"] == backend_id), 0)


def edit_backends(page, change):
    """On the Basic tab: the textarea's lines through ``change``, then Save."""
    page.get_by_role("link", name="Basic", exact=True).click()
    box = page.get_by_label("Virtual hosts (backends)")
    expect(box).to_be_visible()
    box.fill("\n".join(change(box.input_value().splitlines())) + "\n")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved and applied.")


def screenshots(page):
    """docs/status-page.png (1200x800) and docs/status-page-phone.png (390 px wide)."""
    DOCS.mkdir(exist_ok=True)
    for name, size in (("status-page.png", {"width": 1200, "height": 800}),
                       ("status-page-phone.png", {"width": 390, "height": 844})):
        page.set_viewport_size(size)
        page.reload()  # a fresh load: the page's own 5 s refresh is far away
        expect(cell(page, "b1", "State")).to_contain_text("down")
        page.screenshot(path=str(DOCS / name), full_page=True)
    page.set_viewport_size({"width": 1200, "height": 800})


def test_an_operator_adds_loses_and_removes_backends_in_a_real_browser(page, balancer,
                                                                         backends):
    lb, server = balancer
    b0, b1, b2 = backends
    http = urllib3.PoolManager(maxsize=8, retries=False,
                               timeout=urllib3.Timeout(connect=5, read=10))

    def get(path="/echo"):
        response = http.request("GET", server.url + path)
        assert response.status == 200, (path, response.status)
        return response.headers["X-Backend"]

    def served(n=6):
        return Counter(get() for _ in range(n))

    try:
        # 1. Log in through the form.
        page.goto(f"{ADMIN}/")
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        page.get_by_label("Name", exact=True).fill("admin")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Status")).to_be_visible()
        expect(page.get_by_text("2 of 2", exact=True)).to_be_visible()
        assert served() == {"b0": 3, "b1": 3}

        # 2. Add b2 on the Basic tab: it takes its share of requests at once.
        edit_backends(page, lambda lines: [*lines, f"{b2.address}  id=b2"])
        assert served() == {"b0": 2, "b1": 2, "b2": 2}
        page.get_by_role("link", name="Status", exact=True).click()
        expect(page.get_by_text("3 of 3", exact=True)).to_be_visible()
        expect(cell(page, "b2", "State")).to_have_text("up")
        expect(cell(page, "b2", "Address")).to_have_text(b2.address)
        expect(cell(page, "b2", "Req/1m")).to_have_text("2")

        # 3. b1 dies: no request reaches it, and the Status page marks it down.
        b1.stop()
        assert "b1" not in served()  # refused connections go to another backend
        assert wait_until(lambda: state_of(lb, "b1") == "down", 10)
        page.reload()
        expect(cell(page, "b1", "State")).to_contain_text("down")
        expect(cell(page, "b0", "State")).to_have_text("up")
        expect(cell(page, "b2", "State")).to_have_text("up")
        expect(page.get_by_text("2 of 3", exact=True)).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("Cluster degraded.")
        expect(page.get_by_role("alert")).to_contain_text("b1 down")
        if os.environ.get("ZOPE_LB_SCREENSHOT") == "1":
            screenshots(page)

        # 4. Delete b0's line while a slow request is in flight on it.
        finished: dict[int, tuple[int, str]] = {}

        def slow(key):
            response = http.request("GET", server.url + "/slow?s=4")
            finished[key] = (response.status, response.headers.get("X-Backend", ""))

        slow_requests = [threading.Thread(target=slow, args=(i,), daemon=True)
                         for i in range(2)]  # round robin over b0 and b2: one each
        for thread in slow_requests:
            thread.start()
        assert wait_until(lambda: active_on(lb, "b0") == 1, 5), lb.stats()
        edit_backends(page, lambda lines: [line for line in lines if "id=b0" not in line])
        assert "b0" not in [who for _, who in finished.values()], \
            "the slow request on b0 ended before its line was deleted: nothing drained"
        assert served() == {"b2": 6}  # b0 takes no new requests, b1 is still down
        for thread in slow_requests:
            thread.join(10)
        assert sorted(finished.values()) == [(200, "b0"), (200, "b2")]  # b0 drained
        assert served() == {"b2": 6}
        page.get_by_role("link", name="Status", exact=True).click()
        expect(cell(page, "b2", "State")).to_have_text("up")
        expect(row(page, "b0")).to_have_count(0)
        expect(cell(page, "b1", "State")).to_contain_text("down")
        expect(page.get_by_text("1 of 2", exact=True)).to_be_visible()
        assert [r["id"] for r in lb.stats()] == ["b1", "b2"]
    finally:
        http.clear()
