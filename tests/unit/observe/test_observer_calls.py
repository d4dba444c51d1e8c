"""Which implementation of the data path's two calls an observer uses for
its config, and that each still does its whole job."""

from __future__ import annotations

import io

import pytest

from meshproxy.config.observability import AccessLogConfig, MetricsConfig, Observability
from meshproxy.observe.accesslog import AccessLog
from meshproxy.observe.exchange import Exchange
from meshproxy.observe.metrics import MULTIPROC_ENV, ProxyMetrics
from meshproxy.observe.observer import MeshObserver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def finished(status: int = 200, bytes_in: int = 0, bytes_out: int = 12) -> Exchange:
    ex = Exchange("out", "outbound", "reviews")
    ex.destination_service = "ratings"
    ex.status = status
    ex.duration = 0.002
    ex.bytes_in = bytes_in
    ex.bytes_out = bytes_out
    return ex


def requests_total(metrics: ProxyMetrics) -> float:
    return sum(s["value"] for s in metrics.stats()["meshproxy_requests_total"])  # type: ignore[misc]


def test_with_metrics_only_the_exchange_goes_straight_to_the_metrics() -> None:
    metrics = ProxyMetrics(services=["ratings", "reviews"])
    observer = MeshObserver(metrics)
    assert observer.exchange_done == metrics.exchange_done
    ex = finished()
    assert observer.exchange_started(ex, TRACEPARENT) == []
    assert ex.trace_id == ""  # nothing read when nothing would show it
    observer.exchange_done(ex)
    observer.exchange_done(finished(503, bytes_in=300))
    assert requests_total(metrics) == 2


def test_with_metrics_off_nothing_is_counted() -> None:
    metrics = ProxyMetrics(services=["ratings"])
    observer = MeshObserver(metrics, Observability(metrics=MetricsConfig(enabled=False)))
    observer.exchange_done(finished())
    assert "meshproxy_requests_total" not in metrics.stats()


def test_with_an_access_log_the_callers_trace_id_is_kept_and_logged() -> None:
    metrics = ProxyMetrics(services=["ratings", "reviews"])
    config = Observability(access_log=AccessLogConfig(enabled=True))
    log = AccessLog(config.access_log, stream=io.StringIO())
    observer = MeshObserver(metrics, config, access_log=log)
    ex = finished()
    assert observer.exchange_started(ex, TRACEPARENT) == []
    assert (ex.trace_id, ex.parent_span_id) == (TRACE, PARENT)
    observer.exchange_done(ex)
    assert requests_total(metrics) == 1
    assert len(log._queue) == 1
