"""Prometheus metrics of the sidecar: what the proxy records, and its exposition.

How this works.  ``request_done`` runs once per proxied request, so it only
bumps plain Python numbers held in a small ``__slots__`` object found in a dict
keyed by the raw ``(listener, service, status)`` tuple.  Those numbers are
moved into prometheus-client's metric objects by ``flush()``, which only ever
*reads* the hot fields and adds the difference since the last flush; that makes
it safe to flush from another thread (the admin server renders in one) while
the event loop keeps counting.  ``render()`` flushes first, so a scrape of the
process that renders is always exact.

Two modes, chosen when ``ProxyMetrics`` is built:

* single process (default): the metric objects live in a private
  ``CollectorRegistry`` (never the global default, so tests can make several),
  together with the standard ``process_*`` memory/CPU collector.
* multi-process: when ``PROMETHEUS_MULTIPROC_DIR`` is set, prometheus-client's
  multiprocess mode stores every value in per-process mmap files in that
  directory, and ``render()`` merges all of them with ``MultiProcessCollector``,
  so one scrape shows the sum over workers.  Gauges use ``livesum`` (a dead
  worker's connections vanish once ``mark_worker_dead`` is called for it).
  Memory, CPU and open fds come as ``meshproxy_processes_*`` sums over the
  live processes (workers and whoever renders), refreshed at each flush,
  instead of the per-process ``process_*`` families.
  Each worker must build its own ``ProxyMetrics`` after the fork and call
  ``flush_periodically`` so that workers which are not scraped still publish.

Label values are bounded: ``service`` is a declared service name or
``unknown``, ``code`` the numeric status (``0`` when there is none, e.g. the
client went away before a response); listener names come from the bootstrap.

What this room must not do: read clocks (durations come in measured), do I/O
on the request path, or let request data mint new label values.
"""

from __future__ import annotations

import asyncio
import os
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from meshproxy import __version__
from meshproxy.fastpath import IMPLEMENTATION

__all__ = [
    "DURATION_BUCKETS",
    "MULTIPROC_ENV",
    "UNKNOWN_SERVICE",
    "ProxyMetrics",
    "mark_worker_dead",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN_SERVICE = "unknown"
NO_STATUS = "0"

# From a loopback hop (sub-millisecond) to the longest timeout worth telling apart.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_UPPER_BOUNDS: tuple[float, ...] = (*DURATION_BUCKETS, float("inf"))

# What each process publishes about itself in multi-process mode, summed over live ones.
_PROCESS_FIGURES: tuple[tuple[str, str, str], ...] = (
    (
        "process_resident_memory_bytes",
        "meshproxy_processes_resident_memory_bytes",
        "Resident memory of all live sidecar processes, in bytes.",
    ),
    (
        "process_cpu_seconds",
        "meshproxy_processes_cpu_seconds",
        "CPU time of all live sidecar processes, in seconds (drops when one exits).",
    ),
    (
        "process_open_fds",
        "meshproxy_processes_open_fds",
        "Open file descriptors of all live sidecar processes.",
    ),
)

# Before services are declared, names are taken as given up to this many, so a
# proxy that forgets to declare them still cannot grow the label set forever.
MAX_UNDECLARED_SERVICES = 256
# The hot-path cache is keyed by raw input; past this size it starts afresh.
MAX_CACHED_KEYS = 4096


class _Durations:
    """Running histogram of one (listener, service); written by the event loop only."""

    __slots__ = ("buckets", "child", "flushed_buckets", "flushed_sum", "sum")

    def __init__(self, child: Histogram) -> None:
        self.sum = 0.0
        self.buckets = [0] * len(_UPPER_BOUNDS)
        self.flushed_sum = 0.0
        self.flushed_buckets = [0] * len(_UPPER_BOUNDS)
        self.child = child


class _Requests:
    """Running request count of one (listener, service, code)."""

    __slots__ = ("child", "count", "durations", "flushed")

    def __init__(self, child: Counter, durations: _Durations) -> None:
        self.count = 0
        self.flushed = 0
        self.child = child
        self.durations = durations


class ProxyMetrics:
    """The sidecar's metric families; one per process (per worker)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        services: Iterable[str] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiproc_dir = os.environ.get(MULTIPROC_ENV) or None
        _use_value_store(multiprocess=self.multiproc_dir is not None)
        self._services: frozenset[str] | None = None
        self._undeclared: set[str] = set()
        self._by_input: dict[tuple[str, str, int], _Requests] = {}
        self._by_labels: dict[tuple[str, str, str], _Requests] = {}
        self._durations: dict[tuple[str, str], _Durations] = {}
        self._flush_lock = threading.Lock()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._config_version: str | None = None

        self._requests = Counter(
            "meshproxy_requests",
            "Requests proxied, by listener, target service and response status.",
            ["listener", "service", "code"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "meshproxy_request_duration_seconds",
            "Time from the request head to the end of the response, in seconds.",
            ["listener", "service"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._connections = Gauge(
            "meshproxy_active_connections",
            "Downstream connections open now.",
            ["listener"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._connection_children: dict[str, Gauge] = {}
        # An info metric as a gauge of 1: prometheus-client's Info has no multiprocess mode.
        info = Gauge(
            "meshproxy_info",
            "Build of this sidecar: version and fast-path implementation (cython/python).",
            ["version", "implementation"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        info.labels(__version__, IMPLEMENTATION).set(1)
        self._config_info = Gauge(
            "meshproxy_config_version",
            "Config snapshot in force (1) by version; in multi-process mode, 1 while any "
            "live worker runs it.",
            ["version"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        # Memory and CPU: the standard process_* families in single mode; with
        # workers, each publishes its own figures at flush into livesum gauges.
        self._process = ProcessCollector(registry=None)
        self._process_gauges: dict[str, Gauge] = {}
        if self.multiproc_dir is None:
            self.registry.register(self._process)
        else:
            for source, name, doc in _PROCESS_FIGURES:
                self._process_gauges[source] = Gauge(
                    name, doc, registry=self.registry, multiprocess_mode="livesum"
                )
        if services is not None:
            self.set_services(services)

    # -- hot path ---------------------------------------------------------------

    def request_done(self, listener: str, service: str, status: int, duration_s: float) -> None:
        """Count one finished request; ``duration_s`` is non-negative, measured by the caller."""
        try:
            series = self._by_input[(listener, service, status)]
        except KeyError:
            series = self._series_for(listener, service, status)
        series.count += 1
        durations = series.durations
        durations.sum += duration_s
        durations.buckets[bisect_left(_UPPER_BOUNDS, duration_s)] += 1

    def connection_opened(self, listener: str) -> None:
        self._connection_gauge(listener).inc()

    def connection_closed(self, listener: str) -> None:
        self._connection_gauge(listener).dec()

    # -- config -----------------------------------------------------------------

    def set_services(self, names: Iterable[str]) -> None:
        """Declare the service names that may appear as labels; others count as ``unknown``."""
        self._services = frozenset(names)
        # Cached keys may now resolve to other labels; the counted data stays in _by_labels.
        self._by_input = {}

    def config_loaded(self, version: str) -> None:
        """Mark ``version`` as the snapshot in force, replacing the previous one."""
        previous, self._config_version = self._config_version, version
        if previous == version:
            return
        if previous is not None:
            if self.multiproc_dir is None:
                self._config_info.remove(previous)
            else:
                # Labels cannot be removed from the mmap files; render() hides the zeros.
                self._config_info.labels(previous).set(0)
        self._config_info.labels(version).set(1)

    # -- exposition ---------------------------------------------------------------

    def flush(self) -> None:
        """Publish what the hot path counted since the last flush; safe from any thread."""
        with self._flush_lock:
            for series in list(self._by_labels.values()):
                count = series.count
                if count != series.flushed:
                    series.child.inc(count - series.flushed)
                    series.flushed = count
            for durations in list(self._durations.values()):
                _flush_durations(durations)
            if self._process_gauges:
                for family in self._process.collect():
                    gauge = self._process_gauges.get(family.name)
                    if gauge is not None and family.samples:
                        gauge.set(family.samples[0].value)

    def render(self) -> tuple[bytes, str]:
        """Exposition text of this process, or in multi-process mode of every worker."""
        self.flush()
        if self.multiproc_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry()
        collector = MultiProcessCollector(None, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        merged.register(_HideRetiredConfigs(collector))
        return generate_latest(merged), CONTENT_TYPE_LATEST

    def flush_periodically(self, loop: asyncio.AbstractEventLoop, interval_s: float = 1.0) -> None:
        """Flush every ``interval_s`` on ``loop`` until ``close()``; what workers need."""
        self.stop_flushing()

        def tick() -> None:
            self.flush()
            self._flush_timer = loop.call_later(interval_s, tick)

        self._flush_timer = loop.call_later(interval_s, tick)

    def stop_flushing(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    def close(self) -> None:
        """Final flush; in multi-process mode also close this process's mmap files.

        After ``close()`` in multi-process mode no metric of this process may be
        written again (the files are shared by every metric of the process).
        """
        self.stop_flushing()
        self.flush()
        if self.multiproc_dir is not None:
            values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]

    # -- slow paths ---------------------------------------------------------------

    def _series_for(self, listener: str, service: str, status: int) -> _Requests:
        labels = (listener, self._bounded_service(service), _code_label(status))
        series = self._by_labels.get(labels)
        if series is None:
            durations = self._durations.get(labels[:2])
            if durations is None:
                durations = _Durations(self._duration.labels(labels[0], labels[1]))
                self._durations[labels[:2]] = durations
            series = _Requests(self._requests.labels(*labels), durations)
            self._by_labels[labels] = series
        if len(self._by_input) >= MAX_CACHED_KEYS:
            self._by_input = {}
        self._by_input[(listener, service, status)] = series
        return series

    def _bounded_service(self, service: str) -> str:
        if self._services is not None:
            return service if service in self._services else UNKNOWN_SERVICE
        if service in self._undeclared:
            return service
        if len(self._undeclared) < MAX_UNDECLARED_SERVICES:
            self._undeclared.add(service)
            return service
        return UNKNOWN_SERVICE

    def _connection_gauge(self, listener: str) -> Gauge:
        child = self._connection_children.get(listener)
        if child is None:
            child = self._connections.labels(listener)
            self._connection_children[listener] = child
        return child


def mark_worker_dead(pid: int, multiproc_dir: str | None = None) -> None:
    """Drop a dead worker's live gauges (its open connections) from multi-process scrapes."""
    mark_process_dead(pid, multiproc_dir or os.environ.get(MULTIPROC_ENV))  # type: ignore[no-untyped-call]


def _code_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else NO_STATUS


def _flush_durations(durations: _Durations) -> None:
    total = durations.sum
    if total == durations.flushed_sum and durations.buckets == durations.flushed_buckets:
        return
    child: Any = durations.child
    # Histogram has no public "add n to bucket i"; _sum and _buckets (one value per
    # bucket, not cumulative) have been its layout for years, and the unit tests pin
    # the rendered buckets, so a change in prometheus-client shows up there.
    child._sum.inc(total - durations.flushed_sum)
    durations.flushed_sum = total
    flushed = durations.flushed_buckets
    for i, count in enumerate(list(durations.buckets)):
        if count != flushed[i]:
            child._buckets[i].inc(count - flushed[i])
            flushed[i] = count


def _use_value_store(*, multiprocess: bool) -> None:
    """Make prometheus-client store values per process (mmap) or in memory, as asked.

    prometheus-client picks its value store from the environment once, when it
    is first imported; the runtime may import it before it sets the variable and
    forks, so the choice is made again here, before any metric is built.
    """
    current: Any = values.ValueClass
    if bool(getattr(current, "_multiprocess", False)) != multiprocess:
        values.ValueClass = (
            values.MultiProcessValue() if multiprocess else values.MutexValue  # type: ignore[no-untyped-call]
        )


class _HideRetiredConfigs:
    """Drops the zero samples that retired config versions leave in the mmap files."""

    def __init__(self, inner: MultiProcessCollector) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():  # type: ignore[no-untyped-call]
            if metric.name == "meshproxy_config_version":
                metric.samples = [s for s in metric.samples if s.value != 0]
            yield metric
