"""Where a rollout's canary numbers come from: the sidecars' own ``/metrics`` or Prometheus.

Both read the same series the sidecar exports (``meshproxy/observe/metrics.py``):
``meshproxy_requests_total`` and ``meshproxy_request_duration_seconds`` with
``direction="outbound"``, ``destination_service`` and ``destination_subset``
set to the canary, i.e. what the callers' sidecars saw.  A failed request is a
5xx or no response at all (code ``0``).  Both return cumulative counters
(``CanarySample``); the judging is ``control/rollout.py``'s.  This room does
I/O only; it decides nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

from aiohttp import ClientError, ClientSession, ClientTimeout
from prometheus_client.parser import text_string_to_metric_families

from control.rollout import CanarySample, PrometheusSource, RolloutSpec, SidecarSource

REQUESTS = "meshproxy_requests"
DURATION = "meshproxy_request_duration_seconds"
TIMEOUT = ClientTimeout(total=5.0)


class MetricsUnavailable(Exception):
    """The source could not be read or answered nonsense."""


class CanaryMetrics(Protocol):
    async def sample(self, session: ClientSession) -> CanarySample: ...


def _failed(code: str) -> bool:
    return code == "0" or code.startswith("5")


def sample_from_exposition(texts: Iterable[str], service: str, subset: str) -> CanarySample:
    """Sum the canary's series over several sidecars' text expositions."""
    requests = failures = 0.0
    buckets: dict[float, float] = {}
    try:
        for text in texts:
            for family in text_string_to_metric_families(text):
                # Matched on sample names: the parser names a counter's family with
                # or without ``_total`` depending on the exposition's TYPE line.
                if not family.name.startswith((REQUESTS, DURATION)):
                    continue
                for s in family.samples:
                    labels = s.labels
                    if (
                        labels.get("direction") != "outbound"
                        or labels.get("destination_service") != service
                        or labels.get("destination_subset") != subset
                    ):
                        continue
                    if s.name == REQUESTS + "_total":
                        requests += s.value
                        if _failed(labels.get("response_code", "")):
                            failures += s.value
                    elif s.name == DURATION + "_bucket":
                        le = float(labels["le"])
                        buckets[le] = buckets.get(le, 0.0) + s.value
    except (ValueError, KeyError) as exc:
        raise MetricsUnavailable(f"unreadable exposition: {exc}") from None
    return CanarySample(requests, failures, tuple(sorted(buckets.items())))


class SidecarMetrics:
    """Scrape each calling sidecar's ``/metrics`` and add them up."""

    def __init__(self, source: SidecarSource, service: str, subset: str) -> None:
        self.urls = list(source.urls)
        self.service, self.subset = service, subset

    async def sample(self, session: ClientSession) -> CanarySample:
        texts = []
        for url in self.urls:
            try:
                async with session.get(url, timeout=TIMEOUT) as response:
                    if response.status != 200:
                        raise MetricsUnavailable(f"{url} answered {response.status}")
                    texts.append(await response.text())
            except (ClientError, TimeoutError, OSError, UnicodeDecodeError) as exc:
                raise MetricsUnavailable(f"{url}: {exc!r}") from None
        return sample_from_exposition(texts, self.service, self.subset)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class PrometheusMetrics:
    """Instant queries of the summed counters through Prometheus' HTTP API."""

    def __init__(self, source: PrometheusSource, service: str, subset: str) -> None:
        self.url = source.url.rstrip("/") + "/api/v1/query"
        self.selector = (
            f'direction="outbound",destination_service="{_quote(service)}",'
            f'destination_subset="{_quote(subset)}"'
        )

    def queries(self) -> tuple[str, str, str]:
        sel = self.selector
        return (
            f"sum({REQUESTS}_total{{{sel}}})",
            f'sum({REQUESTS}_total{{{sel},response_code=~"0|5.."}})',
            f"sum by (le) ({DURATION}_bucket{{{sel}}})",
        )

    async def _query(
        self, session: ClientSession, query: str
    ) -> list[tuple[dict[str, str], float]]:
        try:
            async with session.get(self.url, params={"query": query}, timeout=TIMEOUT) as response:
                body = await response.json(content_type=None)
        except (ClientError, TimeoutError, OSError, ValueError) as exc:
            raise MetricsUnavailable(f"prometheus: {exc!r}") from None
        try:
            if body["status"] != "success" or body["data"]["resultType"] != "vector":
                raise MetricsUnavailable(f"prometheus refused {query!r}: {body.get('error')}")
            return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise MetricsUnavailable(f"prometheus answer not understood: {exc!r}") from None

    async def sample(self, session: ClientSession) -> CanarySample:
        total_q, failed_q, buckets_q = self.queries()
        total = sum(v for _, v in await self._query(session, total_q))
        failed = sum(v for _, v in await self._query(session, failed_q))
        buckets: list[tuple[float, float]] = []
        for labels, value in await self._query(session, buckets_q):
            try:
                buckets.append((float(labels["le"]), value))
            except (KeyError, ValueError):
                raise MetricsUnavailable(f"bucket without a usable le: {labels}") from None
        buckets.sort()
        if buckets and not math.isinf(buckets[-1][0]):
            raise MetricsUnavailable("the histogram has no +Inf bucket")
        return CanarySample(total, failed, tuple(buckets))


def metrics_for(spec: RolloutSpec) -> CanaryMetrics | None:
    if isinstance(spec.metrics, PrometheusSource):
        return PrometheusMetrics(spec.metrics, spec.service, spec.canary)
    if isinstance(spec.metrics, SidecarSource):
        return SidecarMetrics(spec.metrics, spec.service, spec.canary)
    return None
