"""Backend lines and addresses by the Enfold rules: ``host:port [weight=N]
[backup] [maxconn=N] [id=NAME] [resolve]`` validated into frozen
:class:`BackendSpec` values, and the DNS server address of ``resolve.server``."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .converters import as_maxconn, as_weight
from .errors import ConfigError

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
