"""Prometheus metrics of the sidecar: what the proxy records, and its exposition.

How this works.  ``exchange_done`` runs once per proxied request, so it only
bumps plain numbers (the fast path's ``ExchangeCounter``: C counters found in a
dict keyed by the raw label tuple of the exchange).  ``flush()`` moves them into
prometheus-client's metric objects, adding the difference since the last
flush; it only *reads* the hot fields, so it is safe from another thread (the
admin server renders in one) while the event loop keeps counting.
``render()`` flushes first, so a scrape of the process that renders is exact.

The families are named so that Istio users find their way:
``meshproxy_requests_total{direction, source_service, destination_service,
destination_subset, route, response_code, response_flags}`` (flags are
Envoy's short codes), ``meshproxy_request_duration_seconds``,
``meshproxy_request_bytes`` and ``meshproxy_response_bytes`` histograms by
(direction, source, destination, subset).  Circuit-breaker overflows are the
exchanges flagged ``UO``, counted at flush, not on the hot path.  Upstream
state (endpoints by health, ejections, pool connections) is sampled on the
event loop at each periodic flush from a callback the runtime registers
(``watch_upstreams``).

Two modes, chosen when ``ProxyMetrics`` is built:

* single process (default): the metric objects live in a private
  ``CollectorRegistry`` (never the global default, so tests can make several),
  together with the standard ``process_*`` memory/CPU collector.
* multi-process: when ``PROMETHEUS_MULTIPROC_DIR`` is set, prometheus-client's
  multiprocess mode stores every value in per-process mmap files in that
  directory, and ``render()`` merges them with ``MultiProcessCollector``, so
  one scrape shows the sum over workers.  Memory, CPU and open fds come as
  ``meshproxy_processes_*`` sums over the live processes, refreshed at each
  flush.  Each worker builds its own ``ProxyMetrics`` after the fork and calls
  ``flush_periodically`` so that workers which are not scraped still publish.

Label values are bounded: services are declared names or ``unknown``;
subsets, routes and flag sets are capped (``other`` past the cap); codes are
numeric statuses (``0`` when there is none).  What this room must not do: read
clocks (durations come measured), do I/O on the request path, or let request
data mint new label values.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

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
from prometheus_client.multiprocess import MultiProcessCollector

from meshproxy import __version__
from meshproxy import fastpath as fp
from meshproxy.fastpath import IMPLEMENTATION
from meshproxy.observe.exchange import Exchange
from meshproxy.observe.multiproc import (
    MULTIPROC_ENV,
    HideRetiredConfigs,
    mark_worker_dead,
    use_value_store,
)
from meshproxy.observe.series import BoundedLabel, RunningCounter, RunningHistogram
from meshproxy.observe.upstreams import UpstreamGauges, UpstreamView

__all__ = [
    "BYTES_BUCKETS",
    "DURATION_BUCKETS",
    "MULTIPROC_ENV",
    "UNKNOWN_SERVICE",
    "ProxyMetrics",
    "mark_worker_dead",
]

UNKNOWN_SERVICE = "unknown"
NO_STATUS = "0"
DIRECTIONS = frozenset({"outbound", "inbound"})

# From a loopback hop (sub-millisecond) to the longest timeout worth telling apart.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Bodies from empty to 16 MiB, by powers of 4.
BYTES_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(3, 13))

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

# Before services are declared, names are taken as given up to this many.
MAX_UNDECLARED_SERVICES = 256
MAX_SUBSETS = 64
MAX_ROUTES = 256
MAX_FLAG_SETS = 64
# The hot-path cache is keyed by raw input; past this size it starts afresh.
MAX_CACHED_KEYS = 4096

_REQUEST_LABELS = (
    "direction",
    "source_service",
    "destination_service",
    "destination_subset",
    "route",
    "response_code",
    "response_flags",
)
_SHAPE_LABELS = _REQUEST_LABELS[:4]

# (direction, source, destination, subset, route, status, flags) as the data path gave them.
RawKey = tuple[str, str, str, str, str, int, str]


class _Shape:
    """Duration and size histograms of one (direction, source, destination, subset):
    counted in ``tally`` by the hot path, published by the flush."""

    __slots__ = ("duration", "request_bytes", "response_bytes", "tally")

    def __init__(self, duration: Histogram, req: Histogram, resp: Histogram) -> None:
        self.tally = fp.ShapeTally(DURATION_BUCKETS, BYTES_BUCKETS)
        self.duration = RunningHistogram(duration, len(DURATION_BUCKETS) + 1)
        self.request_bytes = RunningHistogram(req, len(BYTES_BUCKETS) + 1)
        self.response_bytes = RunningHistogram(resp, len(BYTES_BUCKETS) + 1)

    def flush(self) -> None:
        tally = self.tally
        self.duration.flush(tally.duration_sum, tally.duration_buckets())
        self.request_bytes.flush(tally.request_sum, tally.request_buckets())
        self.response_bytes.flush(tally.response_sum, tally.response_buckets())


class _Requests:
    """One requests series: counted in ``tally`` by the hot path, published by the flush."""

    __slots__ = ("child", "flushed", "overflow", "tally")

    def __init__(self, child: Counter, shape: _Shape, overflow: Counter | None) -> None:
        self.child = child
        self.tally = fp.ExchangeTally(shape.tally)
        self.flushed = 0
        self.overflow = overflow  # the breaker-overflow child when the flags carry UO

    def flush(self) -> int:
        """Publish the new counts; returns how many there were."""
        count = self.tally.count
        delta = count - self.flushed
        if delta:
            self.child.inc(delta)
            self.flushed = count
        return delta


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
        use_value_store(multiprocess=self.multiproc_dir is not None)
        self._service_label = BoundedLabel(MAX_UNDECLARED_SERVICES, UNKNOWN_SERVICE)
        self._subset_label = BoundedLabel(MAX_SUBSETS)
        self._route_label = BoundedLabel(MAX_ROUTES)
        self._flags_label = BoundedLabel(MAX_FLAG_SETS)
        # The hot path: raw label tuple -> tally, in the fast path.
        self._counter = fp.ExchangeCounter(self._tally_for, MAX_CACHED_KEYS)
        self.exchange_done: Callable[[Exchange], None] = self._counter
        self._by_labels: dict[tuple[str, ...], _Requests] = {}
        self._shapes: dict[tuple[str, ...], _Shape] = {}
        self._directions: dict[str, str] = {}
        self._source = UNKNOWN_SERVICE
        self._flush_lock = threading.Lock()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._config_version: str | None = None
        self._rate_limit: dict[tuple[str, bool], RunningCounter] = {}
        reg = self.registry

        self._requests = Counter(
            "meshproxy_requests",
            "Requests proxied or answered locally, by direction, source and destination "
            "service, destination subset, route, response code and Envoy response flags.",
            _REQUEST_LABELS,
            registry=reg,
        )
        self._duration = Histogram(
            "meshproxy_request_duration_seconds",
            "Time from the request head to the end of the response, in seconds.",
            _SHAPE_LABELS,
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self._request_bytes = Histogram(
            "meshproxy_request_bytes",
            "Request body bytes received from the client.",
            _SHAPE_LABELS,
            buckets=BYTES_BUCKETS,
            registry=reg,
        )
        self._response_bytes = Histogram(
            "meshproxy_response_bytes",
            "Response bytes sent to the client.",
            _SHAPE_LABELS,
            buckets=BYTES_BUCKETS,
            registry=reg,
        )
        self._overflows = Counter(
            "meshproxy_circuit_breaker_overflows",
            "Requests refused because a circuit breaker limit was reached (flag UO).",
            ["destination_service"],
            registry=reg,
        )
        self._rate_limit_decisions = Counter(
            "meshproxy_rate_limit_decisions",
            "Rate-limit decisions by service and outcome (allowed / limited).",
            ["service", "decision"],
            registry=reg,
        )
        self._connections = Gauge(
            "meshproxy_active_connections",
            "Downstream connections open now.",
            ["listener"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._connection_children: dict[str, Gauge] = {}
        self._upstreams = UpstreamGauges(reg, self._service_label)
        self._ready = Gauge(
            "meshproxy_ready",
            "1 while the sidecar takes traffic (what /ready says), as of the last scrape.",
            registry=reg,
            multiprocess_mode="livemax",
        )
        # An info metric as a gauge of 1: prometheus-client's Info has no multiprocess mode.
        info = Gauge(
            "meshproxy_info",
            "Build of this sidecar: version and fast-path implementation (cython/python).",
            ["version", "implementation"],
            registry=reg,
            multiprocess_mode="max",
        )
        info.labels(__version__, IMPLEMENTATION).set(1)
        self._config_info = Gauge(
            "meshproxy_config_version",
            "Config snapshot in force (1) by version; in multi-process mode, 1 while any "
            "live worker runs it.",
            ["version"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self._tls_refusals = Counter(
            "meshproxy_tls_refusals",
            "mTLS connections refused at the handshake, by direction (inbound/outbound) "
            "and reason (plaintext_on_strict, unknown_ca, expired, wrong_spiffe_id, ...).",
            ["direction", "reason"],
            registry=reg,
        )
        # The security room's live counts and what of them is already published.
        self._tls_counts: Mapping[tuple[str, str], int] | None = None
        self._tls_published: dict[tuple[str, str], int] = {}
        self._policy_events = Counter(
            "meshproxy_policy_events",
            "Policy chain events by kind (filter_errors, ratelimit_denied, "
            "ratelimit_fail_open, ratelimit_redis_errors, authz_denied, jwt_refused, ...) "
            "and the filter, limit or reason they concern.",
            ["event", "name"],
            registry=reg,
        )
        # The policy room's counters (``policy.Counters.items``), read at flush.
        self._policy_counts: Callable[[], Iterable[tuple[tuple[str, str], int]]] | None = None
        self._policy_published: dict[tuple[str, str], int] = {}
        self._refused = Counter(
            "meshproxy_config_snapshots_refused",
            "Config snapshots refused whole (the previous one stayed in force).",
            registry=reg,
        )
        self._log_dropped = RunningCounter(
            Counter(
                "meshproxy_access_log_dropped",
                "Access log lines dropped because the writer fell behind.",
                registry=reg,
            )
        )
        self._spans_dropped = RunningCounter(
            Counter(
                "meshproxy_spans_dropped",
                "Sampled spans dropped because the exporting process fell behind or is gone.",
                registry=reg,
            )
        )
        # Memory and CPU: the standard process_* families in single mode; with
        # workers, each publishes its own figures at flush into livesum gauges.
        self._process = ProcessCollector(registry=None)
        self._process_gauges: dict[str, Gauge] = {}
        if self.multiproc_dir is None:
            reg.register(self._process)
        else:
            for source, name, doc in _PROCESS_FIGURES:
                self._process_gauges[source] = Gauge(
                    name, doc, registry=reg, multiprocess_mode="livesum"
                )
        if services is not None:
            self.set_services(services)

    # -- hot path ---------------------------------------------------------------

    # ``exchange_done(ex)``, set in __init__, counts one finished exchange
    # (``ex.duration`` is measured by the data path): ``fp.ExchangeCounter``.

    def request_done(self, listener: str, service: str, status: int, duration_s: float) -> None:
        """The data path's older call: counted as an exchange without sizes, subset or route."""
        direction = self._directions.get(listener, listener)
        raw = (direction, self._source, service, "-", "-", status, "-")
        self._counter.tally_for(raw).add_duration(duration_s)

    def connection_opened(self, listener: str) -> None:
        self._connection_gauge(listener).inc()

    def connection_closed(self, listener: str) -> None:
        self._connection_gauge(listener).dec()

    def rate_limit_decision(self, service: str, allowed: bool) -> None:
        """Count one rate-limit decision (hot: a plain counter, published at flush)."""
        counter = self._rate_limit.get((service, allowed))
        if counter is None:
            label = self._service_label(service)
            child = self._rate_limit_decisions.labels(label, "allowed" if allowed else "limited")
            counter = self._rate_limit[(service, allowed)] = RunningCounter(child)
        counter.count += 1

    def access_log_dropped(self, lines: int = 1) -> None:
        self._log_dropped.count += lines

    def spans_dropped(self, spans: int = 1) -> None:
        self._spans_dropped.count += spans

    # -- config -----------------------------------------------------------------

    def set_services(self, names: Iterable[str]) -> None:
        """Declare the service names that may appear as labels; others count as ``unknown``."""
        self._service_label.declare(frozenset(names))
        # Cached keys may now resolve to other labels; the counted data stays in _by_labels.
        self._counter.clear()
        # The rate-limit counters are keyed by raw name: publish what they hold
        # before the next decisions count under the new labels.
        with self._flush_lock:
            for counter in self._rate_limit.values():
                counter.flush()
            self._rate_limit = {}

    def set_listeners(self, directions: Mapping[str, str], source_service: str) -> None:
        """Listener name -> direction, and this node's service (for ``request_done``)."""
        self._directions = dict(directions)
        self._source = source_service
        self._counter.clear()

    @property
    def source_service(self) -> str:
        return self._source

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

    def snapshot_refused(self) -> None:
        self._refused.inc()

    def watch_upstreams(self, view: UpstreamView | None) -> None:
        """Register the callback giving ``Upstreams.snapshot_for_admin()``; it is
        called on the event loop by ``sample_upstreams`` (each periodic flush)."""
        self._upstreams.view = view

    # -- exposition ---------------------------------------------------------------

    def sample_upstreams(self) -> None:
        """Copy upstream state into the gauges; call on the loop that owns it."""
        self._upstreams.sample()

    def watch_tls_refusals(self, counts: Mapping[tuple[str, str], int] | None) -> None:
        """Register ``security.Refusals.counts``; published at each flush."""
        self._tls_counts = counts

    def watch_policy_events(
        self, items: Callable[[], Iterable[tuple[tuple[str, str], int]]] | None
    ) -> None:
        """Register the policy chains' shared ``Counters.items``; published at each flush."""
        self._policy_counts = items

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def flush(self) -> None:
        """Publish what the hot path counted since the last flush; safe from any thread."""
        with self._flush_lock:
            for series in list(self._by_labels.values()):
                delta = series.flush()
                if delta and series.overflow is not None:
                    series.overflow.inc(delta)
            for shape in list(self._shapes.values()):
                shape.flush()
            for counter in list(self._rate_limit.values()):
                counter.flush()
            self._log_dropped.flush()
            self._spans_dropped.flush()
            if self._tls_counts is not None:
                self._flush_tls_refusals(self._tls_counts)
            if self._policy_counts is not None:
                published = self._policy_published
                for key, value in self._policy_counts():
                    delta = value - published.get(key, 0)
                    if delta > 0:
                        self._policy_events.labels(*key).inc(delta)
                        published[key] = value
            if self._process_gauges:
                for family in self._process.collect():
                    gauge = self._process_gauges.get(family.name)
                    if gauge is not None and family.samples:
                        gauge.set(family.samples[0].value)

    def _flush_tls_refusals(self, counts: Mapping[tuple[str, str], int]) -> None:
        published = self._tls_published
        # A copy: the loop may count a refusal while another thread flushes.
        for key, value in list(counts.items()):
            delta = value - published.get(key, 0)
            if delta > 0:
                self._tls_refusals.labels(*key).inc(delta)
                published[key] = value

    def collect(self) -> Iterator[Metric]:
        """Every family of this process, or in multi-process mode of every worker."""
        self.flush()
        if self.multiproc_dir is None:
            yield from self.registry.collect()
            return
        collector = MultiProcessCollector(None, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        yield from HideRetiredConfigs(collector).collect()

    def render(self) -> tuple[bytes, str]:
        """Exposition text of this process, or in multi-process mode of every worker."""
        if self.multiproc_dir is None:
            self.flush()
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry()
        merged.register(_Collected(self))
        return generate_latest(merged), CONTENT_TYPE_LATEST

    def stats(self) -> dict[str, list[dict[str, object]]]:
        """Every sample except histogram buckets, as JSON-able data:
        ``{sample name: [{"labels": {...}, "value": number}]}``."""
        out: dict[str, list[dict[str, object]]] = {}
        for family in self.collect():
            for s in family.samples:
                if s.name.endswith(("_bucket", "_created")):
                    continue
                out.setdefault(s.name, []).append({"labels": dict(s.labels), "value": s.value})
        return out

    def flush_periodically(self, loop: asyncio.AbstractEventLoop, interval_s: float = 1.0) -> None:
        """Sample upstreams and flush every ``interval_s`` on ``loop`` until ``close()``."""
        self.stop_flushing()

        def tick() -> None:
            try:
                self.sample_upstreams()
            finally:
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

    def _tally_for(self, raw: RawKey) -> fp.ExchangeTally:
        """The hot path's miss: the tally of the series ``raw`` maps to."""
        return self._series_for(raw).tally

    def _series_for(self, raw: RawKey) -> _Requests:
        direction, source, destination, subset, route, status, flags = raw
        shape_key = (
            direction if direction in DIRECTIONS else UNKNOWN_SERVICE,
            self._service_label(source),
            self._service_label(destination),
            self._subset_label(subset),
        )
        labels = (
            *shape_key,
            self._route_label(route),
            _code_label(status),
            self._flags_label(flags),
        )
        series = self._by_labels.get(labels)
        if series is None:
            shape = self._shapes.get(shape_key)
            if shape is None:
                shape = _Shape(
                    self._duration.labels(*shape_key),
                    self._request_bytes.labels(*shape_key),
                    self._response_bytes.labels(*shape_key),
                )
                self._shapes[shape_key] = shape
            overflow = self._overflows.labels(shape_key[2]) if "UO" in flags.split(",") else None
            series = _Requests(self._requests.labels(*labels), shape, overflow)
            self._by_labels[labels] = series
        return series

    def _connection_gauge(self, listener: str) -> Gauge:
        child = self._connection_children.get(listener)
        if child is None:
            child = self._connections.labels(listener)
            self._connection_children[listener] = child
        return child


def _code_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else NO_STATUS


class _Collected:
    """A collector over ``ProxyMetrics.collect`` (for ``generate_latest``)."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()
