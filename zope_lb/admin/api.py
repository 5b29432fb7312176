"""The JSON API: status, the backend list, per-backend actions, balancing options.

Each handler takes the balancer and a WebOb request that has already passed
the allow-list, authentication and CSRF checks (see ``app.py``), and returns
a response. Writes go only through ``balancer.apply()`` and
``balancer.backend_action()``, which validate the whole configuration first:
a refused edit changes nothing. Errors are ``{error, field, line, rule}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from webob import Request, Response

from ..backend import State, next_state
from ..errors import ConfigError, StateSaveError
from ..settings import OPTIONS, PER_POOL, Settings, split_pool_key
from ..strategies import known_strategies
from .pages import ACTION_TARGET, Field

log = logging.getLogger(__name__)

#: Largest request body the API reads (a backend list is a few hundred bytes).
MAX_BODY = 256 * 1024


class Balancer(Protocol):
    """What the admin app uses of a ``LoadBalancer``."""

    settings: Settings

    def current_options(self) -> dict[str, str]: ...
    def apply(self, changes: Mapping[str, object]) -> Settings: ...
    def backend_action(self, backend_id: str, action: str) -> list[Any]: ...
    def stats(self) -> list[dict[str, Any]]: ...
    def health(self) -> dict[str, Any]: ...


#: The Balancing tab and ``/api/balancing``: which options, in which groups.
BALANCING_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Choosing a backend", ("strategy", "affinity", "affinity.cookie", "affinity.when",
                            "hash.load_factor")),
    ("Slots, queue and retries", ("maxconn", "queue.size", "queue.timeout", "retries")),
    ("Timeouts", ("timeout.connect", "timeout.read")),
    ("Active health checks", ("health.path", "health.method", "health.host",
                              "health.interval", "health.timeout", "health.expect",
                              "health.rise", "health.fall", "slowstart")),
    ("Passive checks", ("passive.fall", "passive.status", "passive.cooldown")),
)
BALANCING_KEYS: tuple[str, ...] = tuple(k for _, keys in BALANCING_GROUPS for k in keys)
#: The Balancing options a named pool may set for itself, as ``pool.NAME.KEY``.
POOL_BALANCING_KEYS: tuple[str, ...] = tuple(k for k in BALANCING_KEYS if k in PER_POOL)


def is_pool_balancing_key(key: str) -> bool:
    """Whether ``key`` is ``pool.NAME.KEY`` for a per-pool Balancing option (any NAME)."""
    split = split_pool_key(key)
    return split is not None and split[1] in POOL_BALANCING_KEYS
_DOCS = {option.name: option.doc for option in OPTIONS}


def choices(name: str) -> tuple[str, ...]:
    """The values a select offers for ``name`` (empty: free text)."""
    if name == "strategy":
        return tuple(sorted(known_strategies()))
    return {"affinity": ("none", "cookie"), "health.method": ("GET", "HEAD")}.get(name, ())


def balancing_values(balancer: Balancer) -> dict[str, str]:
    """The Balancing options as ini text, as the form and the API show them."""
    current = balancer.current_options()
    values = {key: current[key] for key in BALANCING_KEYS}
    values.update((key, text) for key, text in current.items() if is_pool_balancing_key(key))
    return values


def balancing_fields(values: Mapping[str, str]) -> list[tuple[str, list[Field]]]:
    """The Balancing form's groups of fields, filled with ``values``."""
    return [(legend, [Field(key, values.get(key, ""), _DOCS.get(key, ""), choices(key))
                      for key in keys])
            for legend, keys in BALANCING_GROUPS]


def backend_lines(balancer: Balancer) -> list[str]:
    """The default pool's backend lines, as the Basic tab shows them."""
    return balancer.current_options()["backends"].splitlines()


# -- responses ----------------------------------------------------------------------


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, indent=1).encode()
    return Response(body=body, status=status, content_type="application/json",
                    charset=None)


def json_error(status: int, error: str, field: str | None = None, line: int | None = None,
               rule: str | None = None) -> Response:
    """The one error shape of the API."""
    return json_response({"error": error, "field": field, "line": line, "rule": rule}, status)


def config_error(exc: ConfigError) -> Response:
    return json_error(400, str(exc), exc.key, exc.line, exc.rule)


def save_error(exc: StateSaveError) -> Response:
    """500: the edit could not be kept, so it was not made."""
    return json_error(500, str(exc), "state_file", rule=exc.problem)


class BadBody(ValueError):
    """The request body is not the JSON object the endpoint takes."""

    def __init__(self, error: str, field: str | None = None):
        super().__init__(error)
        self.field = field


def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read with a size limit."""
    content_type = (request.content_type or "").lower()
    if content_type != "application/json":
        raise BadBody("send the body as Content-Type: application/json")
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise BadBody(f"the body is larger than {MAX_BODY} bytes")
    raw = request.body_file.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadBody(f"the body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadBody(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadBody("the body must be a JSON object")
    return data


# -- handlers -----------------------------------------------------------------------


def get_status(balancer: Balancer) -> Response:
    health = balancer.health()
    return json_response({"status": health["status"], "healthy": health["healthy"],
                          "total": health["total"], "backends": balancer.stats()})


def get_backends(balancer: Balancer) -> Response:
    return json_response({"backends": backend_lines(balancer)})


def put_backends(balancer: Balancer, request: Request, user: str) -> Response:
    """Replace the default pool's backend list: validated whole, then applied."""
    try:
        data = read_json(request)
        extra = sorted(set(data) - {"backends"})
        if extra:
            raise BadBody(f"unknown key {extra[0]!r}; the body is {{\"backends\": [...]}}",
                          extra[0])
        lines = data.get("backends")
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise BadBody('"backends" must be a list of "host:port [flags]" strings',
                          "backends")
    except BadBody as exc:
        return json_error(400, str(exc), exc.field)
    try:
        balancer.apply({"backends": lines})
    except ConfigError as exc:
        log.info("admin %s: backend list refused: %s", user, exc)
        return config_error(exc)
    except StateSaveError as exc:
        return save_error(exc)
    log.warning("admin %s changed the backends: %s", user, "; ".join(backend_lines(balancer)))
    return get_backends(balancer)


def get_balancing(balancer: Balancer) -> Response:
    return json_response(balancing_values(balancer))


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise TypeError


def put_balancing(balancer: Balancer, request: Request, user: str) -> Response:
    """Change some Balancing options (those left out keep their value)."""
    try:
        data = read_json(request)
        changes: dict[str, str] = {}
        for key, value in data.items():
            if key not in BALANCING_KEYS and not _running_pool_key(balancer, key):
                raise BadBody(f"{key!r} cannot be changed here; known keys: "
                              + ", ".join(BALANCING_KEYS) + ", and pool.NAME.KEY of a "
                              "named pool for " + ", ".join(POOL_BALANCING_KEYS), key)
            try:
                changes[key] = _as_text(value)
            except TypeError:
                raise BadBody(f"{key!r} must be a string, number or boolean", key) from None
    except BadBody as exc:
        return json_error(400, str(exc), exc.field)
    try:
        apply_balancing(balancer, changes, user)
    except ConfigError as exc:
        return config_error(exc)
    except StateSaveError as exc:
        return save_error(exc)
    return get_balancing(balancer)


def _running_pool_key(balancer: Balancer, key: str) -> bool:
    """A per-pool Balancing key of a pool that runs (the ini makes pools, not the API)."""
    split = split_pool_key(key)
    return is_pool_balancing_key(key) and any(
        pool.name == split[0] for pool in balancer.settings.pools)  # type: ignore[index]


def apply_balancing(balancer: Balancer, changes: Mapping[str, str], user: str) -> None:
    """Apply the options that differ from the running ones (the form sends them
    all); a ConfigError leaves everything as it was."""
    current = balancing_values(balancer)
    changed = {k: v for k, v in changes.items() if v.strip() != current.get(k)}
    if not changed:
        return
    try:
        balancer.apply(changed)
    except ConfigError as exc:
        log.info("admin %s: balancing change refused: %s", user, exc)
        raise
    log.warning("admin %s changed %s", user,
                ", ".join(f"{k} = {balancing_values(balancer)[k]}" for k in changed))


class ActionConflict(Exception):
    """The action makes no sense in the backend's state (409)."""


def run_action(balancer: Balancer, backend_id: str, action: str, user: str) -> None:
    """``enable``, ``disable`` or ``drain`` every backend with this id.

    Raises KeyError (unknown id) or ActionConflict (e.g. enabling a backend
    that is down: it comes back when its probes pass). Doing what is already
    done is no conflict.
    """
    target = ACTION_TARGET[action]
    rows = [row for row in balancer.stats() if row["id"] == backend_id]
    if not rows:
        raise KeyError(backend_id)
    for row in rows:
        state = State(row["state"])
        if state is not target and next_state(state, action) is None:
            # Only "enable" of a down backend gets here: health decides when it is up.
            raise ActionConflict(
                f"{backend_id} is {state.value}: {action} does not apply; a down backend "
                "comes back when its probes pass")
    balancer.backend_action(backend_id, action)
    log.warning("admin %s: %s %s", user, action, backend_id)


def post_action(balancer: Balancer, backend_id: str, action: str, user: str) -> Response:
    try:
        run_action(balancer, backend_id, action, user)
    except KeyError:
        return json_error(404, f"no backend with id {backend_id!r}", "id")
    except ActionConflict as exc:
        return json_error(409, str(exc), "state")
    except StateSaveError as exc:
        return save_error(exc)
    rows = [row for row in balancer.stats() if row["id"] == backend_id]
    return json_response({"backends": rows})
