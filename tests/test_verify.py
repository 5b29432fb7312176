"""``zope-lb verify``: the parsers and verdicts on pages captured from Zope 6.3,
then the whole command against a real ZEO server and real Zope clients.

The real-cluster tests are marked ``zope``; they skip when Zope is not
installed (``pip install -e '.[zope]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess

import pytest
import urllib3
from serve_process import console_script
from zope_cluster import PASSWORD, USER, zope_cluster  # noqa: F401  (a fixture)

from zope_lb import verify
from zope_lb.verify import FAIL, PASS, SKIP, Probe, Transaction, judge

CREDENTIALS = f"{USER}:{PASSWORD}"

# From /Control_Panel/Database/main/manage_main, Zope 6.3, a ZEO client
# whose <zeoclient> has no 'name' (the location is then the server address).
DB_ZEO = """
  <table id="zmi-db_info" class="table table-striped">
    <thead>
      <tr>
        <th colspan="2">
          Database information
          <i class="fa fa-database text-secondary ml-1 mr-1"></i>
          <em>main</em>
        </th>
      </tr>
    </thead>
    <tbody>
      <tr>
        <td>Database Location</td>
        <td class="code">[(&#x27;127.0.0.1&#x27;, 52759)] (connected)</td>
      </tr>
      <tr>
        <td>Database Size</td>
        <td class="code">4.8K</td>
      </tr>
    </tbody>
  </table>
"""

# The same page from a client on its own FileStorage.
DB_FILESTORAGE = """
    <tbody>
      <tr>
        <td>Database Location</td>
        <td class="code">/tmp/zt/c3/var/Data.fs</td>
      </tr>
      <tr>
        <td>Database Size</td>
        <td class="code">4.4K</td>
      </tr>
"""

# From /Control_Panel/Database/main/manage_UndoForm: the value spans two
# lines (App.Undo.encode64 ends with a newline).
UNDO = """
<table class="table table-sm table-striped">
  <tbody>
    <tr>
      <td>
        <div class="form-check text-right"><input class="form-check-input"
          type="checkbox" name="transaction_info:list" value="QkExSE9CRVh4Sms9
 2026/11/26 16:24:4.006135 UTC Added default view for root object" /></div>
      </td>
      <td>
        Added default view for root object
        by <strong><em>Zope</em></strong>
      </td>
    </tr>
    <tr>
      <td>
        <div class="form-check text-right"><input class="form-check-input"
          type="checkbox" name="transaction_info:list" value="QkExSE9CRE9rVlU9
 2026/11/26 16:24:3.939118 UTC Created initial user" /></div>
      </td>
    </tr>
  </tbody>
</table>
"""


# ---------------------------------------------------------------- parsers


def test_location_of_a_zeo_client():
    assert verify.parse_database_location(DB_ZEO) == ("[('127.0.0.1', 52759)]", True)


def test_location_of_a_disconnected_zeo_client():
    page = DB_ZEO.replace("(connected)", "(disconnected)")
    assert verify.parse_database_location(page) == ("[('127.0.0.1', 52759)]", False)


def test_location_of_a_filestorage_has_no_connection_state():
    assert verify.parse_database_location(DB_FILESTORAGE) == ("/tmp/zt/c3/var/Data.fs", None)


@pytest.mark.parametrize("page", ["", "<html><body>Please log in</body></html>",
                                  "<td>Database Location</td>"])
def test_no_location_on_another_page(page):
    assert verify.parse_database_location(page) is None


def test_transactions_newest_first_with_tid_time_and_description():
    found = verify.parse_transactions(UNDO)
    assert [t.tid for t in found] == ["040d47381117c499", "040d473810ce9155"]
    assert found[0] == Transaction(
        id="QkExSE9CRVh4Sms9", tid="040d47381117c499",
        time="2026/11/26 16:24:4.006135 UTC",
        description="Added default view for root object",
    )


def test_a_token_that_is_not_base64_is_kept_without_tid():
    page = '<input name="transaction_info:list" value="not-base64! 2026/1/1 0:0:0 UTC x">'
    (only,) = verify.parse_transactions(page)
    assert (only.id, only.tid) == ("not-base64!", "")


def test_no_transactions_on_another_page():
    assert verify.parse_transactions("<html>Unauthorized</html>") == ()


@pytest.mark.parametrize("location, servers", [
    ("[('127.0.0.1', 8100)]", (("127.0.0.1", 8100),)),
    ("[('localhost', 8100), ('zeo2.internal', 8101)]",
     (("localhost", 8100), ("zeo2.internal", 8101))),
    ("('::1', 8100)", (("::1", 8100),)),
    ("zeo.internal:8100", (("zeo.internal", 8100),)),
    ("[::1]:8100", (("::1", 8100),)),
    ("/srv/zope/var/Data.fs", None),
    ("/var/run/zeo.sock", None),
    ("[]", None),
    ("[('127.0.0.1', '8100')]", None),
    ("__import__('os')", None),
])
def test_zeo_servers_are_read_from_the_location(location, servers):
    assert verify.zeo_servers(location) == servers


def test_host_names_resolve_to_their_addresses():
    assert "127.0.0.1:8100" in verify.resolve([("localhost", 8100)])[0]
    assert verify.resolve([("127.0.0.1", 8100)]) == (("127.0.0.1:8100",), ())
    assert verify.resolve([("::1", 8100)]) == (("[::1]:8100",), ())


def test_a_name_that_does_not_resolve_is_kept_by_name():
    bad = "x" * 64 + ".example"  # a label over 63 characters: refused without DNS
    assert verify.resolve([(bad, 8100), ("127.0.0.1", 8100)]) == (
        ("127.0.0.1:8100",), (f"{bad}:8100",))


# ---------------------------------------------------------------- verdicts

T1 = Transaction("id1", "00000000000000a1", "2026/11/26 16:24:4.1 UTC")
T2 = Transaction("id2", "00000000000000a2", "2026/11/26 16:24:5.2 UTC")
TX = Transaction("idx", "00000000000000ff", "2026/11/26 16:00:0.0 UTC")
ZEO = "[('10.0.0.5', 8100)]"


def client(address="10.0.0.1:8080", **kw):
    defaults = dict(status=200, ms=3.0, location=ZEO, connected=True, transactions=(T1,))
    return Probe(address, **{**defaults, **kw})


def outcomes(report, address):
    (found,) = [c for c in report.clients if c.probe.address == address]
    return {check.name: check.outcome for check in found.checks}


def reasons(report):
    return " | ".join(f"{c.probe.address} {f.name}: {f.reason}"
                      for c in report.clients for f in c.failures)


def test_a_shared_cluster_passes():
    probes = [client(writer=True, write_seen=True),
              client("10.0.0.2:8080", write_seen=True, write_ms=4.0)]
    report = judge(probes, storage_checked=True, write_checked=True)
    assert report.passed, reasons(report)
    assert set(outcomes(report, "10.0.0.2:8080").values()) == {PASS}


def test_a_different_location_fails_naming_the_client():
    probes = [client(), client("10.0.0.2:8080"), client("10.0.0.3:8080", location="other")]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert not report.passed
    assert outcomes(report, "10.0.0.3:8080")["location"] == FAIL
    assert outcomes(report, "10.0.0.1:8080")["location"] == PASS
    assert "10.0.0.3:8080 location: 'other' differs" in reasons(report)


def test_a_filestorage_cannot_be_shared():
    probes = [client(), client("10.0.0.2:8080", location="/srv/zope/var/Data.fs",
                               connected=None)]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert outcomes(report, "10.0.0.2:8080")["location"] == FAIL
    assert "is a FileStorage" in reasons(report)


def test_a_single_filestorage_client_has_nothing_to_share_with():
    report = judge([client(location="/srv/Data.fs", connected=None)], True, False)
    assert report.passed
    assert any("only one client" in note for note in report.notes)


def test_localhost_and_its_address_are_one_zeo_server():
    probes = [client(location="[('127.0.0.1', 8100)]", servers=("127.0.0.1:8100",)),
              client("10.0.0.2:8080", location="[('localhost', 8100)]",
                     servers=("127.0.0.1:8100", "[::1]:8100"))]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert report.passed, reasons(report)
    (second,) = [c for c in report.clients[1].checks if c.name == "location"]
    assert "the same server as" in second.reason and "127.0.0.1:8100" in second.reason


def test_names_resolving_to_different_servers_fail_naming_the_addresses():
    probes = [client(location="[('127.0.0.1', 8100)]", servers=("127.0.0.1:8100",)),
              client("10.0.0.2:8080", location="[('zeo', 8100)]",
                     servers=("10.0.0.7:8100",))]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert outcomes(report, "10.0.0.2:8080")["location"] == FAIL
    assert "resolves to 10.0.0.7:8100" in reasons(report)


def test_a_name_that_does_not_resolve_is_compared_as_text_and_named():
    probes = [client(location="[('zeo.lan', 8100)]", unresolved=("zeo.lan:8100",)),
              client("10.0.0.2:8080", location="[('zeo.lan', 8100)]",
                     unresolved=("zeo.lan:8100",)),
              client("10.0.0.3:8080", location="[('10.0.0.5', 8100)]",
                     servers=("10.0.0.5:8100",))]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert outcomes(report, "10.0.0.2:8080")["location"] == PASS
    assert outcomes(report, "10.0.0.3:8080")["location"] == FAIL
    assert any("zeo.lan:8100 does not resolve here" in note for note in report.notes)
    assert "zeo.lan:8100 does not resolve here, so it was compared as text" in reasons(report)


def test_a_write_asked_for_but_not_made_says_why():
    probes = [client(connected=False), client("10.0.0.2:8080", connected=False)]
    report = judge(probes, storage_checked=True, write_checked=False, write_asked=True)
    assert outcomes(report, "10.0.0.2:8080")["write"] == SKIP
    assert any("no client passed the storage checks" in note for note in report.notes)
    assert not any("add --write-check" in note for note in report.notes)


def test_a_disconnected_zeo_client_fails():
    probes = [client(), client("10.0.0.2:8080", connected=False)]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert "disconnected from its ZEO server" in reasons(report)


def test_different_last_transactions_fail():
    probes = [client(), client("10.0.0.2:8080", transactions=(TX,))]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert outcomes(report, "10.0.0.2:8080")["transaction"] == FAIL
    assert "do not share one storage" in reasons(report)


def test_a_live_site_may_move_on_between_two_reads():
    probes = [client(), client("10.0.0.2:8080", transactions=(T2, T1))]
    assert judge(probes, storage_checked=True, write_checked=False).passed


def test_a_write_not_seen_fails_with_its_reason():
    probes = [client(writer=True, write_seen=True),
              client("10.0.0.2:8080", write_seen=False, write_error="not seen within 5 s")]
    report = judge(probes, storage_checked=True, write_checked=True)
    assert outcomes(report, "10.0.0.2:8080")["write"] == FAIL
    assert "not seen within 5 s" in reasons(report)


def test_without_credentials_storage_checks_are_skipped_not_passed():
    probes = [Probe("10.0.0.1:8080", status=200, ms=2.0),
              Probe("10.0.0.2:8080", status=200, ms=2.0)]
    report = judge(probes, storage_checked=False, write_checked=False)
    assert report.passed  # only what was checked can fail...
    assert (report.result, report.exit_status) == ("INCOMPLETE", 3)  # ...but it is no pass
    assert report.to_dict()["result"] == "incomplete"
    assert outcomes(report, "10.0.0.1:8080") == {
        "reachable": PASS, "location": SKIP, "transaction": SKIP, "write": SKIP}
    assert report.to_dict()["storage_checks"] == "skipped"
    assert any("storage checks skipped" in note for note in report.notes)


def test_an_unreachable_client_fails_with_the_reason():
    probes = [client(), Probe("10.0.0.2:8080", error="connection refused")]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert not report.passed
    assert outcomes(report, "10.0.0.2:8080") == {
        "reachable": FAIL, "location": SKIP, "transaction": SKIP, "write": SKIP}
    assert "10.0.0.2:8080 reachable: connection refused" in reasons(report)


def test_a_server_error_is_not_reachable():
    report = judge([Probe("10.0.0.2:8080", status=503, ms=1.0)], False, False)
    assert "answered HTTP 503" in reasons(report)


def test_refused_credentials_fail_once_not_per_page():
    probes = [client(location=None, connected=None, transactions=(),
                     storage_error="credentials refused (HTTP 401)")]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert [f.name for f in report.clients[0].failures] == ["location"]


def test_localhost_on_different_hosts_gets_a_note():
    local = "[('localhost', 8100)]"
    probes = [client(location=local), client("10.0.0.2:8080", location=local)]
    report = judge(probes, storage_checked=True, write_checked=False)
    assert report.passed
    assert any("localhost" in note for note in report.notes)


def test_the_table_has_the_columns_and_the_reasons():
    probes = [client(writer=True, write_seen=True),
              Probe("10.0.0.2:8080", error="connection refused")]
    text = verify.render_table(judge(probes, storage_checked=True, write_checked=True))
    header = text.splitlines()[0].split()
    assert header == ["client", "reachable", "location", "last", "transaction", "write",
                      "seen", "verdict"]
    assert "FAIL 10.0.0.2:8080 reachable: connection refused" in text
    assert text.splitlines()[-1].startswith("result: FAIL")


# ---------------------------------------------------------------- command line


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``zope-lb verify ARGS`` in-process: (exit status, stdout, stderr)."""
    monkeypatch.delenv(verify.USER_ENV, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="zope-lb verify")
        verify.add_arguments(parser)
        status = verify.run(parser.parse_args(list(argv)))
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return status, out, err

    return run


def test_ini_backends_are_read(tmp_path):
    ini = tmp_path / "lb.ini"
    ini.write_text("[app:main]\nuse = egg:zope_lb\nbackends =\n"
                   "    127.0.0.1:8081\n    127.0.0.1:8082  weight=2\n"
                   "    # a comment\n    127.0.0.1:8083  backup\n")
    assert verify.read_ini_backends(str(ini)) == [
        "127.0.0.1:8081", "127.0.0.1:8082  weight=2", "127.0.0.1:8083  backup"]


def test_ini_filter_section_is_found(tmp_path):
    ini = tmp_path / "lb.ini"
    ini.write_text("[app:main]\nuse = egg:myapp\n\n"
                   "[filter:lb]\nuse = egg:zope_lb#balancer\nbackends = 127.0.0.1:8081\n")
    assert verify.read_ini_backends(str(ini)) == ["127.0.0.1:8081"]


def test_ini_without_backends_is_a_usage_error(cli, tmp_path):
    ini = tmp_path / "lb.ini"
    ini.write_text("[app:main]\nuse = egg:zope_lb\n")
    status, _, err = cli(str(ini))
    assert status == 2 and "no 'backends'" in err


def test_missing_ini_is_a_usage_error(cli, tmp_path):
    status, _, err = cli(str(tmp_path / "nowhere.ini"))
    assert status == 2 and "no such file" in err


def test_bad_address_is_a_usage_error(cli):
    status, _, err = cli("http://127.0.0.1:8080")
    assert status == 2 and "backends line 1" in err


def test_user_without_password_is_a_usage_error_that_hides_the_value(cli):
    status, _, err = cli("127.0.0.1:1", "--user", "admin/hunter2")
    assert status == 2 and "NAME:PASSWORD" in err and "hunter2" not in err


# ---------------------------------------------------------------- real Zope


def _closed_port():
    """A port bound but not listening: connecting is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.zope
def test_a_real_shared_cluster_passes_every_check(cli, zope_cluster):  # noqa: F811
    status, out, _ = cli(*zope_cluster.addresses, "--user", CREDENTIALS,
                         "--write-check", "--json")
    report = json.loads(out)
    assert status == 0, out
    assert report["passed"] and report["write_check"] == "checked"
    first, second = report["clients"]
    assert first["location"] == second["location"] == f"[('127.0.0.1', {zope_cluster.zeo.port})]"
    assert first["connected"] is second["connected"] is True
    assert first["last_transaction"]["tid"] == second["last_transaction"]["tid"]
    assert len(first["last_transaction"]["tid"]) == 16
    assert first["writer"] and second["write_seen"] is True
    root = urllib3.request("GET", f"http://{zope_cluster.addresses[1]}/manage_main",
                           headers=urllib3.make_headers(basic_auth=CREDENTIALS), timeout=5)
    assert root.status == 200 and "zope_lb_verify_" not in root.data.decode()  # deleted


@pytest.mark.zope
def test_a_client_with_its_own_filestorage_fails_by_name(cli, zope_cluster):  # noqa: F811
    loner = zope_cluster.loners[0].address
    status, out, _ = cli(*zope_cluster.addresses, loner, "--user", CREDENTIALS,
                         "--write-check", "--write-wait", "1")
    assert status == 1
    failures = [line for line in out.splitlines() if line.startswith("FAIL ")]
    assert failures and all(line.startswith(f"FAIL {loner} ") for line in failures), out
    assert {line.split()[2] for line in failures} == {"location:", "transaction:", "write:"}
    assert "is a FileStorage" in out
    assert "result: FAIL: 2 of 3 clients" in out


@pytest.mark.zope
def test_without_credentials_only_reachability_is_checked(cli, zope_cluster):  # noqa: F811
    status, out, _ = cli(*zope_cluster.addresses, zope_cluster.loners[0].address)
    assert status == 3, out  # the loner would fail the storage checks, which were not made
    assert "note: storage checks skipped" in out
    assert "result: INCOMPLETE: 3 of 3 clients passed every check made" in out
    assert out.count("(skipped)") == 9


@pytest.mark.zope
def test_an_unreachable_address_fails_with_the_reason(cli, zope_cluster):  # noqa: F811
    with _closed_port() as sock:
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
        status, out, _ = cli(*zope_cluster.addresses, dead, "--user", CREDENTIALS)
    assert status == 1
    assert f"FAIL {dead} reachable: connection refused" in out


@pytest.mark.zope
def test_wrong_password_fails_with_the_reason(cli, zope_cluster):  # noqa: F811
    status, out, _ = cli(*zope_cluster.addresses, "--user", f"{USER}:wrong",
                         "--write-check")
    assert status == 1
    assert "credentials refused" in out and "wrong" not in out


@pytest.mark.zope
def test_the_ini_form_checks_its_backends(cli, zope_cluster, tmp_path):  # noqa: F811
    ini = tmp_path / "cluster.ini"
    lines = "".join(f"    {a}\n" for a in zope_cluster.addresses)
    ini.write_text(f"[app:main]\nuse = egg:zope_lb\nbackends =\n{lines}")
    status, out, _ = cli(str(ini), "--user", CREDENTIALS)
    assert status == 0, out
    assert all(a in out for a in zope_cluster.addresses)


@pytest.mark.zope
def test_verify_cluster_is_usable_in_code(zope_cluster):  # noqa: F811
    report = verify.verify_cluster(zope_cluster.addresses, user=CREDENTIALS,
                                   write_check=True, timeout=5)
    assert report.passed
    assert [c.probe.address for c in report.clients] == zope_cluster.addresses


@pytest.fixture(scope="module")
def localhost_client(zope_cluster):  # noqa: F811
    """One more client on the shared ZEO server, naming it ``localhost:PORT``."""
    server = zope_cluster.add_client("via_localhost", zeo_host="localhost")
    try:
        yield server
    finally:
        zope_cluster.remove_client(server)


@pytest.mark.zope
def test_clients_naming_zeo_localhost_and_127_0_0_1_share_one_storage(
        cli, zope_cluster, localhost_client):  # noqa: F811
    first = zope_cluster.addresses[0]
    status, out, _ = cli(first, localhost_client.address, "--user", CREDENTIALS,
                         "--write-check", "--json")
    report = json.loads(out)
    assert status == 0, out
    one, other = report["clients"]
    port = zope_cluster.zeo.port
    assert one["location"] == f"[('127.0.0.1', {port})]"
    assert other["location"] == f"[('localhost', {port})]"
    assert f"127.0.0.1:{port}" in one["zeo_servers"]
    assert f"127.0.0.1:{port}" in other["zeo_servers"]
    assert other["write_seen"] is True


@pytest.mark.zope
def test_a_bad_client_listed_first_fails_alone(cli, zope_cluster):  # noqa: F811
    loner = zope_cluster.loners[0].address
    status, out, _ = cli(loner, *zope_cluster.addresses, "--user", CREDENTIALS,
                         "--write-check", "--write-wait", "1", "--json")
    report = json.loads(out)
    assert status == 1
    verdicts = {c["address"]: c["verdict"] for c in report["clients"]}
    assert verdicts == {loner: FAIL, **dict.fromkeys(zope_cluster.addresses, PASS)}, out
    writer, reader = report["clients"][1:]
    assert writer["writer"] and reader["write_seen"] is True
    assert not report["clients"][0]["writer"]


def _closed_pipe_run(*argv: str, stdin: bytes = b"",
                     buffered: bool = True) -> subprocess.CompletedProcess:
    """Run ``zope-lb ARGV`` with its stdout a pipe nobody reads: closed before
    the command writes, as ``| head -c 10`` is once head has its bytes.
    Buffered, the write fails at the last flush; unbuffered, at the print."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        env = {k: v for k, v in os.environ.items()
               if k not in (verify.USER_ENV, "PYTHONUNBUFFERED")}
        if not buffered:
            env["PYTHONUNBUFFERED"] = "1"
        return subprocess.run([console_script(), *argv], stdout=write_end,
                              stderr=subprocess.PIPE, input=stdin, timeout=60, env=env)
    finally:
        os.close(write_end)


def _quiet(err: bytes) -> bool:
    return not any(word in err for word in (b"Traceback", b"BrokenPipe", b"Exception ignored"))


@pytest.mark.zope
@pytest.mark.parametrize("buffered", [True, False])
@pytest.mark.parametrize("form", ["--json", "--table"])
def test_verify_into_a_closed_pipe_ends_quietly_with_its_verdict(
        zope_cluster, form, buffered):  # noqa: F811
    extra = ["--json"] if form == "--json" else []
    done = _closed_pipe_run("verify", *zope_cluster.addresses, "--user", CREDENTIALS, *extra,
                            buffered=buffered)
    assert _quiet(done.stderr), done.stderr.decode()
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.parametrize("buffered, status", [(True, 0), (False, 141)])
def test_another_command_into_a_closed_pipe_ends_quietly(buffered, status):
    """Its own status when the pipe broke at the last flush; 141 (128 + SIGPIPE,
    as a shell shows ``yes | head``) when it broke before the command ended."""
    done = _closed_pipe_run("passwd", "admin", stdin=b"secret\n", buffered=buffered)
    assert _quiet(done.stderr), done.stderr.decode()
    assert done.returncode == status, done.stderr.decode()
