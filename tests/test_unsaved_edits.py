"""Issue 11 item 7: an admin edit that cannot be written to the state file is
refused (500, naming the file and the OS error) and changes nothing in memory.

The state directory is made unwritable in a way that holds even for root (the
tests run as root, for whom chmod 0o500 changes nothing): the directory is
moved away and a regular file takes its name, so every write under it fails
with ENOTDIR ("Not a directory")."""

from __future__ import annotations

import json
import os

import pytest
import urllib3
from admin_support import ADMIN, PASSWORD, USERS, admin_balancer
from webtest import TestApp

from zope_lb.admin import AdminApp
from zope_lb.errors import StateSaveError
from zope_lb.state import StateFile

API = f"{ADMIN}/api"


def unwritable(directory) -> None:
    """Put a regular file where the state directory was."""
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.write_text("a file where the state directory was\n")


def writable_again(directory) -> None:
    directory.unlink()
    directory.with_name(directory.name + ".moved").rename(directory)


@pytest.fixture
def kept(tmp_path, backends):
    """A balancer with its admin and a state file in ``tmp_path/state``."""
    directory = tmp_path / "state"
    directory.mkdir()
    lines = [f"{b.address} id=c{i}" for i, b in enumerate(backends[:2])]
    balancer = admin_balancer(backends)
    state = StateFile(str(directory / "lb.state.json"), balancer,
                      {"backends": lines, "admin_users": USERS, "health_interval": 0},
                      poll_interval=0).start()
    yield balancer, directory
    state.close()
    balancer.close()


def api(balancer):
    client = TestApp(AdminApp(balancer), extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    client.authorization = ("Basic", ("admin", PASSWORD))
    return client


def assert_names_file_and_error(error: dict, directory) -> None:
    assert error["field"] == "state_file"
    assert str(directory / "lb.state.json") in error["error"]
    assert "Not a directory" in error["error"] and "not made" in error["error"]


def test_a_balancing_edit_that_cannot_be_saved_is_refused_and_changes_nothing(kept):
    balancer, directory = kept
    client = api(balancer)
    client.put_json(f"{API}/balancing", {"retries": 1}, status=200)  # saved: fine
    unwritable(directory)
    before = balancer.settings
    error = client.put_json(f"{API}/balancing", {"retries": 0, "timeout.read": "9"},
                            status=500).json
    assert_names_file_and_error(error, directory)
    assert balancer.settings is before
    assert client.get(f"{API}/balancing").json["retries"] == "1"
    writable_again(directory)
    client.put_json(f"{API}/balancing", {"retries": 0}, status=200)
    saved = json.loads((directory / "lb.state.json").read_text())
    assert saved["options"] == {"retries": "0"}


def test_a_backend_list_that_cannot_be_saved_is_refused_and_changes_nothing(kept, backends):
    balancer, directory = kept
    unwritable(directory)
    before = [(b.id, b.state.value) for b in balancer.pool.backends]
    error = api(balancer).put_json(f"{API}/backends", {"backends": [
        f"{backends[2].address} id=c2"]}, status=500).json
    assert_names_file_and_error(error, directory)
    assert [(b.id, b.state.value) for b in balancer.pool.backends] == before
    assert {TestApp(balancer).get("/echo").headers["X-Backend"] for _ in range(4)} == {
        "b0", "b1"}


def test_a_backend_action_that_cannot_be_saved_is_refused_and_changes_nothing(kept):
    balancer, directory = kept
    unwritable(directory)
    error = api(balancer).post(f"{API}/backends/c0/disable", status=500).json
    assert_names_file_and_error(error, directory)
    assert [b.state.value for b in balancer.pool.backends] == ["up", "up"]
    with pytest.raises(StateSaveError):
        balancer.backend_action("c1", "drain")
    assert [b.state.value for b in balancer.pool.backends] == ["up", "up"]


def test_the_balancing_page_shows_the_refusal(kept):
    balancer, directory = kept
    client = api(balancer)
    form = client.get(f"{ADMIN}/balancing/").forms[0]
    form["retries"] = "0"
    unwritable(directory)
    page = form.submit(status=500)
    assert 'role="alert"' in page.text and "Not saved; nothing was changed." in page.text
    assert "Not a directory" in page.text and "lb.state.json" in page.text
    assert balancer.settings.retries == 2


def test_the_basic_page_and_the_action_buttons_show_the_refusal(kept, backends):
    balancer, directory = kept
    client = api(balancer)
    form = client.get(f"{ADMIN}/basic/").forms[0]
    form["backends"] = f"{backends[2].address} id=c2"
    token = form["csrf"].value
    unwritable(directory)
    page = form.submit(status=500)
    assert "Not saved; nothing was changed." in page.text and "Not a directory" in page.text
    page = client.post(f"{ADMIN}/backends/c0/disable", {"csrf": token}, status=500)
    assert "Not saved" in page.text and "Not a directory" in page.text
    assert [(b.id, b.state.value) for b in balancer.pool.backends] == [
        ("c0", "up"), ("c1", "up")]


@pytest.mark.slow
def test_zope_lb_serve_refuses_an_edit_it_cannot_keep(tmp_path, backends, serve_process):
    directory = tmp_path / "state"
    directory.mkdir()
    process = serve_process(
        [f"{b.address} id=c{i}" for i, b in enumerate(backends[:2])],
        app=f"admin.users = {USERS}\nstate_file = state/lb.state.json\nhealth.interval = 0")
    http = urllib3.PoolManager(retries=False, timeout=10,
                               headers=urllib3.make_headers(basic_auth=f"admin:{PASSWORD}"))

    def put(body):
        return http.request("PUT", f"{process.url}{API}/balancing", body=json.dumps(body),
                            headers={**http.headers, "Content-Type": "application/json"})

    assert put({"retries": 1}).status == 200
    unwritable(directory)
    answer = put({"retries": 0})
    assert answer.status == 500
    error = json.loads(answer.data)
    assert error["field"] == "state_file" and "Not a directory" in error["error"]
    assert str(directory / "lb.state.json") in error["error"]
    answer = http.request("GET", f"{process.url}{API}/balancing")
    assert json.loads(answer.data)["retries"] == "1"
    assert process.wait_for_log("runtime change refused")
    writable_again(directory)
    assert put({"retries": 0}).status == 200
    assert json.loads(os.fsdecode((directory / "lb.state.json").read_bytes()))[
        "options"] == {"retries": "0"}
    assert "Traceback" not in process.log()


def test_a_removed_backend_leaves_no_admin_state_behind(kept, backends):
    """Saved before the switch, the file must not keep the state of a backend the
    edit removes: one that comes back later with the same id starts up."""
    balancer, directory = kept
    client = api(balancer)
    client.post(f"{API}/backends/c1/disable")
    path = directory / "lb.state.json"
    assert json.loads(path.read_text())["backends"] == {"c1": "disabled"}
    client.put_json(f"{API}/backends", {"backends": [f"{backends[0].address} id=c0"]})
    assert json.loads(path.read_text())["backends"] == {}
    client.put_json(f"{API}/backends", {"backends": [
        f"{backends[0].address} id=c0", f"{backends[1].address} id=c1"]})
    assert [(b.id, b.state.value) for b in balancer.pool.backends] == [
        ("c0", "up"), ("c1", "up")]
