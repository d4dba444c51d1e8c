"""The local registry: instances registered through the API, kept alive by a
TTL heartbeat or by an HTTP health check that the control plane runs.

Sans-IO: every method takes ``now``; running the HTTP checks and persisting the
instances is the caller's job.  Health is runtime state (not persisted): a new
or reloaded instance counts as healthy until its TTL lapses or a check fails,
so a restarted control plane does not empty the mesh while heartbeats resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshproxy.config.policy import Endpoint
from meshproxy.config.types import Duration

Name = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class HealthCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str = Field(default="/healthz", pattern=r"^/[^\s]*$", max_length=2048)
    interval: Duration = Field(default=10.0, ge=0.05)
    timeout: Duration = Field(default=2.0, ge=0.05)
    unhealthy_threshold: int = Field(default=1, ge=1, le=100)


class InstanceSpec(BaseModel):
    """What a caller registers.  Exactly one of ``ttl`` and ``check``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    service: Name
    address: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    labels: dict[str, str] = {}
    zone: str | None = None
    weight: int = Field(default=1, ge=1, le=128)
    ttl: Duration | None = Field(default=None, ge=0.05)
    check: HealthCheck | None = None

    @model_validator(mode="after")
    def _one_liveness(self) -> InstanceSpec:
        if (self.ttl is None) == (self.check is None):
            raise ValueError("give exactly one of 'ttl' (heartbeats) or 'check' (an HTTP check)")
        return self

    def endpoint(self) -> Endpoint:
        return Endpoint(
            address=self.address,
            port=self.port,
            labels=self.labels,
            zone=self.zone,
            weight=self.weight,
        )


@dataclass(frozen=True)
class Instance:
    id: str
    spec: InstanceSpec


@dataclass
class _Live:
    instance: Instance
    healthy: bool
    last_heartbeat: float
    next_check: float
    failures: int = 0


@dataclass(frozen=True)
class InstanceStatus:
    id: str
    spec: InstanceSpec
    healthy: bool
    liveness: Literal["ttl", "check"]


class LocalRegistry:
    def __init__(self) -> None:
        self._live: dict[str, _Live] = {}

    def add(self, instance: Instance, now: float) -> None:
        """Register (or reload from the store) ``instance``, healthy for now."""
        self._live[instance.id] = _Live(instance, True, now, now)

    def remove(self, instance_id: str) -> bool:
        return self._live.pop(instance_id, None) is not None

    def get(self, instance_id: str) -> Instance | None:
        live = self._live.get(instance_id)
        return live.instance if live else None

    def heartbeat(self, instance_id: str, now: float) -> bool | None:
        """Record a heartbeat.  None: unknown id; True: health changed (it was
        expired and is back); False: it stays healthy."""
        live = self._live.get(instance_id)
        if live is None:
            return None
        live.last_heartbeat = now
        if live.healthy:
            return False
        live.healthy = True
        return True

    def expire(self, now: float) -> list[str]:
        """Mark TTL instances whose heartbeat lapsed unhealthy; return their ids."""
        lapsed = []
        for live in self._live.values():
            ttl = live.instance.spec.ttl
            if ttl is not None and live.healthy and now - live.last_heartbeat > ttl:
                live.healthy = False
                lapsed.append(live.instance.id)
        return lapsed

    def due_checks(self, now: float) -> list[Instance]:
        """Instances whose HTTP check should run now; each is rescheduled."""
        due = []
        for live in self._live.values():
            check = live.instance.spec.check
            if check is not None and live.next_check <= now:
                live.next_check = now + check.interval
                due.append(live.instance)
        return due

    def check_result(self, instance_id: str, ok: bool, now: float) -> bool:
        """Record one check outcome; True when the instance's health changed."""
        live = self._live.get(instance_id)
        if live is None or live.instance.spec.check is None:
            return False
        if ok:
            live.failures = 0
            changed = not live.healthy
            live.healthy = True
            return changed
        live.failures += 1
        if live.healthy and live.failures >= live.instance.spec.check.unhealthy_threshold:
            live.healthy = False
            return True
        return False

    def statuses(self) -> list[InstanceStatus]:
        return [
            InstanceStatus(
                live.instance.id,
                live.instance.spec,
                live.healthy,
                "ttl" if live.instance.spec.ttl is not None else "check",
            )
            for live in sorted(self._live.values(), key=lambda v: v.instance.id)
        ]

    def services(self) -> set[str]:
        return {live.instance.spec.service for live in self._live.values()}

    def healthy_endpoints(self) -> dict[str, list[Endpoint]]:
        """Healthy endpoints of every registered service (an empty list when none
        is healthy), in a stable order (by instance id)."""
        out: dict[str, list[Endpoint]] = {}
        for live in sorted(self._live.values(), key=lambda v: v.instance.id):
            endpoints = out.setdefault(live.instance.spec.service, [])
            if live.healthy:
                endpoints.append(live.instance.spec.endpoint())
        return out
