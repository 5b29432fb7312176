"""Turn configuration text (ini values or keyword arguments) into frozen settings.

One table, :data:`OPTIONS`, is the whole schema: name, converter, default and
a one-line doc. It feeds the PasteDeploy factories, ``LoadBalancer(**kwargs)``
and the README's option table (a test checks that the two agree). Converters
are strict: ``"yes please"`` is not a boolean. Every bad value raises a
:class:`~zope_lb.errors.ConfigError` naming the key, the value and the rule,
before any socket is opened.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- converters ---------------------------------------------------------------
# Each takes the raw value (a string from an ini, or a Python value) and
# returns the converted value, or raises ValueError with the rule it broke.

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("must be true or false (also yes/no, on/off, 1/0)")


def _as_int(value: object, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError("must be a whole number")
        number = int(text)
    if number < minimum:
        raise ValueError(f"must be {minimum} or more")
    return number


def as_count(value: object) -> int:
    """A whole number, 0 or more."""
    return _as_int(value, 0)


def as_positive(value: object) -> int:
    """A whole number, 1 or more."""
    return _as_int(value, 1)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?")
_UNIT = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0}


def as_duration(value: object) -> float:
    """Seconds, more than 0: ``5``, ``2.5``, ``500ms``, ``30s``, ``2m``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip())
        if not match:
            raise ValueError("must be a duration such as 5, 2.5, 500ms, 30s or 2m")
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if not seconds > 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


def as_networks(value: object) -> tuple[Network, ...]:
    """IP addresses or CIDR networks, separated by spaces, commas or lines."""
    if isinstance(value, str):
        items = value.split()
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        raise ValueError("must be IP addresses or networks, separated by spaces or commas")
    networks = []
    for item in items:
        for part in str(item).replace(",", " ").split():
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(
                    f"{part!r} is not an IP address or network (e.g. 10.0.0.1, 10.0.0.0/8)"
                ) from None
    return tuple(networks)


def as_prefix(value: object) -> str:
    text = str(value).strip()
    if not text.startswith("/"):
        raise ValueError("must be a path starting with '/'")
    if any(c.isspace() for c in text) or "?" in text or "#" in text:
        raise ValueError("must be a plain path, without spaces, '?' or '#'")
    return text


def as_strategy(value: object) -> str:
    from .strategies import known_strategies

    name = str(value).strip()
    known = known_strategies()
    if name not in known:
        raise ValueError(f"unknown strategy; choose one of: {', '.join(sorted(known))}")
    return name


def as_load_factor(value: object) -> float:
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else value
    except ValueError:
        raise ValueError("must be a number such as 1.25") from None
    if isinstance(number, bool) or not 1.0 <= float(number) <= 10.0:
        raise ValueError("must be a number from 1.0 to 10.0 (1.25: 25 % above the average)")
    return float(number)


def as_affinity(value: object) -> str:
    text = str(value).strip().lower()
    if text not in ("none", "cookie"):
        raise ValueError("must be none or cookie")
    return text


_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def as_cookie_name(value: object) -> str:
    text = str(value).strip()
    if not _COOKIE_NAME.fullmatch(text):
        raise ValueError("must be a cookie name: letters, digits and !#$%&'*+.^_`|~-")
    return text


def as_optional_cookie_name(value: object) -> str:
    text = str(value).strip()
    return as_cookie_name(text) if text else ""


def as_rules(value: object) -> tuple[Any, ...]:
    from .routing import parse_rules

    return parse_rules(str(value))


def as_method(value: object) -> str:
    text = str(value).strip().upper()
    if text not in ("GET", "HEAD"):
        raise ValueError("must be GET or HEAD (GET is the safe probe for Zope)")
    return text


def as_path(value: object) -> str:
    text = str(value).strip()
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise ValueError("must be a path starting with '/', without spaces")
    return text


def as_optional_host(value: object) -> str:
    text = str(value).strip()
    if text and (any(c.isspace() for c in text) or "/" in text):
        raise ValueError("must be a host name, optionally with :port")
    return text


def as_statuses(value: object) -> frozenset[int]:
    """Status codes and ranges: ``200-399``, ``200 301 302``, ``502,503,504``; may be empty."""
    codes: set[int] = set()
    for part in str(value).replace(",", " ").split():
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"{part!r} is not a status code or range such as 200-399") from None
        if not 100 <= first <= last <= 599:
            raise ValueError(f"{part!r}: status codes run from 100 to 599, low to high")
        codes.update(range(first, last + 1))
    return frozenset(codes)


def as_expect(value: object) -> frozenset[int]:
    codes = as_statuses(value)
    if not codes:
        raise ValueError("give at least one status or range, e.g. 200-399")
    return codes


def as_duration_or_zero(value: object) -> float:
    """A duration, or 0 for "off"."""
    if str(value).strip() in ("0", "0s", "off", "0.0"):
        return 0.0
    return as_duration(value)


def as_optional_url(value: object) -> str:
    text = str(value).strip()
    if text and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise ValueError("must be an http:// or https:// URL")
    return text


def as_text(value: object) -> str:
    """Free text (a command, a file path), trimmed."""
    return str(value).strip()


_USER_LINE = re.compile(r"([A-Za-z0-9._@-]{1,64}):(scrypt\$\S+)")


def as_users(value: object) -> tuple[tuple[str, str], ...]:
    """``name:HASH`` lines, HASH made by ``zope-lb passwd NAME``; never a password."""
    lines = value.splitlines() if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    users: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        text = str(line).strip()
        if not text:
            continue
        match = _USER_LINE.fullmatch(text)
        if not match:
            shown = text.split(":", 1)[0] + ":..."  # never echo what may be a password
            raise ValueError(
                f"line {number} {shown!r}: write name:HASH with the line "
                "`zope-lb passwd NAME` prints, never a clear-text password"
            )
        if any(name == match.group(1) for name, _ in users):
            raise ValueError(f"line {number}: user {match.group(1)!r} is given twice")
        users.append((match.group(1), match.group(2)))
    return tuple(users)


def as_vhm_base(value: object) -> str:
    """``auto``, or a fixed public URL ``scheme://host[:port]`` without a path."""
    text = str(value).strip()
    if text in ("", "auto"):
        return text
    match = re.fullmatch(r"(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?/?", text)
    if not match:
        raise ValueError("must be auto, or a public URL such as https://www.example.com "
                         "(scheme, host, optional port, no path)")
    return text.rstrip("/")


def as_vhm_root(value: object) -> str:
    """The site's path in Zope: ``/Plone``, or ``/`` for the Zope root (which
    still turns the rewriting on); empty: off."""
    text = str(value).strip()
    return "/" if text == "/" else as_optional_subpath(text)


def as_optional_subpath(value: object) -> str:
    """A path such as ``/Plone`` or ``/site/sub``, or empty; no trailing slash."""
    text = str(value).strip()
    if not text or text == "/":
        return ""
    if not text.startswith("/") or any(c.isspace() for c in text) or "?" in text:
        raise ValueError("must be a path starting with '/', e.g. /Plone")
    if any(seg in ("", ".", "..") for seg in text.strip("/").split("/")):
        raise ValueError("must not have empty, '.' or '..' segments")
    return text.rstrip("/")


def as_credentials(value: object) -> str:
    text = str(value).strip()
    if text and (":" not in text or not text.split(":", 1)[0]):
        raise ValueError("must be user:password for a Zope user with the Manager role")
    return text


# -- backend lines --------------------------------------------------------------

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_BACKEND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def url_host(host: str) -> str:
    """A host as it is written in a URL or ``host:port``: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class BackendSpec:
    """One validated backend line: where it is and how it takes part."""

    host: str
    port: int
    weight: int = 1
    backup: bool = False
    maxconn: int | None = None  # None: the global ``maxconn``
    id: str = ""

    @property
    def url_host(self) -> str:
        """The host as it appears in a URL: IPv6 in brackets."""
        return url_host(self.host)

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 hosts in brackets."""
        return f"{self.url_host}:{self.port}"

    @property
    def line(self) -> str:
        """The backend as a line, in the form it is configured."""
        parts = [self.address]
        if self.id != self.address:
            parts.append(f"id={self.id}")
        if self.weight != 1:
            parts.append(f"weight={self.weight}")
        if self.maxconn is not None:
            parts.append(f"maxconn={self.maxconn}")
        if self.backup:
            parts.append("backup")
        return "  ".join(parts)


def _check_hostname(host: str) -> None:
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in host.split(".")):
        raise ValueError(
            f"{host!r} is not a valid host name or IP address "
            "(letters, digits, '-' and '.'; IPv6 as [::1]:8080)"
        )


def parse_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` by the Enfold rules; ValueError names the rule broken."""
    low = text.lower()
    if "://" in low:
        scheme = text.split("://", 1)[0]
        raise ValueError(f"drop the '{scheme}://' prefix, write host:port")
    if "/" in text:
        raise ValueError("write only host:port, without a path")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("IPv6 address is missing its closing ']'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ValueError("always include the port number: [ipv6]:port")
        port_text = rest[1:]
    else:
        if text.count(":") > 1:
            raise ValueError("write IPv6 addresses in brackets, e.g. [::1]:8080")
        host, sep, port_text = text.partition(":")
        if not sep:
            raise ValueError("always include the port number: host:port")
        if not host:
            raise ValueError("the host is missing: host:port")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if re.fullmatch(r"[\d.]+", host):
                raise ValueError(f"{host!r} is not a valid IPv4 address") from None
            _check_hostname(host)
    if not port_text.isdigit():
        raise ValueError("the port must be a number from 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, port


_FLAG_HINT = "known flags: weight=N, backup, maxconn=N, id=NAME"


def parse_backend_line(line: str) -> BackendSpec:
    """Parse ``host:port [weight=N] [backup] [maxconn=N] [id=NAME]``."""
    words = line.split()
    host, port = parse_address(words[0])
    fields: dict[str, Any] = {}
    for word in words[1:]:
        name, eq, value = word.partition("=")
        if name in fields:
            raise ValueError(f"flag {name!r} is given twice")
        if name == "backup" and not eq:
            fields["backup"] = True
        elif name == "weight" and eq:
            fields["weight"] = _flag(word, as_count, value)
        elif name == "maxconn" and eq:
            fields["maxconn"] = _flag(word, as_count, value)
        elif name == "id" and eq:
            if not _BACKEND_ID.fullmatch(value):
                raise ValueError(
                    f"{word!r}: an id is 1-64 letters, digits, '.', '_' or '-'"
                )
            fields["id"] = value
        else:
            raise ValueError(f"unknown flag {word!r}; {_FLAG_HINT}")
    spec = BackendSpec(host, port, **fields)
    if not spec.id:
        spec = BackendSpec(host, port, **{**fields, "id": spec.address})
    return spec


def _flag(word: str, convert: Callable[[str], int], value: str) -> int:
    try:
        return convert(value)
    except ValueError as exc:
        raise ValueError(f"{word!r}: {exc}") from None


def _identity(spec: BackendSpec) -> tuple[object, int]:
    """What makes two backend lines the same server: host names compare without
    case, IP addresses by value (``[::1]`` is ``[0:0::1]``)."""
    try:
        return ipaddress.ip_address(spec.host), spec.port
    except ValueError:
        return spec.host.lower(), spec.port


def parse_backends(value: object, key: str = "backends") -> tuple[BackendSpec, ...]:
    """Validate a whole backend list; the first bad line raises, naming its number."""
    if isinstance(value, str):
        # In an ini, the list starts on the line after "backends =": count from there.
        lines = value.splitlines()
        if lines and not lines[0].strip():
            lines = lines[1:]
    elif isinstance(value, (list, tuple)):
        lines = list(value)
    else:
        raise ConfigError(key, value, "must be 'host:port' lines, as text or a list")
    specs: list[BackendSpec] = []
    seen_address: dict[object, tuple[int, str]] = {}
    seen_id: dict[object, tuple[int, str]] = {}
    for number, raw in enumerate(lines, start=1):
        if not isinstance(raw, str):
            raise ConfigError(key, raw, "each backend must be a 'host:port' string", number)
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            spec = parse_backend_line(text)
        except ValueError as exc:
            raise ConfigError(key, text, str(exc), number) from None
        for seen, identity, name, what in (
            (seen_address, _identity(spec), spec.address, "backend"),
            (seen_id, spec.id, spec.id, "id"),
        ):
            if identity in seen:
                first_line, first_name = seen[identity]
                spelled = f" as {first_name!r}" if first_name != name else ""
                raise ConfigError(
                    key, text,
                    f"duplicate {what} {name!r}, already on line {first_line}{spelled}",
                    number,
                )
            seen[identity] = (number, name)
        specs.append(spec)
    if not specs:
        raise ConfigError(key, value, "at least one backend 'host:port' is required")
    return tuple(specs)


# -- the schema -------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    name: str
    convert: Callable[[Any], Any]
    default: Any
    doc: str
    default_text: str = ""  # how the README shows the default, when not str(default)
    secret: bool = False  # never echo the value in an error

    @property
    def attribute(self) -> str:
        return self.name.replace(".", "_")


REQUIRED = object()

OPTIONS: tuple[Option, ...] = (
    Option("backends", parse_backends, REQUIRED,
           "One `host:port` per line, optionally followed by `weight=N`, `backup`, "
           "`maxconn=N`, `id=NAME`. No `http://`; port always present; IPv6 as `[::1]:8080`.",
           "(required)"),
    Option("strategy", as_strategy, "round_robin",
           "How a backend is picked: `round_robin`, `least_connections`, `random_two`, "
           "`uri_hash`, `source_ip`, `first` (see *Choosing a strategy*), or a plugin's "
           "name (see *Extending*)."),
    # Zope clients have few worker threads (default 4): more in flight only queue there.
    Option("maxconn", as_count, 4,
           "Requests in flight per backend, unless its line says `maxconn=N` "
           "(0: no limit); more wait in the queue. Match the Zope client's thread count."),
    Option("timeout.connect", as_duration, 5.0,
           "Seconds to wait for a backend to accept a connection; then the next "
           "backend is tried.", "5"),
    # The Plone community's HAProxy configs use 300 s: long exports must not be cut.
    Option("timeout.read", as_duration, 300.0,
           "Seconds to wait for a backend to answer (and between body chunks); "
           "then 504.", "300"),
    Option("retries", as_count, 2,
           "How many more backends a request may try after a failure that is safe "
           "to retry."),
    Option("preserve_host", as_bool, True,
           "Send the client's `Host` header to the backend (`false`: the backend's "
           "own `host:port`).", "true"),
    Option("forwarded.trusted", as_networks, (),
           "Proxies in front of zope_lb (IPs or CIDRs) whose `X-Forwarded-*` headers are "
           "kept and extended; from anyone else they are replaced.", "(none)"),
    Option("prefix", as_prefix, "/",
           "Requests whose path starts with this go to the backends; the rest go to "
           "the wrapped app (filter) or get a 404 (app)."),
    Option("fallback", as_bool, False,
           "Filter only: when no backend can take a request, the wrapped app "
           "answers it instead of a 502/503 page.", "false"),
    Option("queue.size", as_count, 256,
           "Requests that may wait for a free backend slot; when the queue is full, "
           "503 at once."),
    Option("queue.timeout", as_duration, 30.0,
           "Seconds a request waits in the queue for a slot; then 503 with "
           "`Retry-After`.", "30"),
    Option("hash.load_factor", as_load_factor, 1.25,
           "`uri_hash` only: no backend takes more than this times the average "
           "active load; the overflow goes to the next backend on the ring."),
    Option("affinity", as_affinity, "none",
           "`cookie`: a cookie pins a browser to the backend that served it "
           "(while that backend is available)."),
    Option("affinity.cookie", as_cookie_name, "zlb_backend",
           "Name of the affinity cookie. Its value is an opaque id, never the "
           "backend's address."),
    Option("affinity.when", as_optional_cookie_name, "",
           "Stick only requests that carry this cookie (`__ac`: Plone's login "
           "cookie, so anonymous traffic keeps balancing freely); empty: every "
           "request.", "(every request)"),
    Option("health.path", as_path, "/",
           "Path the active health probe requests (Plone: `/@@ok` is cheaper)."),
    # On Zope a first HEAD of an object writes to the ZODB: GET is the safe probe.
    Option("health.method", as_method, "GET",
           "`GET` or `HEAD`. Keep `GET` for Zope: a first `HEAD` of an object writes "
           "to the ZODB."),
    Option("health.host", as_optional_host, "",
           "`Host` header the probe sends (default: the backend's own address).",
           "(backend address)"),
    Option("health.interval", as_duration_or_zero, 5.0,
           "Seconds between probes of a backend (jittered by 10 %); `0` turns active "
           "checks off.", "5"),
    Option("health.timeout", as_duration, 2.0,
           "Seconds a probe may take; a Zope client that lost its ZEO server may hang "
           "rather than fail, so a timeout is a failed probe.", "2"),
    Option("health.expect", as_expect, frozenset(range(200, 400)),
           "Statuses (and ranges) a passing probe answers with.", "200-399"),
    Option("health.rise", as_positive, 2,
           "Probes in a row that must pass before a down backend is up again."),
    Option("health.fall", as_positive, 3,
           "Probes in a row that must fail before an up backend is down."),
    Option("health.storage", as_bool, False,
           "Also read each client's Control Panel: take it out when its ZEO connection "
           "is `(disconnected)`, and name its ZEO server or RelStorage database in the "
           "reason when a probe fails. Needs `health.auth`.", "false"),
    Option("health.zeo", as_bool, False,
           "The old name of `health.storage` (the same behaviour).", "false"),
    Option("health.auth", as_credentials, "",
           "`user:password` of a Zope Manager, for `health.storage`.", "(none)",
           secret=True),
    Option("health.endpoint", as_path, "/__zope_lb__/health",
           "Where the balancer answers its own health as JSON (200 while a backend "
           "is up, 503 when none is), for the monitor that watches it."),
    Option("slowstart", as_duration_or_zero, 0.0,
           "Seconds over which a recovered backend's weight ramps up to full, starting "
           "at 5 % (0 would mean no requests at all), so a cold Zope client (empty "
           "object cache) is not flooded; `0`: off.", "0 (off)"),
    Option("passive.fall", as_positive, 3,
           "Failed requests in a row (connect errors, timeouts, broken connections, "
           "`passive.status` answers) after which a backend is marked down at once."),
    Option("passive.status", as_statuses, frozenset({502, 503, 504}),
           "Backend answers that count as failed requests (empty: none).", "502 503 504"),
    Option("passive.cooldown", as_duration, 10.0,
           "Without active checks (`health.interval = 0`): seconds a failing backend "
           "is skipped before it gets requests again.", "10"),
    Option("notify.webhook", as_optional_url, "",
           "URL that gets each backend state change as a JSON POST (short timeout, "
           "bounded retries, never on the request path).", "(none)"),
    Option("notify.command", as_text, "",
           "Command run on each state change, with the event in `ZOPE_LB_*` "
           "environment variables (no shell; 10 s timeout).", "(none)"),
    Option("vhm.root", as_vhm_root, "",
           "Path of the site in Zope (e.g. `/Plone`, or `/` for the Zope root): "
           "requests are rewritten to Zope's VirtualHostMonster form, so Zope "
           "builds public URLs.", "(off)"),
    Option("vhm.base", as_vhm_base, "",
           "`auto` (scheme, host and port from the request and trusted "
           "X-Forwarded-* headers) or a fixed `https://www.example.com`. Set "
           "alone, it turns rewriting on for the Zope root.",
           "auto when `vhm.root` is set"),
    Option("vhm.prefix", as_optional_subpath, "",
           "Public sub-path the site lives under (`/site`): stripped from requests "
           "and added as `_vh_` segments, so Zope's URLs keep it. Needs `vhm.root` "
           "or `vhm.base`.", "(none)"),
    Option("admin.path", as_path, "/__zope_lb__",
           "Where the admin pages, the JSON API and the metrics are mounted "
           "(the health endpoint stays public)."),
    Option("admin.users", as_users, (),
           "Admin accounts, one `name:HASH` line each, made by `zope-lb passwd NAME`. "
           "Without any, the admin pages are off.", "(none: admin off)", secret=True),
    Option("admin.allow", as_networks,
           (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
           "Addresses (IPs or CIDRs) the admin pages answer; others get 403.",
           "127.0.0.0/8 ::1"),
    Option("metrics.public", as_bool, False,
           "Serve `/metrics` under `admin.path` without credentials (still only to "
           "`admin.allow`), for a Prometheus scraper on a trusted network.", "false"),
    Option("state_file", as_text, "",
           "Where admin changes are kept (atomic JSON), shared by every process "
           "serving the same ini and read again at start; relative to the ini.",
           "`NAME.state.json` beside `NAME.ini`"),
    Option("notify.min_healthy", as_count, 1,
           "Send a `cluster.degraded` event when healthy primaries fall to this "
           "number or below, `cluster.recovered` when they rise above again."),
)

_BY_NAME: dict[str, Option] = {}
for _option in OPTIONS:
    _BY_NAME[_option.name] = _option
    _BY_NAME[_option.attribute] = _option


@dataclass(frozen=True)
class PoolSpec:
    """A named pool: its backends, strategy and the rules that send requests to it."""

    name: str
    backends: tuple[BackendSpec, ...]
    strategy: str
    match: tuple[Any, ...]  # routing.Rule


#: The keys of a named pool: ``pool.NAME.backends`` and so on.
POOL_FIELDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "backends": (parse_backends, "its backend lines, as for `backends` (required)"),
    "strategy": (as_strategy, "its strategy (default: `strategy`)"),
    "match": (as_rules, "rules that must all match for a request to go to this pool "
                        "(required): `path:/prefix`, `path:*/glob*`, `method:POST`, "
                        "`header:X-Name[=value]`, `cookie:name`"),
}
_POOL_KEY = re.compile(r"pool\.([A-Za-z0-9_-]+)\.([a-z_]+)")


@dataclass(frozen=True)
class Settings:
    """Validated, immutable settings of one balancer."""

    backends: tuple[BackendSpec, ...]
    strategy: str = "round_robin"
    maxconn: int = 4
    timeout_connect: float = 5.0
    timeout_read: float = 300.0
    retries: int = 2
    preserve_host: bool = True
    forwarded_trusted: tuple[Network, ...] = ()
    prefix: str = "/"
    fallback: bool = False
    queue_size: int = 256
    queue_timeout: float = 30.0
    hash_load_factor: float = 1.25
    affinity: str = "none"
    affinity_cookie: str = "zlb_backend"
    affinity_when: str = ""
    health_path: str = "/"
    health_method: str = "GET"
    health_host: str = ""
    health_interval: float = 5.0
    health_timeout: float = 2.0
    health_expect: frozenset[int] = frozenset(range(200, 400))
    health_rise: int = 2
    health_fall: int = 3
    health_storage: bool = False
    health_zeo: bool = False  # the old name of health_storage: either turns it on
    health_auth: str = ""
    health_endpoint: str = "/__zope_lb__/health"
    slowstart: float = 0.0
    passive_fall: int = 3
    passive_status: frozenset[int] = frozenset({502, 503, 504})
    passive_cooldown: float = 10.0
    notify_webhook: str = ""
    notify_command: str = ""
    notify_min_healthy: int = 1
    vhm_root: str = ""
    vhm_base: str = ""
    vhm_prefix: str = ""
    admin_path: str = "/__zope_lb__"
    admin_users: tuple[tuple[str, str], ...] = ()
    admin_allow: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                        ipaddress.ip_network("::1/128"))
    metrics_public: bool = False
    state_file: str = ""
    pools: tuple[PoolSpec, ...] = ()

    def maxconn_of(self, spec: BackendSpec) -> int:
        return self.maxconn if spec.maxconn is None else spec.maxconn


def parse_settings(values: Mapping[str, object]) -> Settings:
    """Validate ``values`` (ini names like ``timeout.read`` or ``timeout_read``).

    Unknown names are refused; missing ones take their default.
    """
    chosen: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    pool_values: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        pool_key = _POOL_KEY.fullmatch(key)
        if pool_key:
            name, field = pool_key.groups()
            if field not in POOL_FIELDS:
                raise ConfigError(key, value, f"unknown pool key; use pool.{name}."
                                  + f", pool.{name}.".join(POOL_FIELDS))
            pool_values.setdefault(name, {})[field] = value
            continue
        option = _BY_NAME.get(key)
        if option is None:
            raise ConfigError(key, value, f"unknown option; known options: {_known()}")
        if option.attribute in given_as:
            raise ConfigError(key, value, f"given twice (also as {given_as[option.attribute]!r})")
        given_as[option.attribute] = key
        if option.convert is parse_backends:
            chosen[option.attribute] = parse_backends(value, option.name)
            continue
        try:
            chosen[option.attribute] = option.convert(value)
        except ValueError as exc:
            shown = "(not shown)" if option.secret else value
            raise ConfigError(option.name, shown, str(exc)) from None
    for option in OPTIONS:
        if option.default is REQUIRED and option.attribute not in chosen:
            raise ConfigError(option.name, None, "is required")
    chosen["pools"] = tuple(
        _parse_pool(name, fields, chosen.get("strategy", "round_robin"))
        for name, fields in pool_values.items()
    )
    settings = Settings(**chosen)
    for flag in ("health_storage", "health_zeo"):
        if getattr(settings, flag) and not settings.health_auth:
            raise ConfigError(flag.replace("_", "."), "true",
                              "needs health.auth = user:password of a Zope Manager")
    if settings.vhm_prefix and not (settings.vhm_root or settings.vhm_base):
        raise ConfigError("vhm.prefix", settings.vhm_prefix,
                          "needs vhm.root or vhm.base: without them no VHM path is built")
    if settings.health_method == "HEAD":
        log.warning(
            "health.method = HEAD: on Zope a first HEAD of an object writes to the "
            "ZODB; GET %s is the safe probe", settings.health_path,
        )
    primaries = [b for b in settings.backends if not b.backup]
    if len(primaries) < 2:
        log.warning(
            "only %d primary backend configured: that is a proxy, not a balancer; "
            "load balancing needs two or more", len(primaries),
        )
    return settings


def _parse_pool(name: str, fields: dict[str, Any], default_strategy: str) -> PoolSpec:
    for required in ("backends", "match"):
        if required not in fields:
            raise ConfigError(f"pool.{name}.{required}", None, "is required for a named pool")
    converted: dict[str, Any] = {"strategy": default_strategy}
    for field, value in fields.items():
        key = f"pool.{name}.{field}"
        convert = POOL_FIELDS[field][0]
        if convert is parse_backends:
            converted[field] = parse_backends(value, key)
            continue
        try:
            converted[field] = convert(value)
        except ValueError as exc:
            raise ConfigError(key, value, str(exc)) from None
    return PoolSpec(name=name, **converted)


def _known() -> str:
    return ", ".join(o.name for o in OPTIONS)


def options_table() -> str:
    """The README's option table, generated from :data:`OPTIONS`."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for option in OPTIONS:
        default = option.default_text or str(option.default)
        rows.append(f"| `{option.name}` | {default} | {option.doc} |")
    for field, (_, doc) in POOL_FIELDS.items():
        rows.append(f"| `pool.NAME.{field}` | | A named pool: {doc}. |")
    return "\n".join(rows)



# -- back to text -------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A setting's value as the text an ini (or an admin form) would hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, frozenset):
        return _ranges(sorted(value))
    if isinstance(value, tuple):
        if value and isinstance(value[0], BackendSpec):
            return "\n".join(spec.line for spec in value)
        if value and hasattr(value[0], "kind"):  # routing rules
            return " ".join(rule.text for rule in value)
        if value and isinstance(value[0], tuple):  # admin users
            return "\n".join(f"{name}:{secret}" for name, secret in value)
        return " ".join(str(item) for item in value)
    return str(value)


def _ranges(codes: list[int]) -> str:
    parts: list[str] = []
    start = previous = None
    for code in [*codes, None]:
        if code is not None and previous is not None and code == previous + 1:
            previous = code
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = code
    return " ".join(parts)


def format_options(settings: Settings) -> dict[str, str]:
    """Every option of ``settings`` as ini text; ``parse_settings`` of it gives
    ``settings`` back. The admin pages and the state file use this."""
    options = {o.name: format_value(getattr(settings, o.attribute)) for o in OPTIONS}
    for pool in settings.pools:
        options[f"pool.{pool.name}.backends"] = format_value(pool.backends)
        options[f"pool.{pool.name}.strategy"] = pool.strategy
        options[f"pool.{pool.name}.match"] = format_value(pool.match)
    return options
