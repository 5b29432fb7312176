#!/usr/bin/env python
"""Where does zope_lb spend its CPU on a small proxied GET?

Starts two fast backends and zope_lb (waitress), drives it with wrk, and
prints the top functions by own time and by cumulative time.

    python benchmarks/profile_hot_path.py                  # py-spy, 10 s
    python benchmarks/profile_hot_path.py --mode cprofile  # deterministic
    python benchmarks/profile_hot_path.py --app bare       # the reference loop
    python benchmarks/profile_hot_path.py --seconds 20 --top 40 --keep /tmp/prof

py-spy (pip install py-spy; needs ptrace, fine as root) samples every
thread with low overhead, so its percentages are close to the real
distribution. By default only samples holding the GIL count (Python CPU
work); ``--all-samples`` adds threads blocked in send/recv/lock waits.
The last table sums own time per source file: zope_lb vs waitress vs
urllib3 vs http.client.
cProfile (timed with each thread's CPU clock) counts calls exactly but slows
Python code down 2-3x, which inflates small, often-called functions. Both
include waitress's own time.
"""

from __future__ import annotations

import argparse
import collections
import io
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness as h


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--mode",
        choices=("auto", "pyspy", "cprofile"),
        default="auto",
        help="auto = py-spy if installed, else cProfile",
    )
    p.add_argument("--app", choices=("zope_lb", "bare"), default="zope_lb")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--threads", type=int, default=16, help="waitress threads")
    p.add_argument("--strategy", default="round_robin")
    p.add_argument("--lb-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples/s")
    p.add_argument(
        "--all-samples",
        action="store_true",
        help="py-spy: also count threads not holding the GIL (blocked "
        "in send/recv/waits); default counts only GIL holders = CPU work",
    )
    p.add_argument(
        "--pinned",
        action="store_true",
        help="proxy on CPU 0, wrk and backends on CPU 1",
    )
    p.add_argument("--keep", metavar="DIR", help="keep raw profile files here")
    return p.parse_args(argv)


def pyspy_report(raw: Path, top: int) -> str:
    """Aggregate py-spy's collapsed stacks into own / cumulative tables."""
    own: collections.Counter = collections.Counter()
    cum: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        # drop the leading "process"/"thread" frames py-spy may add
        frames = [f for f in frames if not re.match(r"^(process|thread) ", f)]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            cum[f] += n
    if not total:
        return "py-spy recorded no samples (is the proxy busy? try without --gil)"
    by_file: collections.Counter = collections.Counter()
    for frame, n in own.items():
        m = re.match(r"^.* \((.*?)(:\d+)?\)$", short(frame))
        by_file[m.group(1) if m else frame] += n
    out = io.StringIO()
    for title, counter in (
        ("own time", own),
        ("cumulative time", cum),
        ("own time per file", by_file),
    ):
        print(f"\nTop {top} by {title} ({total} samples, % of all samples):", file=out)
        for frame, n in counter.most_common(top):
            print(f"  {100 * n / total:6.2f}%  {short(frame)}", file=out)
    return out.getvalue()


def short(frame: str) -> str:
    """'fn (/long/path/site-packages/pkg/mod.py:12)' -> 'fn (pkg/mod.py:12)'."""
    m = re.match(r"^(.*) \((.*)\)$", frame)
    if not m:
        return frame
    fn, where = m.groups()
    for marker in ("site-packages/", "lib/python3", str(h.REPO) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{fn} ({where})"


def cprofile_report(path: Path, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        print(f"\n===== top {top} by {key} =====", file=out)
        stats.sort_stats(key).print_stats(top)
    return out.getvalue()


def main(argv=None) -> int:
    args = parse_args(argv)
    h.install_signal_handlers()
    mode = args.mode
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if mode == "auto":
        mode = "pyspy" if Path(pyspy).exists() else "cprofile"
    if mode == "pyspy" and not Path(pyspy).exists():
        print(
            "py-spy not found: pip install py-spy, or use --mode cprofile",
            file=sys.stderr,
        )
        return 2
    if args.app == "zope_lb":
        ok, why = h.zope_lb_available()
        if not ok:
            print(f"zope_lb.LoadBalancer not importable: {why}", file=sys.stderr)
            return 2
    pcpu, lcpu = (0, 1) if args.pinned else (None, None)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="zope_lb-prof-"))
    workdir.mkdir(parents=True, exist_ok=True)
    from serve_lb import parse_opts

    opts = {"maxconn": args.connections} | parse_opts(args.lb_opt)
    with h.Procs(workdir) as procs:
        backends = [h.start_backend(procs, f"fast{i}", lcpu) for i in (1, 2)]
        addrs = [f"127.0.0.1:{b.port}" for b in backends]
        extra = ["--app", args.app]
        prof_file = workdir / "cprofile.pstats"
        if mode == "cprofile":
            extra += ["--cprofile", str(prof_file)]
        proxy = h.start_zope_lb(
            procs,
            "proxy",
            addrs,
            args.threads,
            pcpu,
            args.strategy,
            opts if args.app == "zope_lb" else {},
            extra,
        )
        url = f"http://127.0.0.1:{proxy.port}/"
        h.run_wrk(url, 2, args.connections, cpu=lcpu)  # warm up
        print(
            f"profiling {args.app} ({mode}) for {args.seconds:g} s under "
            f"wrk -c{args.connections} ...",
            file=sys.stderr,
        )
        spy = None
        raw = workdir / "pyspy.txt"
        if mode == "pyspy":
            cmd = [
                pyspy,
                "record",
                "--pid",
                str(proxy.pid),
                "--rate",
                str(args.rate),
                "--duration",
                str(max(1, round(args.seconds))),
                "--format",
                "raw",
                "--function",
                "--nonblocking",
                "-o",
                str(raw),
            ]
            if not args.all_samples:
                cmd.append("--gil")
            spy = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            time.sleep(0.5)  # let py-spy attach before the load starts
        try:
            stats = h.measure(proxy, url, args.seconds, args.connections, lcpu)
        finally:
            if spy is not None:
                try:
                    _, err = spy.communicate(timeout=args.seconds + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _, err = spy.communicate()
                if spy.returncode != 0:
                    print(f"py-spy failed: {err}", file=sys.stderr)
        procs.stop(proxy, timeout=30)  # serve_lb writes the cProfile file on SIGTERM
    print(
        f"{args.app}: {stats['rps']:.0f} req/s, "
        f"{stats['cpu_ms_per_1000']:.1f} CPU ms per 1000 requests "
        f"(under {mode}; profiling overhead included)"
    )
    if mode == "pyspy":
        print(pyspy_report(raw, args.top) if raw.exists() else "no py-spy output")
    else:
        print(
            cprofile_report(prof_file, args.top)
            if prof_file.exists()
            else f"no cProfile output (see logs in {workdir})"
        )
    if args.keep:
        print(f"raw files in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
