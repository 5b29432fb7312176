"""Who may use the admin pages: address allow-list, passwords, sessions, CSRF, throttling.

Theory of operation. Every admin request passes, in order: the allow-list
(``admin.allow``, on the client address as ``forwarded.trusted`` proxies
report it), then credentials: HTTP Basic (``Authorization`` header) or the
session cookie a login form issued. A state-changing request must also come
from the admin pages' own origin (``Origin`` / ``Sec-Fetch-Site``), and, when
it rides on the session cookie or on a browser's remembered Basic
credentials through a form, carry the CSRF token.

No secret needs configuring or sharing: the HMAC key that signs session
cookies and CSRF tokens is derived from the configured ``admin.users`` lines.
Every worker process and every restart reading the same ini agrees on it, and
changing or removing any password changes the key, which logs every session
out. The hashes carry random salts, so the key cannot be guessed by someone who
cannot read the ini; whoever can read the ini can forge a session, so keep it
readable only by the service's user (as any file holding password hashes).

Wrong credentials spend the sending address's failure budget (10 a minute,
:class:`FailureBudget`), shared by the login form and Basic auth; an address
that spent it gets 429 with ``Retry-After`` at once, before any password is
checked, until its oldest failure is a minute old. Nothing sleeps: a guesser
holds no worker thread, and other addresses are never held up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..converters import Network
from ..headers import public_origin, split_host
from ..passwd import hash_password, verify_password

#: How long a login lasts (seconds), however active the session.
SESSION_MAX_AGE = 8 * 3600
SESSION_COOKIE = "zlb_admin"
LOGIN_COOKIE = "zlb_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"

Users = tuple[tuple[str, str], ...]


def allowed(address: str, networks: Sequence[Network]) -> bool:
    """Whether ``address`` is in one of ``networks`` (an unparsable address is not)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(name, password) from an ``Authorization: Basic`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")  # malformed: counts as wrong credentials
    name, _, password = text.partition(":")
    return name, password


def same_origin(environ: Mapping[str, Any], trusted: Sequence[Network] = ()) -> bool:
    """Whether a state-changing request comes from our own pages (or from no
    browser at all: curl sends neither header). A cross-site form cannot forge
    ``Origin``, so this stops cross-site requests riding on remembered Basic
    credentials even where no CSRF token is asked for."""
    if environ.get("HTTP_SEC_FETCH_SITE", "").lower() == "cross-site":
        return False
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" and other opaque origins
    host, port = split_host(parts.netloc.lower(), parts.scheme)
    scheme, our_host, our_port = public_origin(environ, trusted)
    return (parts.scheme, host, port) == (scheme, our_host.lower(), our_port)


def derive_key(users: Users) -> bytes:
    """The HMAC key for sessions and CSRF tokens, from the ``admin.users`` lines
    (see the module docstring for why that is safe and what it implies)."""
    material = "\n".join(f"{name}:{secret}" for name, secret in users)
    return hashlib.sha256(b"zope_lb admin session key v1\n" + material.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Identity:
    """An authenticated admin: who, how (``basic`` or ``session``), and the CSRF
    token their forms must carry."""

    user: str
    via: str
    csrf: str


class Accounts:
    """The configured admin users and everything keyed by them.

    Successful password checks are remembered (by an HMAC of name and password,
    never the password) so an API client sending Basic credentials on every
    call does not pay for scrypt every time.
    """

    CACHE_SIZE = 128

    def __init__(self, users: Users, *, clock: Callable[[], float] = time.time,
                 max_age: float = SESSION_MAX_AGE):
        self.users = users
        self._hashes = dict(users)
        self._key = derive_key(users)
        self._clock = clock
        self.max_age = max_age
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self._dummy: str | None = None

    def _sign(self, *parts: str) -> str:
        return _b64(hmac.new(self._key, "\0".join(parts).encode(), hashlib.sha256).digest())

    def _fingerprint(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    def remembered(self, name: str, password: str) -> bool:
        """Whether this name and password passed a check lately: no scrypt needed
        (and no guess: the failure budget is not charged for it)."""
        fingerprint = self._fingerprint(name, password)
        with self._lock:
            if fingerprint in self._verified:
                self._verified.move_to_end(fingerprint)
                return True
        return False

    def check_password(self, name: str, password: str) -> bool:
        """Whether ``name`` is a user and ``password`` is theirs."""
        if self.remembered(name, password):
            return True
        fingerprint = self._fingerprint(name, password)
        secret = self._hashes.get(name)
        if secret is None:
            # Cost the same as a real check, so timing does not tell which names exist.
            if self._dummy is None:
                self._dummy = hash_password("not a password of anyone")
            verify_password(password, self._dummy)
            return False
        if not verify_password(password, secret):
            return False
        with self._lock:
            self._verified[fingerprint] = None
            while len(self._verified) > self.CACHE_SIZE:
                self._verified.popitem(last=False)
        return True

    # -- sessions --

    def new_session(self, name: str) -> str:
        """A signed cookie value: ``name.issued.nonce.signature``."""
        issued = str(int(self._clock()))
        nonce = _b64(os.urandom(12))
        return ".".join((name, issued, nonce, self._sign("session", name, issued, nonce)))

    def session(self, value: str | None) -> Identity | None:
        """The identity a session cookie proves, or None (forged, expired, user gone)."""
        if not value:
            return None
        parts = value.split(".")
        if len(parts) != 4:
            return None
        name, issued, nonce, signature = parts
        if not hmac.compare_digest(signature, self._sign("session", name, issued, nonce)):
            return None
        if not re.fullmatch(r"[0-9]{1,12}", issued, re.ASCII) or name not in self._hashes:
            return None
        age = self._clock() - int(issued)
        if not -60 <= age <= self.max_age:
            return None
        return Identity(name, "session", self._sign("csrf", "session", nonce))

    def basic_identity(self, name: str) -> Identity:
        """The identity of a user who sent correct Basic credentials."""
        return Identity(name, "basic", self._sign("csrf", "basic", name))

    # -- the login form's own CSRF token (double submit: cookie and field agree) --

    def login_token(self) -> tuple[str, str]:
        """(cookie nonce, form token) for a login form."""
        nonce = _b64(os.urandom(12))
        return nonce, self._sign("login", nonce)

    def check_login_token(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        return hmac.compare_digest(token, self._sign("login", nonce))


def check_csrf(identity: Identity, token: str | None) -> bool:
    """Whether ``token`` is the CSRF token of ``identity`` (constant time)."""
    return bool(token) and hmac.compare_digest(str(token), identity.csrf)


class FailureBudget:
    """Per-address budget of wrong credentials: ``limit`` failures in any
    ``window`` seconds. An address that spent it is refused (429, with the
    seconds until its oldest failure leaves the window) before any password is
    checked, so guessing costs neither a worker thread nor scrypt time, and
    nobody ever sleeps. The login form and Basic auth share the budget.

    Memory is bounded: at most ``capacity`` addresses (the one that failed
    longest ago is forgotten first), each with at most ``limit`` times.
    """

    def __init__(self, *, limit: int = 10, window: float = 60.0, capacity: int = 4096,
                 clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self.capacity = capacity
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _times(self, address: str, now: float) -> deque[float]:
        """The address's failures still in the window (lock held)."""
        times = self._failures.get(address)
        if times is None:
            return deque(maxlen=self.limit)
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, address: str) -> float:
        """0 while ``address`` may try a password, else the seconds until it may."""
        now = self._clock()
        with self._lock:
            times = self._times(address, now)
            return max(times[0] + self.window - now, 0.001) if len(times) >= self.limit else 0.0

    def charge(self, address: str) -> float:
        """Before a password check: 0 and one failure counted (refund it if the
        password is right), or, with the budget spent, the seconds to wait.
        Counting first makes 40 parallel guesses count as 40, not as none."""
        now = self._clock()
        with self._lock:
            times = self._times(address, now)
            if len(times) >= self.limit:
                return max(times[0] + self.window - now, 0.001)
            times.append(now)
            self._failures.pop(address, None)
            self._failures[address] = times  # the most recent failure last
            while len(self._failures) > self.capacity:
                self._failures.popitem(last=False)  # the address that failed longest ago
            return 0.0

    def refund(self, address: str) -> None:
        """The password was right: the charge was no failure."""
        with self._lock:
            times = self._failures.get(address)
            if times:
                times.pop()
                if not times:
                    del self._failures[address]

    def spent(self, address: str) -> int:
        """Failures of ``address`` in the window."""
        with self._lock:
            return len(self._times(address, self._clock()))
