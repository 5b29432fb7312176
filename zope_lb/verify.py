"""``zope-lb verify``: check that Zope clients can be load balanced.

The Enfold guide's two checks, automated:

1. each client answers directly on its own address;
2. all clients use the same storage, in rising strength:

   - the *Database Location* on ``/Control_Panel/Database/main/manage_main``
     is the same everywhere and says ``(connected)``.  A ZEO address is
     compared after resolving its host name here (``localhost:8100`` and
     ``127.0.0.1:8100`` are one server); a name that does not resolve is
     compared as text and named in the report.  Still weak: the name is
     what each client calls its ZEO server, so ``localhost:8100`` on two
     machines can be two servers.  A RelStorage client shows its adapter
     (``RelStorage: <PostgreSQLAdapter at 7f.. ...,dsn="dbname='zodb'
     host='db' port='5432'">``, MySQL and Oracle alike), whose text differs
     per process: the database's kind, resolved address and name are
     compared instead (:func:`relstorage_database`);
   - the newest transaction on ``manage_UndoForm`` is the same everywhere.
     Two storages do not share transaction ids, so this catches the
     ``localhost`` trap;
   - with ``write_check``, an object written through the first client that
     passed the checks above is read back through every other one, then
     deleted: the guide's "edit a page on one, see it on the other".  So one
     bad client listed first fails alone, not the good ones after it.

Theory of operation: the I/O (``probe``, ``write_and_read_back``) only
records what each client said, as a :class:`Probe`; :func:`judge` turns
probes into a :class:`Report` with a pass/fail/skip per check and a reason
for each failure, without I/O, so every verdict is unit tested.  Storage
checks need a Manager login; without one they are *skipped*, not passed,
and only what was checked can fail. ``zope-lb verify`` exits 0 only when
every check passed; without credentials, when every client answered, it
says the storage was not compared and exits 3 (incomplete), not 0.

The transaction comparison tolerates a live site: a client that answered a
moment later may list newer transactions, so two clients agree when either
one's newest transaction is in the other's list.
"""

from __future__ import annotations

import argparse
import ast
import base64
import binascii
import configparser
import html
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from html.parser import HTMLParser
from typing import Any, cast

import urllib3

from .backendlines import BackendSpec, as_dns_server, parse_backends, url_host
from .errors import ConfigError, UpstreamError

log = logging.getLogger(__name__)

__all__ = [
    "Check", "ClientReport", "Probe", "Report", "Transaction",
    "add_arguments", "judge", "parse_database_location", "parse_transactions",
    "Database", "read_ini_backends", "relstorage_database", "render_table", "resolve", "run",
    "verify_cluster", "zeo_servers",
]

DB_PATH = "/Control_Panel/Database/main/manage_main"
UNDO_PATH = "/Control_Panel/Database/main/manage_UndoForm"
ADD_FILE_PATH = "/manage_addProduct/OFSP/manage_addFile"
DELETE_PATH = "/manage_delObjects"

DEFAULT_TIMEOUT = 5.0  # seconds for connect and for each read
DEFAULT_WRITE_WAIT = 5.0  # ZEO invalidations take milliseconds; seconds is generous
POLL_INTERVAL = 0.05
MAX_BODY = 2 * 1024 * 1024  # ZMI pages are ~12 KB; never read a huge page whole
USER_ENV = "ZOPE_LB_USER"  # keeps the password out of `ps`

PASS, FAIL, SKIP = "pass", "fail", "skip"


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class Transaction:
    """One row of the undo form: the newest one identifies a storage's state."""

    id: str  # the form's token: base64 of the storage's base64 tid
    tid: str  # the ZODB transaction id in hex, '' if the token does not decode
    time: str  # as Zope shows it, e.g. '2026/11/26 16:24:4.006135 UTC'
    description: str = ""


@dataclass(frozen=True)
class Probe:
    """What one client said. Filled by the I/O, judged by :func:`judge`."""

    address: str
    status: int | None = None  # HTTP status of GET /
    ms: float | None = None  # time to answer GET /
    error: str | None = None  # why it did not answer
    location: str | None = None  # Database Location, without '(connected)'
    connected: bool | None = None  # None: not a ZEO client (no such suffix)
    transactions: tuple[Transaction, ...] = ()
    servers: tuple[str, ...] = ()  # the ZEO or SQL server's addresses, resolved: 'ip:port'
    unresolved: tuple[str, ...] = ()  # 'host:port' whose host did not resolve (or a socket)
    database: str | None = None  # RelStorage: 'PostgreSQL host:port/dbname' as named
    db_name: str = ""  # RelStorage: 'PostgreSQL zodb', the kind and the database's name
    storage_error: str | None = None  # why the storage pages could not be read
    write_seen: bool | None = None  # None: not tried here
    write_ms: float | None = None  # how long until the object was seen
    write_error: str | None = None
    writer: bool = False  # the object was written through this client

    @property
    def reachable(self) -> bool:
        return self.status is not None and self.status < 500


@dataclass(frozen=True)
class Check:
    """One check on one client: ``pass``, ``fail`` or ``skip``, and why."""

    name: str  # reachable, location, transaction, write
    outcome: str
    reason: str = ""


@dataclass(frozen=True)
class ClientReport:
    probe: Probe
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.outcome != FAIL for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.outcome == FAIL)


@dataclass(frozen=True)
class Report:
    """The verdict on a cluster: ``passed`` only when no check failed."""

    clients: tuple[ClientReport, ...]
    storage_checked: bool
    write_checked: bool
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.clients)

    @property
    def result(self) -> str:
        """PASS, FAIL, or INCOMPLETE: nothing failed, but the storage checks,
        without which the clients cannot be said to share one ZODB, were skipped."""
        if not self.passed:
            return "FAIL"
        return "PASS" if self.storage_checked else "INCOMPLETE"

    @property
    def exit_status(self) -> int:
        """0 only when every check passed (the write check counts when asked
        for); 1 when one failed; 3 when the storage checks were skipped."""
        return {"PASS": 0, "FAIL": 1, "INCOMPLETE": 3}[self.result]

    def to_dict(self) -> dict[str, Any]:
        """The report for ``--json`` and the admin page."""
        clients = []
        for c in self.clients:
            p = c.probe
            last = p.transactions[0] if p.transactions else None
            clients.append({
                "address": p.address,
                "verdict": PASS if c.passed else FAIL,
                "reachable": p.reachable,
                "status": p.status,
                "ms": None if p.ms is None else round(p.ms, 1),
                "error": p.error,
                "location": p.location,
                "connected": p.connected,
                "zeo_servers": [] if p.database else list(p.servers),
                "database": p.database,
                "database_servers": list(p.servers) if p.database else [],
                "unresolved": list(p.unresolved),
                "last_transaction": None if last is None else asdict(last),
                "write_seen": p.write_seen,
                "writer": p.writer,
                "write_ms": None if p.write_ms is None else round(p.write_ms, 1),
                "checks": [asdict(check) for check in c.checks],
                "failures": [f"{check.name}: {check.reason}" for check in c.failures],
            })
        return {
            "passed": self.passed,
            "result": self.result.lower(),
            "storage_checks": "checked" if self.storage_checked else "skipped",
            "write_check": "checked" if self.write_checked else "skipped",
            "notes": list(self.notes),
            "clients": clients,
        }


# ---------------------------------------------------------------- parsing


class _Cells(HTMLParser):
    """Collect the text of every table cell, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[str] = []
        self._depth = 0
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("td", "th"):
            self._depth += 1
            if self._depth == 1:
                self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._depth:
            self._depth -= 1
            if not self._depth:
                self.cells.append(" ".join("".join(self._text).split()))

    def handle_data(self, data: str) -> None:
        if self._depth:
            self._text.append(data)


def parse_database_location(page: str) -> tuple[str, bool | None] | None:
    """``(location, connected)`` from ``manage_main``; None if the page has none.

    ZEO clients show ``NAME (connected)`` or ``NAME (disconnected)``; other
    storages (a FileStorage path, RelStorage) show a name only: ``connected``
    is then None.
    """
    parser = _Cells()
    parser.feed(page)
    parser.close()
    cells = parser.cells
    for i, text in enumerate(cells[:-1]):
        if text == "Database Location":
            value = cells[i + 1]
            match = re.fullmatch(r"(.*?)\s*\((connected|disconnected)\)", value)
            if match:
                return match[1], match[2] == "connected"
            return value, None
    return None


class _UndoInputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("name") == "transaction_info:list":
            self.values.append(found.get("value") or "")


def _tid_hex(token: str) -> str:
    """The undo token is base64 of the storage's base64 tid (App.Undo.encode64)."""
    try:
        inner = base64.b64decode(token, validate=True)
        tid = base64.b64decode(inner, validate=True)
    except (binascii.Error, ValueError):
        return ""
    return tid.hex() if len(tid) == 8 else ""


def parse_transactions(page: str) -> tuple[Transaction, ...]:
    """The transactions listed on ``manage_UndoForm``, newest first."""
    parser = _UndoInputs()
    parser.feed(page)
    parser.close()
    found = []
    for value in parser.values:
        words = html.unescape(value).split()
        if not words:
            continue
        found.append(Transaction(
            id=words[0], tid=_tid_hex(words[0]),
            time=" ".join(words[1:4]), description=" ".join(words[4:]),
        ))
    return tuple(found)


_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[\w.-]+):(\d{1,5})")


def zeo_servers(location: str) -> tuple[tuple[str, int], ...] | None:
    """The ``(host, port)`` pairs a ZEO client's Database Location names, else None.

    Zope shows ClientStorage's address list as a Python repr,
    ``[('zeo.internal', 8100)]``; ``host:port`` text is read too.  A
    FileStorage path, a unix socket or a RelStorage name is not an address.
    """
    text = location.strip()
    if len(text) > 1000:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        match = _HOST_PORT.fullmatch(text)
        return None if match is None else ((match[1].strip("[]"), int(match[2])),)
    if isinstance(value, tuple):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    pairs = []
    for item in value:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool)):
            return None
        pairs.append((item[0], item[1]))
    return tuple(pairs)


@dataclass(frozen=True)
class Database:
    """The SQL database a RelStorage client names on its Control Panel."""

    kind: str  # PostgreSQL, MySQL, Oracle
    servers: tuple[tuple[str, int], ...]  # (host, port); empty for a local socket
    name: str  # the database (Oracle: the service or SID)
    local: str = ""  # a unix socket or TNS alias: not a network address

    def describe(self) -> str:
        """``PostgreSQL 127.0.0.1:5432/zodb``, as health reasons and reports name it."""
        where = ",".join(host_port(h, p) for h, p in self.servers) or self.local
        return f"{self.kind} {where}/{self.name}"


_RELSTORAGE = re.compile(r"RelStorage: <?(\w+?)Adapter\b(.*?)>?", re.S)
_KEYWORD = re.compile(r"""(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)""")
_REPR_FIELD = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[-\w.]+)""")
_DEFAULT_PORTS = {"PostgreSQL": 5432, "MySQL": 3306, "Oracle": 1521}


def _literal(text: str) -> str:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return str(value)


def _libpq(dsn: str) -> dict[str, str]:
    """A libpq connection string, keyword form or URI, as a dict (no password)."""
    from urllib.parse import unquote, urlsplit

    if dsn.startswith(("postgresql://", "postgres://")):
        url = urlsplit(dsn)
        found = {"host": unquote(url.netloc.rsplit("@", 1)[-1]),
                 "dbname": unquote(url.path.lstrip("/"))}
        for pair in url.query.split("&"):
            key, _, value = pair.partition("=")
            if key:
                found[key] = unquote(value)
        hosts, ports = [], []
        for item in found.pop("host").split(","):
            match = re.fullmatch(r"(\[[^]]*\]|[^:]*)(?::(\d+))?", item)
            if match and match[1]:
                hosts.append(match[1].strip("[]"))
                ports.append(match[2] or "")
        if hosts:
            found.setdefault("host", ",".join(hosts))
        if any(ports) and "port" not in found:
            found["port"] = ",".join(ports)
        return found
    return {key: re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith("'") else value
            for key, value in _KEYWORD.findall(dsn)}


def _pairs(hosts: str, ports: str, default: int) -> tuple[tuple[str, int], ...] | None:
    """libpq's comma lists: one port for every host, or one per host."""
    names = [h.strip() for h in hosts.split(",")]
    numbers = [p.strip() for p in ports.split(",")] if ports else [""]
    if len(numbers) == 1:
        numbers *= len(names)
    if len(numbers) != len(names):
        return None
    pairs = []
    for name, number in zip(names, numbers, strict=True):
        if number and not (number.isdigit() and 0 < int(number) < 65536):
            return None
        pairs.append((name, int(number) if number else default))
    return tuple(pairs)


def relstorage_database(location: str) -> Database | None:
    """The database a RelStorage Database Location names, else None.

    RelStorage shows its adapter: PostgreSQL as ``RelStorage: <PostgreSQLAdapter
    at 7f.. history preserving,dsn="dbname='zodb' host='db' port='5432'">`` (the
    address is the process's own, so the text differs between clients); MySQL
    as ``RelStorage: MySQLAdapter, history preserving, db='zodb', host='db',
    port=3306``; Oracle as ``RelStorage: OracleAdapter, ..., dsn='db:1521/XE'``.
    Passwords are never shown.  A ``<relstorage>`` with a ``name`` of its own
    shows that name instead: it is compared as text.
    """
    match = _RELSTORAGE.fullmatch(location.strip())
    if match is None or len(location) > 4000:
        return None
    kind, rest = match[1], match[2]
    fields = {key: _literal(value) for key, value in _REPR_FIELD.findall(rest)}
    default = _DEFAULT_PORTS.get(kind, 0)
    if kind == "PostgreSQL":
        keywords = _libpq(fields.get("dsn", ""))
        host = keywords.get("hostaddr") or keywords.get("host") or ""
        name = keywords.get("dbname") or keywords.get("user") or ""
        if not host or host.startswith("/") or host.startswith("@"):
            return Database(kind, (), name, local=f"unix:{host or '(default socket)'}")
        pairs = _pairs(host, keywords.get("port", ""), default)
        return None if pairs is None else Database(kind, pairs, name)
    if kind == "MySQL":
        name = fields.get("db") or fields.get("database") or ""
        if "unix_socket" in fields:
            return Database(kind, (), name, local=f"unix:{fields['unix_socket']}")
        host = fields.get("host", "localhost")
        port = fields.get("port", str(default))
        if not port.isdigit():
            return None
        return Database(kind, ((host, int(port)),), name)
    if kind == "Oracle":
        dsn = fields.get("dsn", "")
        tns_host = re.search(r"(?i)\(HOST\s*=\s*([^)\s]+)\)", dsn)
        if tns_host:
            tns_port = re.search(r"(?i)\(PORT\s*=\s*(\d+)\)", dsn)
            service = re.search(r"(?i)\((?:SERVICE_NAME|SID)\s*=\s*([^)\s]+)\)", dsn)
            return Database(kind, ((tns_host[1], int(tns_port[1]) if tns_port else default),),
                            service[1] if service else "")
        easy = re.fullmatch(r"(?://)?(\[[^]]+\]|[\w.-]+)(?::(\d+))?(?:/([\w.$-]+))?(?::\w+)?",
                            dsn)
        if easy and (easy[2] or easy[3]):
            return Database(kind, ((easy[1].strip("[]"), int(easy[2] or default)),),
                            easy[3] or "")
        return Database(kind, (), "", local=f"tns:{dsn}")  # a tnsnames.ora alias
    return None


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"{url_host(host)}:{port}"


def resolve(servers: Sequence[tuple[str, int]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(addresses, unresolved)``: every address the names resolve to here, as
    sorted ``ip:port`` (IPv6 in brackets), and the ``host:port`` whose host did not."""
    found: set[str] = set()
    unresolved: list[str] = []
    for host, port in servers:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):  # gaierror; an over-long label fails in idna
            unresolved.append(host_port(host, port))
            continue
        for *_, sockaddr in infos:
            found.add(host_port(str(sockaddr[0]).split("%", 1)[0], int(sockaddr[1])))
    return tuple(sorted(found)), tuple(unresolved)


# ---------------------------------------------------------------- judging


def _storage_keys(p: Probe) -> frozenset[str]:
    """What identifies the storage: the resolved ZEO addresses (a name that did
    not resolve by its text); for RelStorage the database's kind and name on
    each resolved address; else the Database Location as it is written."""
    if p.db_name:
        where = {*p.servers, *(f"name {n}" for n in p.unresolved)}
        return frozenset(f"{p.db_name} at {w}" for w in where)
    if p.servers or p.unresolved:
        return frozenset(p.servers) | frozenset(f"name {n}" for n in p.unresolved)
    return frozenset({f"location {p.location}"})


def _same_storage(a: Probe, b: Probe) -> bool:
    """One shared address is one server: ``localhost`` may also resolve to ::1."""
    return bool(_storage_keys(a) & _storage_keys(b))


def _reference(probes: Sequence[Probe]) -> Probe | None:
    """The client the others are compared with: the one sharing its storage
    with the most others wins, then a connected one, then the earlier one."""
    usable = [p for p in probes if p.location is not None]
    if not usable:
        return None
    counts = [sum(_same_storage(p, q) for q in usable) for p in usable]
    best = max(range(len(usable)), key=lambda i: (counts[i], usable[i].connected is True, -i))
    return usable[best]


def _is_filestorage(location: str) -> bool:
    return location.endswith(".fs")


def _hosts(addresses: Sequence[str]) -> set[str]:
    return {a.rsplit(":", 1)[0].strip("[]") for a in addresses}


_LOCAL_NAMES = ("localhost", "127.0.0.1", "'::1'", "[::1]")


def _check_location(p: Probe, ref: Probe | None, several: bool) -> Check:
    if p.location is None:
        return Check("location", FAIL, p.storage_error or "no Database Location on the page")
    if p.connected is False:
        return Check("location", FAIL, f"{p.location}: disconnected from its ZEO server")
    if several and _is_filestorage(p.location):
        return Check("location", FAIL,
                     f"{p.location} is a FileStorage, which only one process can open: "
                     "this client has a storage of its own; point its zope.conf at "
                     "the ZEO server with a <zeoclient> section (or at the shared "
                     "database with a <relstorage> section)")
    shown = p.location + (" (connected)" if p.connected else "")
    if ref is None or ref is p:
        return Check("location", PASS, shown)
    if not _same_storage(p, ref):
        names = sorted({*p.unresolved, *ref.unresolved})
        hint = (f"; {', '.join(names)} does not resolve here, so it was compared as "
                "text: the transaction and write checks tell" if names else "")
        return Check("location", FAIL,
                     f"{_named(p)!r}{_resolved(p)} differs from {_named(ref)!r}"
                     f"{_resolved(ref)} on {ref.address}{hint}")
    if p.database:
        common = sorted(_storage_keys(p) & _storage_keys(ref))
        same = "" if p.database == ref.database else f" as {ref.database} on {ref.address}"
        return Check("location", PASS,
                     f"{p.database}: the same database{same} "
                     f"({', '.join(k.split(' at ', 1)[1].removeprefix('name ') for k in common)})")
    if p.location != ref.location:
        common = sorted(_storage_keys(p) & _storage_keys(ref))
        return Check("location", PASS,
                     f"{shown}: the same server as {ref.location!r} on {ref.address} "
                     f"({', '.join(k.removeprefix('name ') for k in common)})")
    return Check("location", PASS, shown)


def _named(p: Probe) -> str:
    """How a failure names a storage: the database for RelStorage (its Location
    holds the adapter's memory address), else the Location as written."""
    return p.database or p.location or ""


def _resolved(p: Probe) -> str:
    """`` (resolves to ...)`` when the name is not its own address."""
    database = relstorage_database(p.location or "") if p.database else None
    named = database.servers if database else zeo_servers(p.location or "") or ()
    if not p.servers or set(p.servers) == {host_port(h, port) for h, port in named}:
        return ""
    return f" (resolves to {', '.join(p.servers)})"


def _agree(a: tuple[Transaction, ...], b: tuple[Transaction, ...]) -> bool:
    """Either newest transaction is known to the other (a live site moves on)."""
    ids_a = {t.id for t in a}
    ids_b = {t.id for t in b}
    return a[0].id in ids_b or b[0].id in ids_a


def _check_transaction(p: Probe, ref: Probe | None) -> Check:
    if p.location is None:  # the first storage page failed: said once, under location
        return Check("transaction", SKIP, "the storage pages could not be read")
    if p.storage_error is not None:
        return Check("transaction", FAIL, p.storage_error)
    if not p.transactions:
        return Check("transaction", SKIP, "the undo form lists no transactions")
    last = p.transactions[0]
    shown = last.tid or last.id
    if ref is None or ref is p or not ref.transactions:
        return Check("transaction", PASS, f"{shown} at {last.time}")
    if not _agree(p.transactions, ref.transactions):
        other = ref.transactions[0]
        return Check("transaction", FAIL,
                     f"last transaction {shown} ({last.time}) differs from "
                     f"{other.tid or other.id} ({other.time}) on {ref.address}: "
                     "the two clients do not share one storage")
    return Check("transaction", PASS, f"{shown} at {last.time}")


def _check_write(p: Probe) -> Check:
    if p.writer and p.write_error is None:
        return Check("write", PASS, "the test object was written through this client")
    if p.write_seen:
        return Check("write", PASS, f"seen after {p.write_ms or 0:.0f} ms")
    if p.write_error is not None:
        return Check("write", FAIL, p.write_error)
    return Check("write", SKIP, "not tried")


def judge(probes: Sequence[Probe], storage_checked: bool, write_checked: bool,
          write_asked: bool = False) -> Report:
    """Turn what the clients said into a verdict per check and per client.

    ``write_asked`` without ``write_checked``: the write check was asked for
    but not made, because no client passed the storage checks to write through.
    """
    reachable = [p for p in probes if p.reachable]
    ref = _reference(reachable) if storage_checked else None
    several = len(probes) > 1
    notes: list[str] = []
    if not several:
        notes.append("only one client: there is nothing to compare its storage with")
    if not storage_checked:
        notes.append("storage checks skipped: give --user NAME:PASSWORD (a Manager) "
                     "to compare Database Location and transactions")
    elif not write_checked and write_asked:
        notes.append("write check not made: no client passed the storage checks, "
                     "so none is trusted to write the test object through")
    elif not write_checked:
        notes.append("write check skipped: add --write-check to write a test object "
                     "through one client and read it back through the others")
    unresolved = sorted({n for p in reachable if not p.database for n in p.unresolved})
    if storage_checked and unresolved:
        notes.append(f"ZEO server {', '.join(unresolved)} does not resolve here: "
                     "compared as text")
    unresolved = sorted({n for p in reachable if p.database for n in p.unresolved})
    if storage_checked and unresolved:
        notes.append(f"database server {', '.join(unresolved)} is a local socket or "
                     "does not resolve here: compared as text")
    locations = {p.location for p in reachable if p.location}
    if (storage_checked and len(_hosts([p.address for p in probes])) > 1
            and any(name in loc for loc in locations for name in _LOCAL_NAMES)):
        notes.append("the clients are on different hosts but name their ZEO or "
                     "database server as localhost: the same Database Location may be "
                     "two servers; the transaction and write checks tell")

    clients = []
    for p in probes:
        if not p.reachable:
            why = p.error or f"answered HTTP {p.status}"
            checks = [Check("reachable", FAIL, why)]
            checks += [Check(name, SKIP, "client unreachable")
                       for name in ("location", "transaction", "write")]
        else:
            checks = [Check("reachable", PASS, f"HTTP {p.status} in {p.ms or 0:.0f} ms")]
            if storage_checked:
                checks.append(_check_location(p, ref, several))
                checks.append(_check_transaction(p, ref))
            else:
                checks += [Check("location", SKIP, "no credentials"),
                           Check("transaction", SKIP, "no credentials")]
            if write_checked:
                checks.append(_check_write(p))
            else:
                why = ("no client passed the storage checks" if write_asked and storage_checked
                       else "--write-check not given" if storage_checked else "no credentials")
                checks.append(Check("write", SKIP, why))
        clients.append(ClientReport(p, tuple(checks)))
    return Report(tuple(clients), storage_checked, write_checked, tuple(notes))


# ---------------------------------------------------------------- rendering


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _row_values(c: ClientReport) -> list[str]:
    p = c.probe
    by_name = {check.name: check for check in c.checks}
    reachable = (f"{p.status} in {p.ms or 0:.0f} ms" if p.reachable
                 else "no" if p.status is None else f"HTTP {p.status}")
    if by_name["location"].outcome == SKIP:
        location = "(skipped)"
    elif p.location is None:
        location = "?"
    else:
        suffix = {True: " (connected)", False: " (disconnected)", None: ""}[p.connected]
        location = (p.database or p.location) + suffix
    if by_name["transaction"].outcome == SKIP and not p.transactions:
        last = "(skipped)"
    elif p.transactions:
        last = p.transactions[0].tid or p.transactions[0].id
    else:
        last = "?"
    write = by_name["write"]
    if write.outcome == SKIP:
        seen = "(skipped)"
    elif p.writer and p.write_error is None:
        seen = "written"
    elif p.write_seen:
        seen = f"yes, {p.write_ms or 0:.0f} ms"
    else:
        seen = "NO"
    return [p.address, reachable, location, last, seen, "ok" if c.passed else "FAIL"]


def render_table(report: Report) -> str:
    """The report as a table a person reads, failures and notes below it."""
    header = ["client", "reachable", "location", "last transaction", "write seen", "verdict"]
    rows = [[_cell(v, 44) for v in _row_values(c)] for c in report.clients]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    lines.append("")
    for c in report.clients:
        for check in c.failures:
            lines.append(f"FAIL {c.probe.address} {check.name}: {check.reason}")
    for note in report.notes:
        lines.append(f"note: {note}")
    failed = sum(not c.passed for c in report.clients)
    total = len(report.clients)
    lines.append(f"result: {report.result}: "
                 f"{total - failed} of {total} clients passed every check made")
    return "\n".join(lines)


# ---------------------------------------------------------------- I/O


@dataclass
class _Client:
    """One client's connection pool; ``id``/``address`` as translate_errors wants."""

    spec: BackendSpec
    timeout: float
    pool: Any = field(init=False)

    def __post_init__(self) -> None:
        self.pool = urllib3.HTTPConnectionPool(
            self.spec.host, self.spec.port, maxsize=2, retries=False,
            timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
        )

    @property
    def id(self) -> str:
        return self.spec.address

    @property
    def address(self) -> str:
        return self.spec.address


@contextmanager
def _translated(client: _Client) -> Iterator[None]:
    """urllib3 errors through the project's one translation point."""
    from .proxy import translate_errors  # the proxy's import graph only when used

    with translate_errors(cast(Any, client), client.timeout):
        yield


def _request(client: _Client, method: str, path: str, headers: dict[str, str],
             fields: dict[str, Any] | None = None, multipart: bool = False
             ) -> tuple[int, str, float]:
    """``(status, text, ms)``; raises UpstreamError with a readable reason."""
    started = time.monotonic()
    with _translated(client):
        if fields is None:
            response = client.pool.urlopen(method, path, headers=headers, redirect=False,
                                           preload_content=False)
        else:
            response = client.pool.request_encode_body(
                method, path, fields=fields, headers=headers, encode_multipart=multipart,
                redirect=False, preload_content=False,
            )
        try:
            body = response.read(MAX_BODY)
        finally:
            response.release_conn()
    ms = (time.monotonic() - started) * 1000
    return response.status, body.decode("utf-8", "replace"), ms


def _refused(status: int, path: str) -> str:
    if status == 401:
        return f"credentials refused on {path} (HTTP 401): the user must be a Manager"
    if status == 404:
        return f"{path} not found (HTTP 404): is this a Zope client?"
    return f"{path} answered HTTP {status}"


def probe(client: _Client, headers: dict[str, str] | None) -> Probe:
    """Ask one client everything but the write check; never raises."""
    result = Probe(client.address)
    try:
        status, _, ms = _request(client, "GET", "/", {})
    except UpstreamError as exc:
        return replace(result, error=exc.reason)
    result = replace(result, status=status, ms=ms)
    if headers is None or not result.reachable:
        return result
    try:
        status, page, _ = _request(client, "GET", DB_PATH, headers)
        if status != 200:
            return replace(result, storage_error=_refused(status, DB_PATH))
        found = parse_database_location(page)
        if found is None:
            return replace(result, storage_error=f"no Database Location on {DB_PATH}")
        result = replace(result, location=found[0], connected=found[1])
        servers = zeo_servers(found[0])
        database = None if servers else relstorage_database(found[0])
        if servers:
            resolved, unresolved = resolve(servers)
            result = replace(result, servers=resolved, unresolved=unresolved)
        elif database is not None:
            resolved, unresolved = resolve(database.servers)
            if database.local:
                unresolved += (database.local,)
            result = replace(result, servers=resolved, unresolved=unresolved,
                             database=database.describe(),
                             db_name=f"{database.kind} {database.name}")
        status, page, _ = _request(client, "GET", UNDO_PATH, headers)
        if status != 200:
            return replace(result, storage_error=_refused(status, UNDO_PATH))
        return replace(result, transactions=parse_transactions(page))
    except UpstreamError as exc:
        return replace(result, storage_error=exc.reason)


def write_and_read_back(writer: _Client, readers: Sequence[_Client],
                        headers: dict[str, str], wait: float) -> dict[str, Probe]:
    """Write a File through ``writer``, poll the readers until each sees it
    or ``wait`` runs out, then delete it.  Returns the write fields per address."""
    object_id = f"zope_lb_verify_{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex.encode()
    posted = False
    try:
        try:
            status, _, _ = _request(
                writer, "POST", ADD_FILE_PATH, headers, multipart=True,
                fields={"id": object_id, "title": "zope-lb verify: safe to delete",
                        "file": (f"{object_id}.txt", token, "text/plain")},
            )
            posted = status < 400
            if not posted:
                raise UpstreamError(_refused(status, ADD_FILE_PATH))
            # A 302 may also be a login form's redirect: read it back here first.
            back, body, _ = _request(writer, "GET", "/" + object_id, headers)
            if back != 200 or body.encode() != token:
                raise UpstreamError(f"{ADD_FILE_PATH} answered HTTP {status} but "
                                    f"/{object_id} is not there (HTTP {back})")
        except UpstreamError as exc:
            why = f"write through {writer.address} failed: {exc.reason}"
            out = {r.address: Probe(r.address, write_seen=False, write_error=why)
                   for r in readers}
            out[writer.address] = Probe(writer.address, writer=True, write_seen=False,
                                        write_error=why)
            return out
        out = _read_back(object_id, token, writer, readers, headers, wait)
        out[writer.address] = Probe(writer.address, writer=True, write_seen=True)
        return out
    finally:
        if posted:
            _delete(writer, object_id, headers)


def _read_back(object_id: str, token: bytes, writer: _Client, readers: Sequence[_Client],
               headers: dict[str, str], wait: float) -> dict[str, Probe]:
    """Poll every reader in turn until each has seen the object or time is up."""
    out: dict[str, Probe] = {}
    written = time.monotonic()
    deadline = written + wait
    pending = list(readers)
    while pending:
        for r in list(pending):
            try:
                status, body, _ = _request(r, "GET", "/" + object_id, headers)
            except UpstreamError as exc:
                out[r.address] = Probe(r.address, write_seen=False,
                                       write_error=f"reading it back: {exc.reason}")
                pending.remove(r)
                continue
            if status == 200 and body.encode() == token:
                out[r.address] = Probe(r.address, write_seen=True,
                                       write_ms=(time.monotonic() - written) * 1000)
                pending.remove(r)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    for r in pending:
        out[r.address] = Probe(
            r.address, write_seen=False,
            write_error=f"/{object_id} written through {writer.address} was not "
            f"seen here within {wait:g} s: this client uses another storage",
        )
    return out


def _delete(writer: _Client, object_id: str, headers: dict[str, str]) -> None:
    try:
        status, _, _ = _request(writer, "POST", DELETE_PATH, headers,
                                fields={"ids:list": object_id})
        if status in (200, 302):
            return
        why = f"HTTP {status}"
    except UpstreamError as exc:
        why = exc.reason
    log.warning("could not delete /%s through %s (%s): delete it in the ZMI",
                object_id, writer.address, why)


def verify_cluster(addresses: Sequence[str], user: str | None = None,
                   write_check: bool = False, timeout: float = DEFAULT_TIMEOUT,
                   wait: float = DEFAULT_WRITE_WAIT, resolve_server: str = "") -> Report:
    """Run every check on ``addresses`` ('host:port'); ``user`` is 'name:password'.
    A ``resolve`` line is every address its name has now (asked of
    ``resolve_server``, or the system resolver).

    Raises ConfigError for a bad address or user, or a name that does not
    resolve; every network problem is a failed check in the report instead.
    """
    from .discovery import resolve_specs

    specs = resolve_specs(parse_backends(list(addresses)), resolve_server)
    if user is not None and ":" not in user:
        # the value may hold a password typed with the wrong separator: never echo it
        raise ConfigError("user", "***", "write NAME:PASSWORD, e.g. admin:secret")
    headers = None if user is None else urllib3.make_headers(basic_auth=user)
    clients = [_Client(spec, timeout) for spec in specs]
    try:
        with ThreadPoolExecutor(max_workers=min(16, len(clients))) as executor:
            probes = list(executor.map(lambda c: probe(c, headers), clients))
        write_asked = write_check and headers is not None
        writer = _writer(clients, probes) if write_asked else None
        if writer is not None:
            readers = [c for c, p in zip(clients, probes, strict=True)
                       if p.reachable and c is not writer]
            seen = write_and_read_back(writer, readers, headers or {}, wait)
            probes = [_merge_write(p, seen.get(p.address)) for p in probes]
    finally:
        for c in clients:
            c.pool.close()
    return judge(probes, storage_checked=headers is not None,
                 write_checked=writer is not None, write_asked=write_asked)


def _writer(clients: Sequence[_Client], probes: Sequence[Probe]) -> _Client | None:
    """The first client that passed every check so far: a bad client listed
    first must not fail the write for the good ones after it."""
    first = judge(probes, storage_checked=True, write_checked=False)
    for c, report in zip(clients, first.clients, strict=True):
        if report.passed:
            return c
    return None


def _merge_write(p: Probe, w: Probe | None) -> Probe:
    if w is None:
        return p
    return replace(p, write_seen=w.write_seen, write_ms=w.write_ms,
                   write_error=w.write_error, writer=w.writer)


# ---------------------------------------------------------------- command line


def read_ini_backends(path: str, section: str = "app:main") -> list[str]:
    """The ``backends`` lines of a zope_lb ini: ``[app:main]``, else the first
    section that uses ``egg:zope_lb`` (a ``[filter:...]``)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        if not parser.read(path):
            raise ConfigError("ini", path, "no such file")
    except configparser.Error as exc:
        raise ConfigError("ini", path, f"not an ini file: {exc.message}") from None
    candidates = [section] + [
        s for s in parser.sections() if parser.get(s, "use", fallback="").startswith(
            ("egg:zope_lb", "call:zope_lb"))
    ]
    for name in candidates:
        if parser.has_option(name, "backends"):
            value = parser.get(name, "backends")
            return [line.strip() for line in value.splitlines()
                    if line.split("#", 1)[0].strip()]
    raise ConfigError("backends", path, f"no 'backends' in [{section}] or a zope_lb section")


def _addresses(targets: Sequence[str]) -> list[str]:
    if len(targets) == 1 and (targets[0].endswith(".ini") or os.path.isfile(targets[0])):
        return read_ini_backends(targets[0])
    ini = [t for t in targets if t.endswith(".ini")]
    if ini:
        raise ConfigError("verify", ini[0], "give one ini file, or host:port addresses")
    return list(targets)


def _resolve_server(targets: Sequence[str]) -> str:
    """The ini's ``resolve.server`` (its ``resolve`` lines are asked of it too)."""
    if len(targets) != 1 or not os.path.isfile(targets[0]):
        return ""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(targets[0])
    except configparser.Error:
        return ""
    for section in parser.sections():
        if parser.has_option(section, "backends") and parser.has_option(
                section, "resolve.server"):
            try:
                return as_dns_server(parser.get(section, "resolve.server"))
            except ValueError as exc:
                raise ConfigError("resolve.server", parser.get(section, "resolve.server"),
                                  str(exc)) from None
    return ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``verify`` options to ``parser`` (used by ``zope_lb.cli``)."""
    parser.add_argument("targets", nargs="+", metavar="INI | HOST:PORT",
                        help="a zope_lb ini file (its backends are checked), "
                        "or the clients' addresses")
    parser.add_argument("--user", default=os.environ.get(USER_ENV),
                        metavar="NAME:PASSWORD",
                        help="a Manager login for the storage checks "
                        f"(default: ${USER_ENV}); without it they are skipped")
    parser.add_argument("--write-check", action="store_true",
                        help="write a test object through the first client that "
                        "passed the storage checks, read it back through the "
                        "others, then delete it")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per request (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--write-wait", type=float, default=DEFAULT_WRITE_WAIT,
                        help="seconds to wait for the test object on each other client "
                        f"(default {DEFAULT_WRITE_WAIT:g})")


def run(args: argparse.Namespace) -> int:
    """0: every check passed; 1: a check failed; 2: bad arguments or ini;
    3: nothing failed, but the storage checks were skipped (no credentials)."""
    try:
        addresses = _addresses(args.targets)
        report = verify_cluster(addresses, user=args.user, write_check=args.write_check,
                                timeout=args.timeout, wait=args.write_wait,
                                resolve_server=_resolve_server(args.targets))
    except ConfigError as exc:
        print(f"zope-lb verify: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the promise: a reason, never a traceback
        log.debug("verify failed", exc_info=True)
        print(f"zope-lb verify: unexpected error: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    text = json.dumps(report.to_dict(), indent=2) if args.json else render_table(report)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `zope-lb verify ... | head`: the verdict still stands
        quiet_stdout()
    return report.exit_status


def quiet_stdout() -> None:
    """After a reader closed stdout (``| head``): send what is left to /dev/null,
    so the interpreter's last flush does not print a BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing to flush
        pass
    finally:
        os.close(devnull)
