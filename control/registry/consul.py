"""Service instances from the Consul catalog, beside those registered through the API.

Three parts, from pure to glue:

* ``entries_to_instances`` and ``BlockingIndex``/``Backoff``: sans-IO rules of
  Consul's blocking queries (an index that goes backwards is reset to 0, one
  below 1 is raised to 1; failures back off exponentially with jitter, capped).
* ``CatalogRegistry``: a ``LocalRegistry`` whose reads (``services``,
  ``healthy_endpoints``, ``statuses``) also cover the catalog's instances, so
  the control plane reads one registry whatever feeds it.  The last endpoints
  seen for a service are kept while Consul is unreachable: a control plane that
  loses Consul keeps routing to what it knew rather than emptying the mesh.
* ``CatalogWatcher``: one blocking query on ``/v1/catalog/services`` to learn
  the names, one on ``/v1/health/service/<name>`` per name, each on a thread of
  its own pool (py-consul's client is synchronous), and a callback when a
  service's instances change so the control plane moves its version.

It registers nothing in Consul: instances get there through Consul's own agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from control.registry.local import (
    HealthCheck,
    Instance,
    InstanceSpec,
    InstanceStatus,
    LocalRegistry,
)
from meshproxy.config.policy import Endpoint

log = logging.getLogger("meshcontrol.consul")

CONSUL_ID_PREFIX = "consul:"


@dataclass(frozen=True)
class CatalogInstance:
    id: str  # "consul:<node>/<service id>"
    spec: InstanceSpec
    healthy: bool


def entries_to_instances(name: str, entries: object) -> tuple[list[CatalogInstance], list[str]]:
    """Turn a ``/v1/health/service/<name>`` answer into instances.

    An instance is healthy when every check on it (node checks included) is
    passing, which is what Consul's own ``?passing`` filter means.  Entries
    that cannot make a valid endpoint are left out and named in the second
    list, so bad registry data never reaches a proxy.
    """
    found: list[CatalogInstance] = []
    refused: list[str] = []
    if not isinstance(entries, list):
        return found, [f"{name}: the answer is not a list"]
    for raw in entries:
        try:
            service, node = raw["Service"], raw["Node"]
            meta = {str(k): str(v) for k, v in (service.get("Meta") or {}).items()}
            weights = service.get("Weights") or {}
            spec = InstanceSpec(
                service=name,
                address=service.get("Address") or node["Address"],
                port=service["Port"],
                labels={k: v for k, v in meta.items() if k != "zone"},
                zone=meta.get("zone"),
                weight=max(1, min(128, int(weights.get("Passing", 1)))),
                check=HealthCheck(),  # stands for "Consul runs the checks"
            )
            healthy = all(c.get("Status") == "passing" for c in raw.get("Checks") or [])
            found.append(
                CatalogInstance(f"{CONSUL_ID_PREFIX}{node['Node']}/{service['ID']}", spec, healthy)
            )
        except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as exc:
            refused.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    found.sort(key=lambda i: i.id)
    return found, refused


@dataclass
class BlockingIndex:
    """The index to send on the next blocking query, per Consul's rules."""

    value: int = 0

    def advance(self, returned: int) -> bool:
        """Take the index a response carried; True when it moved (a change may
        have happened; a same index is a timeout and changes nothing)."""
        if returned < self.value:
            self.value = 0  # went backwards: start over with a non-blocking read
            return True
        moved = returned != self.value
        self.value = max(returned, 1)
        return moved


@dataclass
class Backoff:
    """Exponential backoff with jitter, bounded: the n-th consecutive failure
    waits between half and all of ``min(cap, base * 2**n)``.  Half is kept fixed
    so that retries never come faster than the base even with bad luck."""

    base: float = 0.5
    cap: float = 30.0
    failures: int = 0

    def failed(self, rng: random.Random) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        return float(ceiling / 2 + rng.uniform(0, ceiling / 2))

    def succeeded(self) -> None:
        self.failures = 0


class CatalogRegistry(LocalRegistry):
    def __init__(self) -> None:
        super().__init__()
        self._catalog: dict[str, list[CatalogInstance]] = {}

    def set_service(self, name: str, instances: list[CatalogInstance]) -> bool:
        """Replace what the catalog says of ``name``; True when that changed it."""
        if self._catalog.get(name) == instances:
            return False
        self._catalog[name] = instances
        return True

    def drop_service(self, name: str) -> bool:
        return self._catalog.pop(name, None) is not None

    def catalog_services(self) -> set[str]:
        return set(self._catalog)

    def get(self, instance_id: str) -> Instance | None:
        return super().get(instance_id)  # catalog instances are not the API's to change

    def services(self) -> set[str]:
        return super().services() | set(self._catalog)

    def statuses(self) -> list[InstanceStatus]:
        out = super().statuses()
        for instances in self._catalog.values():
            out.extend(InstanceStatus(i.id, i.spec, i.healthy, "check") for i in instances)
        return sorted(out, key=lambda s: s.id)

    def healthy_endpoints(self) -> dict[str, list[Endpoint]]:
        out = super().healthy_endpoints()
        for name, instances in sorted(self._catalog.items()):
            endpoints = out.setdefault(name, [])
            endpoints.extend(i.spec.endpoint() for i in instances if i.healthy)
        return out


Changed = Callable[[list[str]], Awaitable[None]]


class CatalogWatcher:
    """Keep a ``CatalogRegistry`` in step with the Consul catalog."""

    def __init__(
        self,
        make_client: Callable[[], Any],
        registry: CatalogRegistry,
        on_change: Changed,
        wait: str = "30s",
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_threads: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        self._make_client = make_client
        self.registry = registry
        self._on_change = on_change
        self._wait = wait
        self._backoff = (backoff_base, backoff_cap)
        self._rng = rng or random.Random()
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="meshcontrol-consul")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.errors = 0  # failed calls so far, for tests and logs
        self.services_index = BlockingIndex()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: fn(*args, **kwargs)
        )

    async def run(self) -> None:
        """Follow the service list until cancelled; start and stop per-service watches."""
        client = self._make_client()
        backoff = Backoff(*self._backoff)
        try:
            while True:
                index = self.services_index.value
                try:
                    returned, names = await self._call(
                        client.catalog.services, index=index or None, wait=self._wait
                    )
                except Exception as exc:  # an unreachable agent must not end the watch
                    self.errors += 1
                    delay = backoff.failed(self._rng)
                    log.warning("consul catalog: %s; retry in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                backoff.succeeded()
                self.services_index.advance(int(returned or 0))
                await self._follow(set(names or {}) - {"consul"})
        finally:
            for task in self._tasks.values():
                task.cancel()
            for task in self._tasks.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            client.http.session.close()
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _follow(self, names: set[str]) -> None:
        for name in sorted(names - set(self._tasks)):
            self._tasks[name] = asyncio.create_task(self._watch_service(name))
        gone = sorted(set(self._tasks) - names)
        for name in gone:
            task = self._tasks.pop(name)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if [name for name in gone if self.registry.drop_service(name)]:
            await self._on_change(gone)

    async def _watch_service(self, name: str) -> None:
        client = self._make_client()
        index = BlockingIndex()
        backoff = Backoff(*self._backoff)
        try:
            while True:
                asked = index.value
                try:
                    returned, entries = await self._call(
                        client.health.service, name, index=asked or None, wait=self._wait
                    )
                except Exception as exc:  # keep the last known endpoints and retry
                    self.errors += 1
                    delay = backoff.failed(self._rng)
                    log.warning("consul health of %s: %s; retry in %.1fs", name, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                backoff.succeeded()
                if not index.advance(int(returned or 0)) and asked:
                    continue
                instances, refused = entries_to_instances(name, entries)
                for why in refused:
                    log.warning("consul entry left out: %s", why)
                if self.registry.set_service(name, instances):
                    await self._on_change([name])
        finally:
            client.http.session.close()
