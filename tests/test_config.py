"""``zope-lb config INI`` (like ``nginx -t``), the checks ``serve`` shares, ``--version``.

Each bad ini must give one line per problem naming the file, the section and
the key or line, exit 1, and never a traceback (a hypothesis fuzz over broken
ini text holds the checker to that).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_process import console_script, production_ini

from zope_lb import inicheck, inifile
from zope_lb.cli import main

ROOT = Path(__file__).resolve().parent.parent

GOOD = production_ini(["127.0.0.1:8081  id=c1", "127.0.0.1:8082  id=c2"], 6543)


def run_config(tmp_path: Path, text: str | bytes, *args: str, name: str = "test.ini"
               ) -> tuple[int, str, str, Path]:
    ini = tmp_path / name
    if isinstance(text, bytes):
        ini.write_bytes(text)
    else:
        ini.write_text(text)
    result = subprocess.run([console_script(), "config", str(ini), *args],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return result.returncode, result.stdout, result.stderr, ini


def check_main(capsys, ini: Path, *args: str) -> tuple[int, str, str]:
    status = main(["config", str(ini), *args])
    out, err = capsys.readouterr()
    return status, out, err


# -- good inis, through the console script ----------------------------------------


def test_config_prints_the_effective_configuration_of_a_production_ini(tmp_path):
    status, out, err, ini = run_config(tmp_path, GOOD)
    assert status == 0, err
    assert f"# {ini}: configuration OK" in out
    assert "[app:main]" in out and "strategy = round_robin" in out
    assert "backends =\n    127.0.0.1:8081  id=c1\n    127.0.0.1:8082  id=c2" in out
    assert "timeout.read = 300" in out  # every option, defaults included
    assert "[server:main]" in out and "listen = 127.0.0.1:6543" in out and "threads = 16" in out
    assert "# logging: [loggers] root, zope_lb, waitress_queue" in out
    assert err == ""


def test_config_piped_into_head_ends_quietly(tmp_path):
    ini = tmp_path / "production.ini"
    ini.write_text(GOOD)
    result = subprocess.run(f"'{console_script()}' config '{ini}' | head -1", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == f"# {ini}: configuration OK\n"
    assert result.stderr == ""


def test_config_accepts_the_shipped_development_ini():
    result = subprocess.run([console_script(), "config", str(ROOT / "development.ini")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:8083  id=client3" in result.stdout


def test_config_marks_what_the_state_file_overrides(tmp_path, capsys):
    ini = tmp_path / "production.ini"
    ini.write_text(GOOD)
    (tmp_path / "production.state.json").write_text(json.dumps({
        "version": 1, "options": {"timeout.read": "30"}, "ini": {"timeout.read": "300"}}))
    status, out, err = check_main(capsys, ini)
    assert status == 0, err
    assert "timeout.read = 30    # from the state file" in out
    assert "timeout.connect = 5\n" in out  # not marked: the ini's
    assert f"# state file: {tmp_path / 'production.state.json'}\n" in out


def test_config_checks_the_filter_of_a_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # apps:local_app_factory
    ini = tmp_path / "filter.ini"
    ini.write_text("[pipeline:main]\npipeline = lb local\n\n[filter:lb]\n"
                   "use = egg:zope_lb#balancer\nbackends = 127.0.0.1:8081\n"
                   "prefix = /site\nfallback = true\n\n[app:local]\n"
                   "use = call:apps:local_app_factory\n\n[server:main]\n"
                   "use = egg:waitress#main\nlisten = 127.0.0.1:6543\n")
    status, out, err = check_main(capsys, ini)
    assert status == 0, err
    assert ("# app: [pipeline:main] -> [filter:lb] (egg:zope_lb#balancer) -> "
            "[app:local] (call:apps:local_app_factory)") in out
    assert "[filter:lb]" in out and "prefix = /site" in out and "fallback = true" in out
    ini.write_text(ini.read_text().replace("prefix = /site", "prefix = site"))
    status, out, err = check_main(capsys, ini)
    assert status == 1
    assert err == (f"zope-lb: {ini}:7: [filter:lb] prefix 'site': must be a path "
                   "starting with '/'\n")


def test_config_shows_each_warning_once(tmp_path, capsys):
    ini = tmp_path / "one.ini"
    ini.write_text("[app:main]\nuse = egg:zope_lb\nbackends = 127.0.0.1:8081\n"
                   "[server:main]\nuse = egg:waitress#main\n")
    status, out, err = check_main(capsys, ini)
    assert status == 0, err
    assert out.count("# warning: only 1 primary backend configured: that is a proxy") == 1


def test_config_shows_waitress_settings_as_converted(tmp_path, capsys):
    ini = tmp_path / "w.ini"
    ini.write_text(APP + SERVER.replace("127.0.0.1:6543", "127.0.0.1:6543  [::1]:6543")
                   + "trusted_proxy = 127.0.0.1\ntrusted_proxy_headers = x-forwarded-proto "
                     "x-forwarded-for\nclear_untrusted_proxy_headers = no\n")
    status, out, err = check_main(capsys, ini)
    assert status == 0, err
    assert ("[server:main]\n# use = egg:waitress#main\n"
            "listen = 127.0.0.1:6543 [::1]:6543\ntrusted_proxy = 127.0.0.1\n"
            "trusted_proxy_headers = x-forwarded-for x-forwarded-proto\n"
            "clear_untrusted_proxy_headers = false\n") in out


def test_config_never_shows_secrets(tmp_path, capsys):
    ini = tmp_path / "production.ini"
    ini.write_text(GOOD.replace("[server:main]", "health.zeo = true\n"
                                "health.auth = admin:s3cr%%t\n\n[server:main]"))
    status, out, err = check_main(capsys, ini)
    assert status == 0, err
    assert "health.auth = (set, not shown)" in out and "s3cr" not in out


# -- bad inis: one line each, naming file, section and key or line --------------------

APP = "[app:main]\nuse = egg:zope_lb\nbackends =\n    127.0.0.1:8081\n    127.0.0.1:8082\n"
SERVER = "\n[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:6543\n"

BAD = [
    # (ini text, the fragment each expected line has after "FILE")
    (APP + "strategy = first\nstrategy = random\n" + SERVER,
     [":7: [app:main] strategy: written twice in this section"]),
    (APP + "  stray\nnot a key line\n" + SERVER,
     [":7: [app:main] 'not a key line' is neither 'key = value'"]),
    (APP + "health.auth = admin:p%ss\n" + SERVER,
     [":6: [app:main] health.auth: a '%' in a value must be written '%%'"]),
    (APP + "timout.read = 30\n" + SERVER,
     [":6: [app:main] timout.read: unknown option; did you mean timeout.read?"]),
    (APP + "timeout_conect = 3\n" + SERVER,
     [":6: [app:main] timeout_conect: unknown option; did you mean timeout.connect?"]),
    (APP + "timeout.read = soon\nmaxconn = -1\nstrategy = fastest\n" + SERVER,
     [":6: [app:main] timeout.read 'soon': must be a duration",
      ":7: [app:main] maxconn '-1': must be a whole number from 0 to 10000",
      ":8: [app:main] strategy 'fastest': unknown strategy"]),
    (APP.replace("127.0.0.1:8082", "http://127.0.0.1:8082") + SERVER,
     [":3: [app:main] backends line 2 'http://127.0.0.1:8082': drop the 'http://' prefix"]),
    (APP + SERVER + "thread = 4\n",
     [":10: [server:main] thread: not a waitress setting; did you mean threads?"]),
    (APP + SERVER + "threads = 0\n",
     [":10: [server:main] threads: '0': must be 1 or more"]),
    # pserve's runner, egg:zope_lb#server, is waitress too: the same checks
    (APP + SERVER.replace("egg:waitress#main", "egg:zope_lb#server") + "threads = 0\n",
     [":10: [server:main] threads: '0': must be 1 or more"]),
    (APP + SERVER.replace("egg:waitress#main", "egg:zope_lb#server") + "thread = 4\n",
     [":10: [server:main] thread: not a waitress setting; did you mean threads?"]),
    (APP + SERVER.replace("127.0.0.1:6543", "nonsense"),
     [":9: [server:main] listen: 'nonsense': Invalid host/port specified."]),
    (APP + SERVER.replace("127.0.0.1:6543", "127.0.0.1:99999"),
     [":9: [server:main] listen: '127.0.0.1:99999': port '99999' must be a number"]),
    (APP + SERVER + "threads = \u0664\n",
     [":10: [server:main] threads: '\u0664': must be a whole number (ASCII digits)"]),
    (APP + SERVER + "port = 8080\n",
     [":9: [server:main] listen: host or port may not be set if listen is set."]),
    (APP.replace("egg:zope_lb", "egg:zope_lb#balancr") + SERVER,
     [":2: [app:main] use: 'egg:zope_lb#balancr': zope_lb has no such factory for this "
      "section; did you mean egg:zope_lb#balancer?"]),
    (APP.replace("egg:zope_lb", "egg:no_such_dist") + SERVER,
     [":2: [app:main] use: 'egg:no_such_dist' cannot be loaded"]),
    (APP.replace("[app:main]", "[app:mian]") + SERVER,
     [": no [app:main] or [pipeline:main] section (--app-name picks another); "
      "did you mean [app:mian]?"]),
    (APP + SERVER.replace("[server:main]", "[server:man]"),
     [": no [server:main] section (--server-name picks another); did you mean [server:man]?"]),
    ("backends = 127.0.0.1:8081\n" + APP + SERVER,
     [":1: 'backends = 127.0.0.1:8081' comes before any [section] header"]),
    (APP + "[app:main]\n" + SERVER,
     [":6: [app:main] section written twice"]),
    (APP + SERVER.replace("use = egg:waitress#main\n", ""),
     [":7: [server:main] has no 'use =' line, e.g. use = egg:zope_lb or use = egg:waitress"]),
    ("[pipeline:main]\npipeline = lb\n" + APP + SERVER,
     [": [app:main], [pipeline:main] could each be [app:main] or [pipeline:main]; keep one"]),
    ("[pipeline:main]\npipeline = lb main\n[filter:lb]\nuse = egg:zope_lb#balancer\n"
     "backends = 127.0.0.1:8081\n" + SERVER,
     [":1: [pipeline:main] is part of itself: [pipeline:main] -> [pipeline:main]"]),
    ("[filter-app:main]\nuse = egg:zope_lb#balancer\nbackends = 127.0.0.1:8081\n"
     "next = other\n[filter-app:other]\nuse = egg:zope_lb#balancer\n"
     "backends = 127.0.0.1:8082\nnext = main\n" + SERVER,
     [":5: [filter-app:other] is part of itself: [filter-app:main] -> [filter-app:other] -> "
      "[filter-app:main]"]),
    (APP + "health.zeo = true\n" + SERVER,
     [":6: [app:main] health.zeo 'true': needs health.auth"]),
    ("[pipeline:main]\npipeline = lb\nprefix = /\n[filter:lb]\n" + SERVER,
     [":3: [pipeline:main] prefix: a pipeline takes only 'pipeline'",
      ": no [app:lb] or [pipeline:lb] section"]),
    (APP + SERVER + "\n[loggers]\nkeys = root\n[handlers]\nkeys = console\n[formatters]\n"
     "keys = generic\n[logger_root]\nlevel = INFOO\nhandlers = console, file\n"
     "[handler_console]\nclass = StreamHandlr\nargs = (sys.stderr\nformatter = plain\n"
     "[formatter_generic]\nformat = %(asctime\n",
     [":25: [formatter_generic] format: '%(asctime': Invalid format",
      ":21: [handler_console] class: 'StreamHandlr' is not a logging handler class",
      ":22: [handler_console] args: '(sys.stderr' is not a Python tuple",
      ":23: [handler_console] formatter: 'plain' is not in [formatters] keys",
      ":18: [logger_root] level: 'INFOO': must be DEBUG, INFO",
      ":19: [logger_root] handlers: 'file' is not in [handlers] keys"]),
    (APP + SERVER + "\n[loggers]\nkeys = zope_lb\n[logger_zope_lb]\nlevel = INFO\n",
     [": [formatters] is required with [loggers]",
      ": [handlers] is required with [loggers]",
      ":12: [loggers] keys: must list root",
      ":13: [logger_zope_lb] qualname: is required"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_a_bad_ini_gets_one_line_per_problem_and_exit_1(tmp_path, capsys, text, expected):
    ini = tmp_path / "bad.ini"
    ini.write_text(text)
    status, out, err = check_main(capsys, ini)
    assert status == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == len(expected), err
    for line, fragment in zip(lines, expected, strict=True):
        assert line.startswith(f"zope-lb: {ini}{fragment}"), err


def test_non_utf8_bytes_are_named_by_line(tmp_path, capsys):
    ini = tmp_path / "latin1.ini"
    ini.write_bytes((APP + "health.auth = admin:p\xe4ss\n" + SERVER).encode("latin-1"))
    status, _, err = check_main(capsys, ini)
    assert status == 1
    assert err == (f"zope-lb: {ini}:6: [app:main] byte 0xe4 is not UTF-8 text; "
                   "save the file as UTF-8\n")


def test_a_bad_state_file_is_named(tmp_path, capsys):
    ini = tmp_path / "production.ini"
    ini.write_text(GOOD)
    state = tmp_path / "production.state.json"
    state.write_text('{"version": 1, "options": {"timeout.read": "soon"}}')
    status, _, err = check_main(capsys, ini)
    assert status == 1
    assert err.startswith(f"zope-lb: {state}: ") and "timeout.read 'soon'" in err
    assert f"the state file of [app:main] in {ini}" in err


def test_no_such_file(tmp_path, capsys):
    status, _, err = check_main(capsys, tmp_path / "missing.ini")
    assert status == 1
    missing = tmp_path / "missing.ini"
    assert err == f"zope-lb: {missing}: cannot be read: No such file or directory\n"


def test_also_checks_more_app_and_server_pairs(tmp_path, capsys):
    ini = tmp_path / "production.ini"
    ini.write_text(GOOD + "\n[app:admin]\nuse = egg:zope_lb#admin\nbalancer = main\n\n"
                          "[server:admin]\nuse = egg:waitress#main\nlisten = 127.0.0.1:6544\n"
                          "thread = 2\n")
    status, _, err = check_main(capsys, ini, "--also", "admin")
    assert status == 1
    assert err == f"zope-lb: {ini}:53: [server:admin] thread: not a waitress setting; " \
                  "did you mean threads?\n"


# -- serve: the same lines at start-up, exit 2 ----------------------------------------------


@pytest.mark.slow
def test_serve_refuses_a_bad_ini_with_the_same_lines_as_config(tmp_path):
    text = APP + "timout.read = 30\nmaxconn = many\n" + SERVER + "thread = 4\n"
    status, _, config_err, ini = run_config(tmp_path, text)
    assert status == 1
    served = subprocess.run([console_script(), "serve", str(ini)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert served.returncode == 2
    assert served.stderr == config_err
    assert len(config_err.splitlines()) == 3 and "Traceback" not in config_err


@pytest.mark.slow
def test_serve_refuses_a_key_written_twice_without_a_traceback(tmp_path):
    ini = tmp_path / "twice.ini"
    ini.write_text(GOOD.replace("threads = 16", "threads = 16\nthreads = 8"))
    served = subprocess.run([console_script(), "serve", str(ini)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert served.returncode == 2
    assert served.stderr == (f"zope-lb: {ini}:12: [server:main] threads: written twice in "
                             "this section; keep one (the parser refuses both)\n")


def test_a_log_file_that_cannot_be_written_is_named_by_config_and_serve(tmp_path):
    ini = tmp_path / "log.ini"
    ini.write_text(GOOD.replace("class = StreamHandler\nargs = (sys.stderr,)",
                                "class = handlers.RotatingFileHandler\n"
                                "args = ('%(here)s/no/such/x.log', 'a', 1000000, 5)"))
    expected = (f"zope-lb: {ini}:39: [handler_console] args: the log file's directory "
                f"{tmp_path}/no/such does not exist\n")
    for command, status in (("config", 1), ("serve", 2)):
        result = subprocess.run([console_script(), command, str(ini)], capture_output=True,
                                text=True, timeout=60, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (status, expected)


def test_setup_logging_reports_what_fileconfig_refuses_in_one_line(tmp_path):
    """What only fileConfig finds (here: a handler class that fails when made) is
    one line too (in a process of its own: fileConfig replaces every handler)."""
    ini = tmp_path / "log.ini"
    ini.write_text(GOOD.replace("args = (sys.stderr,)", "args = (sys.stderr, 'extra', 3)"))
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from zope_lb.logsetup import setup_logging; "
                               "print(setup_logging(sys.argv[1]))", str(ini)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith(f"{ini}: [loggers] logging cannot be set up: TypeError")
    assert result.stdout.count("\n") == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4e9, allow_nan=False), min_size=1,
                max_size=6))
def test_the_default_log_format_writes_the_time_as_logging_does(times):
    """The default formatter makes its date and time text once a second; every
    line must read as logging's own Formatter writes it, a second boundary
    between two lines included."""
    import logging

    from zope_lb.logsetup import LOG_FORMAT, SecondFormatter

    ours, theirs = SecondFormatter(LOG_FORMAT), logging.Formatter(LOG_FORMAT)
    for created in sorted(times) + times:  # in order, then jumping back
        record = logging.LogRecord("zope_lb.access", logging.INFO, "(access)", 0, "a line",
                                   (), None)
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        assert ours.format(record) == theirs.format(record)


def test_the_default_log_format_honours_a_date_format():
    import logging

    from zope_lb.logsetup import SecondFormatter

    record = logging.LogRecord("x", logging.INFO, "(x)", 0, "m", (), None)
    for datefmt in ("%H:%M", None):
        assert (SecondFormatter("%(asctime)s %(message)s", datefmt).format(record)
                == logging.Formatter("%(asctime)s %(message)s", datefmt).format(record))


def test_an_ini_may_use_the_once_a_second_formatter(tmp_path):
    """The README's advice: ``class = zope_lb.logsetup.SecondFormatter`` in a
    ``[formatter_*]`` section passes ``zope-lb config`` and is what fileConfig
    builds."""
    ini = tmp_path / "fmt.ini"
    ini.write_text(GOOD.replace("[formatter_generic]\n",
                                "[formatter_generic]\nclass = zope_lb.logsetup.SecondFormatter\n"))
    assert "class = zope_lb.logsetup.SecondFormatter" in ini.read_text()
    checked = subprocess.run([console_script(), "config", str(ini)], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)
    assert (checked.returncode, checked.stderr) == (0, "")
    result = subprocess.run(
        [sys.executable, "-c", "import logging, sys; from zope_lb.logsetup import setup_logging; "
                               "print(setup_logging(sys.argv[1])); "
                               "print(type(logging.getLogger().handlers[0].formatter).__name__)",
         str(ini)], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.stdout.splitlines() == ["None", "SecondFormatter"], result.stderr


# -- --version ------------------------------------------------------------------------------


def test_version():
    from importlib import metadata

    result = subprocess.run([console_script(), "--version"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    assert result.stdout == f"zope-lb {metadata.version('zope_lb')}\n"


# -- never a traceback, for any ini --------------------------------------------------------

_KEYS = ["use", "backends", "strategy", "timeout.read", "timout.read", "maxconn", "listen",
         "threads", "thread", "port", "host", "pipeline", "next", "filter-with", "keys",
         "level", "handlers", "qualname", "class", "args", "format", "health.auth",
         "state_file", "pool.zmi.backends", "pool.zmi.match", "set x", "get y"]
_VALUES = ["egg:zope_lb", "egg:zope_lb#balancer", "egg:zope_lb#balancr", "egg:waitress#main",
           "egg:nothing", "call:os:getcwd", "call:nope", "127.0.0.1:8081", "127.0.0.1",
           "http://a:1", "nonsense", "0", "4", "-1", "99999", "127.0.0.1:99999", "a%b",
           "%(here)s", "%(nope)s", "%%", "root, zope_lb", "console", "INFO", "INFOO",
           "StreamHandler", "(sys.stderr,)", "(", "%(asctime)s %(message)s", "%(asc",
           "lb main", "main", "", "١٢", "path:/x", "\u00e9"]
_HEADERS = ["[app:main]", "[pipeline:main]", "[filter:main]", "[filter-app:main]",
            "[server:main]", "[app:lb]", "[filter:lb]", "[loggers]", "[handlers]",
            "[formatters]", "[logger_root]", "[handler_console]", "[formatter_generic]",
            "[DEFAULT]", "[composite:main]", "[app:", "[]", "[server:main"]
_line = st.one_of(
    st.sampled_from(_HEADERS),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(_KEYS), st.sampled_from(_VALUES)),
    st.builds(lambda v: f"    {v}", st.sampled_from(_VALUES)),
    st.sampled_from(["stray words", "# comment", "", "=", "  ", "key: value"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
_ini = st.builds(lambda lines: "\n".join(lines).encode(),
                 st.lists(_line, min_size=0, max_size=25))


@st.composite
def _edited(draw) -> bytes:
    """A good production ini with a few lines deleted, replaced or added."""
    lines = (GOOD + "\n[app:admin]\nuse = egg:zope_lb#admin\nbalancer = main\n").splitlines()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines)))
        action = draw(st.sampled_from(["delete", "replace", "insert"]))
        if action == "delete" and at < len(lines):
            del lines[at]
        elif action == "replace" and at < len(lines):
            lines[at] = draw(_line)
        else:
            lines.insert(at, draw(_line))
    return "\n".join(lines).encode()


_bytes = st.one_of(_ini, _edited(), st.builds(lambda text, junk: text + junk,
                                             st.one_of(_ini, _edited()),
                                             st.binary(min_size=1, max_size=4)))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=_bytes)
def test_fuzz_any_ini_gives_lines_never_a_traceback(tmp_path, data):
    ini = tmp_path / "fuzz.ini"
    ini.write_bytes(data)
    report = inicheck.check_ini(str(ini))
    # the checker's last resort ("cannot be checked") would hide a crash: never needed
    assert not any(p.message.startswith("cannot be checked") for p in report.problems), \
        report.problems
    for problem in report.problems:
        line = str(problem)
        assert line.startswith(f"{ini}") or line.startswith(str(tmp_path)), line
        assert "\n" not in line and "Traceback" not in line
    if report.ok:
        inifile.format_report(report)  # printing the result never fails either
    else:
        assert report.problems


def test_fuzz_finds_problems_in_sections_not_only_the_first(tmp_path):
    """The checker collects: a bad value in the app and a typo in the server both."""
    ini = tmp_path / "two.ini"
    ini.write_text(APP + "retries = lots\n" + SERVER + "thraeds = 4\n")
    report = inicheck.check_ini(str(ini))
    assert [(p.section, p.key or p.message.split()[0]) for p in report.problems] == [
        ("app:main", "retries"), ("server:main", "thraeds")]

