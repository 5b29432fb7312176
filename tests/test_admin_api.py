"""The admin JSON API over real backends, checked against its own OpenAPI document."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from admin_support import ADMIN, PASSWORD, USERS, admin_balancer
from servers import run_concurrently
from webtest import TestApp

from zope_lb.admin import AdminApp
from zope_lb.admin.api import BALANCING_KEYS

API = f"{ADMIN}/api"


@pytest.fixture
def users():
    return USERS


@pytest.fixture
def lb(backends, users):
    balancer = admin_balancer(backends, passive_fall=1)
    yield balancer
    balancer.close()


def api(balancer, app=None):
    client = TestApp(app or AdminApp(balancer), extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    client.authorization = ("Basic", ("admin", PASSWORD))
    return client


def served(balancer, n=6):
    app = TestApp(balancer)
    return Counter(app.get("/echo").headers["X-Backend"] for _ in range(n))


def test_status_has_the_summary_and_one_row_per_backend(lb):
    served(lb, 4)
    status = api(lb).get(f"{API}/status").json
    assert (status["status"], status["healthy"], status["total"]) == ("ok", 2, 2)
    assert [(r["id"], r["state"], r["requests_1m"]) for r in status["backends"]] == [
        ("c0", "up", 2), ("c1", "up", 2)]


def test_backends_round_trip_as_the_basic_tab_lines(lb, backends):
    app = api(lb)
    assert app.get(f"{API}/backends").json == {"backends": [
        f"{backends[0].address}  id=c0", f"{backends[1].address}  id=c1"]}
    new = [f"{backends[2].address} id=c2 weight=3", f"{backends[0].address} id=c0"]
    response = app.put_json(f"{API}/backends", {"backends": new})
    assert response.json["backends"] == [f"{backends[2].address}  id=c2  weight=3",
                                         f"{backends[0].address}  id=c0"]
    assert served(lb, 8) == {"b2": 6, "b0": 2}


def test_a_bad_backend_list_is_refused_whole_with_line_and_rule(lb, backends):
    app = api(lb)
    before = lb.settings
    error = app.put_json(f"{API}/backends", {"backends": [
        backends[2].address, "", f"{backends[0].address} backup=yes"]}, status=400).json
    assert error["field"] == "backends" and error["line"] == 3
    assert error["rule"].startswith("unknown flag 'backup=yes'")
    assert lb.settings is before and served(lb) == {"b0": 3, "b1": 3}


@pytest.mark.parametrize("body, field, needle", [
    ({"backend": ["127.0.0.1:1"]}, "backend", "unknown key"),
    ({"backends": "127.0.0.1:1"}, "backends", "must be a list"),
    ({"backends": [1]}, "backends", "must be a list"),
])
def test_malformed_bodies_are_refused(lb, body, field, needle):
    error = api(lb).put_json(f"{API}/backends", body, status=400).json
    assert error["field"] == field and needle in error["error"]


def test_a_body_must_be_json(lb):
    app = api(lb)
    assert "Content-Type" in app.put(f"{API}/backends", "backends=x", status=400).json["error"]
    assert "not valid JSON" in app.put(f"{API}/backends", "{", status=400,
                                       content_type="application/json").json["error"]
    assert "larger" in app.put(f"{API}/backends", "[" * 300_000, status=400,
                               content_type="application/json").json["error"]


def test_balancing_get_and_partial_put(lb):
    app = api(lb)
    values = app.get(f"{API}/balancing").json
    assert set(values) == set(BALANCING_KEYS) and values["strategy"] == "round_robin"
    assert "admin.users" not in values
    changed = app.put_json(f"{API}/balancing", {"strategy": "least_connections",
                                                "timeout.read": 60, "retries": "1"}).json
    assert (changed["strategy"], changed["timeout.read"], changed["retries"]) == (
        "least_connections", "60", "1")
    assert changed["maxconn"] == values["maxconn"]
    assert lb.settings.timeout_read == 60.0


@pytest.mark.parametrize("body, field, needle", [
    ({"timeout.read": "soon"}, "timeout.read", "must be a duration"),
    ({"strategy": "fastest"}, "strategy", "unknown strategy"),
    ({"admin.users": "x"}, "admin.users", "cannot be changed here"),
    ({"maxconn": None}, "maxconn", "string, number or boolean"),
])
def test_bad_balancing_changes_are_refused_whole(lb, body, field, needle):
    before = lb.settings
    error = api(lb).put_json(f"{API}/balancing", {"retries": "0", **body}, status=400).json
    assert error["field"] == field and needle in error["error"]
    assert lb.settings is before


def test_actions_change_the_state_and_report_it(lb, backends):
    app = api(lb)
    rows = app.post(f"{API}/backends/c0/disable").json["backends"]
    assert [(r["id"], r["state"], r["reason"]) for r in rows] == [
        ("c0", "disabled", "disabled by an administrator")]
    assert served(lb) == {"b1": 6}
    app.post(f"{API}/backends/c0/disable")  # already so: fine
    assert app.post(f"{API}/backends/c0/enable").json["backends"][0]["state"] == "up"
    assert app.post(f"{API}/backends/c1/drain").json["backends"][0]["state"] == "draining"
    error = app.post(f"{API}/backends/nope/drain", status=404).json
    assert error["field"] == "id"
    app.get(f"{API}/backends/c0/drain", status=405)


def test_enabling_a_backend_that_is_down_is_a_conflict(lb, backends):
    backends[0].stop()
    served(lb, 2)  # passive.fall = 1: the refused connection takes c0 down
    assert lb.stats()[0]["state"] == "down"
    error = api(lb).post(f"{API}/backends/c0/enable", status=409).json
    assert "c0 is down" in error["error"] and error["field"] == "state"


def test_unknown_endpoints_and_methods(lb):
    app = api(lb)
    assert app.get(f"{API}/nothing", status=404).json["error"] == "no API endpoint /api/nothing"
    response = app.delete(f"{API}/backends", status=405)
    assert response.headers["Allow"] == "GET, PUT"


def test_concurrent_edits_last_valid_one_wins_whole(lb, backends):
    """Threads put different valid lists (and some invalid ones) at once; every
    refused one changes nothing, and the end state is one valid list, whole."""
    addresses = [b.address for b in backends]
    lists = [
        [f"{addresses[0]} id=c0", f"{addresses[1]} id=c1"],
        [f"{addresses[1]} id=c1", f"{addresses[2]} id=c2 weight=2"],
        [f"{addresses[2]} id=c2", f"{addresses[0]} id=c0 backup"],
        [f"{addresses[0]} id=c0 maxconn=2", f"{addresses[1]} id=c1", f"{addresses[2]} id=c2"],
    ]
    app = AdminApp(lb)
    api(lb, app).get(f"{API}/status")  # the password check is remembered from here on
    results: list[tuple[int, int]] = []

    def editor(number: int) -> None:
        client = api(lb, app)
        chooser = random.Random(number)
        for _ in range(15):
            if chooser.random() < 0.2:
                body = {"backends": [addresses[0], "http://bad:1"]}
                client.put_json(f"{API}/backends", body, status=400)
                continue
            index = chooser.randrange(len(lists))
            client.put_json(f"{API}/backends", {"backends": lists[index]})
            results.append((number, index))

    assert run_concurrently(editor, 6, timeout=60) == []
    assert results
    final = api(lb).get(f"{API}/backends").json["backends"]
    normalized = [[" ".join(line.split()) for line in candidate] for candidate in lists]
    assert [" ".join(line.split()) for line in final] in normalized
    assert [b.address for b in lb.pool.backends] == [line.split()[0] for line in final]
    assert lb.current_options()["backends"].splitlines() == final


def test_every_answer_matches_the_openapi_document(lb, backends):
    jsonschema = pytest.importorskip("jsonschema")
    app = api(lb)
    doc = app.get(f"{API}/openapi.json").json
    assert doc["openapi"].startswith("3.1") and doc["servers"] == [{"url": ADMIN}]
    validator = jsonschema.Draft202012Validator
    for schema in doc["components"]["schemas"].values():
        validator.check_schema(schema)

    def check(path, method, response, template=None):
        operation = doc["paths"][template or path][method]
        content = operation["responses"][str(response.status_int)]["content"]
        schema = {**content["application/json"]["schema"], "components": doc["components"]}
        validator(schema).validate(response.json)

    served(lb, 2)
    check("/api/status", "get", app.get(f"{API}/status"))
    check("/api/backends", "get", app.get(f"{API}/backends"))
    check("/api/backends", "put", app.put_json(f"{API}/backends", {
        "backends": [backends[0].address + " id=c0", backends[1].address + " id=c1"]}))
    check("/api/backends", "put", app.put_json(f"{API}/backends", {"backends": ["x"]},
                                               status=400))
    check("/api/balancing", "get", app.get(f"{API}/balancing"))
    check("/api/balancing", "put", app.put_json(f"{API}/balancing", {"maxconn": 3}))
    check("/api/balancing", "put", app.put_json(f"{API}/balancing", {"maxconn": -1},
                                                status=400))
    action = "/api/backends/{id}/drain"
    check(action, "post", app.post(f"{API}/backends/c0/drain"), action)
    check(action, "post", app.post(f"{API}/backends/zz/drain", status=404), action)
    anonymous = TestApp(AdminApp(lb), extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    check("/api/status", "get", anonymous.get(f"{API}/status", status=401))
    outsider = TestApp(AdminApp(lb), extra_environ={"REMOTE_ADDR": "192.0.2.1"})
    check("/api/status", "get", outsider.get(f"{API}/status", status=403))
    backends[1].stop()
    TestApp(lb).get("/echo", status="*")  # c1 refuses: down (c0 drains: a 503)
    conflict = "/api/backends/{id}/enable"
    check(conflict, "post", app.post(f"{API}/backends/c1/enable", status=409), conflict)
    check("/api/status", "get", app.get(f"{API}/status"))


@pytest.mark.parametrize("body, field, rule", [
    ({"maxconn": 100000000}, "maxconn", "must be a whole number from 0 to 10000"),
    ({"health.interval": "0.0001"}, "health.interval", "must be from 100 ms to 1 day"),
    ({"retries": "\u0663"}, "retries", "must be a whole number (digits 0-9)"),
    ({"queue.timeout": "2 days"}, "queue.timeout", "must be a duration"),
])
def test_numbers_out_of_bounds_are_refused_and_change_nothing(lb, body, field, rule):
    before = lb.settings
    error = api(lb).put_json(f"{API}/balancing", body, status=400).json
    assert error["field"] == field and error["rule"].startswith(rule)
    assert field in error["error"]
    assert lb.settings is before and served(lb) == {"b0": 3, "b1": 3}


def test_every_backend_at_weight_zero_is_refused_through_the_api(lb, backends):
    before = lb.settings
    error = api(lb).put_json(f"{API}/backends", {"backends": [
        f"{backends[0].address} weight=0", f"{backends[1].address} weight=0"]},
        status=400).json
    assert error["field"] == "backends" and "every backend has weight=0" in error["rule"]
    assert lb.settings is before
