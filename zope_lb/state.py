"""Runtime changes kept in a state file, shared by every process serving one ini.

The ini gives the defaults; the state file, if present, overrides them. It
holds only what an administrator changed, never the whole configuration::

    {"version": 1,
     "options":  {"timeout.read": "30", "backends": "10.0.0.5:8080\n10.0.0.6:8080"},
     "ini":      {"timeout.read": "300", "backends": "10.0.0.5:8080"},
     "backends": {"c1": "disabled", "c2": "draining"},
     "written_by": 4711, "serial": 12, "written_at": "2024-05-01T10:00:00Z"}

``options`` maps each changed option to its ini text; only what the admin
pages and API can change may be there (:data:`SAVED`: the default pool's
backends and the Balancing options), anything else refuses the whole file.
``ini`` records what the ini said for those options when they were written.
Theory of operation, for the day the operator edits the ini (and restarts, or
sends SIGHUP):

- An option the operator did not touch in the ini keeps its runtime override.
- An option the operator *did* change in the ini since the override was
  written (its ini text no longer matches ``ini``) is taken from the ini: the
  later edit wins, and a warning names it. Storing the full configuration
  instead would silently freeze the ini forever; storing overrides without
  their base would let a stale admin edit hide a fresh ini edit.

``backends`` keeps the administrative states (disabled, draining) by backend
id; ids no longer configured are ignored. ``up``/``down`` are not stored: they
belong to the health checks of each process.

Writes are atomic (temp file in the same directory, fsync, rename, fsync of
the directory), so a reader sees the old file or the new one, never half.
Each process reads the file every ``poll_interval`` (0.5 s) and applies it
when its bytes differ from what this process last wrote or applied: a read of
a small file twice a second is cheaper than an inotify dependency and immune
to mtime granularity and inode reuse. Every save writes this process's whole
view, so two edits made in two processes within one poll interval: the last
one wins, whole. An invalid file stops start-up (:class:`StateFileError`,
naming the file and the problem); at run time an invalid file is logged and
the running configuration stays.

``zope-lb serve`` re-reads the ini on SIGHUP (:mod:`zope_lb.reload`): the
new ini becomes the defaults, the state file goes on top, and the result is
applied in place like an admin edit (removed backends drain, requests in
flight finish). gunicorn handles SIGHUP itself, by starting new workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .admin.api import BALANCING_KEYS, is_pool_balancing_key
from .backendlines import parse_backends
from .errors import ConfigError, StateSaveError
from .settings import (
    OPTIONS,
    Settings,
    format_options,
    format_value,
    parse_settings,
    pool_field_converter,
)

log = logging.getLogger(__name__)

VERSION = 1
DEFAULT_NAME = "zope_lb-state.json"
ADMIN_STATES = ("disabled", "draining")
#: The options a state file may hold: what the admin pages and API can change (the
#: default pool's backends and the Balancing options). Anything else (admin.users,
#: notify.command, named pools...) is the ini's alone: a file that names it is
#: refused whole, at start and at run time, so whoever can write the state file
#: cannot make an account, run a command or reach another pool.
SAVED = frozenset({"backends", *BALANCING_KEYS})


def saved(key: str) -> bool:
    """Whether a state file may keep ``key``: :data:`SAVED`, or a named pool's own
    value of a Balancing option (``pool.api.health.path``; its backends stay the ini's)."""
    return key in SAVED or is_pool_balancing_key(key)

_KEYS = frozenset({"version", "options", "ini", "backends", "serial", "written_by",
                   "written_at"})

Overrides = dict[str, "str | None"]


class StateFileError(ConfigError):
    """The state file cannot be used: it names the file and what is wrong."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__("state_file", path,
                         f"{problem}; fix the file, or move it away to start from the ini alone")


@dataclass(frozen=True)
class Saved:
    """A parsed state file."""

    options: Mapping[str, str | None] = field(default_factory=dict)
    ini: Mapping[str, str | None] = field(default_factory=dict)
    backends: Mapping[str, str] = field(default_factory=dict)
    serial: int = 0
    written_by: int = 0


# -- pure: text <-> values -------------------------------------------------------------


def resolve_path(option: str, global_conf: Mapping[str, str]) -> str:
    """``state_file`` as given (relative to the ini's directory), else beside the
    ini and named after it (``production.ini`` -> ``production.state.json``, so
    two inis in one folder never share state); '' when there is no ini (a
    balancer built in code keeps no state)."""
    ini = global_conf.get("__file__", "")
    here = global_conf.get("here") or os.path.dirname(ini)
    if option:
        return os.path.abspath(os.path.join(here, option))
    if not here:
        return ""
    stem = os.path.splitext(os.path.basename(ini))[0] if ini else ""
    return os.path.join(here, f"{stem}.state.json" if stem else DEFAULT_NAME)


def parse_state(text: bytes | str, path: str) -> Saved:
    """Check the file's shape (not its settings); StateFileError names the problem."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        where = (f" at line {exc.lineno} column {exc.colno}"
                 if isinstance(exc, json.JSONDecodeError) else "")
        raise StateFileError(path, f"not valid JSON{where} ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(data, dict):
        raise StateFileError(path, "must be a JSON object")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise StateFileError(path, f"unknown key {unknown[0]!r}; known: {', '.join(sorted(_KEYS))}")
    if data.get("version") != VERSION:
        raise StateFileError(path, f"version {data.get('version')!r} is not supported "
                                   f"(this zope_lb reads version {VERSION})")
    options = _text_map(data.get("options", {}), "options", path, null=False)
    ini = _text_map(data.get("ini", {}), "ini", path)
    for name, keys in (("options", options), ("ini", ini)):
        for key in sorted(k for k in keys if not saved(k)):
            raise StateFileError(
                path, f"{name} may not set {key!r}: a state file keeps only what the admin "
                      "pages and API change (backends and the Balancing options); set it "
                      "in the ini")
    backends = data.get("backends", {})
    if not isinstance(backends, dict):
        raise StateFileError(path, "backends must map backend ids to disabled or draining")
    for backend_id, state in backends.items():
        if state not in ADMIN_STATES:
            raise StateFileError(path, f"backend {backend_id!r} has state {state!r}; "
                                       "only disabled or draining are kept")
    counts: dict[str, int] = {}
    for key in ("serial", "written_by"):
        value = data.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StateFileError(path, f"{key} must be a whole number, not {value!r}")
        counts[key] = value
    return Saved(options, ini, dict(backends), **counts)


def _text_map(value: Any, name: str, path: str, null: bool = True) -> dict[str, str | None]:
    if not isinstance(value, dict) or not all(
            isinstance(v, str) or (null and v is None) for v in value.values()):
        raise StateFileError(path, f"{name} must map option names to ini text"
                                   + (" (or null)" if null else ""))
    return dict(value)


def baseline(ini_options: Mapping[str, object]) -> dict[str, str]:
    """Every option as the ini sets it (defaults included), in canonical names and
    text, so ``timeout_read = 30.0`` and ``timeout.read = 30`` compare equal."""
    return format_options(parse_settings(ini_options))


_CONVERTERS: dict[str, Callable[[Any], Any]] = {o.name: o.convert for o in OPTIONS}


def canonical(key: str, text: str | None) -> str | None:
    """``text`` as ``format_options`` writes it, so that spacing or ``30`` versus
    ``30.0`` is not taken for an edit of the ini; text that does not parse is kept."""
    if text is None:
        return None
    convert: Callable[..., Any] | None = (
        pool_field_converter(key) if key.startswith("pool.") else _CONVERTERS.get(key))
    if convert is None:
        return text
    try:
        return format_value(convert(text, key) if convert is parse_backends else convert(text))
    except ValueError:  # ConfigError is one
        return text


def overrides_for(base: Mapping[str, str], saved: Saved) -> tuple[Overrides, list[str]]:
    """The overrides that still apply on ``base``, and the options the ini changed
    since they were written (the ini wins those)."""
    kept: Overrides = {}
    stale = []
    for key, value in saved.options.items():
        if key in saved.ini and canonical(key, saved.ini[key]) != base.get(key):
            stale.append(key)
        else:
            kept[key] = value
    return kept, stale


def merge(ini_options: Mapping[str, object], overrides: Mapping[str, str | None]
          ) -> dict[str, str]:
    """The configuration to run: the ini, with the overrides on top."""
    return _on_top(baseline(ini_options), overrides)


def _on_top(base: Mapping[str, str], overrides: Mapping[str, str | None]) -> dict[str, str]:
    options = dict(base)
    for key, value in overrides.items():
        if value is None:
            options.pop(key, None)
        else:
            options[key] = value
    return options


def changes(base: Mapping[str, str], current: Mapping[str, str]) -> tuple[Overrides, Overrides]:
    """What the admin changed from the ini: (options, what the ini said for each).
    Only :data:`SAVED` options: what else runs differently (set in code) is not kept."""
    options: Overrides = {k: v for k, v in current.items()
                          if saved(k) and base.get(k) != v}
    return options, {k: base.get(k) for k in options}


def admin_states(pools: Any) -> dict[str, str]:
    """Backend id -> disabled/draining, for the backends an administrator set so.

    Backends removed from the configuration drain too, but they are no longer in
    ``pool.backends``: the ones still listed there were set by hand.
    """
    states: dict[str, str] = {}
    for pool in pools:
        for backend in pool.backends:
            if backend.state.value in ADMIN_STATES:
                states.setdefault(backend.id, backend.state.value)
    return states


_ABSENT = object()


def three_way(before: Mapping[str, Any], mine: Mapping[str, Any],
              theirs: Mapping[str, Any]) -> dict[str, Any]:
    """Per key: mine where I changed it since ``before``, else theirs (a key
    missing from a side is a value too: removed, or back to the ini)."""
    merged: dict[str, Any] = {}
    for key in {*before, *mine, *theirs}:
        base, own = before.get(key, _ABSENT), mine.get(key, _ABSENT)
        value = own if own != base else theirs.get(key, _ABSENT)
        if value is not _ABSENT:
            merged[key] = value
    return merged


# -- I/O --------------------------------------------------------------------------------


@contextlib.contextmanager
def _directory_lock(path: str) -> Iterator[None]:
    """An exclusive lock between processes saving beside ``path``: flock on its
    directory (no lock file to leave behind). Where there is no flock, none."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file."""
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileNotFoundError):  # keep a mode the operator chose
            os.chmod(temp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_bytes(path: str) -> bytes | None:
    """The file's bytes, or None if there is none."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return None


def load_overrides(path: str, ini_options: Mapping[str, object]) -> Overrides:
    """The state file's overrides that apply on this ini, checked whole.

    Raises ConfigError for a bad ini (naming the ini key) and StateFileError
    for a bad state file (naming the file and the problem), so start-up stops
    instead of silently dropping edits.
    """
    base = baseline(ini_options)
    try:
        data = read_bytes(path)
    except OSError as exc:
        raise StateFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    if data is None:
        return {}
    overrides, stale = overrides_for(base, parse_state(data, path))
    _check(path, base, overrides)
    for key in stale:
        log.warning("%s: %s was changed in the ini since it was changed at run time: "
                    "the ini's value is used", path, key)
    if overrides:
        log.info("%s overrides the ini for %s", path, ", ".join(sorted(overrides)))
    return overrides


def _check(path: str, base: Mapping[str, str], overrides: Mapping[str, str | None]) -> Settings:
    """The settings the overrides give; their ConfigError becomes the file's."""
    try:
        return parse_settings(_on_top(base, overrides))
    except ConfigError as exc:
        raise StateFileError(path, str(exc)) from None


class StateFile:
    """Keeps one balancer's runtime changes in ``path`` and follows other processes'.

    ``start()`` applies the saved backend states, becomes ``balancer.state_file``
    and starts the watcher. An edit is saved *before* it is made: ``balancer.apply``
    calls :meth:`saving` and ``balancer.backend_action`` calls :meth:`save_backend`
    first, so an edit that cannot be written raises :class:`StateSaveError` and
    changes nothing (rather than answering 200 and being lost at the next
    restart). Changes read from the file (or a SIGHUP reload) are applied
    without being written back. One re-entrant lock, the balancer's
    ``apply_lock``, orders saving and applying, so neither waits on the other.
    """

    def __init__(self, path: str, balancer: Any, ini_options: Mapping[str, object], *,
                 clock: Callable[[], float] = time.time, poll_interval: float = 0.5):
        self.path = path
        self.balancer = balancer
        self.poll_interval = poll_interval
        self.serial = 0
        self._clock = clock
        self._base = baseline(ini_options)
        self._seen: bytes | None = None  # the file as this process last wrote or applied it
        self._lock = getattr(balancer, "apply_lock", None) or threading.RLock()
        self._local = threading.local()  # .quiet: changes that must not be saved
        self._pending: dict[str, str] | None = None  # merged backend states to take on
        self._read_error = ""  # reported once, not at every poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StateFile:
        """Apply the file as it is now (StateFileError if invalid), then follow it."""
        with self._lock:
            data = read_bytes(self.path)
            self._apply(data)
            self._seen = data
        self.balancer.on_apply.append(self._applied)
        self.balancer.state_file = self
        if self.poll_interval > 0:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="zope-lb-state")
            self._thread.start()
        return self

    # -- writing ------------------------------------------------------------------------

    def saving(self, settings: Settings) -> Settings:
        """Save the runtime changes ``settings`` make, before they run; returns the
        settings to run: ``settings``, with the edits of another process that saved
        since merged in. StateSaveError (file not writable) or ConfigError (the
        merge is invalid): nothing was written, and the caller changes nothing."""
        if getattr(self._local, "quiet", False):
            return settings
        ids = {spec.id for spec in settings.backends}
        ids.update(spec.id for pool in settings.pools for spec in pool.backends)
        states = {k: v for k, v in admin_states(self.balancer.pools).items() if k in ids}
        merged, states = self._write(format_options(settings), states)
        if merged is None:
            return settings
        self._pending = states
        return merged

    def _applied(self, settings: Settings) -> None:
        """After an edit: take on the backend states merged from another process."""
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                with self._quiet():
                    self._sync_backends(pending)

    def save_backend(self, backend_id: str, state: str | None) -> None:
        """Save ``backend_id`` as ``state`` (disabled, draining; None: enabled) before
        the action is taken; StateSaveError if it cannot be written (take no action)."""
        states = {k: v for k, v in admin_states(self.balancer.pools).items() if k != backend_id}
        if state is not None:
            states[backend_id] = state
        self.save(states)

    def save(self, backends: Mapping[str, str] | None = None) -> None:
        """Write this process's runtime changes as they run now (backend states:
        ``backends``, else the running ones); StateSaveError if not written."""
        if getattr(self._local, "quiet", False):
            return
        with self._lock:
            merged, states = self._write(
                self.balancer.current_options(),
                admin_states(self.balancer.pools) if backends is None else backends)
            if merged is not None:  # take the other process's edits on, too
                with self._quiet():
                    if format_options(merged) != self.balancer.current_options():
                        self.balancer.apply(format_options(merged), replace=True)
                    self._sync_backends(states)

    def _write(self, current: Mapping[str, str], backends: Mapping[str, str]
               ) -> tuple[Settings | None, dict[str, str]]:
        """Write the changes ``current`` and ``backends`` make from the ini.

        Another process may have saved since this one last read the file (it
        polls every ``poll_interval``). Its edits are kept: per option and per
        backend, this process's value where it changed it since, the file's
        otherwise (a three-way merge). Returns the merged settings (None when
        nothing was merged) and backend states. Read, merge and write happen
        under a lock on the directory."""
        with self._lock, _directory_lock(self.path):
            options, ini = changes(self._base, current)
            states = dict(backends)
            data_now, theirs = self._read_for_merge()
            merged: Settings | None = None
            if theirs is not None and data_now != self._seen:
                before = self._parsed(self._seen)
                options = three_way(before.options, options, theirs.options)
                ini = {k: ini[k] if k in ini else theirs.ini.get(k) for k in options}
                states = three_way(before.backends, states, theirs.backends)
                merged = _check(self.path, self._base, options)
            serial = max(self.serial, theirs.serial if theirs is not None else 0) + 1
            document = {
                "version": VERSION, "options": options, "ini": ini, "backends": states,
                "written_by": os.getpid(), "serial": serial,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock())),
            }
            data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
            try:
                write_atomically(self.path, data)
            except OSError as exc:
                log.error("runtime change refused: %s cannot be written: %s", self.path, exc)
                raise StateSaveError(self.path, exc.strerror or str(exc)) from None
            self._seen = data
            self.serial = serial
        return merged, states

    def _read_for_merge(self) -> tuple[bytes | None, Saved | None]:
        """The file as it is now, and parsed (None if missing or unusable: an
        invalid file is replaced whole, as before)."""
        try:
            data = read_bytes(self.path)
            return data, (parse_state(data, self.path) if data is not None else None)
        except (OSError, ConfigError):
            return None, None

    def _parsed(self, data: bytes | None) -> Saved:
        try:
            return parse_state(data, self.path) if data is not None else Saved()
        except ConfigError:
            return Saved()

    # -- reading ------------------------------------------------------------------------

    def poll(self) -> bool:
        """Apply the file if someone else changed it since; True if applied."""
        with self._lock:
            try:
                data = read_bytes(self.path)
            except OSError as exc:
                if str(exc) != self._read_error:  # once, not twice a second
                    log.error("cannot read %s: %s", self.path, exc)
                self._read_error = str(exc)
                return False
            self._read_error = ""
            if data == self._seen:
                return False
            self._seen = data  # an invalid file is reported once, not every poll
            try:
                saved = self._apply(data)
            except ConfigError as exc:
                log.error("%s changed but was not applied; the running configuration "
                          "stays: %s", self.path, exc)
                return False
        log.info("applied %s (serial %d, written by process %d)", self.path, saved.serial,
                 saved.written_by)
        return True

    def reload_ini(self, ini_options: Mapping[str, object]) -> Settings:
        """SIGHUP: the new ini as defaults, the state file on top, applied at once.

        ConfigError (bad ini or state file) changes nothing.
        """
        with self._lock:
            base = baseline(ini_options)
            data = read_bytes(self.path)
            saved = parse_state(data, self.path) if data is not None else Saved()
            overrides, stale = overrides_for(base, saved)
            _check(self.path, base, overrides)
            with self._quiet():
                settings = self.balancer.apply(_on_top(base, overrides), replace=True)
                self._sync_backends(saved.backends)
            self._base = base
            self._seen = data
        for key in stale:
            log.warning("%s: %s was changed in the ini since it was changed at run time: "
                        "the ini's value is used", self.path, key)
        return settings

    def _apply(self, data: bytes | None) -> Saved:
        """Run the ini plus the file's overrides, and its backend states."""
        saved = parse_state(data, self.path) if data is not None else Saved()
        overrides, _ = overrides_for(self._base, saved)
        wanted = _check(self.path, self._base, overrides)
        with self._quiet():
            if format_options(wanted) != self.balancer.current_options():
                self.balancer.apply(_on_top(self._base, overrides), replace=True)
            self._sync_backends(saved.backends)
        return saved

    def sync_backends(self) -> None:
        """Apply the file's backend states again, for backends that just joined
        (a resolved address that comes back keeps its admin state). A file that
        cannot be read or parsed changes nothing here; the poll reports it."""
        with self._lock:
            try:
                data = read_bytes(self.path)
                saved = parse_state(data, self.path) if data is not None else Saved()
            except (OSError, ConfigError):
                return
            with self._quiet():
                self._sync_backends(saved.backends)

    def _sync_backends(self, wanted: Mapping[str, str]) -> None:
        for pool in self.balancer.pools:
            for backend in pool.backends:
                want = wanted.get(backend.id)
                have = backend.state.value
                if want == have:
                    continue
                if want == "disabled":
                    backend.disable("disabled by an administrator (state file)")
                elif want == "draining":
                    backend.drain("drained by an administrator (state file)")
                elif have in ADMIN_STATES:
                    backend.enable("enabled by an administrator (state file)")

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        self._local.quiet = True
        try:
            yield
        finally:
            self._local.quiet = False

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception:  # the watcher must outlive one bad read
                log.exception("could not apply %s", self.path)

    def close(self) -> None:
        """Stop following the file (saving stays possible). Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with contextlib.suppress(ValueError):
            self.balancer.on_apply.remove(self._applied)
        if getattr(self.balancer, "state_file", None) is self:
            self.balancer.state_file = None
