"""The OpenAPI 3.1 document of the admin JSON API, served at ``{admin.path}/api/openapi.json``.

Written by hand as data, next to the handlers in ``api.py``; the tests check
every API answer against the schemas here, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from .api import BALANCING_KEYS, POOL_BALANCING_KEYS
from .auth import CSRF_HEADER, SESSION_COOKIE

#: A named pool's own value of a Balancing option: ``pool.api.health.path``.
_POOL_KEYS = (r"^pool\.[A-Za-z0-9_-]+\.("
              + "|".join(k.replace(".", r"\.") for k in POOL_BALANCING_KEYS) + ")$")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Refused: the body or a value broke a rule; nothing changed"),
    "401": _json(_ref("Error"), "No or wrong credentials"),
    "403": _json(_ref("Error"), "Address not in admin.allow, cross-site request, or "
                                "missing X-CSRF-Token with a session cookie"),
    "429": _json(_ref("Error"), "Too many wrong passwords from this address (10 a minute); "
                                "Retry-After says when to try again"),
}

_BACKEND_ROW = {
    "type": "object",
    "required": ["id", "address", "pool", "role", "state", "reason", "weight", "base_weight",
                 "maxconn", "active", "queued", "requests", "requests_1m", "errors_1m",
                 "p50_ms", "p95_ms", "last_probe"],
    "properties": {
        "id": {"type": "string"},
        "address": {"type": "string", "description": "host:port"},
        "pool": {"type": "string", "description": "default, or a named pool"},
        "role": {"enum": ["primary", "backup"]},
        "state": {"enum": ["up", "down", "draining", "disabled"]},
        "reason": {"type": "string", "description": "why it is in this state"},
        "weight": {"type": "number", "description": "effective weight (lower during slow start)"},
        "base_weight": {"type": "integer"},
        "maxconn": {"type": "integer", "description": "slots; 0: no limit"},
        "active": {"type": "integer", "description": "requests in flight"},
        "queued": {"type": "integer", "description": "requests waiting in its pool's queue"},
        "requests": {"type": "integer", "description": "requests since start"},
        "requests_1m": {"type": "integer"},
        "errors_1m": {"type": "integer"},
        "p50_ms": {"type": ["number", "null"]},
        "p95_ms": {"type": ["number", "null"]},
        "last_probe": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["seconds_ago", "passed", "detail"],
            "properties": {"seconds_ago": {"type": "number"}, "passed": {"type": "boolean"},
                           "detail": {"type": "string"}}}]},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "additionalProperties": False,
        "required": ["error", "field", "line", "rule"],
        "properties": {
            "error": {"type": "string", "description": "what went wrong, in one sentence"},
            "field": {"type": ["string", "null"], "description": "the option or body key"},
            "line": {"type": ["integer", "null"], "description": "backend line (from 1)"},
            "rule": {"type": ["string", "null"], "description": "the rule that was broken"},
        },
    },
    "Backend": _BACKEND_ROW,
    "Status": {
        "type": "object", "required": ["status", "healthy", "total", "backends"],
        "properties": {
            "status": {"enum": ["ok", "degraded", "down"]},
            "healthy": {"type": "integer", "description": "primaries of the default pool up"},
            "total": {"type": "integer"},
            "backends": {"type": "array", "items": _ref("Backend")},
        },
    },
    "BackendList": {
        "type": "object", "additionalProperties": False, "required": ["backends"],
        "properties": {"backends": {
            "type": "array", "items": {"type": "string"},
            "description": "one 'host:port [weight=N] [backup] [maxconn=N] [id=NAME]' "
                           "per item, as on the Basic tab"}},
        "example": {"backends": ["10.0.0.11:8080 id=client1", "10.0.0.12:8080 weight=2"]},
    },
    "ActionResult": {
        "type": "object", "required": ["backends"],
        "properties": {"backends": {"type": "array", "items": _ref("Backend")}},
    },
    "Balancing": {
        "type": "object", "additionalProperties": False,
        "properties": {key: {"type": "string"} for key in BALANCING_KEYS},
        "patternProperties": {_POOL_KEYS: {"type": "string"}},
        "description": "option name to its value as ini text (see the README's option table)",
    },
    "BalancingChange": {
        "type": "object", "additionalProperties": False,
        "properties": {key: {"type": ["string", "number", "boolean"]} for key in BALANCING_KEYS},
        "patternProperties": {_POOL_KEYS: {"type": ["string", "number", "boolean"]}},
        "description": "the options to change; those left out keep their value",
    },
}


#: A write whose state file cannot be written is refused whole.
_NOT_SAVED = {"500": _json(_ref("Error"), "Not made: the state file cannot be written "
                                          "(the error names it and the OS error)")}


def openapi_document(admin_path: str) -> dict[str, Any]:
    """The document, with the server URL at the configured admin path."""
    backend_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    action = {
        "post": {
            "summary": "", "parameters": [backend_id],
            "responses": {"200": _json(_ref("ActionResult"), "Done (or already so)"),
                          **_ERRORS,
                          "404": _json(_ref("Error"), "No backend with this id"),
                          "409": _json(_ref("Error"), "Not possible in its state"),
                          **_NOT_SAVED},
        },
    }
    paths: dict[str, Any] = {
        "/api/status": {"get": {
            "summary": "Cluster summary and one row per backend",
            "responses": {"200": _json(_ref("Status"), "The status"), **_ERRORS}}},
        "/api/backends": {
            "get": {"summary": "The backend list (the default pool), as on the Basic tab",
                    "responses": {"200": _json(_ref("BackendList"), "The list"), **_ERRORS}},
            "put": {"summary": "Replace the backend list: validated whole, then applied at "
                               "once (removed backends drain)",
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref("BackendList")}}},
                    "responses": {"200": _json(_ref("BackendList"), "Applied"), **_ERRORS,
                                  **_NOT_SAVED}},
        },
        "/api/balancing": {
            "get": {"summary": "The Balancing options",
                    "responses": {"200": _json(_ref("Balancing"), "The options"), **_ERRORS}},
            "put": {"summary": "Change Balancing options: validated whole, then applied",
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref("BalancingChange")}}},
                    "responses": {"200": _json(_ref("Balancing"), "Applied"), **_ERRORS,
                                  **_NOT_SAVED}},
        },
    }
    for verb, text in (("enable", "Take requests again"),
                       ("disable", "Take no new requests, at once"),
                       ("drain", "Finish the requests in flight, take no new ones")):
        op = {**action["post"], "summary": text, "operationId": f"{verb}Backend"}
        paths[f"/api/backends/{{id}}/{verb}"] = {"post": op}
    return {
        "openapi": "3.1.0",
        "info": {"title": "zope_lb admin API", "version": "1",
                 "description": "Authenticate with HTTP Basic (an admin.users account). "
                                "With the admin pages' session cookie instead, send the "
                                "X-CSRF-Token header on PUT and POST."},
        "servers": [{"url": admin_path.rstrip("/") or "/"}],
        "security": [{"basic": []}, {"session": [], "csrf": []}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "csrf": {"type": "apiKey", "in": "header", "name": CSRF_HEADER},
            },
        },
        "paths": paths,
    }
