"""``zope-lb passwd``: salted scrypt hashes the settings accept, read from a prompt or a pipe."""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from zope_lb import ConfigError, parse_settings
from zope_lb.passwd import hash_password, read_password, run, verify_password

HASH = re.compile(r"scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}")


@pytest.fixture(scope="module")
def hashed():
    return hash_password("correct horse")


def test_hash_has_the_documented_form_and_a_fresh_salt(hashed):
    assert HASH.fullmatch(hashed)
    assert hash_password("correct horse") != hashed  # a new salt each time
    assert "correct horse" not in hashed


def test_verify_accepts_the_password_and_nothing_else(hashed):
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horsE", hashed)
    assert not verify_password("", hashed)


def test_unicode_passwords_compare_in_one_normal_form():
    hashed = hash_password("caf\u00e9")  # é as one code point
    assert verify_password("cafe\u0301", hashed)  # e + combining accent


@pytest.mark.parametrize("bad", [
    "scrypt$16384$8$1$not base64!$AAAA", "scrypt$3$8$1$AAAA$AAAA", "md5$x", "",
    "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",  # would need 1 TiB
])
def test_a_malformed_hash_never_matches_and_is_logged(bad, caplog):
    assert not verify_password("anything", bad)
    assert "malformed password hash" in caplog.text


def test_the_empty_password_is_refused():
    with pytest.raises(ValueError, match="empty"):
        hash_password("")


def run_cli(name, stdin_text):
    out, err = io.StringIO(), io.StringIO()
    code = run(argparse.Namespace(name=name), stdin=io.StringIO(stdin_text), stdout=out,
               stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_piped_password_prints_a_line_the_settings_accept():
    code, out, err = run_cli("admin", "s3cret pass\nignored second line\n")
    assert code == 0, err
    line = out.strip()
    name, _, hashed = line.partition(":")
    assert name == "admin" and HASH.fullmatch(hashed)
    assert verify_password("s3cret pass", hashed)  # spaces kept, only the newline dropped
    settings = parse_settings({"backends": "127.0.0.1:1\n127.0.0.1:2", "admin.users": line})
    assert settings.admin_users == (("admin", hashed),)


@pytest.mark.parametrize("stdin_text", ["", "\n", "\r\n"])
def test_empty_piped_password_is_refused(stdin_text):
    code, out, err = run_cli("admin", stdin_text)
    assert code == 2 and out == ""
    assert "empty password" in err


@pytest.mark.parametrize("name", ["", "has space", "a:b", "x" * 65, "<script>"])
def test_bad_user_names_are_refused_before_reading(name):
    code, out, err = run_cli(name, "pw\n")
    assert code == 2 and out == ""
    assert "not a valid user name" in err


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_is_prompted_twice_and_must_agree():
    answers = iter(["one", "one"])
    assert read_password(FakeTTY(), prompt=lambda _: next(answers)) == "one"
    answers = iter(["one", "two"])
    with pytest.raises(ValueError, match="differ"):
        read_password(FakeTTY(), prompt=lambda _: next(answers))
    with pytest.raises(ValueError, match="empty"):
        read_password(FakeTTY(), prompt=lambda _: "")


def test_settings_refuse_a_clear_text_password_without_echoing_it():
    with pytest.raises(ConfigError) as info:
        parse_settings({"backends": "127.0.0.1:1", "admin.users": "admin:hunter2"})
    assert "hunter2" not in str(info.value)


def test_python_m_zope_lb_passwd_reads_a_pipe():
    done = subprocess.run([sys.executable, "-m", "zope_lb.passwd", "ops@site"],
                          input="from a pipe\n", capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    name, _, hashed = done.stdout.strip().partition(":")
    assert name == "ops@site" and verify_password("from a pipe", hashed)
    assert "from a pipe" not in done.stdout + done.stderr


@pytest.mark.slow
def test_the_zope_lb_passwd_command_as_installed():
    """The console script, as an operator types it (piped here)."""

    script = shutil.which("zope-lb", path=os.path.dirname(sys.executable)) or shutil.which(
        "zope-lb")
    assert script, "the zope-lb console script is installed with the package"
    result = subprocess.run([script, "passwd", "editor"], input="pw with spaces\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    name, _, hashed = result.stdout.strip().partition(":")
    assert name == "editor" and verify_password("pw with spaces", hashed)
    assert "pw with spaces" not in result.stdout + result.stderr


def test_a_hash_with_non_ascii_digits_never_matches(caplog):
    from zope_lb.passwd import hash_password, verify_password

    good = hash_password("pw")
    scheme, n, r, p, salt, key = good.split("$")
    fullwidth = "".join(chr(ord(c) - ord("0") + 0xFF10) for c in n)
    assert verify_password("pw", good)
    assert not verify_password("pw", "$".join((scheme, fullwidth, r, p, salt, key)))
    assert "digits 0-9" in caplog.text
