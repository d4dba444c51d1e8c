"""The control plane's state in one process: the desired state and its version,
the local registry, the push book, and the single way to change any of them.

Every change runs the same path under one lock: build the resulting state,
check it whole, commit it to the store (compare-and-set on the global version,
on a single-thread executor so SQLite never blocks the event loop), then swap
the in-memory copy and wake the long-polls.  Nothing here parses HTTP.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from control.nodes import ServiceSpec
from control.push import NodeInfo, PushBook, build_snapshot
from control.registry.local import Instance, InstanceSpec, LocalRegistry
from control.rollout import RolloutRecord
from control.state import DesiredState, Kind, Resource, StateError, check_state, parse_resource
from control.store.base import Change, HistoryEntry, Store, VersionConflict
from meshproxy.config.policy import Endpoint
from meshproxy.config.snapshot import Snapshot

P = ParamSpec("P")
T = TypeVar("T")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class NotFound(Exception):
    """The named resource, instance or version does not exist."""


def check_name(name: str, field: str = "service") -> None:
    if not NAME.match(name):
        raise StateError([(field, "a name is 1-253 letters, digits, '.', '_' or '-'")])


class ControlPlane:
    def __init__(
        self,
        store: Store,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        registry: LocalRegistry | None = None,
    ) -> None:
        self.store = store
        self.wall = wall
        self.monotonic = monotonic
        self.registry = registry if registry is not None else LocalRegistry()
        self.book = PushBook(lambda: secrets.token_hex(8))
        self.state = DesiredState()
        # How each service runs and how many (the reconciler's input), as stored.
        self.specs: dict[str, ServiceSpec] = {}
        # The rollouts as last stored (the driver resumes them at start).
        self.rollouts: dict[str, RolloutRecord] = {}
        self.version = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshcontrol-store")
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._endpoints: tuple[int, dict[str, list[Endpoint]]] | None = None
        self.closing = False

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call the store on its own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def start(self) -> None:
        loaded = await self.run(self.store.load)
        self.version, self.state = loaded.version, loaded.state
        self.specs = dict(loaded.specs)
        self.rollouts = dict(loaded.rollouts)
        now = self.monotonic()
        for instance in loaded.instances:
            self.registry.add(instance, now)

    async def refresh(self) -> bool:
        """Catch up with commits another replica made to a shared store;
        True when there were any (the long-polls are woken then)."""
        async with self._lock:
            return await self._catch_up()

    async def _catch_up(self) -> bool:
        loaded = await self.run(self.store.load)
        if loaded.version <= self.version:
            return False
        self.version, self.state = loaded.version, loaded.state
        known = {s.id for s in self.registry.statuses()}
        stored = {i.id: i for i in loaded.instances}
        for gone in known - set(stored):
            if self.registry.get(gone) is not None:
                self.registry.remove(gone)
        now = self.monotonic()
        for instance_id, instance in stored.items():
            if instance_id not in known:
                self.registry.add(instance, now)
        self._publish()
        return True

    def stop_watches(self) -> None:
        """Release every open long-poll (on shutdown), so none holds the exit."""
        self.closing = True
        self._publish()

    async def close(self) -> None:
        await self.run(self.store.close)
        self._executor.shutdown(wait=True)

    # -- reads ---------------------------------------------------------------

    def endpoints(self) -> dict[str, list[Endpoint]]:
        if self._endpoints is None or self._endpoints[0] != self.version:
            self._endpoints = (self.version, self.registry.healthy_endpoints())
        return self._endpoints[1]

    def snapshot_for(self, node: NodeInfo) -> Snapshot:
        return build_snapshot(node, self.state, self.endpoints(), self.version)

    def change_event(self) -> asyncio.Event:
        """Set at the next change; take it *before* reading the state you compare."""
        return self._changed

    def resource(self, kind: Kind, name: str) -> Resource:
        found: Resource | None = self.state.of(kind).get(name)
        if found is None:
            raise NotFound(f"no {kind} for service {name!r}")
        return found

    async def history(self, limit: int, before: int | None) -> list[HistoryEntry]:
        return await self.run(self.store.history, limit, before)

    async def history_entry(self, version: int) -> tuple[HistoryEntry, DesiredState]:
        entry = await self.run(self.store.entry, version)
        state = await self.run(self.store.state_at, version)
        if entry is None or state is None:
            raise NotFound(f"no version {version}")
        return entry, state

    # -- writes --------------------------------------------------------------

    async def _commit(
        self, change: Change, registry_update: Callable[[], object] | None = None
    ) -> int:
        """Commit under the lock (the caller holds it) and publish."""
        try:
            version = await self.run(self.store.commit, self.version, change, self.wall())
        except VersionConflict:
            # Another replica got there first: take its state, so that the
            # caller's retry builds on it instead of overwriting it.
            await self._catch_up()
            raise
        self.version = version
        if change.state is not None:
            self.state = change.state
        if registry_update is not None:
            registry_update()
        self._publish()
        return version

    def _publish(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _check(self, state: DesiredState) -> None:
        check_state(state, self.registry.services())

    async def put_resource(
        self,
        kind: Kind,
        name: str,
        body: object,
        actor: str,
        reason: str | None = None,
        rollout: RolloutRecord | None = None,
    ) -> int:
        """``rollout``: the rollout that set this weight, stored in the same commit."""
        check_name(name)
        resource = parse_resource(kind, name, body)
        async with self._lock:
            state = self.state.with_resource(kind, name, resource)
            self._check(state)
            verb = "replaced" if name in self.state.of(kind) else "created"
            summary = f"{kind} of {name} {verb}" + (f": {reason}" if reason else "")
            rollouts = (rollout,) if rollout is not None else ()
            change = Change(actor, "put", f"{kind}/{name}", summary, state, put_rollouts=rollouts)
            version = await self._commit(change)
            if rollout is not None:
                self.rollouts[rollout.spec.service] = rollout
            return version

    async def forget_rollout(self, service: str, actor: str) -> int | None:
        """Drop a stored rollout (None: none was stored)."""
        async with self._lock:
            if service not in self.rollouts:
                return None
            summary = f"rollout of {service} deleted"
            change = Change(
                actor, "delete", f"rollouts/{service}", summary, deleted_rollouts=(service,)
            )
            version = await self._commit(change)
            del self.rollouts[service]
            return version

    async def delete_resource(self, kind: Kind, name: str, actor: str) -> int:
        async with self._lock:
            self.resource(kind, name)
            state = self.state.with_resource(kind, name, None)
            self._check(state)
            change = Change(actor, "delete", f"{kind}/{name}", f"{kind} of {name} deleted", state)
            return await self._commit(change)

    async def rollback(self, version: int, actor: str) -> int:
        async with self._lock:
            state = await self.run(self.store.state_at, version)
            if state is None:
                raise NotFound(f"no version {version}")
            self._check(state)
            summary = f"desired state restored to version {version}"
            change = Change(actor, "rollback", f"versions/{version}", summary, state)
            return await self._commit(change)

    async def put_spec(self, service: str, spec: ServiceSpec, actor: str) -> int:
        """Store a service spec; the caller hands it to the reconciler once stored."""
        check_name(service)
        async with self._lock:
            verb = "replaced" if service in self.specs else "created"
            summary = f"spec of {service} {verb}: {spec.min_replicas}-{spec.max_replicas} replicas"
            change = Change(actor, "put", f"specs/{service}", summary, put_specs=((service, spec),))
            version = await self._commit(change)
            self.specs[service] = spec
            return version

    async def delete_spec(self, service: str, actor: str) -> int:
        async with self._lock:
            if service not in self.specs:
                raise NotFound(f"no spec for service {service!r}")
            summary = f"spec of {service} deleted"
            change = Change(actor, "delete", f"specs/{service}", summary, deleted_specs=(service,))
            version = await self._commit(change)
            del self.specs[service]
            return version

    async def register(self, spec: InstanceSpec, actor: str) -> tuple[str, int]:
        instance = Instance(f"{spec.service}-{secrets.token_hex(6)}", spec)
        summary = f"{spec.service} at {spec.address}:{spec.port} registered"
        target = f"instances/{instance.id}"
        change = Change(actor, "register", target, summary, put_instances=(instance,))
        async with self._lock:
            version = await self._commit(
                change, lambda: self.registry.add(instance, self.monotonic())
            )
        return instance.id, version

    async def deregister(self, instance_id: str, actor: str) -> int:
        async with self._lock:
            instance = self.registry.get(instance_id)
            if instance is None:
                raise NotFound(f"no instance {instance_id!r}")
            spec = instance.spec
            summary = f"{spec.service} at {spec.address}:{spec.port} removed"
            change = Change(
                actor,
                "deregister",
                f"instances/{instance_id}",
                summary,
                deleted_instances=(instance_id,),
            )
            return await self._commit(change, lambda: self.registry.remove(instance_id))

    async def heartbeat(self, instance_id: str) -> None:
        changed = self.registry.heartbeat(instance_id, self.monotonic())
        if changed is None:
            raise NotFound(f"no instance {instance_id!r}")
        if changed:
            await self._health_changed([instance_id], "heartbeat resumed")

    async def expire(self) -> list[str]:
        lapsed = self.registry.expire(self.monotonic())
        if lapsed:
            await self._health_changed(lapsed, "TTL lapsed")
        return lapsed

    async def check_result(self, instance_id: str, ok: bool) -> None:
        if self.registry.check_result(instance_id, ok, self.monotonic()):
            why = "health check passed" if ok else "health check failed"
            await self._health_changed([instance_id], why)

    async def catalog_changed(self, services: list[str]) -> None:
        """The Consul catalog moved: move the version so proxies re-poll."""
        await self._health_changed(services, "consul catalog changed")

    async def _health_changed(self, ids: list[str], why: str) -> None:
        # Health is not persisted, but the version must move so that proxies
        # learn the new endpoint set; the history row says why it moved.
        summary = f"{', '.join(ids)}: {why}"
        async with self._lock:
            await self._commit(Change("registry", "health", "instances", summary))
