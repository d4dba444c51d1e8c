"""The sidecar's Observer: metrics, access log and tracing behind one object.

The data path calls ``exchange_started`` when a request head is parsed and
``exchange_done`` when the exchange ends (``observe.exchange.Observer``).  The
runtime builds one ``MeshObserver`` per process (per worker), starts it on the
loop and closes it after the drain::

    metrics = ProxyMetrics(services=...)
    observer = MeshObserver.from_bootstrap(boot, metrics)
    observer.watch_upstreams(lambda: upstreams.snapshot_for_admin())  # optional
    observer.start(loop)          # periodic flush, access-log thread
    ...                           # ctx.observer = observer
    observer.snapshot_applied(snapshot, version)   # after each accepted swap
    await observer.close()        # writes queued log lines, exports queued spans
    metrics.close()

The two calls are chosen once, for what is configured: with metrics only
(the default) ``exchange_done`` IS ``ProxyMetrics.exchange_done`` and
``exchange_started`` returns a shared empty list (callers never mutate what
it returns), so an exchange costs the data path no work of ours beyond the
count.

Tracing: with an exporter configured, ``exchange_started`` reads the caller's
trace context (W3C or B3), decides sampling (the caller's flag, else the
configured ratio), gives our span a fresh id and returns the headers that
carry it on, replacing the caller's: in the formats the caller's request
carried (so an application that forwards B3 keeps seeing B3), or, for a trace
we start, in the first configured format alone (``traceparent`` by default:
one field, appended to the head as received).  Spans are built only for sampled
exchanges, when they are done.  Without an exporter, nothing is propagated
or rewritten; the access log still shows the caller's trace id.

This room must not raise into the data path or block the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from meshproxy import fastpath as fp
from meshproxy.config import Bootstrap, Snapshot
from meshproxy.config.observability import Observability
from meshproxy.observe.accesslog import AccessLog
from meshproxy.observe.exchange import Exchange
from meshproxy.observe.metrics import ProxyMetrics
from meshproxy.observe.propagation import (
    TRACE_NAME_LENGTHS,
    TRACE_NAMES,
    Writer,
    extract,
    read,
    writer,
)
from meshproxy.observe.spanship import SpanShipper
from meshproxy.observe.tracing import ExchangeTracer, RatioSampler

__all__ = ["MeshObserver", "static_version"]

log = logging.getLogger("meshproxy")

_header_value = fp.header_value

Fields = list[tuple[bytes, bytes]]
_NO_FIELDS: Fields = []  # shared: the data path only reads it
# Every id pool of this process, emptied in a forked child (``--workers``):
# two workers must never hand out the same ids.
_ID_POOLS: weakref.WeakSet[fp.TraceIds] = weakref.WeakSet()


def _reset_id_pools() -> None:
    for pool in list(_ID_POOLS):
        pool.reset()


os.register_at_fork(after_in_child=_reset_id_pools)


def _no_fields(exchange: Exchange, headers: Fields) -> Fields:
    return _NO_FIELDS


def _uncounted(exchange: Exchange) -> None:
    pass


def static_version(snapshot: Snapshot) -> str:
    """The version of a snapshot from the bootstrap file: a digest of its content."""
    text = json.dumps(snapshot.model_dump(mode="json"), sort_keys=True)
    return "static-" + hashlib.sha256(text.encode()).hexdigest()[:12]


class MeshObserver:
    """Implements ``observe.exchange.Observer``; one per process."""

    # Bound in __init__ to the cheapest implementation the config allows.
    exchange_started: Callable[[Exchange, Fields], Fields]
    exchange_done: Callable[[Exchange], None]

    def __init__(
        self,
        metrics: ProxyMetrics,
        config: Observability | None = None,
        *,
        access_log: AccessLog | None = None,
        tracer: ExchangeTracer | SpanShipper | None = None,
    ) -> None:
        self.config = config if config is not None else Observability()
        self.metrics = metrics
        self.access_log = access_log
        self.tracer = tracer
        self._count: Callable[[Exchange], None] | None = (
            metrics.exchange_done if self.config.metrics.enabled else None
        )
        self._log: Callable[[Exchange], None] | None = (
            access_log.record if access_log is not None else None
        )
        self._formats = tuple(self.config.tracing.propagation)
        # A trace we start is written in the first format; a caller's trace is
        # passed on in the formats its request carried (one writer per set).
        self._write_new = writer(self._formats[:1])
        self._new_w3c = self._formats[0] == "w3c"
        self._ids = fp.TraceIds(os.urandom)
        _ID_POOLS.add(self._ids)
        self._writers: dict[tuple[str, ...], Writer] = {}
        self._sampler = tracer.sampler if tracer is not None else RatioSampler(0.0)
        # New W3C traces are sampled from their id (OpenTelemetry's TraceIdRatioBased).
        self._bound = fp.ratio_bound(self._sampler.ratio)
        self._trace_errors = 0
        if tracer is not None and self._new_w3c:
            # The usual request, without trace context, never leaves the fast
            # path; one that carries a trace goes on to ``_started_traced``.
            self.exchange_started = fp.TraceStart(
                self._ids, self._bound, self._started_traced, access_log is not None, TRACE_NAMES
            )
        elif tracer is not None:
            self.exchange_started = self._started_traced
        elif access_log is not None:
            self.exchange_started = self._started_logged
        else:
            self.exchange_started = _no_fields
        if tracer is not None and access_log is None and self._count is not None:
            self.exchange_done = self._done_counted_traced
        elif tracer is not None or access_log is not None:
            self.exchange_done = self._done
        else:
            self.exchange_done = self._count if self._count is not None else _uncounted

    @classmethod
    def from_bootstrap(cls, boot: Bootstrap, metrics: ProxyMetrics) -> MeshObserver:
        """Build what ``boot.observability`` asks for (nothing is started yet)."""
        config = boot.observability
        metrics.set_listeners(
            {lst.name: lst.direction for lst in boot.listeners}, boot.node.service
        )
        metrics.set_services([*boot.snapshot.services, boot.node.service])
        if boot.control_plane is None:
            metrics.config_loaded(static_version(boot.snapshot))
        access_log = None
        if config.access_log.enabled:
            access_log = AccessLog(config.access_log, on_drop=metrics.access_log_dropped)
        tracer: ExchangeTracer | SpanShipper | None = None
        if config.tracing.enabled and config.tracing.export_in == "process":
            # Spans are built and exported by a child process (``spanship``).
            tracer = SpanShipper(
                config.tracing, boot.node.service, boot.node.id, on_drop=metrics.spans_dropped
            )
        elif config.tracing.enabled:
            tracer = ExchangeTracer(config.tracing, boot.node.service, boot.node.id)
        return cls(metrics, config, access_log=access_log, tracer=tracer)

    # -- lifecycle --------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.metrics.flush_periodically(loop, self.config.metrics.flush_interval)
        if self.access_log is not None:
            self.access_log.start()
        if self.tracer is not None:
            self.tracer.start(loop)

    def watch_upstreams(self, view: Callable[[], Mapping[str, Any]] | None) -> None:
        """Where the periodic flush reads endpoint health, ejections and pool sizes."""
        self.metrics.watch_upstreams(view)

    def snapshot_applied(self, snapshot: Snapshot, version: str | None = None) -> None:
        """A new snapshot is in force: its services become valid labels."""
        self.metrics.set_services([*snapshot.services, self.metrics.source_service])
        if version is not None:
            self.metrics.config_loaded(version)

    def snapshot_refused(self) -> None:
        self.metrics.snapshot_refused()

    async def close(self) -> None:
        """Flush the access log and the span exporter (in threads); metrics stay open."""
        self.metrics.stop_flushing()
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.close)
        if self.tracer is not None:
            await self.tracer.aclose()

    # -- the data path's calls ----------------------------------------------------

    def _started_logged(self, exchange: Exchange, headers: Fields) -> Fields:
        """No tracer: the access log still shows the caller's trace id."""
        caller = extract(headers, self._formats)
        if caller is not None:
            exchange.trace_id = caller.trace_id
            exchange.parent_span_id = caller.span_id
        exchange.user_agent = _header_value(headers, b"user-agent") or b""
        return _NO_FIELDS

    def _started_traced(self, exchange: Exchange, headers: Fields) -> Fields:
        for name, _ in headers:
            if len(name) in TRACE_NAME_LENGTHS:
                caller, present = read(headers, self._formats)
                break
        else:  # no field could carry a trace context: spare the reading
            caller, present = None, ()
        # Fresh ids from the fast path's pool (never all zero), the trace
        # sampled by its id (OpenTelemetry's TraceIdRatioBased).
        value = self._ids.traceparent(self._bound)
        if caller is None and not present and self._new_w3c:
            # A new trace in W3C form, the common case: that value is the field.
            sampled = value[54] == 49  # b"1": the id fell below the ratio's bound
            if sampled or self._log is not None:  # the ids are read by a span or a log line
                exchange.trace_id = value[3:35].decode()
                exchange.span_id = value[36:52].decode()
                exchange.trace_sampled = sampled
                exchange.user_agent = _header_value(headers, b"user-agent") or b""
            return [(b"traceparent", value)]
        sid = value[36:52]
        if caller is None:
            tid, parent = value[3:35], b""
            exchange.trace_id = tid.decode()
            sampled = value[54] == 49
        else:
            tid = caller.trace_id.encode()
            parent = caller.span_id.encode()
            exchange.trace_id = caller.trace_id
            exchange.parent_span_id = caller.span_id
            sampled = self._sampler.decide(caller.sampled)
        exchange.span_id = sid.decode()
        exchange.trace_sampled = sampled
        if sampled or self._log is not None:
            exchange.user_agent = _header_value(headers, b"user-agent") or b""
        if not present:
            return self._write_new(tid, sid, sampled, parent)
        write = self._writers.get(present)
        if write is None:
            write = self._writers[present] = writer(present)
        return write(tid, sid, sampled, parent)

    def _done(self, exchange: Exchange) -> None:
        count = self._count
        if count is not None:
            count(exchange)
        record = self._log
        if record is not None:
            record(exchange)
        if exchange.trace_sampled:
            self._span(exchange)

    def _done_counted_traced(self, exchange: Exchange) -> None:
        """``_done`` for metrics and tracing without an access log (the usual case)."""
        self._count(exchange)  # type: ignore[misc]  # set: chosen in __init__ for it
        if exchange.trace_sampled:
            self._span(exchange)

    def _span(self, exchange: Exchange) -> None:
        if self.tracer is None:
            return
        try:
            self.tracer.record(exchange)
        except Exception:  # a span must never fail a request
            self._trace_errors += 1
            if self._trace_errors == 1:
                log.exception("tracing failed; further failures are counted silently")
