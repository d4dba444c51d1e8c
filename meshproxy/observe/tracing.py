"""Spans for proxied requests, built with the OpenTelemetry SDK and exported over OTLP.

How this works.  The sampling decision and the ids are made when the request
head arrives (``Observer.exchange_started``, with ``propagation``); nothing of
the SDK runs then.  Only when a *sampled* exchange is done does ``record``
build its span, after the fact, with the exchange's own start time, duration
and ids (an ``IdGenerator`` that hands the SDK the ids we already put on the
wire).  The SDK's ``BatchSpanProcessor`` queues the ended span and exports
batches from its own thread, so the event loop never waits for the collector;
when its queue is full the SDK drops spans.

Attributes follow the stable HTTP semantic conventions (``http.request.method``,
``url.path``, ``http.response.status_code``, ...) plus ``meshproxy.*`` for the
mesh's own facts (destination service and subset, response flags).

This room must not block the loop: ``shutdown`` (which flushes the exporter)
runs in a thread.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from meshproxy.config.observability import TracingConfig
from meshproxy.observe.exchange import Exchange

__all__ = ["ExchangeTracer", "RatioSampler"]


class RatioSampler:
    """Decides for new traces: sampled with probability ``ratio``."""

    __slots__ = ("rand", "ratio")

    def __init__(self, ratio: float, rand: Callable[[], float] = random.random) -> None:
        self.ratio = ratio
        self.rand = rand

    def decide(self, upstream_decision: bool | None) -> bool:
        if upstream_decision is not None:
            return upstream_decision  # the caller's sampled flag is honoured
        ratio = self.ratio
        return ratio >= 1.0 or (ratio > 0.0 and self.rand() < ratio)


class _GivenIds:
    """An OTel ``IdGenerator`` returning the ids set just before a span starts."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def is_trace_id_random(self) -> bool:
        return True


def build_exporter(config: TracingConfig) -> SpanExporter:
    """The OTLP exporter named by the config (imported only when used)."""
    if config.exporter == "otlp_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        endpoint = config.endpoint or ""
        insecure = not endpoint.startswith("https://")
        return GrpcExporter(endpoint=endpoint, insecure=insecure, timeout=config.export_timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=config.endpoint, timeout=config.export_timeout)


class ExchangeTracer:
    """Turns sampled exchanges into spans and hands them to a batching exporter."""

    def __init__(
        self,
        config: TracingConfig,
        service_name: str,
        instance_id: str,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.config = config
        self.sampler = RatioSampler(config.sampling)
        self._ids = _GivenIds()
        resource = Resource.create(
            {
                "service.name": config.service_name or service_name,
                "service.instance.id": instance_id,
            }
        )
        # The decision was made at the request head: the SDK records whatever it is given.
        provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=resource,
            id_generator=self._ids,  # type: ignore[arg-type]
            shutdown_on_exit=False,
        )
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter if exporter is not None else build_exporter(config),
                max_queue_size=config.max_queue_size,
                schedule_delay_millis=config.schedule_delay * 1000,
                max_export_batch_size=config.max_export_batch_size,
                export_timeout_millis=config.export_timeout * 1000,
            )
        )
        self._provider: TracerProvider = provider
        self._tracer = provider.get_tracer("meshproxy")

    def record(self, ex: Exchange) -> None:
        """Build and end the span of a sampled exchange (called on the loop, cheap)."""
        trace_id = int(ex.trace_id, 16)
        self._ids.trace_id = trace_id
        self._ids.span_id = int(ex.span_id, 16)
        parent = None
        if ex.parent_span_id:
            parent_ctx = SpanContext(
                trace_id,
                int(ex.parent_span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            parent = trace.set_span_in_context(NonRecordingSpan(parent_ctx))
        method = ex.method.decode("latin-1") or "_OTHER"
        route = ex.route
        name = method if route == "-" else f"{method} {route}"
        path, _, query = ex.path.partition(b"?")
        host, _, port = ex.authority.decode("latin-1").rpartition(":")
        if not host or not port.isdigit():
            host, port = ex.authority.decode("latin-1"), ""
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.path": path.decode("latin-1"),
            "url.scheme": "http",
            "network.protocol.version": "1.1",
            "server.address": host,
            "http.response.status_code": ex.status,
            "http.request.body.size": ex.bytes_in,
            "http.response.body.size": ex.bytes_out,
            "meshproxy.direction": ex.direction,
            "meshproxy.source_service": ex.source_service,
            "meshproxy.destination_service": ex.destination_service,
            "meshproxy.destination_subset": ex.destination_subset,
            "meshproxy.response_flags": ex.flags,
        }
        if port:
            attributes["server.port"] = int(port)
        if query:
            attributes["url.query"] = query.decode("latin-1")
        if route != "-":
            attributes["http.route"] = route
        if ex.user_agent:
            attributes["user_agent.original"] = ex.user_agent.decode("latin-1")
        if ex.upstream_host:
            attributes["meshproxy.upstream_host"] = ex.upstream_host
        if ex.request_id:
            attributes["meshproxy.request_id"] = ex.request_id.decode("latin-1")
        start_ns = int(ex.start_wall * 1e9)
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER if ex.direction == "inbound" else SpanKind.CLIENT,
            attributes=attributes,
            start_time=start_ns,
        )
        if ex.status == 0 or ex.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(ex.status) if ex.status else ex.flags)
        span.end(end_time=start_ns + int(ex.duration * 1e9))

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter thread (blocks: run in a thread)."""
        self._provider.shutdown()

    @property
    def provider(self) -> TracerProvider:
        return self._provider
