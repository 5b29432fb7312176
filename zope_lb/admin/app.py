"""``AdminApp``: the WSGI app under ``admin.path``; routing and the checks every request passes.

Order of checks (see ``auth.py`` for the why of each): the allow-list; the
public metrics, if ``metrics.public``; admin off without ``admin.users``
(404); login; credentials (Basic, or the session cookie); same origin for
anything that changes state; the CSRF token for forms and for API calls made
with the session cookie. Every answer, errors and redirects too, carries
``Cache-Control: no-store`` and a Content-Security-Policy that allows no script.

The app reads ``balancer.settings`` on each request, so a new ``admin.users``,
``admin.allow`` or ``admin.path`` takes effect at once.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from webob import Request, Response

from ..errors import ConfigError, StateSaveError
from ..headers import client_address, request_scheme
from ..verify import verify_cluster
from . import api, pages
from .api import Balancer
from .auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    Accounts,
    FailureBudget,
    Identity,
    allowed,
    basic_credentials,
    check_csrf,
    same_origin,
)
from .openapi import openapi_document

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FORM = 256 * 1024
REALM = 'realm="zope_lb admin", charset="UTF-8"'
CSP = ("default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
_ACTION = re.compile(r"/(?:api/)?backends/([^/]+)/(enable|disable|drain)")


class AdminApp:
    """The admin pages, JSON API and metrics of one balancer (same process).

    Test seams: ``clock`` (wall time, for session expiry), ``login_clock`` (the
    failure budget's clock), ``login_limit`` failures per ``login_window`` seconds
    from one address before it gets 429, ``verify`` (the function the
    Verify tab runs), ``verify_timeout`` (seconds per request to a client) and
    ``verify_deadline`` (seconds the page waits for the whole run).
    """

    def __init__(self, balancer: Balancer, *, clock: Callable[[], float] = time.time,
                 login_limit: int = 10, login_window: float = 60.0,
                 login_clock: Callable[[], float] = time.monotonic,
                 session_max_age: float = SESSION_MAX_AGE,
                 verify: Callable[..., Any] = verify_cluster, verify_timeout: float = 5.0,
                 verify_deadline: float = 30.0):
        self.balancer = balancer
        self._verify_cluster = verify
        self._verify_timeout = verify_timeout
        self._verify_deadline = verify_deadline
        # One run at a time: a write check per click is enough for any cluster.
        self._verifying = threading.Lock()
        self._clock = clock
        self._session_max_age = session_max_age
        self.budget = FailureBudget(limit=login_limit, window=login_window, clock=login_clock)
        self._accounts: Accounts | None = None
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self.respond(request)
        except Exception:  # never a traceback in a page
            log.exception("admin: %s %s failed", request.method, request.path_info)
            response = _text(500, "The admin pages failed on this request; see the log.")
        _harden(response)
        return response(environ, start_response)

    def accounts(self, users: tuple[tuple[str, str], ...]) -> Accounts:
        """The accounts of the current ``admin.users`` (rebuilt when they change)."""
        with self._lock:
            if self._accounts is None or self._accounts.users != users:
                self._accounts = Accounts(users, clock=self._clock,
                                          max_age=self._session_max_age)
            return self._accounts

    # -- the checks -----------------------------------------------------------------

    def respond(self, request: Request) -> Response:
        settings = self.balancer.settings
        path = request.path_info
        if path == settings.health_endpoint:  # served on its own port: stays public
            return request.get_response(self.balancer.health_page)  # type: ignore[attr-defined]
        base = settings.admin_path.rstrip("/")
        if not (path == base or path.startswith(base + "/")):
            if path in ("", "/"):
                return _redirect(request.script_name + base + "/")
            return _text(404, "Not found: the admin pages are under " + (base or "/") + "/.")
        rest = path[len(base):] or "/"
        link = request.script_name + base
        kind = "api" if rest.startswith("/api/") else "metrics" if rest == "/metrics" else "page"
        client = client_address(request.environ, settings.forwarded_trusted)
        if not allowed(client, settings.admin_allow):
            log.info("admin: %s %s from %s refused: not in admin.allow",
                     request.method, path, client)
            return _refuse(kind, 403, f"Your address ({client}) is not in admin.allow.")
        if rest == "/metrics" and settings.metrics_public:
            return self._metrics(request)
        if not settings.admin_users:
            return _refuse(kind, 404, "The admin pages are off: add admin.users lines made "
                                      "by `zope-lb passwd NAME` to the ini.")
        accounts = self.accounts(settings.admin_users)
        if rest == "/admin.css":
            return Response(pages.STYLESHEET, content_type="text/css", charset="utf-8")
        if rest == "/login":
            return self._login(request, accounts, client, link)
        identity = self._identify(request, accounts, client, kind, link)
        if isinstance(identity, Response):
            return identity
        if identity is None:
            return self._challenge(request, accounts, kind, link)
        if request.method not in SAFE_METHODS and not same_origin(
                request.environ, settings.forwarded_trusted):
            log.warning("admin: cross-site %s %s (Origin %s) from %s refused",
                        request.method, path, request.headers.get("Origin"), client)
            return _refuse(kind, 403, "Cross-site request refused.")
        if kind == "api":
            return self._api(request, rest, identity, link)
        if kind == "metrics":
            return self._metrics(request)
        return self._page(request, rest, identity, link)

    def _identify(self, request: Request, accounts: Accounts, client: str, kind: str,
                  link: str) -> Identity | Response | None:
        """Basic credentials (checked, wrong ones spend the address's budget), else
        the session."""
        credentials = basic_credentials(request.environ.get("HTTP_AUTHORIZATION"))
        if credentials is not None:
            name, password = credentials
            refused = self._over_budget(kind, client, charge=False)
            if refused is not None:  # first: even a remembered password, or it is an oracle
                return refused
            if accounts.remembered(name, password):  # an API client's every call: no charge
                return accounts.basic_identity(name)
            refused = self._over_budget(kind, client)
            if refused is not None:
                return refused
            if accounts.check_password(name, password):
                self.budget.refund(client)
                return accounts.basic_identity(name)
            self._failed(name, client)
            if kind == "page":  # the browser's own dialog asks again
                return _challenge_basic(_text(401, "Wrong name or password."))
            return _refuse(kind, 401, "Wrong name or password.", basic=True)
        return accounts.session(request.cookies.get(SESSION_COOKIE))

    def _failed(self, name: str, client: str) -> None:
        """Log a wrong password and spend one of the address's failures."""
        count = self.budget.spent(client)
        log.warning("admin: wrong name or password for %r from %s (%d of %d allowed in "
                    "%g s)", name[:64], client, count, self.budget.limit, self.budget.window)

    def _over_budget(self, kind: str, client: str, *, charge: bool = True) -> Response | None:
        """Charge one failure to ``client`` before its password is checked (refunded
        when right; ``charge=False``: only look); None, or 429 at once when the
        address spent its budget."""
        wait = self.budget.charge(client) if charge else self.budget.retry_after(client)
        if not wait:
            return None
        seconds = math.ceil(wait)
        log.info("admin: password check from %s refused: %d wrong in %g s; again in %d s",
                 client, self.budget.limit, self.budget.window, seconds)
        response = _refuse(kind, 429, f"Too many wrong passwords from your address; try "
                                      f"again in {seconds} s.")
        response.headers["Retry-After"] = str(seconds)
        return response

    def _challenge(self, request: Request, accounts: Accounts, kind: str,
                   link: str) -> Response:
        """No credentials: API and metrics ask for Basic, pages show the login form."""
        if kind != "page":
            return _refuse(kind, 401, "Credentials required: HTTP Basic with an "
                                      "admin.users account.", basic=True)
        next_path = request.path_qs if request.method in SAFE_METHODS else link + "/"
        return self._login_form(request, accounts, link, next_path, status=401)

    # -- login ----------------------------------------------------------------------

    def _login_form(self, request: Request, accounts: Accounts, link: str, next_path: str,
                    *, status: int = 200, error: str = "", name: str = "") -> Response:
        nonce, token = accounts.login_token()
        html = pages.login_page(pages.Frame(link), token, next_path=next_path,
                                error=error, name=name)
        response = _html(html, status)
        # RFC 9110 wants a challenge with a 401; a scheme browsers do not know
        # makes them show the form instead of their own dialog.
        response.headers["WWW-Authenticate"] = f"Form {REALM}"
        response.set_cookie(LOGIN_COOKIE, nonce, path=link + "/", httponly=True,
                            samesite="strict", secure=_secure(request, self.balancer))
        return response

    def _login(self, request: Request, accounts: Accounts, client: str,
               link: str) -> Response:
        if request.method in SAFE_METHODS:
            return self._login_form(request, accounts, link,
                                    _safe_next(request.GET.get("next", ""), link))
        if request.method != "POST":
            return _not_allowed("page", "GET, POST")
        form = _form(request)
        if form is None:
            return _text(400, "The form is too large.")
        next_path = _safe_next(form.get("next", ""), link)
        name = form.get("name", "")
        if not same_origin(request.environ, self.balancer.settings.forwarded_trusted) or \
                not accounts.check_login_token(request.cookies.get(LOGIN_COOKIE),
                                               form.get(CSRF_FIELD)):
            return self._login_form(request, accounts, link, next_path, status=403, name=name,
                                    error="The login form expired; please log in again.")
        refused = self._over_budget("page", client)
        if refused is not None:  # the form again, with the reason and Retry-After
            page = self._login_form(request, accounts, link, next_path, status=429, name=name,
                                    error=refused.text.strip())
            page.headers["Retry-After"] = refused.headers["Retry-After"]
            return page
        if not accounts.check_password(name, form.get("password", "")):
            self._failed(name, client)
            return self._login_form(request, accounts, link, next_path, status=401, name=name,
                                    error="Wrong name or password.")
        self.budget.refund(client)
        log.info("admin: %s logged in from %s", name, client)
        response = _redirect(next_path)
        response.set_cookie(SESSION_COOKIE, accounts.new_session(name), path=link + "/",
                            httponly=True, samesite="strict", max_age=int(accounts.max_age),
                            secure=_secure(request, self.balancer))
        response.delete_cookie(LOGIN_COOKIE, path=link + "/")
        return response

    # -- pages ----------------------------------------------------------------------

    def _page(self, request: Request, rest: str, identity: Identity, link: str) -> Response:
        frame = pages.Frame(link, identity.user, identity.via, identity.csrf)
        route = rest.rstrip("/") or "/"
        action = _ACTION.fullmatch(rest)
        known = route in ("/", "/basic", "/balancing", "/verify", "/logout") or action
        if not known:
            return _html(pages.message_page(frame, "Not found", "No admin page here."), 404)
        if request.method == "POST":
            form = _form(request)
            if form is None:
                return _text(400, "The form is too large.")
            if not check_csrf(identity, form.get(CSRF_FIELD)):
                log.warning("admin: %s %s by %s without a valid CSRF token refused",
                            request.method, rest, identity.user)
                return _html(pages.message_page(
                    frame, "Refused", "The form's security token is missing or stale: "
                                      "reload the page and try again."), 403)
            if action:
                return self._action_form(frame, action.group(1), action.group(2),
                                         identity.user)
            if route == "/basic":
                return self._save_basic(frame, form.get("backends", ""), identity.user)
            if route == "/balancing":
                return self._save_balancing(frame, form, identity.user)
            if route == "/verify":
                return self._verify(frame, form, identity.user)
            if route == "/logout":
                response = _redirect(link + "/login")
                response.delete_cookie(SESSION_COOKIE, path=link + "/")
                log.info("admin: %s logged out", identity.user)
                return response
            return _not_allowed("page", "GET, HEAD")
        if request.method not in SAFE_METHODS or action or route == "/logout":
            return _not_allowed("page", "POST" if action or route == "/logout"
                                else "GET, HEAD, POST")
        if route == "/basic":
            return _html(pages.basic_page(
                frame, "\n".join(api.backend_lines(self.balancer)),
                saved="saved" in request.GET, pools=self._pool_names()))
        if route == "/balancing":
            return _html(pages.balancing_page(
                frame, api.balancing_fields(api.balancing_values(self.balancer)),
                saved="saved" in request.GET))
        if route == "/verify":
            return _html(pages.verify_page(frame, self._verify_addresses()))
        return self._status(frame, request)

    def _status(self, frame: pages.Frame, request: Request) -> Response:
        rows = self.balancer.stats()
        message = ""
        done, backend_id = request.GET.get("done"), request.GET.get("id")
        if done in pages.ACTIONS and any(row["id"] == backend_id for row in rows):
            message = pages.notice(f"{pages.esc(backend_id)}: {done} done.")
        return _html(pages.status_page(frame, self.balancer.health(), rows, message))

    def _pool_names(self) -> list[str]:
        return [pool.name for pool in self.balancer.settings.pools]

    def _action_form(self, frame: pages.Frame, backend_id: str, action: str,
                     user: str) -> Response:
        try:
            api.run_action(self.balancer, backend_id, action, user)
        except KeyError:
            return _html(pages.message_page(frame, "Not found",
                                            f"No backend with id {backend_id!r}."), 404)
        except api.ActionConflict as exc:
            return _html(pages.message_page(frame, "Not possible", str(exc)), 409)
        except StateSaveError as exc:
            return _html(pages.message_page(frame, "Not saved", f"{exc}."), 500)
        return _redirect(f"{frame.base}/?" + urlencode({"done": action, "id": backend_id}))

    def _save_basic(self, frame: pages.Frame, text: str, user: str) -> Response:
        # A list of lines, so the numbers in errors are those of the textarea.
        lines = text.splitlines()
        try:
            self.balancer.apply({"backends": lines})
        except ConfigError as exc:
            log.info("admin %s: backend list refused: %s", user, exc)
            return _html(pages.basic_page(frame, text, error=_describe(exc),
                                          pools=self._pool_names()), 400)
        except StateSaveError as exc:
            return _html(pages.basic_page(frame, text, error=f"{exc}.",
                                          pools=self._pool_names()), 500)
        log.warning("admin %s changed the backends: %s", user,
                    "; ".join(api.backend_lines(self.balancer)))
        return _redirect(f"{frame.base}/basic/?saved=1")

    def _save_balancing(self, frame: pages.Frame, form: Any, user: str) -> Response:
        changes = {key: form[key] for key in api.BALANCING_KEYS if key in form}
        try:
            api.apply_balancing(self.balancer, changes, user)
        except ConfigError as exc:
            values = {**api.balancing_values(self.balancer), **changes}
            return _html(pages.balancing_page(frame, api.balancing_fields(values),
                                              error=_describe(exc), error_field=exc.key), 400)
        except StateSaveError as exc:
            values = {**api.balancing_values(self.balancer), **changes}
            return _html(pages.balancing_page(frame, api.balancing_fields(values),
                                              error=f"{exc}."), 500)
        return _redirect(f"{frame.base}/balancing/?saved=1")

    # -- verify ---------------------------------------------------------------------

    def _verify_addresses(self) -> list[str]:
        """The default pool's clients, backups too: they share the same ZODB
        (a ``resolve`` line: every address it has now)."""
        return [row["address"] for row in self.balancer.stats() if row["pool"] == "default"]

    def _verify(self, frame: pages.Frame, form: Any, user: str) -> Response:
        """Run ``zope-lb verify`` over the default pool, bounded by ``verify_deadline``.

        The Zope login in the form is handed to the run and nowhere else: not
        logged, not kept, never put back into the page.
        """
        addresses = self._verify_addresses()
        login = form.get("user", "") or None
        write_check = bool(form.get("write_check"))
        if login is not None and ":" not in login:
            return _html(pages.verify_page(
                frame, addresses, write_check=write_check,
                error="Write the Zope login as NAME:PASSWORD (what you typed was not kept)."),
                400)
        if not self._verifying.acquire(blocking=False):
            return _html(pages.verify_page(
                frame, addresses, write_check=write_check,
                error="A verification is already running; try again when it has finished."),
                409)
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["report"] = self._verify_cluster(
                    addresses, user=login, write_check=write_check,
                    timeout=self._verify_timeout)
            except ConfigError as exc:
                outcome["error"] = f"Not verified: {_describe(exc)}"
            except Exception:  # a reason on the page, the traceback in the log
                log.exception("admin: verifying the cluster failed")
                outcome["error"] = "The verification failed unexpectedly; see the log."
            finally:
                self._verifying.release()
                done.set()

        log.info("admin %s: verifying %s (storage checks %s, write check %s)", user,
                 ", ".join(addresses), "on" if login else "off", "on" if write_check else "off")
        threading.Thread(target=run, name="zope_lb admin verify", daemon=True).start()
        if not done.wait(self._verify_deadline):
            log.warning("admin %s: verifying the cluster took more than %g s", user,
                        self._verify_deadline)
            return _html(pages.verify_page(
                frame, addresses, write_check=write_check,
                error=f"The verification did not finish within {self._verify_deadline:g} s. "
                      "It goes on in the background, each request to a client bounded by "
                      f"{self._verify_timeout:g} s; try again in a minute."), 504)
        if "error" in outcome:
            return _html(pages.verify_page(frame, addresses, write_check=write_check,
                                           error=outcome["error"]), 500)
        report = outcome["report"]
        log.info("admin %s: cluster verified: %s", user, "PASS" if report.passed else "FAIL")
        return _html(pages.verify_page(frame, addresses, write_check=write_check,
                                       report=report.to_dict()))

    # -- API and metrics ------------------------------------------------------------

    def _api(self, request: Request, rest: str, identity: Identity, link: str) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        if method not in SAFE_METHODS and identity.via == "session" and \
                not check_csrf(identity, request.headers.get(CSRF_HEADER)):
            return api.json_error(403, f"with the session cookie, send the {CSRF_HEADER} "
                                       "header", CSRF_HEADER)
        user = identity.user
        action = _ACTION.fullmatch(rest)
        if action and rest.startswith("/api/"):
            if method != "POST":
                return _not_allowed("api", "POST")
            return api.post_action(self.balancer, action.group(1), action.group(2), user)
        routes: dict[str, dict[str, Callable[[], Response]]] = {
            "/api/status": {"GET": lambda: api.get_status(self.balancer)},
            "/api/backends": {"GET": lambda: api.get_backends(self.balancer),
                              "PUT": lambda: api.put_backends(self.balancer, request, user)},
            "/api/balancing": {
                "GET": lambda: api.get_balancing(self.balancer),
                "PUT": lambda: api.put_balancing(self.balancer, request, user)},
            "/api/openapi.json": {"GET": lambda: api.json_response(openapi_document(link))},
        }
        handlers = routes.get(rest)
        if handlers is None:
            return api.json_error(404, f"no API endpoint {rest}")
        handler = handlers.get(method)
        if handler is None:
            return _not_allowed("api", ", ".join(handlers))
        return handler()

    def _metrics(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("metrics", "GET, HEAD")
        metrics = getattr(self.balancer, "metrics", None)
        if metrics is None:
            return _text(404, "metrics not enabled")
        # The Accept header picks OpenMetrics or the Prometheus text format.
        content_type, body = metrics.render(accept=request.headers.get("Accept", ""))
        response = Response(body=body)
        response.headers["Content-Type"] = content_type
        return response


# -- small helpers --------------------------------------------------------------------


def _describe(exc: ConfigError) -> str:
    """A refused edit in words, naming the line for a backend list."""
    if exc.line is not None:
        return f"Line {exc.line} ({exc.value}): {exc.rule}."
    return f"{exc.key}: {exc.rule}." if exc.key else f"{exc.rule}."


def _form(request: Request) -> Any:
    """The POSTed form, or None when the body is too large to read."""
    if request.content_length is not None and request.content_length > MAX_FORM:
        return None
    return request.POST


def _safe_next(value: str, link: str) -> str:
    """Where to go after login: only a path under the admin pages."""
    ok = (value.startswith(link + "/") and not value.startswith("//")
          and "\\" not in value and not any(c in value for c in "\r\n"))
    return value if ok else link + "/"


def _secure(request: Request, balancer: Balancer) -> bool:
    return request_scheme(request.environ, balancer.settings.forwarded_trusted) == "https"


def _html(text: str, status: int = 200) -> Response:
    return Response(text, status=status, content_type="text/html", charset="utf-8")


def _text(status: int, text: str) -> Response:
    return Response(text + "\n", status=status, content_type="text/plain", charset="utf-8")


def _redirect(location: str) -> Response:
    return Response(status=303, location=location)


def _challenge_basic(response: Response) -> Response:
    response.headers["WWW-Authenticate"] = f"Basic {REALM}"
    return response


def _refuse(kind: str, status: int, text: str, *, basic: bool = False) -> Response:
    """An error in the form the caller reads: JSON for the API, text otherwise."""
    response = api.json_error(status, text) if kind == "api" else _text(status, text)
    return _challenge_basic(response) if basic else response


def _not_allowed(kind: str, allow: str) -> Response:
    response = _refuse(kind, 405, f"Method not allowed here; use {allow}.")
    response.headers["Allow"] = allow
    return response


def _harden(response: Response) -> None:
    """Never cached, never framed, never sniffed, no script."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = CSP
