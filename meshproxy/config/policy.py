"""Service policies: subsets, load balancing, outlier detection, circuit breakers,
rate limits; and the endpoints of a service."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshproxy.config.base import Model
from meshproxy.config.types import Duration


class Endpoint(Model):
    address: str
    port: int = Field(ge=1, le=65535)
    labels: dict[str, str] = {}
    zone: str | None = None
    weight: int = Field(default=1, ge=1, le=128)


class Service(Model):
    endpoints: list[Endpoint] = []


class Subset(Model):
    labels: dict[str, str]


class LoadBalancer(Model):
    policy: Literal["round_robin", "random", "least_request", "consistent_hash"] = "round_robin"


class OutlierDetection(Model):
    consecutive_5xx: int = Field(default=5, ge=1)
    consecutive_gateway_errors: int | None = Field(default=None, ge=1)
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_time: Duration = 300.0
    max_ejection_percent: int = Field(default=10, ge=0, le=100)


class CircuitBreakers(Model):
    max_connections: int = Field(default=1024, ge=1)
    max_pending_requests: int = Field(default=1024, ge=1)
    max_requests: int = Field(default=1024, ge=1)
    max_retries: int = Field(default=3, ge=0)


class RateLimit(Model):
    key: str
    requests_per_second: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)


class Policy(Model):
    service: str
    subsets: dict[str, Subset] = {}
    load_balancer: LoadBalancer = LoadBalancer()
    outlier_detection: OutlierDetection | None = None
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    rate_limits: list[RateLimit] = []
