"""The asyncio glue that runs rollouts: read each canary's metrics, call
``Rollout.advance``, and write the resulting route weights.

Weights are written through ``ControlPlane.put_resource`` (the path of
``PUT /v1/routes``), so they are checked, versioned, pushed and kept in the
history like any operator change, with the decision's reason in the history
summary; every decision that writes is also recorded in the ``DecisionLog``.
A write that fails (the store is down, the state refuses it) is owed and
retried at the next tick; the rollout does not advance past it.

Each write stores the rollout (``RolloutRecord``) in the same commit as its
weight, so a restarted control plane resumes it (``restore``) from that weight;
a check failed or budget spent since the last write is counted again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import ClientSession

from control.decisions import Decision, DecisionLog
from control.rollout import (
    Action,
    CanarySample,
    Rollout,
    RolloutError,
    RolloutRecord,
    RolloutSpec,
    canary_routes,
)
from control.rollout_metrics import CanaryMetrics, MetricsUnavailable, metrics_for
from control.service import ControlPlane, NotFound
from control.state import StateError, dump
from control.store.base import StoreError, VersionConflict

log = logging.getLogger("meshcontrol.rollout")

WRITE_TRIES = 4
ACTOR = "rollout"


@dataclass
class _Running:
    rollout: Rollout
    metrics: CanaryMetrics | None
    owed: Action | None = None  # decided but not yet written


class RolloutDriver:
    def __init__(self, cp: ControlPlane, decisions: DecisionLog) -> None:
        self.cp = cp
        self.decisions = decisions
        self._running: dict[str, _Running] = {}
        self._lock = asyncio.Lock()

    def restore(self, records: Mapping[str, RolloutRecord]) -> None:
        """Take the rollouts a restarted control plane loaded; each resumes now."""
        now = self.cp.monotonic()
        for service, record in records.items():
            self._running[service] = _Running(Rollout.resume(record, now), metrics_for(record.spec))

    def get(self, service: str) -> Rollout:
        found = self._running.get(service)
        if found is None:
            raise NotFound(f"no rollout of service {service!r}")
        return found.rollout

    def all(self) -> list[Rollout]:
        return [r.rollout for _, r in sorted(self._running.items())]

    async def start(self, spec: RolloutSpec, actor: str, session: ClientSession) -> Rollout:
        """Begin (or replace a finished) rollout; the first weight is written before
        this returns, so a spec the routes cannot carry is refused here."""
        async with self._lock:
            current = self._running.get(spec.service)
            if current is not None and not current.rollout.finished:
                raise StateError(
                    [("service", f"a rollout of {spec.service!r} is in progress: DELETE it first")]
                )
            running = _Running(Rollout(spec), metrics_for(spec))
            action = running.rollout.advance(
                self.cp.monotonic(), await self._sample(running, session)
            )
            await self._write(running.rollout, action, actor)
            self._running[spec.service] = running
            self._record(spec.service, action, actor)
            return running.rollout

    async def rollback(self, service: str, reason: str, actor: str) -> Action:
        async with self._lock:
            running = self._running.get(service)
            if running is None:
                raise NotFound(f"no rollout of service {service!r}")
            action = running.rollout.rollback(reason)
            if action.writes:
                await self._settle(running, action, actor)
            return action

    async def remove(self, service: str, actor: str) -> Rollout:
        """Forget a rollout; one still in progress is rolled back first."""
        async with self._lock:
            running = self._running.get(service)
            if running is None:
                raise NotFound(f"no rollout of service {service!r}")
            action = running.rollout.rollback(f"rollout deleted by {actor}")
            if action.writes:
                await self._write(running.rollout, action, actor)
                self._record(service, action, actor)
            await self.cp.forget_rollout(service, actor)
            del self._running[service]
            return running.rollout

    async def tick(self, session: ClientSession) -> None:
        async with self._lock:
            for running in list(self._running.values()):
                if running.owed is not None:
                    await self._settle(running, running.owed, ACTOR)
                    if running.owed is not None:
                        continue
                if running.rollout.finished:
                    continue
                sample = await self._sample(running, session)
                action = running.rollout.advance(self.cp.monotonic(), sample)
                if action.writes:
                    await self._settle(running, action, ACTOR)

    async def run(self, every: float, session: ClientSession) -> None:
        while True:
            try:
                await self.tick(session)
            except Exception:  # one bad rollout must not stop the others for good
                log.exception("rollout tick failed")
            await asyncio.sleep(every)

    async def _sample(self, running: _Running, session: ClientSession) -> CanarySample | None:
        if running.metrics is None:
            return None
        try:
            return await running.metrics.sample(session)
        except MetricsUnavailable as exc:
            log.warning("canary metrics of %s: %s", running.rollout.spec.service, exc)
            return None

    async def _settle(self, running: _Running, action: Action, actor: str) -> None:
        service = running.rollout.spec.service
        try:
            version = await self._write(running.rollout, action, actor)
        except (StateError, RolloutError, StoreError, VersionConflict) as exc:
            running.owed = action
            self._record(service, action, actor, error=str(exc))
            return
        running.owed = None
        self._record(service, action, actor, version)

    async def _write(self, rollout: Rollout, action: Action, actor: str) -> int:
        spec = rollout.spec
        for attempt in range(WRITE_TRIES):
            table = canary_routes(
                self.cp.state.routes.get(spec.service), spec, action.canary_weight
            )
            try:
                return await self.cp.put_resource(
                    "routes", spec.service, dump(table), actor, action.reason, rollout.record()
                )
            except VersionConflict:
                if attempt == WRITE_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _record(
        self,
        service: str,
        action: Action,
        actor: str,
        version: int | None = None,
        error: str | None = None,
    ) -> None:
        reason = action.reason if error is None else f"{action.reason} (not written: {error})"
        if version is None and error is None:
            version = self.cp.version
        self.decisions.record(
            Decision(self.cp.wall(), "rollout", service, str(action.step), reason, actor, version)
        )
