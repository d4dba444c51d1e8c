"""Service policies: subsets, load balancing, health checks, outlier detection,
circuit breakers, rate limits; and the endpoints of a service.

Field names and defaults follow Envoy's cluster settings in snake_case
(DESIGN section 3).  These models only validate and describe; the state
machines that act on them live in ``meshproxy.upstream``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from meshproxy.config.base import Model
from meshproxy.config.filters import RedisTarget
from meshproxy.config.security import ServiceTLS
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


class HashOn(Model):
    """Where the consistent-hash key of a request comes from: exactly one of them."""

    header: str | None = None
    cookie: str | None = None
    client_address: bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> HashOn:
        given = [self.header is not None, self.cookie is not None, bool(self.client_address)]
        if sum(given) != 1:
            raise ValueError("give exactly one of header, cookie, client_address: true")
        return self


class Locality(Model):
    """Zone-aware routing: keep traffic in the node's zone while that zone is
    healthy enough, spill the shortfall to the other zones when it is not.

    With a local healthy share ``h`` (percent) below ``min_healthy_percent`` the
    local zone gets ``h / min_healthy_percent`` of the requests (70 is Envoy's
    overprovisioning factor of 1.4).  Clusters with fewer than
    ``min_cluster_size`` endpoints ignore zones, as Envoy does."""

    enabled: bool = False
    min_healthy_percent: int = Field(default=70, ge=1, le=100)
    min_cluster_size: int = Field(default=6, ge=1)


class LoadBalancer(Model):
    policy: Literal["round_robin", "random", "least_request", "consistent_hash"] = "round_robin"
    hash_on: HashOn | None = None
    minimum_ring_size: int = Field(default=1024, ge=16, le=1 << 20)
    locality: Locality = Locality()
    # Below this share of routable endpoints (percent) a cluster balances over
    # all of its endpoints, healthy or not; 0 turns panic mode off.
    healthy_panic_threshold: int = Field(default=50, ge=0, le=100)

    @model_validator(mode="after")
    def _hash_needs_key(self) -> LoadBalancer:
        if self.policy == "consistent_hash" and self.hash_on is None:
            raise ValueError("policy consistent_hash needs hash_on")
        if self.policy != "consistent_hash" and self.hash_on is not None:
            raise ValueError("hash_on is only used by policy consistent_hash")
        return self


class HealthCheck(Model):
    """Active HTTP health checking: ``GET path`` every ``interval`` plus up to
    ``jitter``; a probe fails on timeout, connection error or an unexpected status."""

    path: str = "/healthz"
    interval: Duration = 10.0
    jitter: Duration = 0.0
    timeout: Duration = 1.0
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=3, ge=1)
    expected_statuses: list[int] = [200]

    @model_validator(mode="after")
    def _sane(self) -> HealthCheck:
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if not self.expected_statuses or any(not 100 <= s <= 599 for s in self.expected_statuses):
            raise ValueError("expected_statuses must be HTTP statuses (100-599)")
        return self


class OutlierDetection(Model):
    consecutive_5xx: int = Field(default=5, ge=1)
    consecutive_gateway_errors: int | None = Field(default=None, ge=1)
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    # As in Envoy, the effective cap is the larger of this and base_ejection_time.
    max_ejection_time: Duration = 300.0
    max_ejection_percent: int = Field(default=10, ge=0, le=100)

    @model_validator(mode="after")
    def _positive(self) -> OutlierDetection:
        if self.interval <= 0 or self.base_ejection_time <= 0:
            raise ValueError("interval and base_ejection_time must be positive")
        return self


class CircuitBreakers(Model):
    max_connections: int = Field(default=1024, ge=1)
    max_pending_requests: int = Field(default=1024, ge=1)
    max_requests: int = Field(default=1024, ge=1)
    max_retries: int = Field(default=3, ge=0)


class EndpointBreaker(Model):
    """Per-endpoint breaker: open after ``consecutive_failures`` (5xx or
    connection failures), let one trial request through after ``open_timeout``."""

    consecutive_failures: int = Field(default=5, ge=1)
    open_timeout: Duration = 10.0

    @model_validator(mode="after")
    def _positive(self) -> EndpointBreaker:
        if self.open_timeout <= 0:
            raise ValueError("open_timeout must be positive")
        return self


class RateLimit(Model):
    """A token bucket per key value (``meshproxy.policy.ratelimit``).

    ``key``: ``client_address``, ``route``, ``peer`` (the caller's principal),
    ``header`` (the value of ``header``; absent header: not limited) or
    ``service`` (one bucket for every request).  ``burst``: the bucket size,
    0 meaning one second's worth.  ``scope: global`` shares one limit between
    every sidecar through Redis (GCRA); ``on_redis_error`` says what a request
    gets while Redis cannot answer."""

    key: Literal["client_address", "route", "peer", "header", "service"]
    header: str | None = None
    requests_per_second: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)
    name: str | None = None  # the policy name in RateLimit headers; default: the key
    scope: Literal["local", "global"] = "local"
    redis: RedisTarget | None = None
    on_redis_error: Literal["allow", "deny"] = "allow"

    @model_validator(mode="after")
    def _consistent(self) -> RateLimit:
        if (self.key == "header") != (self.header is not None):
            raise ValueError("key: header needs 'header' (and only it takes one)")
        if self.scope == "global" and self.redis is None:
            raise ValueError("scope: global needs 'redis'")
        if self.scope == "local" and self.redis is not None:
            raise ValueError("'redis' is only used by scope: global")
        return self


class Policy(Model):
    service: str
    subsets: dict[str, Subset] = {}
    load_balancer: LoadBalancer = LoadBalancer()
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    endpoint_breaker: EndpointBreaker | None = None
    rate_limits: list[RateLimit] = []
    tls: ServiceTLS = ServiceTLS()
