"""The snapshot: everything a sidecar runs with (DESIGN section 3).

One definition, two sources: a YAML file (static mode) or the control plane
(dynamic mode).  Models only validate and describe; compiling them into fast
structures is the job of ``routing`` and ``upstream``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshproxy.config.types import Duration


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Endpoint(Model):
    address: str
    port: int = Field(ge=1, le=65535)
    labels: dict[str, str] = {}
    zone: str | None = None
    weight: int = Field(default=1, ge=1, le=128)


class Service(Model):
    endpoints: list[Endpoint] = []


class StringMatch(Model):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StringMatch:
        kinds = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of exact, prefix, regex, present")
        return self


class Match(Model):
    path: StringMatch | None = None
    method: str | None = None
    headers: dict[str, StringMatch] = {}
    query_params: dict[str, StringMatch] = {}


class Backend(Model):
    subset: str | None = None
    service: str | None = None
    weight: int = Field(default=1, ge=0)


class HashOn(Model):
    header: str | None = None
    cookie: str | None = None
    client_address: bool | None = None


class Retries(Model):
    attempts: int = Field(default=1, ge=0, le=10)
    per_try_timeout: Duration | None = None
    retry_on: list[
        Literal["connect-failure", "reset", "5xx", "gateway-error", "retriable-status-codes"]
    ] = ["connect-failure"]


class Rule(Model):
    match: list[Match] = []
    backends: list[Backend] = []
    hash_on: HashOn | None = None
    timeout: Duration | None = None
    retries: Retries | None = None


class RouteTable(Model):
    service: str
    hosts: list[str] = []
    rules: list[Rule]


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


class AccessSource(Model):
    services: list[str] = []
    principals: list[str] = []
    addresses: list[str] = []


class AccessTarget(Model):
    methods: list[str] = []
    paths: list[str] = []


class AccessRule(Model):
    from_: AccessSource | None = Field(default=None, alias="from")
    to: AccessTarget | None = None


class Access(Model):
    service: str
    action: Literal["allow", "deny"]
    rules: list[AccessRule] = []


class Snapshot(Model):
    version: str | None = None
    services: dict[str, Service] = {}
    routes: list[RouteTable] = []
    policies: list[Policy] = []
    access: list[Access] = []
