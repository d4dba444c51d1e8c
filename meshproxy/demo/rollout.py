"""The demo's canary rollouts, followed step by step from outside.

``rollout_spec`` is the body of ``PUT /v1/rollouts/{service}``: the canary's
weight grows by ``step_weight`` every ``interval`` while its success rate, read
from the client sidecar's ``/metrics``, holds; a spent error budget or repeated
failed checks roll it back.  ``follow_rollout`` polls
``GET /v1/rollouts/{service}`` while steady traffic runs and reports every
change of weight or reason with the traffic observed during the step before.

It drives the control plane only through its HTTP API; the deciding is the
control plane's, nothing here judges a canary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from meshproxy.demo.traffic import Traffic

FINISHED = ("promoted", "rolled_back")
POLL_S = 0.1


class RolloutApi(Protocol):
    async def call(self, method: str, path: str, body: object = None) -> Any: ...


class TrafficTaker(Protocol):
    def take(self) -> Traffic: ...


def rollout_spec(
    stable: str,
    canary: str,
    metrics_url: str,
    *,
    step_weight: int = 20,
    max_weight: int = 80,
    interval: str = "2s",
) -> dict[str, Any]:
    """A rollout judged on the canary's success rate as the calling sidecar saw it."""
    return {
        "stable": stable,
        "canary": canary,
        "step_weight": step_weight,
        "max_weight": max_weight,
        "interval": interval,
        # Ten requests per interval at the least: the demo's steady traffic sends
        # far more, so a step never passes on no evidence.
        "checks": {"min_success_rate": 99.0, "min_requests": 10},
        "failure_threshold": 2,
        "error_budget": 20,
        "metrics": {"kind": "sidecars", "urls": [metrics_url]},
    }


@dataclass(frozen=True, slots=True)
class RolloutStep:
    """One state of a rollout as the API showed it."""

    phase: str
    weight: int
    reason: str

    @classmethod
    def of(cls, view: dict[str, Any]) -> RolloutStep:
        return cls(str(view["phase"]), int(view["canary_weight"]), str(view["reason"]))

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED


def step_line(number: int, canary: str, step: RolloutStep) -> str:
    return (
        f"demo: rollout step {number}: {canary} at {step.weight}% ({step.phase}) "
        f"- reason: {step.reason}"
    )


def traffic_line(traffic: Traffic, versions: frozenset[str], when: str = "during that step") -> str:
    return f"demo:   traffic {when} ({traffic.seconds:.1f}s): {traffic.shares(versions)}"


async def follow_rollout(
    api: RolloutApi,
    service: str,
    canary: str,
    traffic: TrafficTaker,
    versions: frozenset[str],
    timeout_s: float,
    say: Callable[[str], None],
    settle_s: float = 1.0,
) -> list[RolloutStep]:
    """Every distinct state until the rollout finishes, then the traffic of
    ``settle_s`` after it; TimeoutError past ``timeout_s``."""
    steps: list[RolloutStep] = []
    async with asyncio.timeout(timeout_s):
        while True:
            step = RolloutStep.of(await api.call("GET", f"/v1/rollouts/{service}"))
            if not steps or step != steps[-1]:
                if steps:
                    say(traffic_line(traffic.take(), versions))
                else:
                    traffic.take()
                steps.append(step)
                say(step_line(len(steps), canary, step))
            if step.finished:
                break
            await asyncio.sleep(POLL_S)
        # The final weight's traffic, once the sidecar has it (a push takes milliseconds).
        await asyncio.sleep(settle_s)
        traffic.take()
        await asyncio.sleep(settle_s)
        say(traffic_line(traffic.take(), versions, "after it"))
    return steps


__all__ = ["RolloutStep", "follow_rollout", "rollout_spec", "step_line", "traffic_line"]
