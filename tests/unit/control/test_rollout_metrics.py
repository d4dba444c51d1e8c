"""Canary numbers from the sidecar's real exposition and from Prometheus' query API.

The Prometheus answers are served by a stand-in on 127.0.0.1 in the documented
``/api/v1/query`` response format (status, data.resultType, data.result).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from control.rollout import PrometheusSource
from control.rollout_metrics import MetricsUnavailable, PrometheusMetrics, sample_from_exposition
from meshproxy.observe.metrics import MULTIPROC_ENV, ProxyMetrics


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def test_the_sidecar_exposition_sums_over_sidecars_and_counts_5xx_as_failed() -> None:
    texts = []
    for failed in (1, 2):
        m = ProxyMetrics(services=["ratings"])
        for _ in range(4):
            m.request_done("outbound", "ratings", 200, 0.003)
        for _ in range(failed):
            m.request_done("outbound", "ratings", 503, 0.3)
        m.request_done("inbound", "ratings", 500, 0.3)  # another direction: not the canary's
        texts.append(m.render()[0].decode())
    # request_done records no subset ("-"); the exchange path fills it in.
    sample = sample_from_exposition(texts, "ratings", "-")
    assert (sample.requests, sample.failures) == (11, 3)
    assert sample.buckets[-1] == (math.inf, 11)
    assert sample_from_exposition(texts, "ratings", "v2").requests == 0


class FakePrometheus:
    def __init__(self) -> None:
        self.queries: list[str] = []
        self.broken = False

    async def query(self, request: web.Request) -> web.Response:
        q = request.query["query"]
        self.queries.append(q)
        if self.broken:
            return web.json_response({"status": "error", "error": "bad_data"}, status=400)
        if q.startswith("sum by (le)"):
            result: list[dict[str, Any]] = [
                {"metric": {"le": le}, "value": [1700000000.0, v]}
                for le, v in (("0.1", "90"), ("+Inf", "100"), ("0.5", "99"))
            ]
        elif "response_code" in q:
            result = [{"metric": {}, "value": [1700000000.0, "7"]}]
        else:
            result = [{"metric": {}, "value": [1700000000.0, "100"]}]
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )


@pytest.fixture
async def prometheus() -> AsyncIterator[tuple[FakePrometheus, str]]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.query)
    async with TestServer(app, host="127.0.0.1") as server:
        yield fake, str(server.make_url(""))


async def test_the_prometheus_source_sums_the_canary_series(
    prometheus: tuple[FakePrometheus, str],
) -> None:
    fake, url = prometheus
    source = PrometheusMetrics(PrometheusSource(url=url), "ratings", "v2")
    async with ClientSession() as session:
        sample = await source.sample(session)
    assert (sample.requests, sample.failures) == (100, 7)
    assert sample.buckets == ((0.1, 90), (0.5, 99), (math.inf, 100))
    selector = 'direction="outbound",destination_service="ratings",destination_subset="v2"'
    assert fake.queries[0] == f"sum(meshproxy_requests_total{{{selector}}})"
    assert 'response_code=~"0|5.."' in fake.queries[1]


async def test_a_prometheus_error_is_metrics_unavailable(
    prometheus: tuple[FakePrometheus, str],
) -> None:
    fake, url = prometheus
    fake.broken = True
    source = PrometheusMetrics(PrometheusSource(url=url), "ratings", "v2")
    async with ClientSession() as session:
        with pytest.raises(MetricsUnavailable, match="bad_data"):
            await source.sample(session)
