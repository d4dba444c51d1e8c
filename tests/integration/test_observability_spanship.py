"""Spans shipped from the worker to the exporting child process (``spanship``):
they reach a loopback OTLP/HTTP receiver, the last batch is exported at close,
and a missing or stuck child costs spans (counted), never the loop."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from meshproxy.config.observability import TracingConfig
from meshproxy.observe import spanship
from meshproxy.observe.exchange import Exchange
from meshproxy.observe.spanship import SpanShipper
from tests.integration.test_observability_tracing import Receiver, attributes, receiver

__all__ = ["receiver"]  # the fixture, shared with the tracing tests

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def sampled(i: int) -> Exchange:
    ex = Exchange("outbound", "outbound", "reviews")
    ex.trace_id = TRACE
    ex.span_id = f"{i + 1:016x}"
    ex.trace_sampled = True
    ex.method = b"POST"
    ex.authority = b"ratings:9080"
    ex.path = b"/r?x=1"
    ex.status = 503
    ex.flags = "UO"
    ex.bytes_in = 7
    ex.destination_service = "ratings"
    ex.start_wall = 1_700_000_000.0 + i
    ex.duration = 0.25
    return ex


def config(port: int, **extra: object) -> TracingConfig:
    return TracingConfig(
        exporter="otlp_http", endpoint=f"http://127.0.0.1:{port}/v1/traces", **extra
    )


async def test_shipped_exchanges_become_spans_and_close_exports_the_last_batch(
    receiver: Receiver,
) -> None:
    # A long schedule: only the batch size and the close can send anything.
    shipper = SpanShipper(config(receiver.port, schedule_delay="60s", max_export_batch_size=3),
                          "reviews", "reviews-1")  # fmt: skip
    shipper.start(asyncio.get_running_loop())
    for i in range(4):  # one full batch of 3, then one left pending
        shipper.record(sampled(i))
    async with asyncio.timeout(30):
        while len(receiver.spans()) < 3:  # noqa: ASYNC110 - the child exports on its own
            await asyncio.sleep(0.05)
        await shipper.aclose()
    spans = receiver.spans()
    assert len(spans) == 4 and shipper.dropped == 0
    resource, span = spans[-1]
    assert resource["service.name"] == "reviews"
    assert span.trace_id.hex() == TRACE and span.span_id.hex() == f"{4:016x}"
    assert span.name == "POST"
    assert span.start_time_unix_nano == 1_700_000_003 * 10**9
    assert span.end_time_unix_nano - span.start_time_unix_nano == 250_000_000
    attrs = attributes(span)
    assert attrs["http.request.method"] == "POST" and attrs["url.query"] == "x=1"
    assert attrs["http.response.status_code"] == 503
    assert attrs["http.request.body.size"] == 7
    assert attrs["meshproxy.response_flags"] == "UO"
    assert attrs["error.type"] == "503"


async def test_a_child_that_cannot_start_drops_spans_and_says_so_once(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    drops: list[int] = []
    shipper = SpanShipper(
        config(receiver.port, max_export_batch_size=1), "reviews", "r-1", on_drop=drops.append
    )
    shipper._argv = ["/nonexistent/python"]
    with caplog.at_level(logging.ERROR, logger="meshproxy"):
        shipper.start(asyncio.get_running_loop())
        for i in range(3):
            shipper.record(sampled(i))
    await shipper.aclose()
    assert shipper.dropped == 3 and sum(drops) == 3  # counted in the metrics too
    assert [r.getMessage() for r in caplog.records if "tracing stopped" in r.getMessage()] == [
        "tracing stopped: the span exporter did not start: "
        "[Errno 2] No such file or directory: '/nonexistent/python'; spans are dropped"
    ]


async def test_a_child_that_dies_drops_spans_without_failing_the_caller(
    receiver: Receiver,
) -> None:
    shipper = SpanShipper(config(receiver.port, max_export_batch_size=1), "reviews", "r-1")
    shipper._argv = [sys.executable, "-c", "pass"]  # reads nothing, exits at once
    shipper.start(asyncio.get_running_loop())
    assert shipper._proc is not None
    await asyncio.to_thread(shipper._proc.wait)
    for i in range(3):
        shipper.record(sampled(i))  # the first write finds the pipe closed
    await shipper.aclose()
    assert shipper.dropped >= 2 and receiver.spans() == []


async def test_a_child_that_does_not_read_costs_frames_past_the_buffer_not_the_loop(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spanship, "MAX_BUFFERED", 1 << 16)
    shipper = SpanShipper(config(receiver.port, max_export_batch_size=1, export_timeout="1s",
                                 schedule_delay="100ms"), "reviews", "r-1")  # fmt: skip
    shipper._argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    shipper.start(asyncio.get_running_loop())
    for i in range(5000):  # far more than the pipe and the buffer hold
        shipper.record(sampled(i))
    assert shipper.dropped > 0
    assert len(shipper._buffer) <= spanship.MAX_BUFFERED + 1000
    async with asyncio.timeout(30):
        await shipper.aclose()  # the stuck child is killed after its grace
    assert shipper._proc is not None and shipper._proc.returncode is not None
