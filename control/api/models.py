"""Bodies the API takes and gives that are not snapshot models.

They exist so that handlers validate with pydantic and the OpenAPI document
describes exactly what the handlers use.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Body):
    field: str
    message: str


class ErrorBody(_Body):
    error: str
    problems: list[Problem] = []


class Written(_Body):
    version: int = Field(description="the global version this change produced")


class Registered(_Body):
    id: str
    version: int


class RollbackRequest(_Body):
    version: int = Field(ge=0)


class AckRequest(_Body):
    node: str = Field(min_length=1, max_length=253)
    version: int = Field(ge=0)
    nonce: str = Field(min_length=1, max_length=64)
    error: str | None = Field(default=None, max_length=4096, description="present: a NACK")


class Acked(_Body):
    recorded: bool


class InstanceView(_Body):
    id: str
    service: str
    address: str
    port: int
    labels: dict[str, str]
    zone: str | None
    healthy: bool
    liveness: str


class ServiceView(_Body):
    name: str
    instances: int
    healthy: int
    routes: bool
    policy: bool
    access: bool


class ServiceList(_Body):
    version: int
    services: list[ServiceView]
    instances: list[InstanceView]


class ProxyView(_Body):
    id: str
    service: str
    upstreams: list[str] | None
    sent_version: int | None
    acked_version: int | None
    last_error: str | None
    error_version: int | None
    last_seen: float = Field(description="unix time of its last poll or ack")
    watching: bool


class ProxyList(_Body):
    version: int
    proxies: list[ProxyView]


class HistoryView(_Body):
    version: int
    time: float
    actor: str
    action: str
    target: str
    summary: str
    state_changed: bool


class HistoryList(_Body):
    version: int
    entries: list[HistoryView]


class VersionState(_Body):
    entry: HistoryView
    state: dict[str, dict[str, object]]


class SnapshotDelivery(_Body):
    version: int
    nonce: str
    snapshot: dict[str, object]


class Health(_Body):
    status: str
    version: int
