"""The bootstrap's ``observability`` section: metrics, access log, tracing.

Shape (every key optional; the defaults are metrics on, access log off,
tracing off)::

    observability:
      metrics: {enabled: true, flush_interval: 1s}
      access_log: {enabled: true, path: "-", sampling: 0.1, queue_size: 8192}
      tracing: {exporter: otlp_http, endpoint: http://127.0.0.1:4318/v1/traces,
                sampling: 0.01, propagation: [w3c, b3, b3multi]}

Only models here: the observe room turns them into working parts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from meshproxy.config.base import Model
from meshproxy.config.types import Duration

__all__ = ["AccessLogConfig", "MetricsConfig", "Observability", "TracingConfig"]


class MetricsConfig(Model):
    enabled: bool = True
    # How often the plain counters of the hot path are published to the scrape.
    flush_interval: Duration = Field(default=1.0, gt=0)


class AccessLogConfig(Model):
    enabled: bool = False
    # "-" is stdout; anything else a file appended to.
    path: str = "-"
    # Fraction of exchanges logged (1.0 = all), decided per exchange.
    sampling: float = Field(default=1.0, ge=0.0, le=1.0)
    # Lines waiting for the writer thread; past this, lines are dropped and counted.
    queue_size: int = Field(default=8192, ge=1, le=1_000_000)


class TracingConfig(Model):
    exporter: Literal["none", "otlp_http", "otlp_grpc"] = "none"
    endpoint: str | None = None
    # Ratio of new traces (no sampled flag from upstream) that are sampled.
    sampling: float = Field(default=0.01, ge=0.0, le=1.0)
    # Header formats read on the way in (first that parses wins).  Our span goes
    # out in the formats the request carried, or in the first one for a new trace.
    propagation: tuple[Literal["w3c", "b3", "b3multi"], ...] = Field(
        default=("w3c", "b3", "b3multi"), min_length=1
    )
    service_name: str | None = None  # default: the node's service
    # Exporter batching: spans queued, exported per batch, at most this often.
    max_queue_size: int = Field(default=2048, ge=1)
    max_export_batch_size: int = Field(default=512, ge=1)
    schedule_delay: Duration = Field(default=1.0, gt=0)
    export_timeout: Duration = Field(default=10.0, gt=0)
    # Where spans are built and exported: "process", a child process of each
    # worker at the lowest CPU priority (about 45 MiB more, no cost to the
    # data path's throughput); "thread", the SDK's thread in the worker (about
    # 10% of a saturated worker's throughput at 1% sampling).
    export_in: Literal["process", "thread"] = "process"

    @model_validator(mode="after")
    def _endpoint_when_exporting(self) -> TracingConfig:
        if self.exporter != "none" and not self.endpoint:
            raise ValueError(f"tracing exporter {self.exporter!r} needs 'endpoint'")
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        return self

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"


class Observability(Model):
    metrics: MetricsConfig = MetricsConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    tracing: TracingConfig = TracingConfig()
