"""Prometheus metrics: what the balancer did (counters) and what it is (gauges).

Two sources, kept apart because they cost differently:

- **Events** (requests by backend and status class, latency, retries, requests
  no backend could take, failed health probes) are counted as they happen, by
  :class:`MetricsObserver`, which ``LoadBalancer.set_observer`` puts on the
  request path. It costs one dict lookup and three increments of
  prometheus-client's value cells per attempt (``benchmarks/metrics_cost.py``
  measures it).
- **State** (up, state, active, queued, weight, maxconn) is read from the pools
  only when Prometheus scrapes: nothing on the request path.

Several worker processes (gunicorn ``--paste`` workers, several waitress
processes): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory, the same
for every process, *before* they start (prometheus-client picks its storage
when it is imported). Then counters and histograms live in memory-mapped files
there and a scrape of any one process sums them all
(``MultiProcessCollector``). A process cannot read another's pools, so each
one copies its state into that directory every second (a daemon thread;
``render`` refreshes its own first): ``active`` and ``queued`` are summed over
live processes (``livesum``); ``up``, ``state``, ``weight``, ``maxconn`` and
``info`` stay per process, with a ``pid`` label (``liveall``), since each
process runs its own health checks and may briefly disagree. A process that
ends calls ``mark_process_dead`` in ``close()``; under gunicorn also add
``child_exit = lambda server, worker: multiprocess.mark_process_dead(worker.pid)``
to its config for workers that are killed, and empty the directory when the
service starts (``ExecStartPre=`` in systemd). Do not use gunicorn
``--preload``: threads started before the fork (health checks, this publisher)
do not survive it.

Metric names and labels:

============================================  =====================================
``zope_lb_requests_total``                    pool, backend, code (``2xx``...)
``zope_lb_request_duration_seconds``          pool, backend (histogram)
``zope_lb_retries_total``                     pool, backend (the one that failed)
``zope_lb_unavailable_total``                 pool, reason (``no_backend``,
                                              ``queue_full``, ``queue_timeout``,
                                              ``shutdown``, ``other``)
``zope_lb_health_probe_failures_total``       pool, backend
``zope_lb_backend_up``                        pool, backend
``zope_lb_backend_state``                     pool, backend, state (1 for the current)
``zope_lb_backend_active``                    pool, backend
``zope_lb_backend_weight``, ``_maxconn``      pool, backend
``zope_lb_backend_info``                      pool, backend, address, role
``zope_lb_queued``                            pool (the wait queue is per pool)
============================================  =====================================
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "zope_lb"

#: Latency buckets for Zope: cached pages in milliseconds, cold catalog queries
#: and big PDF renderings in tens of seconds; ``timeout.read`` defaults to 300 s.
INF = float("inf")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           120.0, 300.0, INF)

STATES = ("up", "down", "draining", "disabled")

#: Gauges read from the pools: name -> (help, label names, multiprocess mode).
GAUGES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "backend_up": ("1 if the backend takes requests (state up), else 0.",
                   ("pool", "backend"), "liveall"),
    "backend_state": ("1 for the backend's current state, 0 for the others.",
                      ("pool", "backend", "state"), "liveall"),
    "backend_active": ("Requests the backend is answering now (slots in use).",
                       ("pool", "backend"), "livesum"),
    "backend_weight": ("The backend's current weight (ramps up during slow start).",
                       ("pool", "backend"), "liveall"),
    "backend_maxconn": ("The backend's slots (maxconn); 0 means unlimited.",
                        ("pool", "backend"), "liveall"),
    "backend_info": ("Always 1; the backend's address and role as labels.",
                     ("pool", "backend", "address", "role"), "liveall"),
    "queued": ("Requests waiting in the pool's queue for a free slot.",
               ("pool",), "livesum"),
}

#: Seconds between two copies of this process's gauges in multiprocess mode.
PUBLISH_INTERVAL = 1.0


def multiprocess_dir() -> str:
    """The directory prometheus-client shares between processes, or '' if none.

    prometheus-client chose its storage when it was imported: a directory set
    after that is not used, and saying so beats serving one process's numbers.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if path and not getattr(values.ValueClass, "_multiprocess", False):
        log.warning("PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported: "
                    "metrics are of this process only; set it before the process starts")
        return ""
    return path


def status_class(status: int) -> str:
    """``2xx`` for 204: the label stays bounded whatever a backend answers."""
    return f"{status // 100}xx"


def gauge_values(pools: Iterable[Any]) -> dict[str, dict[tuple[str, ...], float]]:
    """Every gauge of :data:`GAUGES` for these pools: name -> {label values: value}.

    Reads only public attributes, without locks: a scrape may see a count one
    request old, which a gauge can afford.
    """
    values: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in GAUGES}
    for pool in pools:
        values["queued"][(pool.name,)] = pool.queued
        for b in pool.backends:
            key = (pool.name, b.id)
            state = b.state.value
            values["backend_up"][key] = 1.0 if state == "up" else 0.0
            for name in STATES:
                values["backend_state"][key + (name,)] = 1.0 if name == state else 0.0
            values["backend_active"][key] = b.active
            values["backend_weight"][key] = b.weight
            values["backend_maxconn"][key] = b.maxconn
            role = "backup" if b.backup else "primary"
            values["backend_info"][key + (b.address, role)] = 1.0
    return values


class PoolCollector(Collector):
    """The gauges, read from the balancer's pools at scrape time (one process)."""

    def __init__(self, balancer: Any):
        self._balancer = balancer

    def collect(self) -> Iterator[Metric]:
        for name, samples in gauge_values(self._balancer.pools).items():
            doc, labels, _ = GAUGES[name]
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            for label_values, value in samples.items():
                family.add_metric(label_values, value)
            yield family


class MetricsObserver:
    """The ``RequestObserver`` that counts; it runs on every proxied attempt.

    Label children are looked up once per (pool, backend, status) and kept,
    with the value cells under them: a request costs a dict hit and three
    increments (the counter, the histogram's sum and its one bucket): 11,000
    instructions, where ``Counter.inc`` and ``Histogram.observe`` took 16,000;
    ``tests/test_metrics.py`` holds the two ways to one exposition. Should a
    prometheus-client release not have these cells, the public calls are used.
    """

    __slots__ = ("_requests", "_latency", "_retries", "_unavailable", "_probe_failures",
                 "_children")

    def __init__(self, requests: Counter, latency: Histogram, retries: Counter,
                 unavailable: Counter, probe_failures: Counter):
        self._requests = requests
        self._latency = latency
        self._retries = retries
        self._unavailable = unavailable
        self._probe_failures = probe_failures
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    def request(self, pool: str, backend: str, status: int, seconds: float) -> None:
        try:
            count, total, buckets, bounds = self._children[(pool, backend, status)]
        except KeyError:
            count, total, buckets, bounds = self._add(pool, backend, status)
        count.inc(1)
        total.inc(seconds)
        # the first bucket whose upper bound is >= seconds, as Histogram.observe
        buckets[bisect_left(bounds, seconds)].inc(1)

    def _add(self, pool: str, backend: str, status: int) -> tuple[Any, Any, Any, Any]:
        # A race here only builds the same cells twice: .labels() returns one child.
        counter = self._requests.labels(pool, backend, status_class(status))
        histogram = self._latency.labels(pool, backend)
        try:
            cells = (counter._value, histogram._sum, histogram._buckets,
                     tuple(histogram._upper_bounds))
            if len(cells[2]) != len(cells[3]) or cells[3][-1] != INF:
                raise AttributeError("buckets")
        except AttributeError:
            cells = (_Cell(counter.inc), _Cell(histogram.observe), [_NO_CELL], (INF,))
        self._children[(pool, backend, status)] = cells
        return cells

    def retry(self, pool: str, backend: str) -> None:
        self._retries.labels(pool, backend).inc()

    def unavailable(self, pool: str, kind: str) -> None:
        self._unavailable.labels(pool, kind).inc()

    def probe(self, pool: str, backend: str, passed: bool) -> None:
        if not passed:
            self._probe_failures.labels(pool, backend).inc()


class _Cell:
    """A public call behind a value cell's ``inc``, for a prometheus-client whose
    children keep no cells: ``Counter.inc``, or ``Histogram.observe`` as the sum's
    (which then does the buckets too; its one bucket cell does nothing)."""

    __slots__ = ("inc",)

    def __init__(self, inc: Any):
        self.inc = inc


_NO_CELL = _Cell(lambda amount: None)


class Metrics:
    """The balancer's metrics: ``observer`` to install, ``render()`` to serve.

    ``Metrics(balancer)`` keeps its own registry (several balancers in one
    process do not collide); pass ``registry=`` to share one. Probe failures
    reach the observer from the health checker. In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
    set, see the module docstring) a daemon thread publishes this process's
    gauges; ``close()`` stops it.
    """

    def __init__(self, balancer: Any, registry: CollectorRegistry | None = None, *,
                 publish_interval: float = PUBLISH_INTERVAL):
        self.balancer = balancer
        self.multiproc_dir = multiprocess_dir()
        self.registry = registry if registry is not None else CollectorRegistry()
        # Multiprocess: the metric objects write to files, and the registry
        # exposes the merge of every process's files instead of them.
        own = None if self.multiproc_dir else self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Proxied attempts by backend and status "
                                "class (502/504: the balancer's own errors).",
                                ("pool", "backend", "code"), registry=own)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds", "Seconds from sending "
                                 "to a backend until its first body bytes.",
                                 ("pool", "backend"), buckets=BUCKETS, registry=own)
        self.retries = Counter(f"{PREFIX}_retries", "Failed attempts tried again on another "
                               "backend, by the backend that failed.", ("pool", "backend"),
                               registry=own)
        self.unavailable = Counter(f"{PREFIX}_unavailable", "Requests no backend could take "
                                   "(503), by reason; queue_timeout: waited queue.timeout.",
                                   ("pool", "reason"), registry=own)
        self.probe_failures = Counter(f"{PREFIX}_health_probe_failures", "Failed active "
                                      "health probes.", ("pool", "backend"), registry=own)
        self.observer = MetricsObserver(self.requests, self.latency, self.retries,
                                        self.unavailable, self.probe_failures)
        self._gauges: dict[str, Gauge] = {}
        self._published: dict[str, set[tuple[str, ...]]] = {name: set() for name in GAUGES}
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry, path=self.multiproc_dir)
            for name, (doc, labels, mode) in GAUGES.items():
                self._gauges[name] = Gauge(f"{PREFIX}_{name}", doc, labels, registry=None,
                                           multiprocess_mode=mode)  # type: ignore[arg-type]
            self.publish()
            self._thread = threading.Thread(target=self._publish_loop, args=(publish_interval,),
                                            daemon=True, name="zope-lb-metrics")
            self._thread.start()
            atexit.register(self.close)
        else:
            self.registry.register(PoolCollector(balancer))

    # -- exposition ---------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[str, bytes]:
        """(content type, body) for ``GET /metrics``; OpenMetrics if ``accept`` asks."""
        if self.multiproc_dir:
            self.publish()
        encoder, content_type = choose_encoder(accept)
        return content_type, encoder(self.registry)

    def publish(self) -> None:
        """Multiprocess mode: copy this process's gauges into the shared files.

        Series of backends that went away are set to 0: the files cannot forget
        a series until the process ends.
        """
        if not self._gauges:
            return
        values = gauge_values(self.balancer.pools)
        with self._publish_lock:
            for name, samples in values.items():
                gauge = self._gauges[name]
                for label_values, value in samples.items():
                    gauge.labels(*label_values).set(value)
                for gone in self._published[name] - samples.keys():
                    gauge.labels(*gone).set(0)
                self._published[name] = set(samples)

    def _publish_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.publish()
            except Exception:  # a scrape must never take the process down
                log.exception("could not publish the metrics of process %d", os.getpid())

    def close(self) -> None:
        """Stop publishing; in multiprocess mode, drop this process's live gauges."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)

