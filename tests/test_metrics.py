"""Prometheus metrics: scraped after real requests through a LoadBalancer over waitress."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from servers import wait_until
from webtest import TestApp

from zope_lb import LoadBalancer
from zope_lb.metrics import BUCKETS, Metrics, MetricsObserver, status_class

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def scrape(metrics: Metrics, accept: str = "") -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of one scrape, through prometheus' own parser."""
    content_type, body = metrics.render(accept)
    assert content_type.startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples, name: str, **labels: str) -> float:
    """Sum over the series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture
def lb(backends):
    balancer = LoadBalancer([f"{b.address} id=c{i}" for i, b in enumerate(backends[:2])],
                            health_interval=0, strategy="round_robin")
    balancer.metrics = Metrics(balancer)
    balancer.set_observer(balancer.metrics.observer)
    yield balancer
    balancer.metrics.close()
    balancer.close()


def test_requests_by_backend_and_status_class_and_latency(lb):
    app = TestApp(lb)
    for _ in range(4):
        app.get("/echo")
    for _ in range(2):
        app.get("/status?code=404", status=404)
    app.get("/redirect", status=302)
    samples = scrape(lb.metrics)
    counted = {(b, c): value(samples, "zope_lb_requests_total", pool="default", backend=b,
                             code=c) for b in ("c0", "c1") for c in ("2xx", "3xx", "4xx")}
    assert sum(v or 0 for v in counted.values()) == 7
    assert counted[("c0", "2xx")] == 2 and counted[("c1", "2xx")] == 2
    assert counted[("c0", "4xx")] == 1 and counted[("c1", "4xx")] == 1
    assert (counted[("c0", "3xx")] or 0) + (counted[("c1", "3xx")] or 0) == 1
    for backend in ("c0", "c1"):
        count = value(samples, "zope_lb_request_duration_seconds_count", pool="default",
                      backend=backend)
        assert count in (3, 4)
        assert value(samples, "zope_lb_request_duration_seconds_bucket", pool="default",
                     backend=backend, le="+Inf") == count
        assert value(samples, "zope_lb_request_duration_seconds_bucket", pool="default",
                     backend=backend, le="300.0") == count
        assert 0 < value(samples, "zope_lb_request_duration_seconds_sum", pool="default",
                         backend=backend) < 5


def test_gauges_up_state_active_queued(backends):
    balancer = LoadBalancer([f"{backends[0].address} id=c0 maxconn=1",
                             f"{backends[1].address} id=c1 maxconn=1 backup"],
                            health_interval=0, strategy="first")
    metrics = Metrics(balancer)
    balancer.set_observer(metrics.observer)
    app = TestApp(balancer)
    answers = []
    slow = [threading.Thread(target=lambda: answers.append(app.get("/slow?s=1.5").status_int))
            for _ in range(2)]
    try:
        for thread in slow:
            thread.start()
        assert wait_until(lambda: balancer.pool.queued == 1, timeout=5)
        samples = scrape(metrics)
        assert value(samples, "zope_lb_backend_active", pool="default", backend="c0") == 1
        assert value(samples, "zope_lb_backend_active", pool="default", backend="c1") == 0
        assert value(samples, "zope_lb_queued", pool="default") == 1
        assert value(samples, "zope_lb_backend_maxconn", pool="default", backend="c0") == 1
        assert value(samples, "zope_lb_backend_up", pool="default", backend="c0") == 1
        assert value(samples, "zope_lb_backend_info", pool="default", backend="c1",
                     address=backends[1].address, role="backup") == 1
        for thread in slow:
            thread.join(10)
        assert answers == [200, 200]

        balancer.backend_action("c1", "disable")
        samples = scrape(metrics)
        assert value(samples, "zope_lb_backend_active", pool="default", backend="c0") == 0
        assert value(samples, "zope_lb_queued", pool="default") == 0
        assert value(samples, "zope_lb_backend_up", pool="default", backend="c1") == 0
        states = {s: value(samples, "zope_lb_backend_state", pool="default", backend="c1",
                           state=s) for s in ("up", "down", "draining", "disabled")}
        assert states == {"up": 0, "down": 0, "draining": 0, "disabled": 1}
    finally:
        metrics.close()
        balancer.close()


def test_retries_and_unavailable_are_counted(lb, backends):
    app = TestApp(lb)
    backends[0].stop()
    for _ in range(2):  # round robin: one of them tries c0 first, then c1
        assert app.get("/echo").headers["X-Backend"] == "b1"
    samples = scrape(lb.metrics)
    assert value(samples, "zope_lb_retries_total", pool="default", backend="c0") == 1
    assert value(samples, "zope_lb_requests_total", pool="default", backend="c0",
                 code="5xx") == 1
    assert value(samples, "zope_lb_requests_total", pool="default", backend="c1",
                 code="2xx") == 2
    backends[1].stop()
    app.get("/echo", status=503)
    samples = scrape(lb.metrics)
    assert total(samples, "zope_lb_unavailable_total", pool="default") == 1
    assert value(samples, "zope_lb_unavailable_total", pool="default",
                 reason="no_backend") == 1


def test_queue_timeout_is_counted(backend):
    balancer = LoadBalancer([f"{backend.address} id=solo maxconn=1"], health_interval=0,
                            queue_timeout=0.2)
    metrics = Metrics(balancer)
    balancer.set_observer(metrics.observer)
    app = TestApp(balancer)
    holder = threading.Thread(target=lambda: app.get("/slow?s=1"))
    try:
        holder.start()
        assert wait_until(lambda: balancer.pool.backends[0].active == 1, timeout=5)
        app.get("/echo", status=503)
        holder.join(10)
        samples = scrape(metrics)
        assert value(samples, "zope_lb_unavailable_total", pool="default",
                     reason="queue_timeout") == 1
    finally:
        metrics.close()
        balancer.close()


def test_failed_health_probes_are_counted_also_for_backends_added_later(backends):
    balancer = LoadBalancer([f"{backends[0].address} id=c0", f"{backends[1].address} id=c1"],
                            health_interval=0.1, health_fall=100)
    metrics = balancer.metrics
    try:
        backends[1].stop()

        def failures(backend: str) -> float:
            return value(scrape(metrics), "zope_lb_health_probe_failures_total",
                         pool="default", backend=backend) or 0

        assert wait_until(lambda: failures("c1") >= 2, timeout=10)
        assert failures("c0") == 0
        balancer.apply({"backends": f"{backends[0].address} id=c0\n"
                                    f"{backends[1].address} id=c1\n127.0.0.1:9 id=gone"})
        assert wait_until(lambda: failures("gone") >= 2, timeout=10)
    finally:
        metrics.close()
        balancer.close()


def test_openmetrics_when_asked(lb):
    TestApp(lb).get("/echo")
    content_type, body = lb.metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_status_class():
    assert [status_class(s) for s in (101, 204, 304, 499, 502)] == [
        "1xx", "2xx", "3xx", "4xx", "5xx"]


# -- several processes ------------------------------------------------------------------

WORKER = r"""
import sys
import threading
import time
from webtest import TestApp
from zope_lb import LoadBalancer
from zope_lb.metrics import Metrics

addresses, count = sys.argv[1].split(","), int(sys.argv[2])
balancer = LoadBalancer([f"{a} id=c{i}" for i, a in enumerate(addresses)], health_interval=0)
metrics = Metrics(balancer)
balancer.set_observer(metrics.observer)
app = TestApp(balancer)
for _ in range(count):
    app.get("/echo")
print("READY", flush=True)
for line in sys.stdin:
    if line.strip() == "render":
        sys.stdout.write(metrics.render()[1].decode() + "END\n")
        sys.stdout.flush()
    elif line.strip() == "hold":  # one request in flight until the process ends
        threading.Thread(target=lambda: app.get("/slow?s=6"), daemon=True).start()
        while not any(b.active for b in balancer.pool.backends):
            time.sleep(0.01)
        time.sleep(1.2)  # the publisher copied it
        print("HELD", flush=True)
    else:
        break
metrics.close()
balancer.close()
"""


class Worker:
    """A process with its own balancer and metrics, sharing PROMETHEUS_MULTIPROC_DIR."""

    def __init__(self, directory: str, addresses: str, requests: int):
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, addresses, str(requests)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        assert self._line(20) == "READY"

    def _line(self, timeout: float) -> str:
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(timeout)
        assert found, "worker did not answer in time"
        return found[0].rstrip("\n")

    def render(self) -> dict[tuple[str, frozenset], float]:
        self.proc.stdin.write("render\n")
        self.proc.stdin.flush()
        lines = []
        while (line := self._line(10)) != "END":
            lines.append(line)
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families("\n".join(lines) + "\n")
                for s in family.samples}

    def hold(self) -> None:
        self.proc.stdin.write("hold\n")
        self.proc.stdin.flush()
        assert self._line(10) == "HELD"

    def quit(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.mark.slow
def test_multiprocess_mode_sums_counters_and_keeps_gauges_per_process(tmp_path, backends):
    addresses = f"{backends[0].address},{backends[1].address}"
    first = Worker(str(tmp_path), addresses, 3)
    second = None
    try:
        second = Worker(str(tmp_path), addresses, 4)
        time.sleep(0.1)
        samples = second.render()  # one scrape of one process sees both
        assert total(samples, "zope_lb_requests_total", code="2xx") == 7
        assert total(samples, "zope_lb_request_duration_seconds_count") == 7
        pids = {dict(ls).get("pid") for (n, ls) in samples if n == "zope_lb_backend_up"}
        assert pids == {str(first.proc.pid), str(second.proc.pid)}
        # active and queued are summed over the live processes: one series each
        assert total(samples, "zope_lb_backend_active") == 0
        assert value(samples, "zope_lb_queued", pool="default") == 0
        first.hold()
        second.hold()
        samples = second.render()
        assert total(samples, "zope_lb_backend_active") == 2
        assert all("pid" not in dict(ls) for (n, ls) in samples if n == "zope_lb_backend_active")

        first.quit()
        samples = second.render()
        assert total(samples, "zope_lb_requests_total") == 7  # what it counted stays
        pids = {dict(ls).get("pid") for (n, ls) in samples if n == "zope_lb_backend_up"}
        assert pids == {str(second.proc.pid)}  # its gauges went with it
    finally:
        first.quit()
        if second is not None:
            second.quit()


# -- the observer's cells against prometheus-client's own calls ---------------------------

OBSERVATIONS = st.lists(st.tuples(
    st.sampled_from(["default", "api"]), st.sampled_from(["c0", "c1"]),
    st.sampled_from([200, 204, 302, 404, 500, 502, 504]),
    st.one_of(st.sampled_from(list(BUCKETS[:-1])),  # exactly on a bound: that bucket
              st.floats(min_value=0, max_value=400, allow_nan=False))), max_size=40)


@settings(max_examples=60, deadline=None)
@given(OBSERVATIONS)
def test_the_observer_counts_exactly_as_inc_and_observe(observations):
    """``MetricsObserver.request`` increments prometheus-client's value cells
    itself; the exposition must be what ``Counter.inc`` and
    ``Histogram.observe`` make of the same attempts, bucket by bucket."""
    mine, theirs = CollectorRegistry(), CollectorRegistry()

    def family(registry):
        return (Counter("zope_lb_requests", "r", ("pool", "backend", "code"), registry=registry),
                Histogram("zope_lb_request_duration_seconds", "d", ("pool", "backend"),
                          buckets=BUCKETS, registry=registry))

    requests, latency = family(mine)
    observer = MetricsObserver(requests, latency, *[Counter(f"x{i}", "x", registry=None)
                                                   for i in range(3)])
    public_requests, public_latency = family(theirs)
    for pool, backend, status, seconds in observations:
        observer.request(pool, backend, status, seconds)
        public_requests.labels(pool, backend, status_class(status)).inc()
        public_latency.labels(pool, backend).observe(seconds)

    def samples(registry):
        return {(s.name, frozenset(s.labels.items())): s.value
                for metric in registry.collect() for s in metric.samples
                if not s.name.endswith("_created")}

    assert samples(mine) == samples(theirs)


def test_without_the_cells_the_observer_uses_the_public_calls():
    """A prometheus-client whose children keep their values elsewhere still counts."""
    calls = []

    class Child:
        def __init__(self, labels):
            self.labels_ = labels

        def inc(self, amount=1):
            calls.append(("inc", self.labels_, amount))

        def observe(self, amount):
            calls.append(("observe", self.labels_, amount))

    class Family:
        def labels(self, *values):
            return Child(values)

    observer = MetricsObserver(Family(), Family(), Family(), Family(), Family())
    observer.request("default", "c0", 503, 0.25)
    observer.request("default", "c0", 503, 1.5)
    assert calls == [("inc", ("default", "c0", "5xx"), 1),
                     ("observe", ("default", "c0"), 0.25),
                     ("inc", ("default", "c0", "5xx"), 1),
                     ("observe", ("default", "c0"), 1.5)]
