"""The admin pages as HTML: pure functions from data to text, no I/O.

Every string that came from outside (backend ids, addresses, reasons, probe
details, the user's own textarea text, error messages quoting it) goes through
:func:`esc`; nothing else is interpolated. The pages need no script: the
status page refreshes itself with ``<meta http-equiv=refresh>``, so the
Content-Security-Policy can forbid scripts altogether.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..backend import State, next_state

#: Seconds between refreshes of the status page.
REFRESH_SECONDS = 5

ACTIONS = ("enable", "disable", "drain")
#: The state each action leads to.
ACTION_TARGET = {"enable": State.UP, "disable": State.DISABLED, "drain": State.DRAINING}


def esc(value: object) -> str:
    """``value`` as HTML text (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def doc_html(text: str) -> str:
    """An option's one-line doc (Markdown-ish) as HTML: escaped, `code` and *emphasis* kept."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


@dataclass(frozen=True)
class Frame:
    """What every page around the content needs: where the admin lives, who is
    logged in and how, and the CSRF token for forms."""

    base: str
    user: str = ""
    via: str = ""
    csrf: str = ""


@dataclass(frozen=True)
class Field:
    """One option on the Balancing form."""

    name: str
    value: str
    doc: str
    choices: tuple[str, ...] = ()


TABS = (("", "Status"), ("/basic", "Basic"), ("/balancing", "Balancing"), ("/verify", "Verify"))


def layout(frame: Frame, title: str, content: str, *, tab: str | None = None,
           refresh: str | None = None) -> str:
    """A whole page: head, navigation, the logged-in user, ``content``."""
    head_refresh = ""
    if refresh is not None:
        head_refresh = (f'<meta http-equiv="refresh" '
                        f'content="{REFRESH_SECONDS}; url={esc(refresh)}">')
    nav = ""
    if frame.user:
        links = []
        for path, label in TABS:
            current = ' aria-current="page"' if tab == path else ""
            links.append(f'<a href="{esc(frame.base)}{path}/"{current}>{label}</a>')
        who = f'<span class="who">{esc(frame.user)}</span>'
        if frame.via == "session":
            who += (f'<form method="post" action="{esc(frame.base)}/logout" class="inline">'
                    f"{csrf_input(frame)}<button>Log out</button></form>")
        nav = f'<nav>{"".join(links)}</nav><div class="user">{who}</div>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'{head_refresh}<title>{esc(title)} · zope_lb</title>'
        f'<link rel="stylesheet" href="{esc(frame.base)}/admin.css"></head>'
        f'<body><header><a class="brand" href="{esc(frame.base)}/">zope_lb</a>{nav}</header>'
        f"<main>{content}</main></body></html>\n"
    )


def csrf_input(frame: Frame) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(frame.csrf)}">'


def notice(text: str, kind: str = "ok") -> str:
    """A message box; ``error`` ones are announced by screen readers."""
    role = ' role="alert"' if kind == "error" else ' role="status"'
    return f'<div class="notice {kind}"{role}>{text}</div>'


# -- status -------------------------------------------------------------------------


def _number(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{esc(value)}&nbsp;{unit}" if unit else esc(value)


def _weight(row: Mapping[str, Any]) -> str:
    weight, base = row.get("weight"), row.get("base_weight")
    if base is not None and weight != base:
        return f'{_number(weight)} <span class="dim">of {_number(base)} (slow start)</span>'
    return _number(weight)


def _probe(probe: Mapping[str, Any] | None) -> str:
    if not probe:
        return '<span class="dim">none yet</span>'
    verdict = "passed" if probe.get("passed") else "failed"
    detail = f": {esc(probe['detail'])}" if probe.get("detail") else ""
    return (f'<span class="{verdict}">{verdict}</span> '
            f"{_number(probe.get('seconds_ago'), 's')} ago{detail}")


def _actions(frame: Frame, row: Mapping[str, Any]) -> str:
    """The action buttons that would change something for this backend's state."""
    try:
        state = State(row.get("state"))
    except ValueError:
        state = None
    forms = []
    for action in ACTIONS:
        if state is not None and next_state(state, action) is not ACTION_TARGET[action]:
            continue
        target = f"{frame.base}/backends/{quote(str(row['id']), safe='')}/{action}"
        forms.append(
            f'<form method="post" action="{esc(target)}" class="inline">{csrf_input(frame)}'
            f'<button class="{action}" title="{action} {esc(row["id"])}">{action}</button></form>'
        )
    return "".join(forms)


def status_page(frame: Frame, health: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                message: str = "") -> str:
    """Cluster summary, then one row per backend, with action buttons."""
    status = str(health.get("status", ""))
    healthy, total = health.get("healthy", 0), health.get("total", 0)
    summary = (f'<p class="summary {esc(status)}"><strong>{_number(healthy)} of '
               f"{_number(total)}</strong> primary backends up · {esc(status)}</p>")
    alarm = ""
    if status != "ok":
        down = [row for row in rows if row.get("state") != "up" and row.get("role") == "primary"]
        names = "; ".join(
            f"{esc(row['id'])} {esc(row.get('state'))}"
            + (f": {esc(row['reason'])}" if row.get("reason") else "")
            for row in down)
        what = "No backend is up: the site is down" if status == "down" else "Cluster degraded"
        alarm = notice(f"<strong>{what}.</strong> {names}", "error")
    pools = len({row.get("pool") for row in rows}) > 1
    head = ["Backend", "Address"] + (["Pool"] if pools else []) + [
        "Role", "State", "Weight", "Active", "Queued", "Req/1m", "Err/1m", "p50", "p95",
        "Last probe", "Actions"]
    body = []
    for row in rows:
        state = esc(row.get("state"))
        reason = f'<div class="reason">{esc(row["reason"])}</div>' if row.get("reason") else ""
        cells = [
            ("Backend", f"<strong>{esc(row['id'])}</strong>"),
            ("Address", f"<code>{esc(row.get('address'))}</code>"),
            *([("Pool", esc(row.get("pool")))] if pools else []),
            ("Role", esc(row.get("role"))),
            ("State", f'<span class="state {state}">{state}</span>{reason}'),
            ("Weight", _weight(row)),
            ("Active", f"{_number(row.get('active'))}"
                       f'<span class="dim"> / {_number(row.get("maxconn"))}</span>'),
            ("Queued", _number(row.get("queued"))),
            ("Req/1m", _number(row.get("requests_1m"))),
            ("Err/1m", _number(row.get("errors_1m"))),
            ("p50", _number(row.get("p50_ms"), "ms")),
            ("p95", _number(row.get("p95_ms"), "ms")),
            ("Last probe", _probe(row.get("last_probe"))),
            ("Actions", _actions(frame, row)),
        ]
        body.append("<tr>" + "".join(f'<td data-label="{label}">{cell}</td>'
                                     for label, cell in cells) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(head)}">No backends.</td></tr>')
    table = ('<table class="backends"><thead><tr>'
             + "".join(f'<th scope="col">{h}</th>' for h in head)
             + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>")
    content = (f"<h1>Status</h1>{summary}{alarm}{message}{table}"
               f'<p class="dim">Refreshes every {REFRESH_SECONDS} s. '
               "Drain: finish the requests in flight, take no new ones. Disable: take no "
               "new requests at once. Enable: take requests again.</p>")
    return layout(frame, "Status", content, tab="", refresh=f"{frame.base}/")


# -- basic --------------------------------------------------------------------------

_BASIC_HELP = (
    "One Zope client per line: <code>host:port</code>, then optional "
    "<code>weight=N</code>, <code>backup</code>, <code>maxconn=N</code>, "
    "<code>id=NAME</code>. Omit <code>http://</code>; always include the port; IP "
    "addresses and host names both work (IPv6 as <code>[::1]:8080</code>). Blank lines "
    "and <code># comments</code> are ignored. Load balancing needs two or more lines. "
    "Save applies the list at once: new clients take requests, removed ones finish "
    "the requests they are serving first."
)


def textarea(name: str, text: str, rows: int) -> str:
    # The newline after the tag: HTML drops one leading newline, so the text's own survives.
    return (f'<textarea id="{name}" name="{name}" rows="{rows}" spellcheck="false" '
            f'autocapitalize="off" autocomplete="off" wrap="off">\n{esc(text)}</textarea>')


def basic_page(frame: Frame, backends_text: str, *, error: str = "", saved: bool = False,
               pools: Sequence[str] = ()) -> str:
    """The backend list as a textarea, as Enfold's Virtual host field."""
    message = ""
    if error:
        message = notice(f"<strong>Not saved; nothing was changed.</strong> {esc(error)}",
                         "error")
    elif saved:
        message = notice("Saved and applied.")
    others = ""
    if pools:
        others = (f'<p class="dim">Named pools ({esc(", ".join(pools))}) are configured in the '
                  "ini; this list is the default pool.</p>")
    rows = max(6, backends_text.count("\n") + 3)
    content = (
        f"<h1>Backends</h1><p>{_BASIC_HELP}</p>{message}{others}"
        f'<form method="post" action="{esc(frame.base)}/basic/">{csrf_input(frame)}'
        f'<label for="backends">Virtual hosts (backends)</label>'
        f"{textarea('backends', backends_text, rows)}"
        '<p><button type="submit">Save</button></p></form>'
    )
    return layout(frame, "Basic", content, tab="/basic")


# -- balancing ----------------------------------------------------------------------


def _input(field: Field, invalid: bool) -> str:
    attrs = f'id="f-{esc(field.name)}" name="{esc(field.name)}"'
    if invalid:
        attrs += ' aria-invalid="true" class="invalid"'
    if field.choices:
        options = "".join(
            f'<option{" selected" if choice == field.value else ""}>{esc(choice)}</option>'
            for choice in field.choices)
        if field.value not in field.choices:
            options += f"<option selected>{esc(field.value)}</option>"
        return f"<select {attrs}>{options}</select>"
    return f'<input {attrs} value="{esc(field.value)}" autocomplete="off">'


def balancing_page(frame: Frame, groups: Sequence[tuple[str, Sequence[Field]]], *,
                   error: str = "", error_field: str = "", saved: bool = False) -> str:
    """Strategy, affinity, slots, queue, retries, timeouts and health options."""
    message = ""
    if error:
        message = notice(f"<strong>Not saved; nothing was changed.</strong> {esc(error)}",
                         "error")
    elif saved:
        message = notice("Saved and applied.")
    sets = []
    for legend, fields in groups:
        items = "".join(
            f'<div class="field"><label for="f-{esc(f.name)}"><code>{esc(f.name)}</code>'
            f"</label>{_input(f, f.name == error_field)}"
            f'<small>{doc_html(f.doc)}</small></div>'
            for f in fields)
        sets.append(f"<fieldset><legend>{esc(legend)}</legend>{items}</fieldset>")
    content = (
        "<h1>Balancing</h1><p>The whole form is checked before anything changes; a valid "
        f"save applies at once.</p>{message}"
        f'<form method="post" action="{esc(frame.base)}/balancing/">{csrf_input(frame)}'
        + "".join(sets) + '<p><button type="submit">Save</button></p></form>'
    )
    return layout(frame, "Balancing", content, tab="/balancing")


# -- verify -------------------------------------------------------------------------

_VERIFY_HELP = (
    "Checks the Zope clients of the default pool as <code>zope-lb verify</code> does: each "
    "one answers on its own address and, with a Manager login, all of them share one ZODB "
    "through one ZEO server (the same <em>Database Location</em>, the same latest "
    "transaction). The write check also writes a test object through the first client, "
    "reads it back through every other one and deletes it. The login is used for this run "
    "only: it is neither kept nor shown again."
)

#: The command line's words in verify's notes and reasons, as this page says them.
_CLI_WORDS = (
    ("give --user NAME:PASSWORD (a Manager)", "give a Zope Manager login"),
    ("add --write-check", "tick Write check"),
    ("--write-check not given", "write check not asked for"),
)


def _page_words(text: str) -> str:
    for cli, words in _CLI_WORDS:
        text = text.replace(cli, words)
    return text


def _check(client: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for check in client.get("checks", ()):
        if check.get("name") == name:
            return check
    return {}


def _report_cells(client: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One client's row of the verify report: (column, escaped HTML)."""
    skipped = '<span class="dim">skipped</span>'
    if client.get("reachable"):
        reachable = f"HTTP {_number(client.get('status'))} in {_number(client.get('ms'), 'ms')}"
    elif client.get("status") is not None:
        reachable = f'<span class="failed">HTTP {_number(client.get("status"))}</span>'
    else:
        reachable = f'<span class="failed">{esc(client.get("error") or "no answer")}</span>'
    if _check(client, "location").get("outcome") == "skip":
        location = skipped
    elif client.get("location") is None:
        location = "?"
    else:
        suffix = {True: " (connected)", False: " (disconnected)", None: ""}[
            client.get("connected")]
        location = f"<code>{esc(client['location'])}</code>{esc(suffix)}"
    last = client.get("last_transaction") or {}
    if last:
        transaction = f"<code>{esc(last.get('tid') or last.get('id'))}</code>"
    elif _check(client, "transaction").get("outcome") == "skip":
        transaction = skipped
    else:
        transaction = "?"
    if _check(client, "write").get("outcome") == "skip":
        write = skipped
    elif client.get("writer") and client.get("write_seen"):
        write = "written here"
    elif client.get("write_seen"):
        write = f"seen after {_number(client.get('write_ms'), 'ms')}"
    else:
        write = '<span class="failed">NO</span>'
    passed = client.get("verdict") == "pass"
    verdict = ('<span class="passed">ok</span>' if passed
               else '<span class="failed">FAIL</span>')
    failures = client.get("failures") or ()
    why = ("<br>".join(esc(_page_words(str(f))) for f in failures) if failures
           else '<span class="dim">every check made passed</span>')
    return [("Client", f"<code>{esc(client.get('address'))}</code>"),
            ("Reachable", reachable), ("Location", location),
            ("Last transaction", transaction), ("Write seen", write),
            ("Verdict", verdict), ("Why", why)]


def verify_report(report: Mapping[str, Any]) -> str:
    """A ``verify`` report (``Report.to_dict()``) as a summary, a table and notes."""
    clients = report.get("clients") or ()
    failed = sum(1 for c in clients if c.get("verdict") != "pass")
    total = len(clients)
    verdict = str(report["result"]).upper()  # Report.to_dict(): pass, fail or incomplete
    kind = {"PASS": "ok", "FAIL": "error"}.get(verdict, "warn")
    summary = notice(f"<strong>{verdict}</strong>: {total - failed} of {total} clients "
                     "passed every check made.", kind)
    rows = []
    for client in clients:
        cells = _report_cells(client)
        rows.append("<tr>" + "".join(f'<td data-label="{label}">{cell}</td>'
                                     for label, cell in cells) + "</tr>")
    head = ["Client", "Reachable", "Location", "Last transaction", "Write seen", "Verdict",
            "Why"]
    table = ('<table class="backends report"><thead><tr>'
             + "".join(f'<th scope="col">{h}</th>' for h in head)
             + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    notes = "".join(f"<li>{esc(_page_words(str(n)))}</li>" for n in report.get("notes") or ())
    checked = (f'<p class="dim">Storage checks: {esc(report.get("storage_checks"))}; '
               f'write check: {esc(report.get("write_check"))}.</p>')
    return (f'<section class="result" aria-label="Report"><h2>Report</h2>{summary}{table}'
            + (f'<ul class="notes">{notes}</ul>' if notes else "") + checked + "</section>")


def verify_page(frame: Frame, addresses: Sequence[str], *,
                report: Mapping[str, Any] | None = None, write_check: bool = False,
                error: str = "") -> str:
    """The Verify tab: the form (its login field always empty) and, after a run,
    the report. Nothing the user typed into the login field is ever shown."""
    message = notice(esc(error), "error") if error else ""
    listed = ", ".join(f"<code>{esc(a)}</code>" for a in addresses) or "none"
    checked = " checked" if write_check else ""
    content = (
        f"<h1>Verify cluster</h1><p>{_VERIFY_HELP}</p>"
        f"<p>Clients of the default pool: {listed}.</p>{message}"
        f'<form method="post" action="{esc(frame.base)}/verify/" class="verify">'
        f"{csrf_input(frame)}"
        '<label for="user">Zope Manager login (NAME:PASSWORD)</label>'
        '<input id="user" name="user" type="password" value="" autocomplete="new-password" '
        'autocapitalize="off" spellcheck="false">'
        "<small>Optional: without it only reachability is checked, and the storage checks "
        "are reported as skipped.</small>"
        '<label class="check" for="write_check"><input type="checkbox" id="write_check" '
        f'name="write_check" value="1"{checked}> Write check (writes and deletes a test '
        "object)</label>"
        '<p><button type="submit">Verify cluster</button></p></form>'
        + (verify_report(report) if report is not None else "")
    )
    return layout(frame, "Verify", content, tab="/verify")


# -- login and small messages -------------------------------------------------------


def login_page(frame: Frame, token: str, *, next_path: str = "", error: str = "",
               name: str = "") -> str:
    """The login form (its CSRF token pairs with a cookie set alongside)."""
    message = notice(esc(error), "error") if error else ""
    content = (
        f"<h1>Log in</h1>{message}"
        f'<form method="post" action="{esc(frame.base)}/login" class="login">'
        f'<input type="hidden" name="csrf" value="{esc(token)}">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<label for="name">Name</label>'
        f'<input id="name" name="name" value="{esc(name)}" autocomplete="username" '
        'autocapitalize="off" required>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" '
        'autocomplete="current-password" required>'
        '<p><button type="submit">Log in</button></p></form>'
    )
    return layout(frame, "Log in", content)


def message_page(frame: Frame, title: str, text: str) -> str:
    """A short page for refusals (403, 404...): ``text`` is escaped."""
    return layout(frame, title, f"<h1>{esc(title)}</h1><p>{esc(text)}</p>")


STYLESHEET = """\
:root{--ok:#1b7a3a;--bad:#b3261e;--warn:#9a6700;--dim:#666;--line:#ddd;
font-family:system-ui,-apple-system,"Segoe UI",sans-serif;line-height:1.4}
body{margin:0;color:#111;background:#fafafa}
header{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:center;padding:.6rem 1rem;
background:#1f2937;color:#fff}
header a{color:#fff;text-decoration:none}.brand{font-weight:700}
nav{display:flex;gap:1rem}nav a[aria-current]{text-decoration:underline}
.user{margin-left:auto;display:flex;gap:.5rem;align-items:center}
main{padding:1rem;max-width:90rem}
h1{font-size:1.4rem;margin:.2rem 0 .8rem}
.summary{font-size:1.1rem}.summary.ok strong{color:var(--ok)}
.summary.degraded strong{color:var(--warn)}.summary.down strong{color:var(--bad)}
.notice{padding:.6rem .8rem;border-radius:4px;margin:.8rem 0;border:1px solid}
.notice.ok{border-color:var(--ok);background:#eaf6ee}
.notice.error{border-color:var(--bad);background:#fdecea}
.notice.warn{border-color:var(--warn);background:#fdf6e3}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:.4rem .5rem;border-bottom:1px solid var(--line);text-align:left;
vertical-align:top}
.state{font-weight:600}.state.up{color:var(--ok)}.state.down{color:var(--bad)}
.state.draining{color:var(--warn)}.state.disabled{color:var(--dim)}
.passed{color:var(--ok)}.failed{color:var(--bad)}
.dim,.reason,small{color:var(--dim);font-size:.85em}
form.inline{display:inline}button{font:inherit;padding:.3rem .7rem;margin:.1rem;
cursor:pointer}
form label{display:block;margin:.4rem 0}
textarea{width:100%;box-sizing:border-box;font-family:ui-monospace,monospace;font-size:.95rem}
fieldset{border:1px solid var(--line);margin:0 0 1rem;background:#fff}
.field{display:grid;gap:.2rem;margin:.5rem 0}
.field input,.field select,.login input{font:inherit;padding:.3rem;width:100%;max-width:30rem;
box-sizing:border-box}
@media (min-width:1300px){td[data-label=Actions]{white-space:nowrap}}
.invalid{outline:2px solid var(--bad)}
.login{display:grid;gap:.4rem;max-width:20rem}
.verify{display:grid;gap:.4rem;max-width:36rem}
.verify input[type=password]{font:inherit;padding:.3rem;width:100%;box-sizing:border-box}
.verify label.check{display:flex;gap:.5rem;align-items:center}
h2{font-size:1.15rem;margin:1.2rem 0 .4rem}.notes{color:var(--dim)}
table.report td{overflow-wrap:anywhere}
@media (max-width:760px){
table.backends thead{display:none}
table.backends tr{display:block;border:1px solid var(--line);margin:0 0 .8rem;
background:#fff}
table.backends td{display:flex;gap:.5rem;border:0;padding:.2rem .5rem}
table.backends td::before{content:attr(data-label);min-width:6.5rem;color:var(--dim)}
}
"""
