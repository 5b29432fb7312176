"""``zope-lb passwd NAME``: the ``name:HASH`` line for ``admin.users``.

The ini never holds a clear-text password, only a salted, deliberately slow
scrypt hash: ``scrypt$N$r$p$SALT_B64$HASH_B64`` (N=2**14, r=8, p=1, a 16-byte
random salt, 32-byte key). Checking a password costs about 50 ms and 16 MiB,
which is nothing for one login and a lot for someone guessing from a stolen ini.

The password is read from a prompt (typed twice) when stdin is a terminal, or
as one line from stdin when piped, so scripts can do
``printf '%s\\n' "$PW" | zope-lb passwd admin``.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import logging
import os
import sys
import unicodedata
from collections.abc import Callable, Sequence
from typing import TextIO

from .converters import as_users

log = logging.getLogger(__name__)

SCHEME = "scrypt"
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
#: A stored hash may ask for at most this much memory (guards against a typo'd N).
MAX_MEMORY = 1024 * 1024 * 1024


def _key(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # NFC: the same password typed on two keyboards gives the same bytes.
    data = unicodedata.normalize("NFC", password).encode("utf-8")
    memory = 128 * r * (n + p + 2) + 1024 * 1024
    if memory > MAX_MEMORY:
        raise ValueError("scrypt parameters ask for too much memory")
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=memory)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of ``password``, as ``admin.users`` takes it."""
    if not password:
        raise ValueError("an empty password is refused")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    key = _key(password, salt, N, R, P, KEY_BYTES)
    return "$".join((SCHEME, str(N), str(R), str(P), base64.b64encode(salt).decode(),
                     base64.b64encode(key).decode()))


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (constant-time compare).

    A malformed hash never matches; it is logged, since it means a bad ini line.
    """
    parts = hashed.split("$")
    try:
        if len(parts) != 6 or parts[0] != SCHEME:
            raise ValueError("not scrypt$N$r$p$SALT$HASH")
        if not all(x.isascii() and x.isdigit() for x in parts[1:4]):
            raise ValueError("N, r and p must be whole numbers (digits 0-9)")
        n, r, p = (int(x) for x in parts[1:4])
        if n < 2 or n & (n - 1) or r < 1 or p < 1:
            raise ValueError("N must be a power of two, r and p 1 or more")
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
        if not salt or not expected:
            raise ValueError("empty salt or hash")
        actual = _key(password, salt, n, r, p, len(expected))
    except ValueError as exc:
        log.error("admin.users holds a malformed password hash (%s): make a new line "
                  "with `zope-lb passwd NAME`", exc)
        return False
    return hmac.compare_digest(actual, expected)


def read_password(stdin: TextIO, prompt: Callable[[str], str] = getpass.getpass) -> str:
    """The password: prompted twice on a terminal, else the first line of ``stdin``.
    Raises ValueError when it is empty or the two entries differ."""
    if stdin.isatty():
        password = prompt("Password: ")
        if not password:
            raise ValueError("an empty password is refused")
        if prompt("Password again: ") != password:
            raise ValueError("the two passwords differ")
        return password
    password = stdin.readline().rstrip("\r\n")
    if not password:
        raise ValueError("an empty password is refused (give it as the first line of stdin)")
    return password


def user_line(name: str, password: str) -> str:
    """``name:HASH``, checked with the same rule the settings parser applies."""
    line = f"{name}:{hash_password(password)}"
    as_users(line)  # raises ValueError if the settings would refuse it
    return line


def _check_name(name: str) -> None:
    try:
        as_users(f"{name}:{SCHEME}$0")
    except ValueError:
        raise ValueError(
            f"{name!r} is not a valid user name: 1-64 letters, digits, '.', '_', '@' or '-'"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the admin user's name (letters, digits, . _ @ -)")


def run(args: argparse.Namespace, stdin: TextIO | None = None,
        stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Read the password and print the ``name:HASH`` line; 0 on success, 2 on bad input."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        _check_name(args.name)
        password = read_password(stdin)
        line = user_line(args.name, password)
    except ValueError as exc:
        print(f"zope-lb passwd: {exc}", file=stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print("zope-lb passwd: no password given", file=stderr)
        return 2
    print(line, file=stdout)
    if stdin.isatty():
        print("Add this line to admin.users in the ini (it holds no password).", file=stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zope_lb.passwd NAME``, the same as ``zope-lb passwd NAME``."""
    parser = argparse.ArgumentParser(
        prog="zope-lb passwd",
        description="Print a name:HASH line for admin.users; reads the password from a "
                    "prompt, or one line from stdin when piped.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
