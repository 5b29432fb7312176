"""The converters of the option schema: strict, each with its bounds.

Each takes the raw value (a string from an ini, or a Python value) and
returns the converted value, or raises ValueError with the rule it broke;
:mod:`zope_lb.settings` turns that into a ConfigError naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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

#: The bounds of every number (the README lists them): wide enough for any
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


def _in_range(seconds: float, minimum: float, maximum: float = MAX_DURATION, *,
              zero: str = "") -> float:
    """``seconds`` if within the bounds; ``zero`` says what 0 means, for an
    option that also takes 0 (the caller lets 0 through itself)."""
    # "not a <= x <= b" also refuses NaN
    if not minimum <= seconds <= maximum:
        also = f"0 ({zero}) or " if zero else ""
        raise ValueError(f"must be {also}from {_duration_text(minimum)} to "
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


#: The longest an access line may wait for its writer thread.
MAX_LOG_FLUSH = 5.0


def as_log_flush(value: object) -> float:
    """``access_log.flush``: 0 (each line written by its request), or 1 ms to 5 s."""
    seconds = _seconds(value)
    if seconds == 0:
        return 0.0
    return _in_range(seconds, MIN_DURATION, MAX_LOG_FLUSH, zero="each request writes its own line")


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


def as_port_or_zero(value: object) -> int:
    """A TCP port, 1 to 65535, or 0 for "the backend's own port"."""
    return _as_int(value, 0, 65535)


def as_credentials(value: object) -> str:
    text = str(value).strip()
    if text and (":" not in text or not text.split(":", 1)[0]):
        raise ValueError("must be user:password for a Zope user with the Manager role")
    return text
