"""The README is for operators; these keep it true to the code."""

from __future__ import annotations

import os
import re

import pytest

from zope_lb.settings import OPTIONS, POOL_FIELDS, Option, option_topic, options_table

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def read() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_option_table_is_generated_from_the_schema():
    text = read()
    match = re.search(r"<!-- options-table.*?-->\n(.*?)\n<!-- /options-table -->", text, re.S)
    assert match, "README lacks the generated option table"
    assert match.group(1) == options_table(), (
        "README option table is stale: paste zope_lb.settings.options_table()")
    for option in OPTIONS:
        assert f"| `{option.name}` |" in match.group(1)


def test_quickstart_has_the_two_commands_ci_runs():
    text = read()
    assert "python -m pip install -e '.[test]' && zope-lb demo" in text
    test_command = "python -m pip install -e '.[test]' && python -m pytest"
    assert test_command in text
    with open(os.path.join(os.path.dirname(README), ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert test_command in ci


def topic_tables(table: str) -> dict[str, list[str]]:
    """The option names listed under each `####` topic heading of the generated text."""
    tables: dict[str, list[str]] = {}
    current = None
    for line in table.splitlines():
        if line.startswith("#### "):
            current = line[5:]
            assert current not in tables, f"topic {current} appears twice"
            tables[current] = []
        elif line.startswith("| `"):
            assert current is not None, "an option row before any topic heading"
            tables[current].append(line.split("`")[1])
    return tables


def test_every_option_is_in_exactly_one_topic_table():
    tables = topic_tables(options_table())
    listed = [name for names in tables.values() for name in names]
    expected = ([o.name for o in OPTIONS] + [f"pool.NAME.{f}" for f in POOL_FIELDS]
                + ["pool.NAME.OPTION"])  # the per-pool options, in one row
    assert sorted(listed) == sorted(expected)
    assert len(listed) == len(set(listed))
    assert tables["Timeouts and deadlines"][:2] == ["timeout.connect", "timeout.read"]
    assert "vhm.prefix" in tables["Front proxy and Zope URLs"]
    assert "admin.users" in tables["Administration"]


def test_an_option_without_a_topic_is_listed_under_other():
    new = Option("frobnicate.level", str, "3", "A future option nobody mapped yet.")
    assert option_topic(new.name) == "Other"
    assert option_topic("timeout.client") == "Timeouts and deadlines"
    assert option_topic("shutdown.timeout") == "Timeouts and deadlines"
    assert option_topic("access_log") == "Logging"
    assert option_topic("prefixes") == "Other"  # a key matches whole name parts only
    tables = topic_tables(options_table((*OPTIONS, new)))
    assert tables["Other"] == ["frobnicate.level"]
    assert list(tables)[-1] == "Other"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_contents_link_leads_to_a_heading():
    text = read()
    contents = text.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\(#([^)]+)\)", contents)
    headings = {github_anchor(h) for h in re.findall(r"^#{2,4} (.+)$", text, re.M)}
    assert len(links) > 20
    assert [link for link in links if link not in headings] == []
    top = [github_anchor(h) for h in re.findall(r"^## (.+)$", text, re.M) if h != "Contents"]
    assert [anchor for anchor in top if anchor not in links] == [], "a section missing"


def ini_block(after_heading: str) -> str:
    """The first ```ini block after a heading."""
    text = read().split(after_heading + "\n", 1)[1]
    return re.search(r"```ini\n(.*?)```", text, re.S).group(1)



def test_the_production_ini_is_valid(tmp_path):
    import configparser

    from waitress.adjustments import Adjustments

    from zope_lb.settings import _BY_NAME, parse_settings

    text = ini_block("### A production ini")
    parser = configparser.ConfigParser(strict=True)  # a key twice would be an error
    parser.read_string(text)
    app = {k: v for k, v in parser["app:main"].items() if k != "use"}
    assert parser["app:main"]["use"] == "egg:zope_lb"
    assert [k for k in app if k not in _BY_NAME] == []
    settings = parse_settings(app)
    assert [b.id for b in settings.backends] == ["client1", "client2", "client3", "spare"]
    assert settings.vhm_root == "/Plone"
    assert len(settings.forwarded_trusted) == 2
    server = dict(parser["server:main"])
    assert server.pop("use") == "egg:waitress#main"
    adjustments = Adjustments(**server)
    assert adjustments.threads == 48
    assert "clear_untrusted_proxy_headers" not in server  # zope-lb serve sets it


def test_the_production_ini_sends_the_access_log_to_its_own_file(tmp_path):
    """The ini's logging sections, as zope-lb serve loads them (fileConfig), in a
    child process: access lines reach the access file only, the rest stderr only."""
    import subprocess
    import sys

    access = tmp_path / "access.log"
    ini = tmp_path / "production.ini"
    ini.write_text(ini_block("### A production ini").replace(
        "/var/log/zope_lb/access.log", str(access)), encoding="utf-8")
    script = (
        "import logging, logging.config, sys\n"
        f"logging.config.fileConfig({str(ini)!r}, {{'here': {str(tmp_path)!r}}},"
        " disable_existing_loggers=False)\n"
        "logging.getLogger('zope_lb.access').info('ACCESS-LINE')\n"
        "logging.getLogger('zope_lb.proxy').warning('WARNING-LINE')\n"
        "logging.getLogger('waitress.queue').warning('QUEUE-LINE')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, check=True)
    assert access.read_text(encoding="utf-8") == "ACCESS-LINE\n"
    assert "WARNING-LINE" in result.stderr
    assert "[zope_lb.proxy]" in result.stderr
    assert "ACCESS-LINE" not in result.stderr
    assert "QUEUE-LINE" not in result.stderr


@pytest.mark.slow
@pytest.mark.nginx
def test_the_nginx_example_sends_what_zope_lb_needs(tmp_path):
    """Debian's nginx with the README's server block (plain http on a free port
    instead of TLS), in front of a recording backend standing where zope_lb would:
    the request arrives with the public host, scheme, port and client address."""
    import http.client
    import shutil
    import signal
    import subprocess

    from apps import Echo
    from servers import ServerThread, free_port, wait_until

    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.skip("Debian's nginx is not installed (apt-get install nginx)")
    block = re.search(r"```nginx\n(.*?)```", read(), re.S).group(1)
    echo = Echo("zope_lb")
    backend = ServerThread(echo).start()
    port = free_port()
    assert block.count("127.0.0.1:6543") == 1
    block = block.replace("127.0.0.1:6543", backend.address)
    block = re.sub(r"listen 443 ssl http2;.*", f"listen 127.0.0.1:{port};", block)
    block = re.sub(r"\n\s*ssl_certificate\S* .*", "", block)
    temp = "".join(f"{kind}_temp_path {tmp_path}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"worker_processes 1;\npid {tmp_path}/nginx.pid;\n"
                    f"error_log {tmp_path}/error.log;\nevents {{ worker_connections 64; }}\n"
                    f"http {{\naccess_log off;\n{temp}{block}\n}}\n", encoding="utf-8")
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-e", f"{tmp_path}/error.log",
                             "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: proc.poll() is not None or _listening(port), timeout=10)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/news?b_start=20", headers={"Host": "www.example.org"})
            response = conn.getresponse()
            response.read()
            conn.close()
            assert response.status == 200
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        backend.stop()
    assert len(echo.requests) == 3
    seen = echo.requests[0]
    assert seen["uri"] == "/news?b_start=20"
    headers = seen["headers"]
    assert headers["Host"] == "www.example.org"
    assert headers["X-Forwarded-Host"] == "www.example.org"
    assert headers["X-Forwarded-Proto"] == "http"  # $scheme: https behind TLS
    assert headers["X-Forwarded-Port"] == str(port)
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert "Connection" not in headers  # HTTP/1.1 kept alive: no "Connection: close"


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_the_production_examples_agree_on_their_timeouts():
    """systemd and Docker wait longer than the drain; nginx waits longer than
    zope_lb's own deadlines (so its 503/504 page reaches the browser) and drops
    an idle kept-alive connection before zope_lb would."""
    text = read()
    ini = dict(re.findall(r"^([\w.]+) = (\S+)$", ini_block("### A production ini"), re.M))
    shutdown = float(ini["shutdown.timeout"])
    assert float(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1)) >= shutdown + 5
    assert float(re.search(r"stop_grace_period: (\d+)s", text).group(1)) >= shutdown + 5
    nginx = re.search(r"```nginx\n(.*?)```", text, re.S).group(1)
    read_timeout = float(re.search(r"proxy_read_timeout (\d+)s;", nginx).group(1))
    assert read_timeout > float(ini["queue.timeout"]) + float(ini["timeout.read"])
    idle = float(re.search(r"keepalive_timeout (\d+)s;", nginx).group(1))
    assert idle < float(ini["timeout.request"])
    assert "docker stop -t 40" in text and "TimeoutStopSec=40" in text


def ini_blocks(section_heading: str) -> list[str]:
    """Every ```ini block of a ``## `` section (up to the next ``## `` heading)."""
    text = read().split(section_heading + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```ini\n(.*?)```", text, re.S)


def test_the_container_examples_are_valid_resolve_lines():
    """Each backend line of *Containers* parses as a ``resolve`` line (no DNS is
    asked: parsing never looks a name up), and the Compose ini is a whole valid
    [app:main] whose front proxy's network is trusted."""
    import configparser
    import ipaddress

    from waitress.adjustments import Adjustments

    from zope_lb.settings import _BY_NAME, parse_settings

    blocks = ini_blocks("## Containers")
    assert len(blocks) >= 4
    kinds = []
    for block in blocks:
        parser = configparser.ConfigParser(strict=True)
        parser.read_string(block if "[app:main]" in block else "[app:main]\n" + block)
        app = {k: v for k, v in parser["app:main"].items() if k != "use"}
        assert [k for k in app if k not in _BY_NAME] == []
        settings = parse_settings(app)
        kinds += [b.resolve for b in settings.backends]
        if "[server:main]" in block:
            assert parser["app:main"]["use"] == "egg:zope_lb"
            assert Adjustments(**{k: v for k, v in parser["server:main"].items()
                                  if k != "use"}).threads == 64
            compose = read().split("# compose.yaml\nservices:\n  zeo:", 1)[1]
            subnet = re.search(r"subnet: ([\d./]+)", compose).group(1)
            assert ipaddress.ip_network(subnet) in settings.forwarded_trusted
    assert kinds and all(kind == "a" for kind in kinds)
    srv = re.search(r"^#\s+(_http\._tcp\.\S+\s+resolve=srv)$", read(), re.M).group(1)
    assert parse_settings({"backends": srv}).backends[0].resolve == "srv"


def test_the_plone_6_inis_are_what_zope_lb_config_accepts(tmp_path):
    """The complete inis of *Plone 6 Classic UI* and *Plone 6 with Volto*, checked
    as ``zope-lb config`` checks them, and saying what their text says."""
    from zope_lb.inicheck import check_ini
    from zope_lb.settings import parse_settings

    settings = []
    for heading in ("## Plone 6 Classic UI", "## Plone 6 with Volto"):
        blocks = [b for b in ini_blocks(heading) if "[app:main]" in b]
        assert len(blocks) == 1, heading
        ini = tmp_path / "production.ini"
        ini.write_text(blocks[0], encoding="utf-8")
        report = check_ini(str(ini))
        assert report.problems == [], (heading, report.problems)
        (balancer,) = report.balancers
        settings.append(parse_settings({k: v for k, v in balancer.local_conf.items()
                                        if k != "use"}))
    classic, volto = settings
    assert classic.vhm_root == "/Plone" and classic.affinity_when == "__ac"
    assert classic.health_path == "/Plone/@@ok" and classic.health_port == 0
    assert [p.name for p in volto.pools] == ["api"]
    api = volto.pool_settings(volto.pools[0])
    assert (api.vhm_root, api.vhm_strip, api.vhm_base) == (
        "/Plone/++api++", "/++api++", "https://www.example.com")
    assert (api.health_path, api.health_port) == ("/ready", 8081)
    assert (api.affinity, api.affinity_when) == ("cookie", "auth_token")
    assert volto.vhm_root == "" and volto.health_port == 0  # the frontends: paths unchanged
    text = read()
    assert "http://10.0.0.2:6543/++api++" in text  # the internal API path: a listen address
    assert "10.0.0.2:6543" in ini_blocks("## Plone 6 with Volto")[-1]
