"""Keep the balancer's process on one CPU core.

A Python process runs its Python code on one core at a time (the GIL), so a
threaded balancer gains nothing from a second core. It loses a lot: when its
threads float across cores, every hand-over of the GIL wakes a thread on the
other core, and the same requests cost two to three times the CPU (measured in
``benchmarks/``). ``zope-lb serve`` therefore confines itself to one of the
cores it may use, unless told otherwise; run one process per core for more.
"""

from __future__ import annotations

import logging
import os
import re

from .errors import ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
ALL = "all"


def parse_cpu(text: str) -> str | int:
    """``auto``, ``all`` or a core number, from the command line."""
    value = text.strip().lower()
    if value in (AUTO, ALL):
        return value
    if re.fullmatch(r"[0-9]{1,5}", value, re.ASCII):  # isdigit() takes "٣" too
        return int(value)
    raise ConfigError("--cpu", text, "must be auto, all or a core number such as 0")


def choose_cpu(allowed: set[int], pid: int) -> int:
    """The core ``auto`` takes: one of the allowed ones, chosen by process id, so
    that several balancers started side by side tend to spread over the cores."""
    cores = sorted(allowed)
    return cores[pid % len(cores)]


def confine(spec: str | int) -> int | None:
    """Apply ``spec`` to this process; return the core it now runs on, or None
    when it stays as it was (``all``, a single allowed core, or a platform
    without CPU affinity). A core outside the allowed set is a ConfigError."""
    if spec == ALL or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    if isinstance(spec, int):
        if spec not in allowed:
            cores = ",".join(str(c) for c in sorted(allowed))
            raise ConfigError("--cpu", spec, f"this process may only use cores {cores}")
        cpu = spec
    elif len(allowed) < 2:
        return None
    else:
        cpu = choose_cpu(allowed, os.getpid())
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # a sandbox that forbids it: float, as before
        if isinstance(spec, int):
            raise ConfigError("--cpu", spec, f"cannot move this process there: {exc}") from exc
        log.warning("cannot keep zope-lb on one CPU core (%s); it floats", exc)
        return None
    return cpu
