"""Read and check an ini the way ``zope-lb serve`` loads it, without starting anything.

``zope-lb config`` prints what :func:`check_ini` finds, ``serve`` refuses to
start on its problems, and a SIGHUP reload refuses to apply them: one checker,
so the three never disagree. Theory of operation:

1. The bytes must be UTF-8 and parse as PasteDeploy parses them (the same
   parser class, the same ``here``/``__file__`` defaults); a parser error
   (a key written twice, a stray line) ends the check, since nothing after it
   can be trusted.
2. Every value of a PasteDeploy section is interpolated as PasteDeploy will,
   so a ``%`` in a password is named by section and key, not by a traceback.
3. The app (``[app:NAME]``, ``[pipeline:NAME]``, ``filter-app``,
   ``filter-with``) is walked section by section with PasteDeploy's own loader,
   which resolves each ``use =`` (importing the factory, never calling it).
   Each zope_lb balancer's options are converted one by one, so every bad
   option is reported, then whole, then with the state file on top.
4. A waitress ``[server:NAME]`` is checked with waitress's own converters
   (:mod:`zope_lb.servercheck`).
5. ``[loggers]``/``[handlers]``/``[formatters]`` are checked the way
   ``logging.config.fileConfig`` reads them, without opening any log file
   (:mod:`zope_lb.logcheck`).

Nothing here raises for a bad ini: every problem is a :class:`Problem` that
names the file, the section and the key or line.
"""

from __future__ import annotations

import configparser
import contextlib
import difflib
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import state
from .backendlines import parse_backends
from .errors import ConfigError
from .settings import (
    OPTIONS,
    PER_POOL,
    POOL_FIELDS,
    format_options,
    parse_settings,
    pool_field_converter,
    pool_key_problem,
    split_pool_key,
)

log = logging.getLogger(__name__)

#: Section prefixes PasteDeploy reads (and interpolates) when it loads an app or server.
PASTE_PREFIXES = ("app", "application", "composite", "composit", "pipeline", "filter-app",
                  "filter", "server")
_OPTIONS = {o.name: o for o in OPTIONS} | {o.attribute: o for o in OPTIONS}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an ini, printed as ``FILE:LINE: [SECTION] KEY: message``."""

    file: str
    message: str
    section: str = ""
    key: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        section = f"[{self.section}] " if self.section else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}: {section}{key}{self.message}"


@dataclass
class BalancerConf:
    """One zope_lb balancer of the ini: its section and what it will run."""

    section: str
    use: str
    local_conf: dict[str, str]
    options: dict[str, str] = field(default_factory=dict)  # effective, format_options text
    from_state: dict[str, str | None] = field(default_factory=dict)  # the state file's part
    state_path: str = ""


@dataclass
class ServerConf:
    """One ``[server:NAME]``: its keys as given and, for waitress, as converted."""

    section: str
    use: str
    local_conf: dict[str, str]
    values: dict[str, str] = field(default_factory=dict)
    waitress: bool = False


@dataclass
class IniReport:
    """What :func:`check_ini` found: the problems, or the configuration that runs."""

    path: str
    problems: list[Problem] = field(default_factory=list)
    chain: list[tuple[str, str]] = field(default_factory=list)  # (section, use) outermost first
    balancers: list[BalancerConf] = field(default_factory=list)
    servers: list[ServerConf] = field(default_factory=list)
    loggers: list[str] = field(default_factory=list)
    logging_sections: dict[str, dict[str, str]] = field(default_factory=dict)
    #: (section, key) -> the line it is on; (section, "") -> the section's header line
    lines: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, message: str, section: str = "", key: str = "", line: int | None = None,
            file: str = "", at: str = "") -> None:
        """A problem; its line is found from ``section`` and ``key`` (or ``at``,
        the key a message names itself) where the caller does not know it."""
        if line is None and not file and section:
            line = self.lines.get((section, at or key)) or self.lines.get(
                (section, (at or key).lower())) or self.lines.get((section, ""))
        # one problem, one line: a name or message may hold a continuation line
        message, section, key = (" ".join(text.splitlines()) for text in (message, section, key))
        problem = Problem(file or self.path, message, section, key, line)
        if problem not in self.problems:
            self.problems.append(problem)


# -- text and parser -----------------------------------------------------------------


def read_text(report: IniReport) -> str | None:
    """The file as text, or None with the problem added (unreadable, not UTF-8)."""
    try:
        with open(report.path, "rb") as file:
            data = file.read()
    except OSError as exc:
        report.add(f"cannot be read: {exc.strerror or exc}")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        report.add(f"byte {data[exc.start]:#04x} is not UTF-8 text; save the file as UTF-8",
                   line=line, section=_section_at(data[:exc.start].decode("utf-8", "replace"),
                                                  line))
        return None


def parse(report: IniReport, text: str) -> configparser.ConfigParser | None:
    """The ini parsed as PasteDeploy parses it, or None with the problems added."""
    from paste.deploy.loadwsgi import NicerConfigParser

    parser = NicerConfigParser(report.path, defaults={
        "here": os.path.dirname(report.path), "__file__": report.path})
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # as PasteDeploy
    try:
        parser.read_string(text, source=report.path)
    except configparser.Error as exc:
        parse_problems(report, text, exc)
        return None
    return parser


def parse_problems(report: IniReport, text: str, exc: configparser.Error) -> None:
    if isinstance(exc, configparser.DuplicateOptionError):
        report.add("written twice in this section; keep one (the parser refuses both)",
                   exc.section, exc.option, exc.lineno)
    elif isinstance(exc, configparser.DuplicateSectionError):
        report.add("section written twice; merge the two", exc.section, line=exc.lineno)
    elif isinstance(exc, configparser.MissingSectionHeaderError):
        report.add(f"{exc.line.strip()!r} comes before any [section] header",
                   line=exc.lineno)
    elif isinstance(exc, configparser.ParsingError):
        lines = text.splitlines()
        for lineno, _ in exc.errors:
            line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
            report.add(f"{line!r} is neither 'key = value', a [section], a comment nor "
                       "an indented continuation", _section_at(text, lineno), line=lineno)
    else:
        report.add(str(exc).splitlines()[0])


_HEADER = re.compile(r"\[([^]]+)\]")
_KEY = re.compile(r"([^\s=:#;][^=:]*?)\s*[=:]")


def key_lines(text: str) -> dict[tuple[str, str], int]:
    """Where each section starts and each key is written (its first time), so a
    problem found after parsing still names its line."""
    found: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            section = header.group(1).strip()
            found.setdefault((section, ""), number)
            continue
        key = _KEY.match(line)
        if key and section:
            found.setdefault((section, key.group(1).strip()), number)
            found.setdefault((section, key.group(1).strip().lower()), number)
    return found


def _section_at(text: str, lineno: int) -> str:
    """The section a line number falls in ('' before the first header)."""
    section = ""
    for line in text.splitlines()[:lineno - 1]:
        match = re.match(r"\[([^]]+)\]", line)
        if match:
            section = match.group(1).strip()
    return section


def check_interpolation(report: IniReport, parser: configparser.ConfigParser
                         ) -> list[tuple[str, str]]:
    """Every value PasteDeploy will read, interpolated as it will be; the
    (section, key) pairs that fail."""
    broken: list[tuple[str, str]] = []
    sections = [s for s in parser.sections() if s.split(":", 1)[0].strip() in PASTE_PREFIXES]
    defaults = configparser.ConfigParser.defaults(parser)  # raw: PasteDeploy's interpolates
    keys = [("DEFAULT", key) for key in defaults]
    keys += [(section, key) for section in sections for key in parser.options(section)
             if key not in defaults]
    for section, key in keys:
        try:
            parser.get(section, key)
        except (configparser.Error, ValueError) as exc:
            report.add(interpolation_message(exc), section, key)
            broken.append((section, key))
    return broken


def interpolation_message(exc: Exception) -> str:
    """What an interpolation error means, in the words an operator needs."""
    if isinstance(exc, configparser.InterpolationMissingOptionError):
        return (f"%({exc.reference})s names no key of this section or [DEFAULT]; "
                "write a literal '%' as '%%'")
    if isinstance(exc, configparser.InterpolationDepthError):
        return "%(...)s references nest too deep (or refer to each other)"
    return "a '%' in a value must be written '%%' (e.g. a password 'ab%%cd' for 'ab%cd')"


# -- the app, walked as PasteDeploy loads it ---------------------------------------------


def walk_sections(report: IniReport, loader: Any, object_type: Any, name: str, top: bool = False
          ) -> None:
    """Add the sections that make up ``name`` (outermost first); check balancers."""
    from paste.deploy.loadwsgi import FILTER, FILTER_WITH

    if loader.absolute_name(name):
        section, use = name, name
    else:
        found = find_section(report, loader, object_type, name, top)
        if found is None:
            return
        section, use = found, loader.parser.get(found, "use", fallback="")
    if section.startswith("pipeline:"):
        report.chain.append((section, ""))
        names = loader.parser.get(section, "pipeline", fallback="").split()
        defaults = configparser.ConfigParser.defaults(loader.parser)
        extra = [k for k in loader.parser.options(section)
                 if k != "pipeline" and k not in defaults]
        if not names:
            report.add("needs pipeline = FILTER ... APP", section, "pipeline")
        if extra:
            report.add(f"a pipeline takes only 'pipeline'; move {', '.join(extra)} to "
                       "the filter or app section", section, extra[0])
        for filter_name in names[:-1]:
            walk_sections(report, loader, FILTER, filter_name)
        if names:
            walk_sections(report, loader, _app_type(), names[-1])
        return
    context = load_context(report, loader, object_type, name, section, use)
    if context is None:
        return
    if section.startswith("filter-app:"):
        report.chain.append((section, use))
        _factory(report, section, use, context.filter_context)
        next_name = loader.parser.get(section, "next", fallback="")
        walk_sections(report, loader, _app_type(), next_name)
        return
    if context.object_type is FILTER_WITH:  # the filter wraps this section's app
        walk_sections(report, loader, FILTER, loader.parser.get(section, "filter-with"))
        report.chain.append((section, use))
        _factory(report, section, use, context.next_context)
        return
    report.chain.append((section, use))
    _factory(report, section, use, context)


def section_loop(loader: Any, object_type: Any, name: str, inside: tuple[str, ...] = ()
          ) -> tuple[str, ...]:
    """The sections of a loop through pipelines, ``next`` or ``filter-with``
    starting at ``name``, or () if there is none."""
    from paste.deploy.loadwsgi import APP, FILTER

    if loader.absolute_name(name) or len(inside) > 100:
        return ()
    try:
        section = str(loader.find_config_section(object_type, name=name))
    except LookupError:
        return ()
    if section in inside:
        return (*inside, section)
    parser = loader.parser
    refs: list[tuple[Any, str]] = []
    if section.startswith("pipeline:"):
        names = parser.get(section, "pipeline", raw=True, fallback="").split()
        refs = [(FILTER, n) for n in names[:-1]] + [(APP, n) for n in names[-1:]]
    if section.startswith("filter-app:"):
        refs.append((APP, parser.get(section, "next", raw=True, fallback="")))
    if parser.has_option(section, "filter-with"):
        refs.append((FILTER, parser.get(section, "filter-with", raw=True)))
    for ref_type, ref in refs:
        loop = section_loop(loader, ref_type, ref, (*inside, section))
        if loop:
            return loop
    return ()


def _app_type() -> Any:
    from paste.deploy.loadwsgi import APP

    return APP


def find_section(report: IniReport, loader: Any, object_type: Any, name: str,
                  top: bool) -> str | None:
    try:
        return str(loader.find_config_section(object_type, name=name))
    except LookupError as exc:
        kind = object_type.name
        wanted = f"[app:{name}] or [pipeline:{name}]" if kind == "application" else (
            f"[{kind}:{name}]")
        if "Ambiguous" in str(exc):
            found = re.search(r"\[([^]]*)\]", str(exc))
            names = ", ".join(f"[{n.strip(chr(39))}]" for n in found.group(1).split(", ")
                              ) if found else wanted
            report.add(f"{names} could each be {wanted}; keep one")
            return None
        sections = loader.parser.sections()
        close = difflib.get_close_matches(f"{wanted.split(']')[0][1:]}", sections, 1)
        hint = f"; did you mean [{close[0]}]?" if close else ""
        how = (" (--app-name picks another)" if top else
               " (named in a pipeline, filter-with or next)")
        if kind == "server":
            how = " (--server-name picks another)"
        report.add(f"no {wanted} section{how}{hint}")
        return None


def load_context(report: IniReport, loader: Any, object_type: Any, name: str, section: str,
             use: str) -> Any:
    """PasteDeploy's context for one section (its factory loaded, never called)."""
    try:
        return loader.get_context(object_type, name)
    except configparser.InterpolationError as exc:
        report.add(interpolation_message(exc), exc.section, exc.option)
    except KeyError as exc:  # "get NAME = VAR" with no VAR in [DEFAULT]
        report.add(f"'get' names {exc.args[0]!r}, which [DEFAULT] does not set", section)
    except LookupError as exc:
        report.add(_lookup_message(exc, use), section, "use" if use else "")
    except Exception as exc:  # a factory module that fails on import, a bad 'require'...
        what = repr(use) if use else "its factory (or a 'require')"
        detail = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        report.add(f"{what} cannot be loaded: {detail}", section, "use" if use else "")
    return None


def _lookup_message(exc: LookupError, use: str) -> str:
    text = str(exc).replace("\n", " ")
    if text.startswith("No loader given"):
        return (f"{use!r} names a section without a 'use =' line" if use else
                "has no 'use =' line, e.g. use = egg:zope_lb or use = egg:waitress#main")
    match = re.fullmatch(r"egg:([^#\s]+)(?:#(\S+))?", use.strip())
    if match and "Entry point" in text:
        from importlib import metadata

        dist, name = match.group(1), match.group(2) or "main"
        with contextlib.suppress(Exception):
            names = sorted({ep.name for ep in metadata.distribution(dist).entry_points
                            if ep.group.startswith("paste.")})
            close = difflib.get_close_matches(name, names, 1)
            hint = f"did you mean egg:{dist}#{close[0]}?" if close else (
                f"{dist} has: {', '.join(names) or 'none'}")
            return f"{use!r}: {dist} has no such factory for this section; {hint}"
    return f"{use!r}: {text}" if use else text


def _factory(report: IniReport, section: str, use: str, context: Any) -> None:
    """Check the section if its factory is one of zope_lb's."""
    from . import paste as zope_lb_paste

    factory = getattr(context, "object", None)
    if factory not in (zope_lb_paste.app_factory, zope_lb_paste.filter_factory):
        return
    local_conf = {str(k): str(v) for k, v in context.local_conf.items()}
    balancer = BalancerConf(section, use, local_conf)
    report.balancers.append(balancer)
    if not check_options(report, section, local_conf):
        return
    balancer.state_path = state.resolve_path(local_conf.get("state_file", ""),
                                             dict(context.global_conf))
    overrides: dict[str, str | None] = {}
    if balancer.state_path:
        try:
            overrides = state.load_overrides(balancer.state_path, local_conf)
        except state.StateFileError as exc:
            report.add(f"{exc.rule} (the state file of [{section}] in {report.path})",
                       file=exc.path)
            return
        except ConfigError as exc:
            report.add(f"with the state file {balancer.state_path}: {_config_message(exc)}",
                       section)
            return
    balancer.from_state = dict(overrides)
    balancer.options = format_options(parse_settings(state.merge(local_conf, overrides)))


def check_options(report: IniReport, section: str, local_conf: Mapping[str, str]) -> bool:
    """Each balancer option converted on its own (so every bad one is named), then
    the whole set; True if all is well."""
    before = len(report.problems)
    given: dict[str, str] = {}
    for key, value in local_conf.items():
        pool_key = split_pool_key(key)
        if pool_key:
            name, pool_field = pool_key
            problem = pool_key_problem(name, pool_field)
            if problem:
                fields = [*POOL_FIELDS, *PER_POOL]
                close = difflib.get_close_matches(pool_field, fields, 1)
                hint = f"unknown pool key; did you mean pool.{name}.{close[0]}?" if (
                    close and pool_field not in _OPTIONS) else problem
                report.add(hint, section, key)
                continue
            option = _OPTIONS.get(pool_field)
            _convert(report, section, key, value, pool_field_converter(key),
                     option is not None and option.secret)
            continue
        option = _OPTIONS.get(key)
        if option is None:
            report.add(f"unknown option; {_did_you_mean(key)}", section, key)
            continue
        if option.name in given:
            report.add(f"the same option as {given[option.name]!r}; keep one", section, key)
            continue
        given[option.name] = key
        _convert(report, section, key, value, option.convert, option.secret)
    if len(report.problems) > before:
        return False
    try:
        parse_settings(local_conf)
    except ConfigError as exc:
        report.add(_config_message(exc), section, at=exc.key)
        return False
    return True


def _convert(report: IniReport, section: str, key: str, value: str, convert: Any,
             secret: bool) -> None:
    try:
        if convert is parse_backends:
            parse_backends(value, key)
        else:
            convert(value)
    except ConfigError as exc:
        report.add(_config_message(exc), section, at=key)
    except ValueError as exc:
        shown = "(not shown)" if secret else value
        report.add(f"{key} {shown!r}: {exc}", section, at=key)


def _config_message(exc: ConfigError) -> str:
    """ConfigError's own words (``key line N 'value': rule``), a bare rule for a
    missing key."""
    return str(exc) if exc.value is not None else f"{exc.key}: {exc.rule}"


def _did_you_mean(key: str) -> str:
    names = [o.name for o in OPTIONS]
    close = difflib.get_close_matches(key.replace("_", "."), names, 1, 0.6) or \
        difflib.get_close_matches(key, names, 1, 0.6)
    if close:
        return f"did you mean {close[0]}?"
    return "the options are listed in the README's options table"


# -- printing ----------------------------------------------------------------------------------


def format_report(report: IniReport) -> str:
    """The effective configuration as ini text, comments saying where values come from."""
    out = [f"# {report.path}: configuration OK"]
    if report.chain:
        out.append("# app: " + " -> ".join(
            f"[{section}]" + (f" ({use})" if use else "") for section, use in report.chain))
    for balancer in report.balancers:
        out += ["", f"[{balancer.section}]", f"# use = {balancer.use}"]
        if balancer.state_path:
            exists = os.path.exists(balancer.state_path)
            out.append(f"# state file: {balancer.state_path}"
                       + ("" if exists else " (none yet)"))
        removed = sorted(k for k, v in balancer.from_state.items() if v is None)
        if removed:
            out.append(f"# removed by the state file: {', '.join(removed)}")
        secrets = {o.name for o in OPTIONS if o.secret}
        for key, value in balancer.options.items():
            shown = ("(set, not shown)" if value else "") if key in secrets else value
            lines = shown.splitlines()
            mark = "    # from the state file" if key in balancer.from_state else ""
            if len(lines) > 1:
                out.append(f"{key} ={mark}")
                out += [f"    {line}" for line in lines]
            else:
                out.append(f"{key} = {shown}".rstrip() + mark)
    for server in report.servers:
        out += ["", f"[{server.section}]", f"# use = {server.use}"]
        values = server.values if server.waitress else server.local_conf
        out += [f"{key} = {value}".rstrip() for key, value in values.items()]
    if report.loggers:
        out += ["", f"# logging: [loggers] {', '.join(report.loggers)}"]
    return "\n".join(out)


#: The loggers the checks write to (settings warnings, state file notes).
CHECK_LOGGERS = ("zope_lb.settings", "zope_lb.state")


@contextlib.contextmanager
def collected(records: list[logging.LogRecord]) -> Iterator[None]:
    """What the checks log in this thread goes to ``records`` instead of the log:
    ``zope-lb config`` prints it with its report; ``serve`` and a reload drop it,
    since loading or applying the ini logs the same warnings again. Records of
    other threads (requests served meanwhile) pass as usual."""
    thread = threading.get_ident()

    def divert(record: logging.LogRecord) -> bool:
        if record.thread != thread:
            return True
        records.append(record)
        return False

    loggers = [logging.getLogger(name) for name in CHECK_LOGGERS]
    for logger in loggers:
        logger.addFilter(divert)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(divert)
