"""Spans for proxied requests, built with the OpenTelemetry SDK and exported over OTLP.

How this works.  The sampling decision and the ids are made when the request
head arrives (``Observer.exchange_started``, with ``propagation``); nothing of
the SDK runs then.  Only when a *sampled* exchange is done does ``record``
build its span, after the fact, as the SDK's finished-span record
(``ReadableSpan``) with the exchange's own start time, duration and the ids
we already put on the wire: a live ``Span`` (and the checks of each
attribute it makes) would cost twice as much for nothing, since every value
here is already a string or an integer.  The SDK's ``BatchSpanProcessor``
queues the span and exports batches from its own thread; when its queue is
full the SDK drops spans.  In the sidecar all of this runs in a child process
(``spanship``): the worker only ships ``exchange_fields(ex)`` of each sampled
exchange, and the child calls ``record_fields``.  ``record(ex)`` does both in
one process (tests, tools).

Attributes follow the stable HTTP semantic conventions (``http.request.method``,
``url.path``, ``http.response.status_code``, ...) plus ``meshproxy.*`` for the
mesh's own facts (the destination service; the destination subset and the
response flags when there are any; the source service when it is not the
resource's ``service.name``).  The request body size is sent when there was
a body.  The direction is the span's kind:
``SERVER`` on an inbound listener, ``CLIENT`` on an outbound one.  Each
attribute costs the exporter about 3 µs to encode, so none is sent
that says nothing.

This room must not block the loop: ``shutdown`` (which flushes the exporter)
runs in a thread.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.resources import Attributes, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from meshproxy import __version__
from meshproxy.config.observability import TracingConfig
from meshproxy.observe.exchange import Exchange

__all__ = ["ExchangeTracer", "RatioSampler", "exchange_fields"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)  # the convention for a span that did not fail
_ERROR = Status(StatusCode.ERROR)


class _Resource(Resource):
    """A ``Resource`` that computes its hash once.  The OTLP encoder groups
    every span of a batch by its resource, and ``Resource.__hash__`` dumps
    the attributes to JSON each time: a sixth of the encoding, for a value
    that never changes here."""

    def __init__(self, attributes: Attributes, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


class RatioSampler:
    """Decides for a caller's trace that left the decision to us: sampled with
    probability ``ratio``.  (A trace the sidecar starts is sampled by its id,
    in the fast path: ``TraceIds``.)"""

    __slots__ = ("_random", "ratio")

    def __init__(self, ratio: float, rand: Callable[[], float] = random.random) -> None:
        self.ratio = ratio
        self._random = rand

    def decide(self, upstream_decision: bool | None) -> bool:
        if upstream_decision is not None:
            return upstream_decision  # the caller's sampled flag is honoured
        ratio = self.ratio
        return ratio >= 1.0 or (ratio > 0.0 and self._random() < ratio)


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


def exchange_fields(ex: Exchange) -> tuple[Any, ...]:
    """What a span is made of, as plain strings and numbers (``marshal`` can
    carry them to the exporting child: ``spanship``)."""
    return (
        ex.trace_id, ex.span_id, ex.parent_span_id, ex.method, ex.route, ex.path, ex.authority,
        ex.status, ex.bytes_in, ex.bytes_out, ex.source_service, ex.destination_service,
        ex.destination_subset, ex.flags, ex.user_agent, ex.upstream_host, ex.request_id,
        ex.direction, ex.start_wall, ex.duration,
    )  # fmt: skip


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
        self._service_name = config.service_name or service_name
        resource = Resource.create(
            {
                "service.name": self._service_name,
                "service.instance.id": instance_id,
            }
        )
        self._resource = _Resource(dict(resource.attributes), resource.schema_url)
        self._scope = InstrumentationScope("meshproxy", __version__)
        self._processor = BatchSpanProcessor(
            exporter if exporter is not None else build_exporter(config),
            max_queue_size=config.max_queue_size,
            schedule_delay_millis=config.schedule_delay * 1000,
            max_export_batch_size=config.max_export_batch_size,
            export_timeout_millis=config.export_timeout * 1000,
        )

    def start(self, loop: object) -> None:
        """Nothing to start: the SDK's processor runs its own thread."""

    async def aclose(self) -> None:
        await asyncio.to_thread(self.shutdown)

    def record(self, ex: Exchange) -> None:
        """Build and end the span of a sampled exchange (called on the loop, cheap)."""
        self.record_fields(exchange_fields(ex))

    def record_fields(self, fields: tuple[Any, ...]) -> None:
        """Build and end the span of ``exchange_fields(ex)``."""
        (
            trace_hex, span_hex, parent_hex, method_raw, route, target, authority, status,
            bytes_in, bytes_out, source, destination, subset, flags, user_agent, upstream,
            request_id, direction, start_wall, duration,
        ) = fields  # fmt: skip
        trace_id = int(trace_hex, 16)
        context = SpanContext(trace_id, int(span_hex, 16), False, _SAMPLED)
        parent = None
        if parent_hex:
            parent = SpanContext(trace_id, int(parent_hex, 16), True, _SAMPLED)
        method = method_raw.decode("latin-1") or "_OTHER"
        name = method if route == "-" else f"{method} {route}"
        path, _, query = target.partition(b"?")
        host, _, port = authority.decode("latin-1").rpartition(":")
        if not host or not port.isdigit():
            host, port = authority.decode("latin-1"), ""
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.path": path.decode("latin-1"),
            "url.scheme": "http",
            "network.protocol.version": "1.1",
            "server.address": host,
            "http.response.status_code": status,
            "http.response.body.size": bytes_out,
            "meshproxy.destination_service": destination,
        }
        if bytes_in:
            attributes["http.request.body.size"] = bytes_in
        if source != self._service_name:
            attributes["meshproxy.source_service"] = source
        if subset != "-":
            attributes["meshproxy.destination_subset"] = subset
        if flags != "-":
            attributes["meshproxy.response_flags"] = flags
        if port:
            attributes["server.port"] = int(port)
        if query:
            attributes["url.query"] = query.decode("latin-1")
        if route != "-":
            attributes["http.route"] = route
        if user_agent:
            attributes["user_agent.original"] = user_agent.decode("latin-1")
        if upstream:
            attributes["meshproxy.upstream_host"] = upstream
        if request_id:
            attributes["meshproxy.request_id"] = request_id.decode("latin-1")
        outcome = _OK
        if status == 0 or status >= 500:
            outcome = _ERROR
            attributes["error.type"] = str(status) if status else flags
        start_ns = int(start_wall * 1e9)
        span = ReadableSpan(
            name,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=SpanKind.SERVER if direction == "inbound" else SpanKind.CLIENT,
            status=outcome,
            start_time=start_ns,
            end_time=start_ns + int(duration * 1e9),
            instrumentation_scope=self._scope,
        )
        self._processor.on_end(span)

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter thread (blocks: run in a thread)."""
        self._processor.shutdown()  # type: ignore[no-untyped-call]
