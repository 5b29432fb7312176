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
from dataclasses import dataclass, replace
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


#: Whole numbers and decimals are ASCII digits only: ``str.isdigit``, ``\d`` and
#: ``int()`` also take ``８０８１`` and ``٣``, which no operator means to write.
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)

#: The bounds of every number (see docs/notes/trust.md): wide enough for any
#: real Plone site, narrow enough that a typo cannot hang or flood anything.
MAX_MAXCONN = 10_000  # urllib3 sizes each backend's pool by it at once
#: uri_hash and source_ip put 100 ring points per unit of weight: ten backends at
#: weight 100 make a 5 MB ring (built in about 0.3 s); at 1000, 53 MB and seconds.
MAX_WEIGHT = 100
MIN_DURATION = 0.001  # 1 ms
MAX_DURATION = 86_400.0  # 1 day
MIN_HEALTH_INTERVAL = 0.1  # at most 10 probes a second per backend


def _as_int(value: object, minimum: int, maximum: int = 1_000_000) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not _INT.fullmatch(text):
            raise ValueError("must be a whole number (digits 0-9)")
        number = int(text)
    if not minimum <= number <= maximum:
        raise ValueError(f"must be a whole number from {minimum} to {maximum}")
    return number


def bounded_int(minimum: int, maximum: int) -> Callable[[object], int]:
    """A converter for a whole number from ``minimum`` to ``maximum``."""

    def convert(value: object) -> int:
        return _as_int(value, minimum, maximum)

    convert.__doc__ = f"A whole number from {minimum} to {maximum}."
    convert.__name__ = f"as_int_{minimum}_{maximum}"
    return convert


def as_count(value: object) -> int:
    """A whole number, 0 to 1,000,000."""
    return _as_int(value, 0)


def as_positive(value: object) -> int:
    """A whole number, 1 to 1,000,000."""
    return _as_int(value, 1)


as_maxconn = bounded_int(0, MAX_MAXCONN)
as_weight = bounded_int(0, MAX_WEIGHT)
as_retries = bounded_int(0, 100)
as_queue_size = bounded_int(0, 100_000)
as_checks = bounded_int(1, 100)  # health.rise, health.fall, passive.fall
as_min_healthy = bounded_int(0, 1000)

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m)?", re.ASCII)
_UNIT = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0}


def _seconds(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.fullmatch(str(value).strip())
    if not match:
        raise ValueError("must be a duration such as 5, 2.5, 500ms, 30s or 2m")
    return float(match.group(1)) * _UNIT[match.group(2)]


def _in_range(seconds: float, minimum: float, maximum: float = MAX_DURATION) -> float:
    # "not a <= x <= b" also refuses NaN
    if not minimum <= seconds <= maximum:
        raise ValueError(f"must be from {_duration_text(minimum)} to "
                         f"{_duration_text(maximum)}")
    return seconds


def _duration_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    if seconds >= 86_400:
        return f"{seconds / 86_400:g} day" + ("" if seconds == 86_400 else "s")
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"


def as_duration(value: object) -> float:
    """Seconds, 1 ms to 1 day: ``5``, ``2.5``, ``500ms``, ``30s``, ``2m``."""
    return _in_range(_seconds(value), MIN_DURATION)


def as_interval(value: object) -> float:
    """``health.interval``: 0 (off), or 100 ms to 1 day."""
    seconds = _seconds(value)
    return 0.0 if seconds == 0 else _in_range(seconds, MIN_HEALTH_INTERVAL)


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
    if isinstance(value, bool):
        raise ValueError("must be a number such as 1.25")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip()
        if not _DECIMAL.fullmatch(text):  # float() takes "nan", "1_0" and "١"
            raise ValueError("must be a number such as 1.25")
        number = float(text)
    if not 1.0 <= number <= 10.0:
        raise ValueError("must be a number from 1.0 to 10.0 (1.25: 25 % above the average)")
    return number


def as_access_log(value: object) -> str:
    text = str(value).strip().lower()
    if text not in ("combined", "json", "off"):
        raise ValueError("must be combined, json or off")
    return text


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


def as_admin_path(value: object) -> str:
    """A path under which only the admin lives: never ``/`` (everything would be admin)."""
    text = as_path(value)
    if not text.strip("/"):
        raise ValueError("must not be '/': every request would go to the admin pages; "
                         "use a path of its own, e.g. /__zope_lb__")
    if any(seg in ("", ".", "..") for seg in text.strip("/").split("/")):
        raise ValueError("must not have empty, '.' or '..' segments")
    return text


_HOST_HEADER = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?", re.ASCII)


def as_optional_host(value: object) -> str:
    """A ``Host`` header: a name or IP (IPv6 in brackets), optionally ``:port``."""
    text = str(value).strip()
    if not text:
        return text
    match = _HOST_HEADER.fullmatch(text)
    if not match:
        raise ValueError("must be a host name, optionally with :port")
    if match.group(2) is not None and not 1 <= int(match.group(2)) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return text


_STATUS = re.compile(r"[0-9]{1,6}", re.ASCII)


def as_statuses(value: object) -> frozenset[int]:
    """Status codes and ranges: ``200-399``, ``200 301 302``, ``502,503,504``; may be empty."""
    codes: set[int] = set()
    for part in str(value).replace(",", " ").split():
        low, dash, high = part.partition("-")
        if not (_STATUS.fullmatch(low) and (not dash or _STATUS.fullmatch(high))):
            raise ValueError(f"{part!r} is not a status code or range such as 200-399")
        first, last = int(low), int(high if dash else low)
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
    """A duration (1 ms to 1 day), or 0 for "off"."""
    if str(value).strip() in ("0", "0s", "off", "0.0", "0ms"):
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


_VHM_BASE = re.compile(r"(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?/?",
                       re.ASCII)


def as_vhm_base(value: object) -> str:
    """``auto``, or a fixed public URL ``scheme://host[:port]`` without a path."""
    text = str(value).strip()
    if text in ("", "auto"):
        return text
    match = _VHM_BASE.fullmatch(text)
    if not match:
        raise ValueError("must be auto, or a public URL such as https://www.example.com "
                         "(scheme, host, optional port, no path)")
    if match.group(3) is not None and not 1 <= int(match.group(3)) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
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


def as_dns_server(value: object) -> str:
    """Empty (the system resolver), or a DNS server as ``IP`` or ``IP:PORT``
    (IPv6 as ``[::1]:53``); an IP, since the resolver cannot look itself up."""
    text = str(value).strip()
    if not text:
        return ""
    host, port_text = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("write an IPv6 server as [::1]:53")
        port_text = rest[1:] or "53"
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not _is_ip(host):
        raise ValueError(f"{host!r} must be an IP address such as 10.0.0.2 or "
                         "127.0.0.11:53 (the resolver cannot look up its own name)")
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ValueError("the port must be a number from 1 to 65535")
    return f"{url_host(host)}:{int(port_text)}"


def as_port_or_zero(value: object) -> int:
    """A TCP port, 1 to 65535, or 0 for "the backend's own port"."""
    return _as_int(value, 0, 65535)


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
    resolve: str = ""  # "a": A/AAAA lookups, "srv": SRV lookups, "": a fixed address

    @property
    def url_host(self) -> str:
        """The host as it appears in a URL: IPv6 in brackets."""
        return url_host(self.host)

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 hosts in brackets (an SRV name: no port)."""
        return f"{self.url_host}:{self.port}" if self.port else self.host

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
        if self.resolve:
            parts.append("resolve=srv" if self.resolve == "srv" else "resolve")
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
            if re.fullmatch(r"[0-9.]+", host, re.ASCII):
                raise ValueError(f"{host!r} is not a valid IPv4 address") from None
            _check_hostname(host)
    if not re.fullmatch(r"[0-9]{1,5}", port_text, re.ASCII):
        raise ValueError("the port must be a number from 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, port


_FLAG_HINT = "known flags: weight=N, backup, maxconn=N, id=NAME, resolve, resolve=srv"


def parse_backend_line(line: str) -> BackendSpec:
    """Parse ``host:port [weight=N] [backup] [maxconn=N] [id=NAME] [resolve]``,
    or ``_service._proto.name resolve=srv`` (the SRV records give the ports)."""
    words = line.split()
    if "resolve=srv" in words[1:]:
        host, port = _srv_name(words[0]), 0
    elif words[0].startswith("_"):
        raise ValueError(f"{words[0]!r} looks like an SRV name: add resolve=srv "
                         "(the records give the ports)")
    else:
        host, port = parse_address(words[0])
    fields: dict[str, Any] = {}
    for word in words[1:]:
        name, eq, value = word.partition("=")
        if name in fields:
            raise ValueError(f"flag {name!r} is given twice")
        if name == "backup" and not eq:
            fields["backup"] = True
        elif name == "weight" and eq:
            fields["weight"] = _flag(word, as_weight, value)
        elif name == "maxconn" and eq:
            fields["maxconn"] = _flag(word, as_maxconn, value)
        elif name == "id" and eq:
            if not _BACKEND_ID.fullmatch(value):
                raise ValueError(
                    f"{word!r}: an id is 1-64 letters, digits, '.', '_' or '-'"
                )
            fields["id"] = value
        elif name == "resolve" and value in ("", "srv") and eq == ("=" if value else ""):
            if port and _is_ip(host):
                raise ValueError(f"{word!r}: {host!r} is an IP address, there is "
                                 "nothing to resolve; write a host name")
            fields["resolve"] = value or "a"
        else:
            raise ValueError(f"unknown flag {word!r}; {_FLAG_HINT}")
    spec = BackendSpec(host, port, **fields)
    if not spec.id:
        spec = BackendSpec(host, port, **{**fields, "id": spec.address})
    return spec


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_SRV_LABEL = re.compile(r"_?(?!-)[A-Za-z0-9-]{1,62}(?<!-)")


def _srv_name(text: str) -> str:
    """The name of an SRV lookup: a host name whose labels may start with '_'
    (``_http._tcp.backend.local``), without a port, since the records give it."""
    if ":" in text or "/" in text:
        raise ValueError(f"{text!r}: with resolve=srv the SRV records give the port; "
                         "write the name alone, e.g. _http._tcp.backend.local")
    if len(text) > 253 or not all(_SRV_LABEL.fullmatch(x) for x in text.split(".")):
        raise ValueError(f"{text!r} is not a valid SRV name (letters, digits, '-' and "
                         "'.', labels may start with '_')")
    return text


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
           "`maxconn=N`, `id=NAME`, `resolve` (every address of the name is a backend; "
           "see *Containers*). No `http://`; port always present; IPv6 as `[::1]:8080`. "
           "`weight` is 0-100, `maxconn` 0-10000.",
           "(required)"),
    Option("strategy", as_strategy, "round_robin",
           "How a backend is picked: `round_robin`, `least_connections`, `random_two`, "
           "`uri_hash`, `source_ip`, `first` (see *Choosing a strategy*), or a plugin's "
           "name (see *Extending*)."),
    # Zope clients have few worker threads (default 4): more in flight only queue there.
    Option("maxconn", as_maxconn, 4,
           "Requests in flight per backend, unless its line says `maxconn=N` "
           "(0: no limit; at most 10000); more wait in the queue. Match the Zope "
           "client's thread count."),
    Option("timeout.connect", as_duration, 5.0,
           "Seconds to wait for a backend to accept a connection; then the next "
           "backend is tried.", "5"),
    # The Plone community's HAProxy configs use 300 s: long exports must not be cut.
    Option("timeout.read", as_duration, 300.0,
           "Seconds to wait for a backend to answer (and between body chunks); "
           "then 504.", "300"),
    # HAProxy's `timeout http-request`: slowloris holds no connection longer than this.
    Option("timeout.request", as_duration, 10.0,
           "`zope-lb serve`: seconds a client may take to send its request line and "
           "headers (from its first byte, or from the end of the previous answer on a "
           "kept-alive connection); then the connection is closed (408).", "10"),
    # HAProxy's `timeout client`: a reader that stalls frees its thread and backend slot.
    Option("timeout.client", as_duration, 60.0,
           "`zope-lb serve`: seconds a client may accept no bytes of its answer (or send "
           "none of its request body); then the connection is cut and its thread and "
           "backend slot are freed.", "60"),
    Option("shutdown.timeout", as_duration, 30.0,
           "`zope-lb serve`: on SIGTERM/SIGINT, seconds requests in flight may take to "
           "finish before they are cut (a second signal cuts at once).", "30"),
    Option("retries", as_retries, 2,
           "How many more backends a request may try after a failure that is safe "
           "to retry (0-100)."),
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
    Option("queue.size", as_queue_size, 256,
           "Requests that may wait for a free backend slot (0-100000); when the queue "
           "is full, 503 at once."),
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
    Option("health.port", as_port_or_zero, 0,
           "Port the probe goes to, on the backend's host (e.g. 8081 for "
           "plone.observability, which answers in its own thread); `0`: the "
           "backend's own port.", "0 (the backend's port)"),
    Option("health.interval", as_interval, 5.0,
           "Seconds between probes of a backend (jittered by 10 %; 100 ms to 1 day); "
           "`0` turns active checks off.", "5"),
    Option("health.timeout", as_duration, 2.0,
           "Seconds a probe may take; a Zope client that lost its ZEO server may hang "
           "rather than fail, so a timeout is a failed probe.", "2"),
    Option("health.expect", as_expect, frozenset(range(200, 400)),
           "Statuses (and ranges) a passing probe answers with.", "200-399"),
    Option("health.rise", as_checks, 2,
           "Probes in a row (1-100) that must pass before a down backend is up again."),
    Option("health.fall", as_checks, 3,
           "Probes in a row (1-100) that must fail before an up backend is down."),
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
           "is up, 503 when none is), for the monitor that watches it; which backends "
           "and why only to `admin.allow` addresses."),
    Option("slowstart", as_duration_or_zero, 0.0,
           "Seconds over which a recovered backend's weight ramps up to full, starting "
           "at 5 % (0 would mean no requests at all), so a cold Zope client (empty "
           "object cache) is not flooded; `0`: off.", "0 (off)"),
    Option("passive.fall", as_checks, 3,
           "Failed requests in a row (1-100: connect errors, timeouts, broken "
           "connections, `passive.status` answers) after which a backend is marked "
           "down at once."),
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
    Option("vhm.strip", as_optional_subpath, "",
           "Public path prefix removed from requests before the VHM path is built, "
           "without `_vh_` segments (a Volto API pool: `/++api++`), so Zope's URLs "
           "leave it out. Needs `vhm.root` or `vhm.base`.", "(none)"),
    Option("admin.path", as_admin_path, "/__zope_lb__",
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
    Option("resolve.interval", as_duration, 5.0,
           "Seconds between DNS lookups of the `resolve` backend lines (sooner when the "
           "answer's TTL is shorter, but at most once a second).", "5"),
    Option("resolve.server", as_dns_server, "",
           "DNS server (`IP` or `IP:PORT`) asked for `resolve` lines, with TTLs; empty: "
           "the system resolver (getaddrinfo, no TTL; SRV through /etc/resolv.conf).",
           "(system resolver)"),
    Option("notify.min_healthy", as_min_healthy, 1,
           "Send a `cluster.degraded` event when healthy primaries fall to this "
           "number or below, `cluster.recovered` when they rise above again."),
    Option("access_log", as_access_log, "combined",
           "One line per request on the logger `zope_lb.access`: `combined` (Apache's "
           "combined format, then zope_lb's fields as `key=value`), `json`, or `off`."),
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
    #: Its own values of :data:`PER_POOL` options, as (Settings attribute, value):
    #: what ``pool.NAME.health.path`` and the like set; the rest inherit.
    options: tuple[tuple[str, Any], ...] = ()


#: Options a named pool may set for itself (``pool.api.vhm.root``); unset ones
#: inherit the top-level value. Everything else is one value for the whole
#: balancer: timeouts, retries, the queue, trust, admin, logging.
PER_POOL: frozenset[str] = frozenset({
    "vhm.root", "vhm.base", "vhm.prefix", "vhm.strip",
    "health.path", "health.port", "health.host", "health.method", "health.interval",
    "health.timeout", "health.expect", "health.rise", "health.fall", "health.storage",
    "health.zeo", "health.auth",
    "maxconn", "affinity", "affinity.cookie", "affinity.when", "slowstart",
})

#: The keys of a named pool: ``pool.NAME.backends`` and so on.
POOL_FIELDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "backends": (parse_backends, "its backend lines, as for `backends` (required)"),
    "strategy": (as_strategy, "its strategy (default: `strategy`)"),
    "match": (as_rules, "rules that must all match for a request to go to this pool "
                        "(required): `path:/prefix`, `path:*/glob*`, `method:POST`, "
                        "`header:X-Name[=value]`, `cookie:name`"),
}
_POOL_KEY = re.compile(r"pool\.([A-Za-z0-9_-]+)\.([a-z_.]+)")


def split_pool_key(key: str) -> tuple[str, str] | None:
    """``pool.api.health.path`` -> (``api``, ``health.path``); None for other keys."""
    match = _POOL_KEY.fullmatch(key)
    return (match.group(1), match.group(2)) if match else None


def pool_option(field: str) -> Option | None:
    """The per-pool option a pool key's field names (``health.path`` or
    ``health_path``), or None when it is not one."""
    option = _BY_NAME.get(field)
    return option if option is not None and option.name in PER_POOL else None


def pool_field_converter(key: str) -> Callable[[Any], Any] | None:
    """The converter of a ``pool.NAME.FIELD`` key, or None when it is not one."""
    split = split_pool_key(key)
    if split is None:
        return None
    field = split[1]
    if field in POOL_FIELDS:
        return POOL_FIELDS[field][0]
    option = pool_option(field)
    return option.convert if option is not None else None


def pool_key_problem(name: str, field: str) -> str | None:
    """Why ``pool.NAME.FIELD`` is refused (naming what a pool may set), or None."""
    if field in POOL_FIELDS or pool_option(field) is not None:
        return None
    allowed = ", ".join([*POOL_FIELDS, *sorted(PER_POOL)])
    if field in _BY_NAME:
        return (f"{_BY_NAME[field].name} is one value for the whole balancer, not per "
                f"pool; set it without 'pool.{name}.'. A pool may set: {allowed}")
    return f"unknown pool key; a pool may set: {allowed}"


@dataclass(frozen=True)
class Settings:
    """Validated, immutable settings of one balancer."""

    backends: tuple[BackendSpec, ...]
    strategy: str = "round_robin"
    maxconn: int = 4
    timeout_connect: float = 5.0
    timeout_read: float = 300.0
    timeout_request: float = 10.0
    timeout_client: float = 60.0
    shutdown_timeout: float = 30.0
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
    health_port: int = 0
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
    vhm_strip: str = ""
    admin_path: str = "/__zope_lb__"
    admin_users: tuple[tuple[str, str], ...] = ()
    admin_allow: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                        ipaddress.ip_network("::1/128"))
    metrics_public: bool = False
    state_file: str = ""
    resolve_interval: float = 5.0
    resolve_server: str = ""
    pools: tuple[PoolSpec, ...] = ()
    access_log: str = "combined"

    def maxconn_of(self, spec: BackendSpec) -> int:
        return self.maxconn if spec.maxconn is None else spec.maxconn

    def pool_settings(self, pool: PoolSpec) -> Settings:
        """What a named pool runs with: these settings, with the pool's own
        values of :data:`PER_POOL` options on top."""
        return replace(self, **dict(pool.options)) if pool.options else self


def parse_settings(values: Mapping[str, object]) -> Settings:
    """Validate ``values`` (ini names like ``timeout.read`` or ``timeout_read``).

    Unknown names are refused; missing ones take their default.
    """
    chosen: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    pool_values: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        pool_key = split_pool_key(key)
        if pool_key:
            name, field = pool_key
            problem = pool_key_problem(name, field)
            if problem:
                raise ConfigError(key, value, problem)
            option = pool_option(field)
            field = option.name if option is not None else field
            fields = pool_values.setdefault(name, {})
            if field in fields:
                raise ConfigError(key, value, f"given twice (also as pool.{name}.{field})")
            fields[field] = value
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
    _check_combinations(settings)
    for pool in settings.pools:
        if pool.options:
            _check_combinations(settings.pool_settings(pool), f"pool.{pool.name}.")
    for key, specs in (("backends", settings.backends),
                       *((f"pool.{p.name}.backends", p.backends) for p in settings.pools)):
        _check_weights(key, specs)
    primaries = [b for b in settings.backends if not b.backup]
    if len(primaries) < 2 and not any(b.resolve for b in primaries):
        log.warning(
            "only %d primary backend configured: that is a proxy, not a balancer; "
            "load balancing needs two or more", len(primaries),
        )
    return settings


def _check_combinations(settings: Settings, prefix: str = "") -> None:
    """Options that only make sense together; ``prefix`` names a pool's keys."""
    for flag in ("health.storage", "health.zeo"):  # health.zeo: the old name
        if not getattr(settings, flag.replace(".", "_")):
            continue
        if not settings.health_auth:
            raise ConfigError(prefix + flag, "true",
                              "needs health.auth = user:password of a Zope Manager")
        if settings.health_port:
            raise ConfigError(prefix + flag, "true",
                              "cannot be combined with health.port: the storage check reads "
                              "the Control Panel on the backend's own port; a readiness "
                              "probe on health.port (plone.observability) already reflects "
                              "the database")
    for name in ("vhm.prefix", "vhm.strip"):
        value = getattr(settings, name.replace(".", "_"))
        if value and not (settings.vhm_root or settings.vhm_base):
            raise ConfigError(prefix + name, value,
                              "needs vhm.root or vhm.base: without them no VHM path is built")
    if settings.vhm_prefix and settings.vhm_strip:
        raise ConfigError(prefix + "vhm.strip", settings.vhm_strip,
                          "cannot be combined with vhm.prefix: strip removes a prefix "
                          "from Zope's URLs, prefix keeps one in them; choose one")
    if settings.health_method == "HEAD":
        log.warning(
            "%shealth.method = HEAD: on Zope a first HEAD of an object writes to the "
            "ZODB; GET %s is the safe probe", prefix, settings.health_path,
        )


def _check_weights(key: str, specs: tuple[BackendSpec, ...]) -> None:
    """Every backend at weight 0 can only fail: no request would ever be sent.
    (Primaries at weight 0 with a backup above it are fine: the backups serve.)"""
    if not any(spec.weight for spec in specs):
        raise ConfigError(key, format_value(specs),
                          "every backend has weight=0, so none would get a request; "
                          "give at least one a weight of 1 or more")


def _parse_pool(name: str, fields: dict[str, Any], default_strategy: str) -> PoolSpec:
    for required in ("backends", "match"):
        if required not in fields:
            raise ConfigError(f"pool.{name}.{required}", None, "is required for a named pool")
    converted: dict[str, Any] = {"strategy": default_strategy}
    options: list[tuple[str, Any]] = []
    for field, value in fields.items():
        key = f"pool.{name}.{field}"
        option = pool_option(field)
        if option is not None:  # the top-level option's converter, with its bounds
            try:
                options.append((option.attribute, option.convert(value)))
            except ValueError as exc:
                shown = "(not shown)" if option.secret else value
                raise ConfigError(key, shown, str(exc)) from None
            continue
        convert = POOL_FIELDS[field][0]
        if convert is parse_backends:
            converted[field] = parse_backends(value, key)
            continue
        try:
            converted[field] = convert(value)
        except ValueError as exc:
            raise ConfigError(key, value, str(exc)) from None
    return PoolSpec(name=name, **converted, options=tuple(sorted(options)))


def _known() -> str:
    return ", ".join(o.name for o in OPTIONS)


# Topics of the README's option tables, in the order they are shown. A key matches
# an option named exactly so, or starting with the key and a dot; an option no key
# matches goes under "Other", so a new option never drops out of the README.
OPTION_TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Balancing", ("backends", "strategy", "maxconn", "retries", "hash", "resolve")),
    ("Timeouts and deadlines", ("timeout", "shutdown.timeout")),
    ("Queue", ("queue",)),
    ("Sticky sessions", ("affinity",)),
    ("Health checks", ("health", "slowstart")),
    ("Passive checks", ("passive",)),
    ("Notifications", ("notify",)),
    ("Front proxy and Zope URLs", ("vhm", "forwarded", "preserve_host", "prefix", "fallback")),
    ("Administration", ("admin", "metrics", "state_file")),
    ("Logging", ("access_log",)),
)
OTHER_TOPIC = "Other"
POOLS_TOPIC = "Named pools"


def option_topic(name: str) -> str:
    """The README table an option is listed in (``Other`` when no topic claims it)."""
    for topic, keys in OPTION_TOPICS:
        for key in keys:
            if name == key or name.startswith(key + "."):
                return topic
    return OTHER_TOPIC


def options_table(options: tuple[Option, ...] = OPTIONS) -> str:
    """The README's option tables, one per topic, generated from :data:`OPTIONS`."""
    by_topic: dict[str, list[str]] = {}
    for option in options:
        default = option.default_text or str(option.default)
        by_topic.setdefault(option_topic(option.name), []).append(
            f"| `{option.name}` | {default} | {option.doc} |")
    by_topic[POOLS_TOPIC] = [f"| `pool.NAME.{field}` | | A named pool: {doc}. |"
                             for field, (_, doc) in POOL_FIELDS.items()]
    by_topic[POOLS_TOPIC].append(
        "| `pool.NAME.OPTION` | the top-level value | A named pool's own value of "
        + ", ".join(f"`{name}`" for name in sorted(PER_POOL))
        + " (same rules as the top-level option). |")
    order = [topic for topic, _ in OPTION_TOPICS] + [POOLS_TOPIC, OTHER_TOPIC]
    parts = []
    for topic in order:
        if by_topic.get(topic):
            parts.append("\n".join([f"#### {topic}", "",
                                     "| option | default | meaning |", "|---|---|---|",
                                     *by_topic[topic]]))
    return "\n\n".join(parts)


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
        for attribute, value in pool.options:
            options[f"pool.{pool.name}.{_BY_NAME[attribute].name}"] = format_value(value)
    return options
