"""ProxyMetrics in single-process mode: what a scrape shows after the proxy records."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from meshproxy import __version__
from meshproxy.fastpath import IMPLEMENTATION
from meshproxy.observe import metrics as metrics_module
from meshproxy.observe.metrics import MULTIPROC_ENV, UNKNOWN_SERVICE, ProxyMetrics


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def scrape(metrics: ProxyMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the rendered text, keyed by (sample name, labels)."""
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def shape(service: str, direction: str = "outbound", source: str = "unknown") -> dict[str, str]:
    """Histogram labels of what ``request_done`` records (no subset, unknown source)."""
    return {
        "direction": direction,
        "source_service": source,
        "destination_service": service,
        "destination_subset": "-",
    }


def req(service: str, code: str, direction: str = "outbound") -> dict[str, str]:
    """Request-counter labels of what ``request_done`` records."""
    return {**shape(service, direction), "route": "-", "response_code": code, "response_flags": "-"}


def test_requests_are_counted_by_listener_service_and_code() -> None:
    m = ProxyMetrics(services=["ratings", "reviews"])
    for _ in range(3):
        m.request_done("outbound", "ratings", 200, 0.001)
    m.request_done("outbound", "ratings", 503, 0.001)
    m.request_done("inbound", "reviews", 200, 0.001)
    s = scrape(m)
    total = "meshproxy_requests_total"
    assert s[key(total, **req("ratings", "200", "outbound"))] == 3
    assert s[key(total, **req("ratings", "503", "outbound"))] == 1
    assert s[key(total, **req("reviews", "200", "inbound"))] == 1


def test_durations_fall_in_cumulative_buckets_with_bounds_inclusive() -> None:
    m = ProxyMetrics(services=["ratings"])
    for seconds in (0.0004, 0.0005, 0.003, 0.3, 20.0):
        m.request_done("outbound", "ratings", 200, seconds)
    s = scrape(m)

    def bucket(le: str) -> float:
        name = "meshproxy_request_duration_seconds_bucket"
        return s[key(name, le=le, **shape("ratings"))]

    assert bucket("0.0005") == 2
    assert bucket("0.001") == 2
    assert bucket("0.005") == 3
    assert bucket("0.5") == 4
    assert bucket("10.0") == 4
    assert bucket("+Inf") == 5
    labels = shape("ratings")
    assert s[key("meshproxy_request_duration_seconds_count", **labels)] == 5
    assert s[key("meshproxy_request_duration_seconds_sum", **labels)] == pytest.approx(20.3039)


def test_histogram_is_shared_by_all_codes_of_a_service() -> None:
    m = ProxyMetrics(services=["ratings"])
    m.request_done("outbound", "ratings", 200, 0.01)
    m.request_done("outbound", "ratings", 500, 0.01)
    s = scrape(m)
    labels = shape("ratings")
    assert s[key("meshproxy_request_duration_seconds_count", **labels)] == 2


def test_undeclared_service_is_counted_as_unknown() -> None:
    m = ProxyMetrics(services=["ratings"])
    m.request_done("outbound", "evil.example", 200, 0.001)
    m.request_done("outbound", "other.example", 200, 0.001)
    s = scrape(m)
    unknown = key("meshproxy_requests_total", **req(UNKNOWN_SERVICE, "200"))
    assert s[unknown] == 2
    assert not any(("service", "evil.example") in labels for _, labels in s)


def test_declaring_services_later_applies_to_names_seen_before() -> None:
    m = ProxyMetrics(services=["ratings"])
    m.request_done("outbound", "reviews", 200, 0.001)
    m.set_services(["ratings", "reviews"])
    m.request_done("outbound", "reviews", 200, 0.001)
    s = scrape(m)
    total = "meshproxy_requests_total"
    assert s[key(total, **req(UNKNOWN_SERVICE, "200", "outbound"))] == 1
    assert s[key(total, **req("reviews", "200", "outbound"))] == 1


def test_without_declared_services_names_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_UNDECLARED_SERVICES", 2)
    m = ProxyMetrics()
    for name in ("a", "b", "c", "d", "a"):
        m.request_done("outbound", name, 200, 0.001)
    s = scrape(m)
    services = {
        dict(labels)["destination_service"]: value
        for (name, labels), value in s.items()
        if name == "meshproxy_requests_total"
    }
    assert services == {"a": 2, "b": 1, UNKNOWN_SERVICE: 2}


@pytest.mark.parametrize(("status", "code"), [(0, "0"), (99, "0"), (600, "0"), (100, "100")])
def test_status_outside_http_range_is_labelled_zero(status: int, code: str) -> None:
    m = ProxyMetrics(services=["ratings"])
    m.request_done("outbound", "ratings", status, 0.001)
    s = scrape(m)
    assert s[key("meshproxy_requests_total", **req("ratings", code, "outbound"))] == 1


def test_hot_path_cache_stays_bounded_and_loses_no_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_CACHED_KEYS", 8)
    m = ProxyMetrics(services=["ratings"])
    for i in range(50):
        m.request_done("outbound", f"host-{i}.example", 200, 0.001)
        assert m._counter.size() <= 8
    s = scrape(m)
    unknown = key("meshproxy_requests_total", **req(UNKNOWN_SERVICE, "200"))
    assert s[unknown] == 50


def test_active_connections_follow_opens_and_closes_per_listener() -> None:
    m = ProxyMetrics()
    for _ in range(3):
        m.connection_opened("outbound")
    m.connection_closed("outbound")
    m.connection_opened("inbound")
    s = scrape(m)
    assert s[key("meshproxy_active_connections", listener="outbound")] == 2
    assert s[key("meshproxy_active_connections", listener="inbound")] == 1


def test_info_names_version_and_fast_path() -> None:
    s = scrape(ProxyMetrics())
    assert s[key("meshproxy_info", version=__version__, implementation=IMPLEMENTATION)] == 1
    assert IMPLEMENTATION in ("cython", "python")


def test_only_the_latest_config_version_is_shown() -> None:
    m = ProxyMetrics()
    m.config_loaded("v1")
    m.config_loaded("v2")
    m.config_loaded("v2")
    versions = {
        dict(labels)["version"]: v
        for (n, labels), v in scrape(m).items()
        if n == "meshproxy_config_version"
    }
    assert versions == {"v2": 1}


def test_process_memory_and_cpu_are_exported() -> None:
    s = scrape(ProxyMetrics())
    assert s[key("process_resident_memory_bytes")] > 0
    assert key("process_cpu_seconds_total") in s


def test_render_gives_prometheus_text_content_type() -> None:
    _, content_type = ProxyMetrics().render()
    assert content_type.startswith("text/plain; version=")


def test_each_instance_has_its_own_registry() -> None:
    first, second = ProxyMetrics(), ProxyMetrics()
    first.request_done("outbound", "ratings", 200, 0.001)
    assert key("meshproxy_requests_total", **req("ratings", "200")) not in scrape(second)


def test_given_registry_receives_the_metrics() -> None:
    registry = CollectorRegistry()
    m = ProxyMetrics(registry, services=["ratings"])
    m.request_done("outbound", "ratings", 200, 0.001)
    m.flush()
    labels = req("ratings", "200")
    assert registry.get_sample_value("meshproxy_requests_total", labels) == 1


def test_flushing_from_another_thread_while_counting_loses_nothing() -> None:
    m = ProxyMetrics(services=["ratings"])
    stop = threading.Event()

    def flush_until_stopped() -> None:
        while not stop.is_set():
            m.flush()

    flusher = threading.Thread(target=flush_until_stopped)
    flusher.start()
    try:
        for i in range(20_000):
            m.request_done("outbound", "ratings", 200 + i % 2, 0.002)
    finally:
        stop.set()
        flusher.join(timeout=10)
    assert not flusher.is_alive()
    s = scrape(m)
    total = "meshproxy_requests_total"
    assert s[key(total, **req("ratings", "200", "outbound"))] == 10_000
    assert s[key(total, **req("ratings", "201", "outbound"))] == 10_000
    labels = shape("ratings")
    assert s[key("meshproxy_request_duration_seconds_count", **labels)] == 20_000
    assert s[key("meshproxy_request_duration_seconds_sum", **labels)] == pytest.approx(40.0)


async def test_periodic_flush_publishes_without_a_render() -> None:
    registry = CollectorRegistry()
    m = ProxyMetrics(registry, services=["ratings"])
    m.request_done("outbound", "ratings", 200, 0.001)
    labels = req("ratings", "200")
    assert registry.get_sample_value("meshproxy_requests_total", labels) == 0
    m.flush_periodically(asyncio.get_running_loop(), interval_s=0.01)
    try:
        for _ in range(200):
            if registry.get_sample_value("meshproxy_requests_total", labels) == 1:
                break
            await asyncio.sleep(0.01)
        assert registry.get_sample_value("meshproxy_requests_total", labels) == 1
    finally:
        m.close()
    assert m._flush_timer is None


def test_rate_limit_decisions_counted_before_new_services_are_declared_are_kept() -> None:
    m = ProxyMetrics(services=["ratings"])
    for allowed in (True, True, False):
        m.rate_limit_decision("ratings", allowed)
    m.set_services(["ratings", "reviews"])  # a new snapshot, before any flush
    m.rate_limit_decision("ratings", True)
    m.rate_limit_decision("reviews", False)
    got = scrape(m)
    decisions = "meshproxy_rate_limit_decisions_total"
    assert got[key(decisions, service="ratings", decision="allowed")] == 3
    assert got[key(decisions, service="ratings", decision="limited")] == 1
    assert got[key(decisions, service="reviews", decision="limited")] == 1
