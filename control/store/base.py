"""The store interface: a global version, compare-and-set commits, history.

Every change (to the desired state or to the registered instances) is one
commit that moves the global version from ``expected`` to ``expected + 1``;
a store refuses the commit with ``VersionConflict`` when its version is no
longer ``expected``.  That is all a replicated backend (Consul KV with
check-and-set on one version key) needs to provide, so it slots in beside
SQLite.  Stores are synchronous; the service calls them off the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from control.nodes import ServiceSpec
from control.registry.local import Instance, InstanceSpec
from control.rollout import RolloutRecord
from control.state import DesiredState

T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be opened or used (bad file, schema from the future)."""


class VersionConflict(StoreError):
    def __init__(self, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"version is {actual}, not {expected}")


@dataclass(frozen=True)
class Change:
    """One audited change: who did what, and what it leaves behind."""

    actor: str
    action: str  # put | delete | rollback | register | deregister | health
    target: str  # e.g. "routes/ratings", "instances/ratings-1a2b", "specs/ratings"
    summary: str
    state: DesiredState | None = None  # the new desired state, when it changed
    put_instances: tuple[Instance, ...] = ()
    deleted_instances: tuple[str, ...] = ()
    # Service specs (how to run a service, how many): kept as of the latest version,
    # like the instances, not in the history's states (a rollback leaves them be).
    put_specs: tuple[tuple[str, ServiceSpec], ...] = ()
    deleted_specs: tuple[str, ...] = ()
    # Rollouts, by service, kept the same way (written with the weights they set).
    put_rollouts: tuple[RolloutRecord, ...] = ()
    deleted_rollouts: tuple[str, ...] = ()


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    time: float
    actor: str
    action: str
    target: str
    summary: str
    state_changed: bool


@dataclass(frozen=True)
class Loaded:
    version: int
    state: DesiredState
    instances: list[Instance]
    specs: dict[str, ServiceSpec] = field(default_factory=dict)
    rollouts: dict[str, RolloutRecord] = field(default_factory=dict)


def parse_record(where: str, parse: Callable[[], T]) -> T:
    """Parse one stored record; a bad one is refused naming it (``where``), so that
    an operator can find and mend it instead of the control plane guessing."""
    try:
        return parse()
    except (ValidationError, ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"{where} is not valid: {exc}") from None


M = TypeVar("M", bound=BaseModel)


def _model(cls: type[M], raw: str | dict[str, object]) -> M:
    """A model from a stored JSON text (SQLite) or decoded JSON (Consul)."""
    return cls.model_validate_json(raw) if isinstance(raw, str) else cls.model_validate(raw)


def parse_instance(where: str, instance_id: str, raw: str | dict[str, object]) -> Instance:
    return parse_record(
        f"{where}: instance {instance_id!r}",
        lambda: Instance(instance_id, _model(InstanceSpec, raw)),
    )


def parse_spec(where: str, service: str, raw: str | dict[str, object]) -> ServiceSpec:
    return parse_record(f"{where}: spec of service {service!r}", lambda: _model(ServiceSpec, raw))


def parse_rollout(where: str, service: str, raw: str | dict[str, object]) -> RolloutRecord:
    return parse_record(
        f"{where}: rollout of service {service!r}", lambda: _model(RolloutRecord, raw)
    )


class Store(ABC):
    @abstractmethod
    def load(self) -> Loaded:
        """The current version, desired state and instances."""

    @abstractmethod
    def commit(self, expected: int, change: Change, now: float) -> int:
        """Apply ``change`` iff the version is ``expected``; return the new version."""

    @abstractmethod
    def history(self, limit: int, before: int | None = None) -> list[HistoryEntry]:
        """Newest first; only versions below ``before`` when it is given."""

    @abstractmethod
    def entry(self, version: int) -> HistoryEntry | None: ...

    @abstractmethod
    def state_at(self, version: int) -> DesiredState | None:
        """The desired state as it was at ``version`` (None: no such version)."""

    @abstractmethod
    def close(self) -> None: ...
