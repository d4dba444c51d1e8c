"""The bootstrap file read by ``meshproxy run --config FILE`` (DESIGN section 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from meshproxy.config.base import Model
from meshproxy.config.observability import Observability
from meshproxy.config.security import Security
from meshproxy.config.snapshot import Snapshot
from meshproxy.config.types import Duration, HostPort


class Node(Model):
    id: str
    service: str
    zone: str | None = None
    upstreams: list[str] | None = None


class Admin(Model):
    address: str = "127.0.0.1"
    port: int = Field(default=15000, ge=0, le=65535)


class Timeouts(Model):
    connect: Duration = 1.0  # opening a connection to an upstream endpoint
    request: Duration = 15.0  # waiting for an upstream response head
    idle: Duration = 60.0  # a downstream connection with no request in progress
    request_head: Duration = 10.0  # receiving a complete request head
    upstream_idle: Duration = 50.0  # an idle pooled upstream connection


class Listener(Model):
    name: str
    protocol: Literal["http", "tcp"] = "http"
    direction: Literal["outbound", "inbound"] = "outbound"
    address: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    local_app: HostPort | None = None
    service: str | None = None
    timeouts: Timeouts = Timeouts()

    @model_validator(mode="after")
    def _needs(self) -> Listener:
        # An inbound HTTP listener without ``local_app`` is a gateway: the node
        # service's rate limits and access policies apply, then requests are
        # routed by Host through the route tables, as outbound ones are.
        if self.protocol == "tcp" and not self.service:
            raise ValueError("a tcp listener needs 'service'")
        if self.local_app and (self.protocol != "http" or self.direction != "inbound"):
            raise ValueError("'local_app' is for inbound http listeners")
        return self


class Limits(Model):
    max_head_size: int = Field(default=61440, ge=1024)
    max_headers: int = Field(default=100, ge=1)


class ControlPlane(Model):
    """Dynamic mode: where the snapshot comes from (``meshproxy.xds``)."""

    url: str = Field(pattern=r"^https?://[^\s?#]+$")
    token: SecretStr | None = None  # a bearer token with the read scope
    token_file: Path | None = None  # or the file holding it (read at start)
    wait: Duration = Field(default=30.0, gt=0, le=300.0)  # how long one long-poll may be held
    cache_dir: Path | None = None  # the last accepted snapshot is kept here; None: no cache

    @model_validator(mode="after")
    def _one_token(self) -> ControlPlane:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give 'token' or 'token_file', not both")
        return self


class Bootstrap(Model):
    node: Node
    admin: Admin = Admin()
    listeners: list[Listener] = []
    control_plane: ControlPlane | None = None
    limits: Limits = Limits()
    drain_timeout: Duration = 30.0
    snapshot: Snapshot = Snapshot()
    security: Security = Security()
    observability: Observability = Observability()
