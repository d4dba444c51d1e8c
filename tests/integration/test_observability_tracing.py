"""Spans of a live sidecar reach a loopback OTLP/HTTP receiver and decode with the
official protobuf definitions; ids follow the incoming trace context."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meshproxy.config.observability import TracingConfig
from meshproxy.observe.exchange import Exchange
from meshproxy.observe.tracing import ExchangeTracer
from tests.integration.client import Conn, get
from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import basic_config

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
UNSAMPLED_TRACE = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


class Receiver:
    """An OTLP/HTTP trace receiver: keeps every decoded export request."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        self.port = 0

    async def export(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests.append(message)
        self.content_types.append(request.content_type)
        return web.Response(
            body=b"", content_type="application/x-protobuf"
        )  # an empty ExportTraceServiceResponse

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """(resource attributes, span) of everything received."""
        found = []
        for message in self.requests:
            for rs in message.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                found.extend((resource, span) for ss in rs.scope_spans for span in ss.spans)
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", rec.export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    try:
        yield rec
    finally:
        await runner.cleanup()


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in span.attributes:
        value = attr.value
        out[attr.key] = value.int_value if value.HasField("int_value") else value.string_value
    return out


async def test_spans_are_exported_with_the_callers_ids_and_http_attributes(
    origin: Origin, proxies: StartProxy, receiver: Receiver, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.log"
    config = basic_config(
        {"web": [origin.port]},
        observability={
            "tracing": {
                "exporter": "otlp_http",
                "endpoint": f"http://127.0.0.1:{receiver.port}/v1/traces",
                "sampling": 0.0,  # new traces unsampled: only the caller's flag samples
                "schedule_delay": "100ms",
            },
            "access_log": {"enabled": True, "path": str(log_path)},
        },
    )
    proxy = await proxies(config)
    port = proxy.ports["outbound"]
    async with asyncio.timeout(30):
        conn = await Conn.open(port)
        sampled = get(
            "/head?x=1",
            extra=(
                f"traceparent: 00-{TRACE}-{PARENT}-01\r\nUser-Agent: t/1\r\n"
                f"b3: {TRACE}-{PARENT}-1\r\n"
            ),
        )
        assert (await conn.request(sampled)).status == 200
        unsampled = get("/", extra=f"traceparent: 00-{UNSAMPLED_TRACE}-{PARENT}-00\r\n")
        assert (await conn.request(unsampled)).status == 200
        assert (await conn.request(get("/"))).status == 200  # new trace, ratio 0: no span
        await conn.close()
        while not receiver.spans():  # noqa: ASYNC110 - waiting for the exporter's batch
            await asyncio.sleep(0.05)
        await proxy.stop()  # shutdown exports whatever is still queued

    ((resource, span),) = receiver.spans()
    assert receiver.content_types == ["application/x-protobuf"]
    assert resource["service.name"] == "tester"
    assert resource["service.instance.id"] == "test-1"
    assert span.trace_id.hex() == TRACE
    assert span.parent_span_id.hex() == PARENT
    assert span.kind == Span.SPAN_KIND_CLIENT
    attrs = attributes(span)
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/head"
    assert attrs["url.query"] == "x=1"
    assert attrs["http.response.status_code"] == 200
    assert attrs["meshproxy.destination_service"] == "web"
    assert attrs["user_agent.original"] == "t/1"
    assert span.end_time_unix_nano > span.start_time_unix_nano > 0

    # The origin saw our span as its parent, in each format the caller sent
    # (replaced, not added), and the caller's decision travelled on for the
    # unsampled request; a new trace goes out as a traceparent alone.
    seen = [r.headers for r in origin.requests]
    our_span = span.span_id.hex()
    assert seen[0]["traceparent"] == f"00-{TRACE}-{our_span}-01"
    assert seen[0]["b3"] == f"{TRACE}-{our_span}-1"
    assert "x-b3-traceid" not in seen[0]
    assert seen[1]["traceparent"].startswith(f"00-{UNSAMPLED_TRACE}-")
    assert seen[1]["traceparent"].endswith("-00")
    assert seen[2]["traceparent"].endswith("-00")
    assert "b3" not in seen[2] and "x-b3-traceid" not in seen[2]

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert (lines[0]["trace_id"], lines[0]["span_id"]) == (TRACE, our_span)
    assert [r["user_agent"] for r in lines] == ["t/1", None, None]
    assert [r["response_code"] for r in lines] == [200, 200, 200]


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> Any:
        self.requests.append(request)
        return ExportTraceServiceResponse()


def test_the_grpc_exporter_delivers_spans_to_a_loopback_collector() -> None:
    servicer = GrpcReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        config = TracingConfig(
            exporter="otlp_grpc", endpoint=f"http://127.0.0.1:{port}", sampling=1.0
        )
        tracer = ExchangeTracer(config, "reviews", "reviews-1")
        ex = Exchange("inbound", "inbound", "ratings")
        ex.method, ex.path, ex.authority, ex.status = b"PUT", b"/r/1", b"reviews", 201
        ex.trace_id, ex.span_id, ex.parent_span_id = TRACE, "1" * 16, PARENT
        ex.start_wall, ex.duration = 1_700_000_000.0, 0.5
        tracer.record(ex)
        tracer.shutdown()  # exports the batch before returning
    finally:
        server.stop(grace=None)
    (request,) = servicer.requests
    (span,) = request.resource_spans[0].scope_spans[0].spans
    assert (span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex()) == (
        TRACE,
        "1" * 16,
        PARENT,
    )
    assert span.kind == Span.SPAN_KIND_SERVER
    assert attributes(span)["http.response.status_code"] == 201
    assert span.end_time_unix_nano - span.start_time_unix_nano == 500_000_000
