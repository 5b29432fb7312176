"""zope-lb serve keeps the balancer on one CPU core (--cpu)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
from servers import free_port
from test_paste import run_and_query, serve_once, write_ini

from zope_lb import ConfigError
from zope_lb.affinity import choose_cpu, confine, parse_cpu


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), (" ALL ", "all"), ("3", 3)])
def test_cpu_values(text, value):
    assert parse_cpu(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5", "half", "0-1"])
def test_bad_cpu_values_name_the_rule(text):
    with pytest.raises(ConfigError, match="must be auto, all or a core number"):
        parse_cpu(text)


def test_auto_takes_an_allowed_core_and_spreads_by_process():
    allowed = {2, 5, 7}
    chosen = [choose_cpu(allowed, pid) for pid in range(100, 106)]
    assert set(chosen) == allowed
    assert choose_cpu({4}, 12345) == 4


def thread_cores(pid: int) -> set[frozenset[int]]:
    """The CPU set of each of the process's threads (Linux /proc)."""
    sets = set()
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        with open(status) as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    sets.add(frozenset(expand(line.split(":", 1)[1].strip())))
    return sets


def expand(cpu_list: str) -> set[int]:
    cores: set[int] = set()
    for part in cpu_list.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                                reason="reads thread CPU sets from Linux /proc")


@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["auto", "all"])
def test_serve_keeps_every_thread_on_one_core_unless_told(tmp_path, backends, cpu):
    allowed = os.sched_getaffinity(0)
    port = free_port()
    ini = write_ini(tmp_path, backends[:2], port)
    seen: list[set[frozenset[int]]] = []

    def record(proc: subprocess.Popen) -> None:
        seen.append(thread_cores(proc.pid))

    run_and_query([sys.executable, "-m", "zope_lb.cli", "serve", ini, "--cpu", cpu],
                  port, backends[:2], record)
    (cores,) = seen
    # waitress's workers and the health checker included: every thread alike
    assert len(cores) == 1, cores
    (one,) = cores
    if cpu == "all" or len(allowed) == 1:
        assert one == allowed
    else:
        assert len(one) == 1 and one <= allowed


@pytest.mark.slow
def test_serve_refuses_a_core_it_may_not_use(tmp_path):
    ini = write_ini(tmp_path, [], free_port())
    result = serve_once(ini, "--cpu", "4096")
    assert result.returncode == 2
    assert "--cpu 4096: this process may only use cores" in result.stderr
    assert "Traceback" not in result.stderr


def test_auto_floats_with_a_warning_where_affinity_is_forbidden(monkeypatch, caplog):
    def forbidden(pid, cpus):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "sched_setaffinity", forbidden, raising=False)
    assert confine("auto") is None
    assert "cannot keep zope-lb on one CPU core" in caplog.text
    with pytest.raises(ConfigError, match="--cpu 1: cannot move this process there"):
        confine(1)
