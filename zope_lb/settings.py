"""Turn configuration text (ini values or keyword arguments) into frozen settings.

One table, :data:`OPTIONS`, is the whole schema: name, converter, default and
a one-line doc. It feeds the PasteDeploy factories, ``LoadBalancer(**kwargs)``
and the README's option table (a test checks that the two agree). Converters
are strict: ``"yes please"`` is not a boolean. Every bad value raises a
:class:`~zope_lb.errors.ConfigError` naming the key, the value and the rule,
before any socket is opened.

The converters live in :mod:`zope_lb.converters`, backend lines in
:mod:`zope_lb.backendlines`; this module is the schema, the per-pool keys,
the parse, and the way back to text.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .backendlines import BackendSpec, as_dns_server, parse_backends
from .converters import (
    Network,
    as_access_log,
    as_admin_path,
    as_affinity,
    as_bool,
    as_checks,
    as_cookie_name,
    as_credentials,
    as_duration,
    as_duration_or_zero,
    as_expect,
    as_interval,
    as_load_factor,
    as_log_flush,
    as_maxconn,
    as_method,
    as_min_healthy,
    as_networks,
    as_optional_cookie_name,
    as_optional_host,
    as_optional_subpath,
    as_optional_url,
    as_path,
    as_port_or_zero,
    as_prefix,
    as_queue_size,
    as_retries,
    as_rules,
    as_statuses,
    as_text,
    as_users,
    as_vhm_base,
    as_vhm_root,
)
from .errors import ConfigError
from .strategies import known_strategies

log = logging.getLogger(__name__)


# -- the schema -------------------------------------------------------------------


def as_strategy(value: object) -> str:
    """A strategy name: a built-in or a registered plugin. Here, not among the
    converters, since only the schema needs to know the strategies."""
    name = str(value).strip()
    known = known_strategies()
    if name not in known:
        raise ValueError(f"unknown strategy; choose one of: {', '.join(sorted(known))}")
    return name


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
           "Seconds to wait for a backend to answer (and between body chunks; also "
           "for each send of the request to it); then 504.", "300"),
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
    Option("access_log.flush", as_log_flush, 0.02,
           "Seconds an access line may wait to be written by the access log's own "
           "thread, in a batch with others (0 to 5 s); `0`: the request's thread "
           "writes it as the request ends, and its connection waits for that.", "20ms"),
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
    access_log_flush: float = 0.02

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
