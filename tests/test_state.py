"""The state file: atomic writes, ini defaults with state overrides, several real
processes following each other's changes, and SIGHUP re-reading the ini."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import urllib3
from paste.deploy import appconfig, loadapp
from serve_process import ServeProcess, production_ini
from servers import free_port, wait_until
from webtest import TestApp

from zope_lb import ConfigError, LoadBalancer
from zope_lb import state as state_module
from zope_lb.admin.api import BALANCING_KEYS
from zope_lb.settings import parse_settings
from zope_lb.state import (
    SAVED,
    StateFile,
    StateFileError,
    load_overrides,
    merge,
    parse_state,
    resolve_path,
    write_atomically,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


FACTORY = "egg:zope_lb"


def backend_lines(backends, ids=None) -> str:
    ids = ids or [f"c{i}" for i in range(len(backends))]
    return "".join(f"\n    {b.address} id={i}" for b, i in zip(backends, ids, strict=True))


def write_ini(path, backends, *, ids=None, ports=(), extra="") -> str:
    """An ini for ``backends``; one ``[server:...]`` per port (main, second, ...)."""
    text = (f"[app:main]\nuse = {FACTORY}\nbackends ={backend_lines(backends, ids)}\n"
            f"health.interval = 0\nstrategy = first\n{extra}\n")
    for name, port in zip(("main", "second"), ports, strict=False):
        text += (f"[server:{name}]\nuse = egg:waitress#main\nlisten = 127.0.0.1:{port}\n"
                 "threads = 8\n\n")
    path.write_text(text)
    return str(path)


def read_json(path: str):
    return json.loads(Path(path).read_text())


def ini_options(ini: str) -> dict[str, str]:
    return dict(appconfig(f"config:{ini}").local_conf)


@pytest.fixture
def on_path(monkeypatch):
    """``call:test_state:...`` needs this directory importable (as in the processes)."""
    monkeypatch.syspath_prepend(HERE)


# -- the file ---------------------------------------------------------------------------


def test_atomic_write_leaves_only_the_file(tmp_path):
    path = str(tmp_path / "s.json")
    write_atomically(path, b'{"a": 1}')
    os.chmod(path, 0o640)
    write_atomically(path, b'{"a": 2}')
    assert os.listdir(tmp_path) == ["s.json"]
    assert (tmp_path / "s.json").read_bytes() == b'{"a": 2}'
    assert os.stat(path).st_mode & 0o777 == 0o640  # the operator's mode is kept


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "s.json")
    write_atomically(path, b"old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomically(path, b"new")
    assert os.listdir(tmp_path) == ["s.json"]
    assert (tmp_path / "s.json").read_bytes() == b"old"


@pytest.mark.parametrize(("text", "problem"), [
    ("{not json", "not valid JSON at line 1 column 2"),
    ("[]", "must be a JSON object"),
    ('{"version": 2}', "version 2 is not supported"),
    ('{"version": 1, "options": {"timeout.read": 30}}', "options must map option names"),
    ('{"version": 1, "backends": {"c1": "up"}}', "backend 'c1' has state 'up'"),
    ('{"version": 1, "serial": -1}', "serial must be a whole number"),
    ('{"version": 1, "extra": 1}', "unknown key 'extra'"),
])
def test_bad_state_file_is_refused_naming_file_and_problem(text, problem):
    with pytest.raises(StateFileError) as info:
        parse_state(text, "/srv/lb/zope_lb-state.json")
    message = str(info.value)
    assert "/srv/lb/zope_lb-state.json" in message and problem in message
    assert isinstance(info.value, ConfigError)


def test_state_file_with_a_bad_setting_is_refused_naming_file_and_key(tmp_path):
    path = tmp_path / "zope_lb-state.json"
    path.write_text(json.dumps({"version": 1,
                                "options": {"backends": "127.0.0.1:1\nhttp://127.0.0.1:2"}}))
    with pytest.raises(StateFileError) as info:
        load_overrides(str(path), {"backends": "127.0.0.1:1\n127.0.0.1:2"})
    assert str(path) in str(info.value)
    assert "backends line 2" in str(info.value) and "http://" in str(info.value)


def test_default_path_is_beside_the_ini_and_named_after_it():
    conf = {"here": "/srv/lb", "__file__": "/srv/lb/production.ini"}
    assert resolve_path("", conf) == "/srv/lb/production.state.json"
    assert resolve_path("", {"here": "/srv/lb"}) == "/srv/lb/zope_lb-state.json"
    assert resolve_path("var/state.json", conf) == "/srv/lb/var/state.json"
    assert resolve_path("/var/lib/lb.json", conf) == "/var/lib/lb.json"
    assert resolve_path("", {}) == ""  # a balancer built in code keeps no state


# -- ini defaults, state overrides ------------------------------------------------------


@pytest.fixture
def pair(tmp_path, backends):
    """Two balancers on one ini and one state file, as two processes would have."""
    ini = write_ini(tmp_path / "lb.ini", backends[:2])
    options = ini_options(ini)
    path = str(tmp_path / "lb.state.json")
    made = []
    for _ in range(2):
        balancer = LoadBalancer.from_settings(parse_settings(options))
        made.append((balancer, StateFile(path, balancer, options, poll_interval=0).start()))
    yield made, options, path
    for balancer, state in made:
        state.close()
        balancer.close()


def test_only_changes_are_saved_with_what_the_ini_said(pair):
    made, _, path = pair
    a, state_a = made[0]
    assert not os.path.exists(path)
    a.apply({"timeout.read": "7"})
    a.backend_action("c1", "disable")  # saved before it is done
    saved = read_json(path)
    assert saved["options"] == {"timeout.read": "7"}
    assert saved["ini"] == {"timeout.read": "300"}
    assert saved["backends"] == {"c1": "disabled"}
    assert saved["version"] == 1 and saved["written_by"] == os.getpid()
    assert saved["serial"] == 2
    assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")] == []
    a.backend_action("c1", "enable")
    a.apply({"timeout.read": "300"})  # back to the ini: nothing left to keep
    saved = read_json(path)
    assert saved["options"] == {} and saved["backends"] == {}


def test_another_balancer_follows_the_file_and_does_not_write_back(pair, backends):
    (a, state_a), (b, state_b) = pair[0]
    a.apply({"timeout.read": "7", "backends": backend_lines(backends, ["c0", "c1", "c2"])})
    a.backend_action("c0", "drain")
    written = Path(state_a.path).read_bytes()
    assert state_b.poll() is True
    assert b.settings.timeout_read == 7
    assert [(x.id, x.state.value) for x in b.pool.backends] == [
        ("c0", "draining"), ("c1", "up"), ("c2", "up")]
    assert TestApp(b).get("/echo").headers["X-Backend"] == "b1"  # strategy first, c0 drains
    assert Path(state_a.path).read_bytes() == written  # b applied it without saving
    assert state_a.poll() is False  # its own save is not applied again
    assert state_b.poll() is False
    a.backend_action("c0", "enable")
    assert state_b.poll() is True
    assert b.pool.backends[0].state.value == "up"


def test_edits_in_two_processes_between_polls_are_both_kept(pair):
    """B saves before it has seen A's edit: A's edit is kept, not overwritten by
    B's older view, and B takes it on while saving its own."""
    (a, state_a), (b, state_b) = pair[0]
    path = pair[2]
    a.apply({"timeout.read": "7"})
    a.backend_action("c1", "disable")
    b.apply({"retries": "1"})  # B has not polled since A saved
    saved = read_json(path)
    assert saved["options"] == {"timeout.read": "7", "retries": "1"}
    assert saved["backends"] == {"c1": "disabled"}
    assert b.settings.timeout_read == 7 and b.settings.retries == 1
    assert [x.state.value for x in b.pool.backends] == ["up", "disabled"]
    assert state_a.poll() is True and a.settings.retries == 1
    # and a key both changed: the later save wins, whole
    b.apply({"timeout.read": "9"})
    a.apply({"timeout.read": "8"})
    assert read_json(path)["options"]["timeout.read"] == "8"
    assert state_b.poll() is True and b.settings.timeout_read == 8


def test_three_way_merge_keeps_each_sides_own_changes():
    from zope_lb.state import three_way

    before = {"a": "1", "b": "1", "gone": "x"}
    mine = {"a": "2", "b": "1", "gone": "x", "new": "m"}
    theirs = {"a": "1", "b": "3", "theirs": "t"}  # they removed "gone"
    assert three_way(before, mine, theirs) == {"a": "2", "b": "3", "new": "m", "theirs": "t"}


def test_deleting_the_file_returns_to_the_ini(pair):
    (a, state_a), (b, state_b) = pair[0]
    a.apply({"strategy": "round_robin"})
    assert state_b.poll() and b.settings.strategy == "round_robin"
    os.unlink(state_a.path)
    assert state_b.poll() and b.settings.strategy == "first"


def test_an_invalid_file_at_run_time_is_logged_and_changes_nothing(pair, caplog):
    (b, state_b) = pair[0][1]
    before = b.settings
    with open(state_b.path, "w") as out:
        out.write('{"version": 1, "options": {"retries": "many"}}')
    assert state_b.poll() is False
    assert b.settings is before
    assert "changed but was not applied" in caplog.text and "retries" in caplog.text
    assert state_b.poll() is False  # reported once, not at every poll


def test_ini_defaults_and_state_overrides_at_start(tmp_path, backends, on_path):
    ini = write_ini(tmp_path / "lb.ini", backends[:2], extra="timeout.read = 60\n")
    (tmp_path / "lb.state.json").write_text(json.dumps({
        "version": 1,
        "options": {"retries": "0", "backends": backend_lines(backends, ["c0", "c1", "c2"])},
        "ini": {"retries": "2", "backends": backend_lines(backends[:2]).strip()},
        "backends": {"c1": "disabled"}, "serial": 3,
    }))
    app = loadapp(f"config:{ini}")
    try:
        assert app.settings.timeout_read == 60  # from the ini
        assert app.settings.retries == 0  # from the state file
        assert [(b.id, b.state.value) for b in app.pool.backends] == [
            ("c0", "up"), ("c1", "disabled"), ("c2", "up")]
    finally:
        app.state_file.close()
        app.close()


def test_an_option_edited_in_the_ini_since_wins_over_the_state_file(tmp_path, backends,
                                                                    caplog):
    ini = {"backends": backend_lines(backends[:2]), "timeout.read": "60", "retries": "2"}
    path = tmp_path / "zope_lb-state.json"
    path.write_text(json.dumps({
        "version": 1, "options": {"timeout.read": "7", "retries": "0"},
        "ini": {"timeout.read": "300", "retries": "2"},  # the ini said 300 then, 60 now
    }))
    assert load_overrides(str(path), ini) == {"retries": "0"}
    assert "timeout.read was changed in the ini" in caplog.text


def test_only_what_the_admin_can_change_is_saved(tmp_path, backends):
    """A named pool removed, or notify.command set, in code at run time is not kept:
    the admin pages cannot do either, and the state file holds only what they can."""
    ini = {"backends": backend_lines(backends[:2]),
           "pool.zmi.backends": backends[2].address, "pool.zmi.match": "path:*/manage*"}
    balancer = LoadBalancer.from_settings(parse_settings(ini))
    path = str(tmp_path / "zope_lb-state.json")
    state = StateFile(path, balancer, ini, poll_interval=0).start()
    try:
        options = {k: v for k, v in balancer.current_options().items()
                   if not k.startswith("pool.")}
        balancer.apply({**options, "notify.command": "/bin/true", "retries": "1"},
                       replace=True)
        assert read_json(path)["options"] == {"retries": "1"}
        again = LoadBalancer.from_settings(parse_settings(merge(ini, load_overrides(path, ini))))
        assert [p.name for p in again.pools] == ["default", "zmi"]
        assert again.settings.notify_command == "" and again.settings.retries == 1
        again.close()
    finally:
        state.close()
        balancer.close()


EVIL_USERS = "mallory:scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA=="


@pytest.mark.parametrize(("options", "key"), [
    ({"admin.users": EVIL_USERS}, "admin.users"),
    ({"retries": "1", "notify.command": "/bin/touch /tmp/owned"}, "notify.command"),
    ({"admin.allow": "0.0.0.0/0"}, "admin.allow"),
    ({"forwarded.trusted": "0.0.0.0/0"}, "forwarded.trusted"),
    ({"pool.x.backends": "127.0.0.1:1", "pool.x.match": "path:/"}, "pool.x.backends"),
    ({"state_file": "/x"}, "state_file"),
])
def test_a_state_file_setting_what_the_admin_cannot_is_refused(options, key):
    text = json.dumps({"version": 1, "options": options})
    with pytest.raises(StateFileError) as info:
        parse_state(text, "/srv/lb/lb.state.json")
    message = str(info.value)
    assert "/srv/lb/lb.state.json" in message
    assert f"options may not set {key!r}" in message and "\n" not in message


def test_the_ini_map_names_only_what_the_admin_can_change_too():
    text = json.dumps({"version": 1, "ini": {"notify.webhook": "http://x.example/"}})
    with pytest.raises(StateFileError, match="ini may not set 'notify.webhook'"):
        parse_state(text, "/srv/lb/lb.state.json")


@pytest.mark.parametrize("key", ["backends", *BALANCING_KEYS])
def test_every_option_the_admin_can_change_may_be_kept(key):
    assert key in SAVED
    assert parse_state(json.dumps({"version": 1, "options": {key: "x"}}), "f").options == {
        key: "x"}


def test_a_state_file_that_oversteps_at_run_time_is_logged_and_ignored_whole(
        pair, caplog, tmp_path):
    (b, state_b) = pair[0][1]
    before = b.settings
    marker = tmp_path / "ran"
    with open(state_b.path, "w") as out:
        json.dump({"version": 1, "options": {
            "retries": "0", "admin.users": EVIL_USERS,
            "notify.command": f"/bin/touch {marker}"}}, out)
    assert state_b.poll() is False
    assert b.settings is before and b.settings.retries == 2
    assert "changed but was not applied" in caplog.text
    assert "may not set 'admin.users'" in caplog.text
    b.backend_action("c0", "disable")  # a state change: no command may run
    b.backend_action("c0", "enable")
    assert not marker.exists()


# -- real processes ---------------------------------------------------------------------


class Served:
    """``zope-lb serve INI`` in a process of its own, logging to a file."""

    def __init__(self, ini: str, port: int, log_path, server_name: str = "main"):
        self.port = port
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [HERE, os.environ.get("PYTHONPATH")]))}
        self.log = open(log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zope_lb.cli", "serve", ini, "--server-name", server_name],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.http = urllib3.PoolManager(retries=False, timeout=10)
        assert wait_until(self._answers, timeout=20), self.output()

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            return self.get("/__zope_lb__/health").status in (200, 503)
        except urllib3.exceptions.HTTPError:
            return False

    def get(self, path: str):
        return self.http.request("GET", f"http://127.0.0.1:{self.port}{path}")

    def backends(self) -> list[tuple[str, str]]:
        return [(b["id"], b["state"]) for b in json.loads(self.get("/__zope_lb__/health").data)
                ["backends"]]

    def output(self) -> str:
        return open(self.log_path, errors="replace").read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.mark.slow
def test_two_processes_on_one_ini_see_changes_within_a_second(tmp_path, backends, on_path):
    ports = (free_port(), free_port())
    ini = write_ini(tmp_path / "lb.ini", backends[:2], ports=ports)
    served = []
    try:
        served.append(Served(ini, ports[0], tmp_path / "first.log"))
        served.append(Served(ini, ports[1], tmp_path / "second.log", "second"))
        for process in served:
            assert process.backends() == [("c0", "up"), ("c1", "up")]
        # A third process (this one) changes the configuration as an admin would.
        options = ini_options(ini)
        admin = LoadBalancer.from_settings(parse_settings(options))
        state = StateFile(str(tmp_path / "lb.state.json"), admin, options,
                          poll_interval=0).start()
        try:
            started = time.monotonic()
            admin.apply({"backends": backend_lines(backends, ["c0", "c1", "c2"])})
            admin.backend_action("c0", "disable")
            state.save()
            wanted = [("c0", "disabled"), ("c1", "up"), ("c2", "up")]
            for process in served:
                assert wait_until(lambda p=process: p.backends() == wanted, timeout=5,
                                  interval=0.02), process.output()
            elapsed = time.monotonic() - started
            print(f"seen by both processes after {elapsed:.3f} s")
            assert elapsed < 1.0
            for process in served:  # strategy first: c0 is disabled, so c1 answers
                assert process.get("/echo").headers["X-Backend"] == "b1"
        finally:
            state.close()
            admin.close()
        # A restarted process starts from the ini with the state file on top.
        served.pop(0).stop()
        served.append(Served(ini, ports[0], tmp_path / "third.log"))
        assert served[-1].backends() == wanted
    finally:
        for process in served:
            process.stop()


@pytest.mark.slow
def test_sighup_rereads_the_ini_without_dropping_a_request_in_flight(tmp_path, backends,
                                                                     on_path):
    port = free_port()
    ini_path = tmp_path / "lb.ini"
    ini = write_ini(ini_path, backends[:2], ports=(port,))
    process = Served(ini, port, tmp_path / "serve.log")
    try:
        answers: list = []
        slow = threading.Thread(target=lambda: answers.append(process.get("/slow?s=3")))
        slow.start()  # strategy first: this goes to c0, which the new ini removes
        time.sleep(0.3)
        write_ini(ini_path, backends[1:], ids=["c1", "c2"], ports=(port,))
        process.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: process.backends() == [("c1", "up"), ("c2", "up")],
                          timeout=5), process.output()
        assert slow.is_alive()  # the new list is in place while c0 still answers
        assert process.get("/echo").headers["X-Backend"] == "b1"
        slow.join(10)
        assert answers and answers[0].status == 200 and answers[0].data == b"slow done"
        assert answers[0].headers["X-Backend"] == "b0"

        ini_path.write_text(ini_path.read_text().replace("strategy = first",
                                                         "strategy = nonsense"))
        process.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "running configuration stays" in process.output(),
                          timeout=5)
        assert process.proc.poll() is None
        assert process.backends() == [("c1", "up"), ("c2", "up")]
        assert process.get("/echo").headers["X-Backend"] == "b1"
    finally:
        process.stop()
    assert "Traceback" not in process.output()


@pytest.mark.slow
def test_invalid_state_file_stops_start_up_naming_it(tmp_path, backends):
    ini = write_ini(tmp_path / "lb.ini", backends[:2], ports=(free_port(),))
    state = tmp_path / "lb.state.json"
    state.write_text('{"version": 1, "options": {"timeout.read": "soon"}}')
    env = {**os.environ, "PYTHONPATH": HERE}
    result = subprocess.run([sys.executable, "-m", "zope_lb.cli", "serve", ini],
                            capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
    assert result.returncode == 2
    assert str(state) in result.stderr and "timeout.read" in result.stderr
    assert "move it away" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_state_file_naming_admin_users_stops_start_up_in_one_line(tmp_path, backends):
    """Issue 11 item 5: such a file gave a new account admin and ran a command."""
    port = free_port()
    ini = tmp_path / "production.ini"
    ini.write_text(production_ini([f"{b.address} id=c{i}" for i, b in enumerate(backends[:2])],
                                  port, app="health.interval = 0"))
    state = tmp_path / "production.state.json"
    marker = tmp_path / "ran"
    state.write_text(json.dumps({"version": 1, "options": {
        "admin.users": EVIL_USERS, "notify.command": f"/bin/touch {marker}"}}))
    process = ServeProcess(ini, port)
    with pytest.raises(RuntimeError):
        process.start()
    try:
        assert process.wait(10) == 2
    finally:
        process.stop()
    errors = [line for line in process.log().splitlines() if "zope-lb:" in line]
    assert len(errors) == 1, process.log()
    assert str(state) in errors[0] and "may not set 'admin.users'" in errors[0]
    assert "Traceback" not in process.log() and not marker.exists()
