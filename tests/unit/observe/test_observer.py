"""MeshObserver: Istio-style series per exchange, trace propagation and spans, lifecycle."""

from __future__ import annotations

import asyncio
import io
import json
import os
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from meshproxy.config import Bootstrap
from meshproxy.config.observability import AccessLogConfig, Observability, TracingConfig
from meshproxy.observe import metrics as metrics_module
from meshproxy.observe.accesslog import AccessLog
from meshproxy.observe.exchange import Exchange
from meshproxy.observe.metrics import MULTIPROC_ENV, ProxyMetrics
from meshproxy.observe.observer import MeshObserver, static_version
from meshproxy.observe.spanship import SpanShipper
from meshproxy.observe.tracing import ExchangeTracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def scrape(metrics: ProxyMetrics) -> Samples:
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def values(s: Samples, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(labels), v)
        for (n, labels), v in s.items()
        if n == name and all(dict(labels).get(k) == want for k, want in match.items())
    ]


def exchange(
    status: int = 200,
    flags: str = "-",
    *,
    subset: str = "v1",
    route: str = "r0",
    duration: float = 0.003,
    bytes_in: int = 0,
    bytes_out: int = 100,
) -> Exchange:
    ex = Exchange("outbound", "outbound", "reviews")
    ex.destination_service = "ratings"
    ex.destination_subset = subset
    ex.route = route
    ex.method = b"GET"
    ex.authority = b"ratings:9080"
    ex.path = b"/ratings/7?detail=1"
    ex.status = status
    ex.flags = flags
    ex.duration = duration
    ex.bytes_in = bytes_in
    ex.bytes_out = bytes_out
    ex.start_wall = 1_700_000_000.0
    return ex


def test_exchanges_are_counted_with_istio_like_labels() -> None:
    m = ProxyMetrics(services=["ratings", "reviews"])
    for _ in range(3):
        m.exchange_done(exchange())
    m.exchange_done(exchange(503, "UO"))
    s = scrape(m)
    rows = values(s, "meshproxy_requests_total")
    assert sorted((r["response_code"], r["response_flags"], v) for r, v in rows) == [
        ("200", "-", 3.0),
        ("503", "UO", 1.0),
    ]
    labels = rows[0][0]
    assert {k: labels[k] for k in ("direction", "source_service", "destination_service")} == {
        "direction": "outbound",
        "source_service": "reviews",
        "destination_service": "ratings",
    }
    assert (labels["destination_subset"], labels["route"]) == ("v1", "r0")


def test_size_and_duration_histograms_share_the_service_shape() -> None:
    m = ProxyMetrics(services=["ratings", "reviews"])
    m.exchange_done(exchange(bytes_in=10, bytes_out=100_000, duration=0.02))
    m.exchange_done(exchange(500, bytes_in=1000, bytes_out=10, duration=0.2))
    s = scrape(m)
    ((_, count),) = values(s, "meshproxy_request_duration_seconds_count")
    assert count == 2
    ((_, total),) = values(s, "meshproxy_response_bytes_sum")
    assert total == 100_010
    assert values(s, "meshproxy_request_bytes_bucket", le="64.0")[0][1] == 1
    assert values(s, "meshproxy_request_bytes_bucket", le="1024.0")[0][1] == 2
    assert values(s, "meshproxy_response_bytes_bucket", le="65536.0")[0][1] == 1


def test_breaker_overflows_are_the_exchanges_flagged_uo() -> None:
    m = ProxyMetrics(services=["ratings", "reviews"])
    m.exchange_done(exchange(503, "UO"))
    m.exchange_done(exchange(503, "UO,URX"))
    m.exchange_done(exchange(503, "UH"))
    s = scrape(m)
    assert values(s, "meshproxy_circuit_breaker_overflows_total") == [
        ({"destination_service": "ratings"}, 2.0)
    ]


def test_subsets_routes_and_flag_sets_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_ROUTES", 2)
    monkeypatch.setattr(metrics_module, "MAX_SUBSETS", 1)
    m = ProxyMetrics(services=["ratings", "reviews"])
    for i in range(5):
        m.exchange_done(exchange(route=f"/users/{i}", subset=f"s{i}"))
    s = scrape(m)
    routes = {r["route"]: v for r, v in values(s, "meshproxy_requests_total")}
    assert routes == {"/users/0": 1, "/users/1": 1, "other": 3}
    subsets = {r["destination_subset"] for r, _ in values(s, "meshproxy_requests_total")}
    assert subsets == {"s0", "other"}


def test_rate_limit_decisions_and_refusals_are_counted() -> None:
    m = ProxyMetrics(services=["ratings"])
    for allowed in (True, True, False):
        m.rate_limit_decision("ratings", allowed)
    m.snapshot_refused()
    s = scrape(m)
    decisions = {r["decision"]: v for r, v in values(s, "meshproxy_rate_limit_decisions_total")}
    assert decisions == {"allowed": 2, "limited": 1}
    assert values(s, "meshproxy_config_snapshots_refused_total") == [({}, 1.0)]


def test_upstream_state_is_sampled_from_the_registered_view() -> None:
    m = ProxyMetrics(services=["ratings"])
    view: dict[str, Any] = {
        "ratings": {
            "endpoints": [
                {"health": "healthy", "ejected": False, "times_ejected": 1,
                 "active_connections": 2, "active_requests": 1},
                {"health": "unhealthy", "ejected": False, "times_ejected": 0,
                 "active_connections": 0, "active_requests": 0},
                {"health": "healthy", "ejected": True, "times_ejected": 2,
                 "active_connections": 1, "active_requests": 0},
            ]
        }
    }  # fmt: skip
    m.watch_upstreams(lambda: view)
    m.sample_upstreams()
    m.sample_upstreams()  # the same counts again add no ejection
    s = scrape(m)
    states = {r["state"]: v for r, v in values(s, "meshproxy_upstream_endpoints")}
    assert states == {"healthy": 1, "unhealthy": 1, "ejected": 1}
    assert values(s, "meshproxy_upstream_connections")[0][1] == 3
    assert values(s, "meshproxy_upstream_active_requests")[0][1] == 1
    assert values(s, "meshproxy_outlier_ejections_total")[0][1] == 3


@pytest.mark.parametrize(("where", "kind"), [("process", SpanShipper), ("thread", ExchangeTracer)])
def test_from_bootstrap_exports_spans_where_the_config_says(where: str, kind: type) -> None:
    boot = Bootstrap.model_validate(
        {
            "node": {"id": "reviews-1", "service": "reviews"},
            "listeners": [{"name": "out", "direction": "outbound", "port": 0}],
            "observability": {
                "tracing": {
                    "exporter": "otlp_http",
                    "endpoint": "http://127.0.0.1:1/v1/traces",
                    "export_in": where,
                }
            },
        }
    )
    m = ProxyMetrics()
    observer = MeshObserver.from_bootstrap(boot, m)
    assert type(observer.tracer) is kind  # nothing started: no child, no thread yet
    if isinstance(observer.tracer, SpanShipper):
        observer.tracer.record(exchange())  # no child: the span is dropped and counted
        assert observer.tracer.dropped == 0  # pending until shipped...
        observer.tracer.shutdown()
        assert observer.tracer.dropped == 1
        assert values(scrape(m), "meshproxy_spans_dropped_total")[0][1] == 1
    else:
        observer.tracer.shutdown()  # type: ignore[union-attr]


def test_from_bootstrap_declares_services_listeners_and_a_static_version() -> None:
    boot = Bootstrap.model_validate(
        {
            "node": {"id": "reviews-1", "service": "reviews"},
            "listeners": [{"name": "out", "direction": "outbound", "port": 0}],
            "snapshot": {"services": {"ratings": {"endpoints": []}}},
        }
    )
    m = ProxyMetrics()
    observer = MeshObserver.from_bootstrap(boot, m)
    assert observer.tracer is None and observer.access_log is None
    m.request_done("out", "ratings", 200, 0.001)
    m.request_done("out", "evil.example", 200, 0.001)
    s = scrape(m)
    rows = {r["destination_service"]: r for r, _ in values(s, "meshproxy_requests_total")}
    assert set(rows) == {"ratings", "unknown"}
    assert (rows["ratings"]["direction"], rows["ratings"]["source_service"]) == (
        "outbound",
        "reviews",
    )
    assert values(s, "meshproxy_config_version") == [
        ({"version": static_version(boot.snapshot)}, 1.0)
    ]


def traced(sampling: float = 1.0, **extra: Any) -> tuple[MeshObserver, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    config = TracingConfig(
        exporter="otlp_http", endpoint="http://127.0.0.1:1/v1/traces", sampling=sampling, **extra
    )
    tracer = ExchangeTracer(config, "reviews", "reviews-1", exporter=spans)
    observer = MeshObserver(
        ProxyMetrics(services=["ratings", "reviews"]), Observability(tracing=config), tracer=tracer
    )
    return observer, spans


def test_incoming_traceparent_becomes_the_parent_of_our_span() -> None:
    observer, spans = traced(sampling=0.0)  # the caller's flag wins over the ratio
    ex = exchange()
    fields = [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()), (b"User-Agent", b"curl/8")]
    out = dict(observer.exchange_started(ex, fields))
    assert ex.trace_id == TRACE and ex.parent_span_id == PARENT and ex.trace_sampled
    assert ex.span_id != PARENT and len(ex.span_id) == 16
    # Passed on in the format it came in, nothing more.
    assert out == {b"traceparent": f"00-{TRACE}-{ex.span_id}-01".encode()}
    observer.exchange_done(ex)
    observer.tracer.shutdown()  # type: ignore[union-attr]
    (span,) = spans.get_finished_spans()
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == int(TRACE, 16)
    assert span.context.span_id == int(ex.span_id, 16)
    assert span.parent.span_id == int(PARENT, 16)
    assert span.kind == SpanKind.CLIENT
    assert span.name == "GET r0"
    attrs = dict(span.attributes or {})
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/ratings/7"
    assert attrs["url.query"] == "detail=1"
    assert attrs["server.address"] == "ratings" and attrs["server.port"] == 9080
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "r0"
    assert attrs["user_agent.original"] == "curl/8"
    assert attrs["meshproxy.destination_subset"] == "v1"
    assert attrs["http.response.body.size"] == 100
    # Nothing that says nothing: no request body, no flags, the source is the
    # resource's service.name, the direction is the span's kind.
    assert not {
        "http.request.body.size", "meshproxy.response_flags", "meshproxy.source_service",
        "meshproxy.direction",
    } & set(attrs)  # fmt: skip
    assert span.resource.attributes["service.name"] == "reviews"
    assert span.start_time == 1_700_000_000 * 10**9
    assert span.end_time == span.start_time + 3_000_000


def test_span_attributes_that_are_set_only_when_they_say_something() -> None:
    observer, spans = traced(sampling=1.0)
    ex = exchange(503, "UO", subset="-", bytes_in=42)
    ex.source_service = "gateway"  # not this sidecar's own service
    observer.exchange_started(ex, [])
    observer.exchange_done(ex)
    observer.tracer.shutdown()  # type: ignore[union-attr]
    (span,) = spans.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["http.request.body.size"] == 42
    assert attrs["meshproxy.response_flags"] == "UO"
    assert attrs["meshproxy.source_service"] == "gateway"
    assert attrs["error.type"] == "503"
    assert "meshproxy.destination_subset" not in attrs


def test_caller_saying_not_sampled_gets_no_span_but_the_context_goes_on() -> None:
    observer, spans = traced(sampling=1.0)
    ex = exchange()
    out = dict(observer.exchange_started(ex, [(b"b3", f"{TRACE}-{PARENT}-0".encode())]))
    assert not ex.trace_sampled
    assert out == {b"b3": f"{TRACE}-{ex.span_id}-0".encode()}
    observer.exchange_done(ex)
    observer.tracer.shutdown()  # type: ignore[union-attr]
    assert spans.get_finished_spans() == ()


def test_our_span_replaces_every_format_the_caller_sent() -> None:
    observer, _spans = traced(sampling=0.0)
    ex = exchange()
    fields = [
        (b"X-B3-TraceId", TRACE.encode()),
        (b"X-B3-SpanId", PARENT.encode()),
        (b"X-B3-Sampled", b"1"),
        (b"b3", b"garbage"),  # unparsable, still the caller's: replaced
    ]
    out = dict(observer.exchange_started(ex, fields))
    assert ex.trace_id == TRACE and ex.parent_span_id == PARENT and ex.trace_sampled
    assert out == {
        b"b3": f"{TRACE}-{ex.span_id}-1".encode(),
        b"x-b3-traceid": TRACE.encode(),
        b"x-b3-spanid": ex.span_id.encode(),
        b"x-b3-parentspanid": PARENT.encode(),
        b"x-b3-sampled": b"1",
    }


def test_a_new_trace_is_written_in_the_first_configured_format_only() -> None:
    observer, _spans = traced(sampling=0.0)
    out = observer.exchange_started(exchange(), [(b"host", b"ratings")])
    assert [name for name, _ in out] == [b"traceparent"]
    b3_first, _ = traced(sampling=0.0, propagation=("b3multi", "w3c"))
    ex = exchange()
    out = b3_first.exchange_started(ex, [])
    assert dict(out) == {
        b"x-b3-traceid": ex.trace_id.encode(),
        b"x-b3-spanid": ex.span_id.encode(),
        b"x-b3-sampled": b"0",
    }


def test_new_traces_follow_the_ratio_and_failed_exchanges_are_errors() -> None:
    observer, spans = traced(sampling=1.0)
    ex = exchange(503, "UF")
    out = dict(observer.exchange_started(ex, []))
    assert ex.parent_span_id == "" and len(ex.trace_id) == 32 and ex.trace_sampled
    assert out[b"traceparent"].endswith(b"-01")
    observer.exchange_done(ex)
    observer.tracer.shutdown()  # type: ignore[union-attr]
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code == StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "503"

    never, none = traced(sampling=0.0)
    ex = exchange()
    never.exchange_started(ex, [])
    never.exchange_done(ex)
    never.tracer.shutdown()  # type: ignore[union-attr]
    assert not ex.trace_sampled and none.get_finished_spans() == ()


def test_without_tracing_nothing_is_propagated_but_the_log_shows_the_callers_trace() -> None:
    stream = io.StringIO()
    log = AccessLog(AccessLogConfig(enabled=True), stream=stream)
    observer = MeshObserver(ProxyMetrics(services=["ratings"]), access_log=log)
    ex = exchange()
    assert (
        observer.exchange_started(ex, [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())]) == []
    )
    log.start()
    observer.exchange_done(ex)
    log.close()
    assert json.loads(stream.getvalue())["trace_id"] == TRACE


def test_a_failing_tracer_never_fails_the_exchange() -> None:
    observer, _ = traced()

    def broken(ex: Exchange) -> None:
        raise RuntimeError("exporter exploded")

    observer.tracer.record = broken  # type: ignore[union-attr,method-assign]
    ex = exchange()
    observer.exchange_started(ex, [])
    observer.exchange_done(ex)  # no exception
    observer.exchange_done(ex)
    assert observer._trace_errors == 2
    observer.tracer.shutdown()  # type: ignore[union-attr]


async def test_start_flushes_periodically_and_close_drains_log_and_spans() -> None:
    stream = io.StringIO()
    log = AccessLog(AccessLogConfig(enabled=True), stream=stream)
    spans = InMemorySpanExporter()
    config = Observability.model_validate(
        {"metrics": {"flush_interval": "10ms"},
         "tracing": {"exporter": "otlp_http", "endpoint": "http://127.0.0.1:1/", "sampling": 1}}
    )  # fmt: skip
    tracer = ExchangeTracer(config.tracing, "reviews", "r-1", exporter=spans)
    metrics = ProxyMetrics(services=["ratings", "reviews"])
    observer = MeshObserver(metrics, config, access_log=log, tracer=tracer)
    observer.start(asyncio.get_running_loop())
    ex = exchange()
    observer.exchange_started(ex, [])
    observer.exchange_done(ex)
    child = metrics.registry
    labels = {
        "direction": "outbound", "source_service": "reviews", "destination_service": "ratings",
        "destination_subset": "v1", "route": "r0", "response_code": "200", "response_flags": "-",
    }  # fmt: skip
    for _ in range(200):
        if child.get_sample_value("meshproxy_requests_total", labels) == 1:
            break
        await asyncio.sleep(0.01)
    assert child.get_sample_value("meshproxy_requests_total", labels) == 1
    await observer.close()
    assert len(stream.getvalue().splitlines()) == 1
    assert len(spans.get_finished_spans()) == 1
    metrics.close()


def test_a_forked_worker_never_repeats_its_parents_trace_ids() -> None:
    observer, _spans = traced(sampling=0.0)
    observer.exchange_started(exchange(), [])  # the parent's id pool is filled
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next new trace, then out without cleanup
        try:
            (field,) = observer.exchange_started(exchange(), [])
            os.write(write_end, field[1])
        finally:
            os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 100)
    os.close(read_end)
    os.waitpid(pid, 0)
    (mine,) = observer.exchange_started(exchange(), [])
    assert len(child) == 55 and child[3:35] != mine[1][3:35]
