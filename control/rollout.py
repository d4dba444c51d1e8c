"""Progressive delivery: a canary's route weight moved step by step, promoted or
rolled back from metric checks (Flagger's canary analysis, on subsets).

How this works.  A ``RolloutSpec`` names a service, its stable and canary
subsets and the analysis: the canary starts at ``step_weight`` percent and,
after each ``interval`` whose checks pass, gains ``step_weight`` more until
``max_weight``; one more passing interval there promotes it (all traffic to the
canary).  A failing interval (success rate below ``min_success_rate``, p99
above ``max_p99_ms``, or fewer than ``min_requests`` to judge by) holds the
weight and counts; at ``failure_threshold`` failed intervals it rolls back (no
traffic to the canary).  The error budget is checked at *every* call, not only
at the end of an interval: as soon as the canary has failed ``error_budget``
requests since the start, it is rolled back, so what it can spend beyond the
budget is bounded by the failures between two calls of the driver.

The metrics come as cumulative counters of the canary subset (``CanarySample``:
requests, failed requests, duration histogram buckets), whatever their source
(scraped sidecars or Prometheus); the machine keeps the sample at the start and
at each step and judges the differences, so a counter reset (a restarted
sidecar) is read as a new start, never as negative traffic.

A rollout is kept in the store as a ``RolloutRecord`` with each weight it writes;
after a restart ``Rollout.resume`` carries on from that weight, its interval
begun again and the first sample it sees taken as the new baseline (the budget
spent and the failed checks are those of the last write).

Sans-IO: ``advance(now, sample)`` returns an ``Action``; nothing here reads a
clock, scrapes a sidecar or writes a route.  ``canary_routes`` computes the
route table that carries a weight; the driver writes it through the control
plane's ordinary write path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshproxy.config.routes import Backend, RouteTable, Rule
from meshproxy.config.types import Duration


class RolloutError(ValueError):
    """A rollout that cannot run (bad spec, or a route table it cannot carry)."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CanaryChecks(_Spec):
    min_success_rate: float = Field(
        default=99.0, ge=0, le=100, description="percent of canary requests that must succeed"
    )
    max_p99_ms: float | None = Field(
        default=None, gt=0, description="p99 latency of the canary, in ms; absent: not checked"
    )
    min_requests: int = Field(
        default=1, ge=0, description="fewer canary requests in an interval fail the check"
    )


class PrometheusSource(_Spec):
    kind: Literal["prometheus"] = "prometheus"
    url: str = Field(min_length=1, description="e.g. http://127.0.0.1:9090")


class SidecarSource(_Spec):
    kind: Literal["sidecars"] = "sidecars"
    urls: list[str] = Field(
        min_length=1, description="the /metrics URLs of the sidecars that call the service"
    )


class RolloutSpec(_Spec):
    service: str = Field(min_length=1, max_length=253)
    stable: str = Field(min_length=1, description="the subset that serves now")
    canary: str = Field(min_length=1, description="the subset being rolled out")
    step_weight: int = Field(default=10, ge=1, le=100, description="percent added per step")
    max_weight: int = Field(default=50, ge=1, le=100, description="last step before promotion")
    interval: Duration = Field(default=60.0, gt=0, description="length of one analysis step")
    checks: CanaryChecks = CanaryChecks()
    failure_threshold: int = Field(default=3, ge=1, description="failed intervals to roll back")
    error_budget: int = Field(
        default=100, ge=0, description="failed canary requests allowed over the whole rollout"
    )
    metrics: PrometheusSource | SidecarSource | None = Field(
        default=None, discriminator="kind", description="absent: no metrics, every check fails"
    )

    @model_validator(mode="after")
    def _subsets_differ(self) -> RolloutSpec:
        if self.stable == self.canary:
            raise ValueError("stable and canary must be different subsets")
        return self


@dataclass(frozen=True, slots=True)
class CanarySample:
    """Cumulative counters of the canary subset. ``buckets`` are cumulative
    histogram buckets ``(upper bound in seconds, count)``, ascending, ``inf`` last."""

    requests: float = 0.0
    failures: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()

    def since(self, earlier: CanarySample) -> CanarySample:
        """The traffic between ``earlier`` and this sample; a reset restarts the count."""
        if self.requests < earlier.requests or self.failures < earlier.failures:
            return self
        before = dict(earlier.buckets)
        return CanarySample(
            self.requests - earlier.requests,
            self.failures - earlier.failures,
            tuple((le, max(0.0, n - before.get(le, 0.0))) for le, n in self.buckets),
        )

    def p99_ms(self) -> float | None:
        """Prometheus' ``histogram_quantile(0.99, ...)``: linear within the bucket."""
        if not self.buckets or self.buckets[-1][1] <= 0:
            return None
        total = self.buckets[-1][1]
        rank = 0.99 * total
        lower, below = 0.0, 0.0
        for le, count in self.buckets:
            if count >= rank:
                if math.isinf(le):
                    return lower * 1000.0
                inside = count - below
                fraction = (rank - below) / inside if inside > 0 else 1.0
                return (lower + (le - lower) * fraction) * 1000.0
            lower, below = le, count
        return lower * 1000.0


class Phase(StrEnum):
    PENDING = "pending"
    PROGRESSING = "progressing"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class Step(StrEnum):
    SET_WEIGHT = "set_weight"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    WAIT = "wait"


class RolloutRecord(_Spec):
    """What the store keeps of a rollout: written with each route weight it sets."""

    spec: RolloutSpec
    phase: Phase
    canary_weight: int = Field(ge=0, le=100)
    failed_checks: int = Field(ge=0)
    spent: float = Field(ge=0)
    reason: str


@dataclass(frozen=True, slots=True)
class Action:
    """What the driver must do: write ``canary_weight`` (0-100) unless ``step`` is WAIT."""

    step: Step
    canary_weight: int
    reason: str

    @property
    def writes(self) -> bool:
        return self.step is not Step.WAIT


@dataclass
class Rollout:
    spec: RolloutSpec
    phase: Phase = Phase.PENDING
    canary_weight: int = 0
    failed_checks: int = 0
    spent: float = 0.0
    reason: str = "not started"
    _start: CanarySample | None = field(default=None, repr=False)
    _step_start: CanarySample | None = field(default=None, repr=False)
    _step_time: float = field(default=0.0, repr=False)
    _last_time: float | None = field(default=None, repr=False)
    _last: CanarySample | None = field(default=None, repr=False)
    _resumed: bool = field(default=False, repr=False)

    @classmethod
    def resume(cls, record: RolloutRecord, now: float) -> Rollout:
        """A stored rollout, carried on from its last weight: its interval starts now."""
        rollout = cls(record.spec, record.phase, record.canary_weight, record.failed_checks,
                      record.spent, record.reason)  # fmt: skip
        rollout._step_time = now
        rollout._resumed = record.phase is Phase.PROGRESSING
        return rollout

    def record(self) -> RolloutRecord:
        return RolloutRecord(
            spec=self.spec,
            phase=self.phase,
            canary_weight=self.canary_weight,
            failed_checks=self.failed_checks,
            spent=self.spent,
            reason=self.reason,
        )

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.PROMOTED, Phase.ROLLED_BACK)

    def advance(self, now: float, sample: CanarySample | None) -> Action:
        """One look at the canary. ``sample`` is None when the metrics could not be read:
        the budget cannot be judged then, and an interval ending so counts as failed."""
        if self.finished:
            return self._act(Step.WAIT, self.canary_weight, f"rollout already {self.phase}")
        if self.phase is Phase.PENDING:
            self.phase = Phase.PROGRESSING
            self._start = self._step_start = sample
            self._step_time = now
            self._last, self._last_time = sample, now
            weight = min(self.spec.step_weight, self.spec.max_weight)
            return self._act(Step.SET_WEIGHT, weight, f"canary started at {weight}%")
        if self._resumed and sample is not None:
            # The counters before the restart were never seen: judge from here.
            self._resumed = False
            self._start = self._step_start = self._last = sample
            self._last_time = now
        if sample is not None:
            self._track(sample)
            if self.spent >= self.spec.error_budget and self.spent > 0:
                return self.rollback(
                    f"error budget spent: {self.spent:g} failed canary requests "
                    f"(budget {self.spec.error_budget})"
                )
        if now - self._step_time < self.spec.interval:
            return self._act(Step.WAIT, self.canary_weight, self.reason)
        verdict = self._judge(sample)
        self._step_start = sample if sample is not None else self._last
        self._step_time = now
        if verdict is not None:
            self.failed_checks += 1
            why = f"check failed ({self.failed_checks}/{self.spec.failure_threshold}): {verdict}"
            if self.failed_checks >= self.spec.failure_threshold:
                return self.rollback(why)
            return self._act(
                Step.WAIT, self.canary_weight, why + f"; holding {self.canary_weight}%"
            )
        if self.canary_weight >= self.spec.max_weight:
            self.phase = Phase.PROMOTED
            return self._act(Step.PROMOTE, 100, f"checks passed at {self.canary_weight}%: promoted")
        weight = min(self.canary_weight + self.spec.step_weight, self.spec.max_weight)
        return self._act(
            Step.SET_WEIGHT, weight, f"checks passed: {self.canary_weight}% -> {weight}%"
        )

    def rollback(self, reason: str) -> Action:
        """Send every request back to the stable subset (also what an alert asks for)."""
        if self.finished:
            return self._act(Step.WAIT, self.canary_weight, f"rollout already {self.phase}")
        self.phase = Phase.ROLLED_BACK
        return self._act(Step.ROLLBACK, 0, f"rolled back: {reason}")

    def _track(self, sample: CanarySample) -> None:
        last = self._last if self._last is not None else sample
        self.spent += sample.since(last).failures
        if sample.requests < last.requests or sample.failures < last.failures:
            # A reset: the per-step baseline restarts with the counters.
            self._step_start = CanarySample()
        self._last = sample

    def _judge(self, sample: CanarySample | None) -> str | None:
        """Why this interval fails, or None when it passes."""
        if sample is None:
            return "no canary metrics could be read"
        window = sample.since(self._step_start or CanarySample())
        checks = self.spec.checks
        if window.requests < max(checks.min_requests, 1e-9):
            return f"{window.requests:g} canary requests in the interval (< {checks.min_requests})"
        rate = 100.0 * (window.requests - window.failures) / window.requests
        if rate < checks.min_success_rate:
            return f"success rate {rate:.2f}% < {checks.min_success_rate:g}%"
        if checks.max_p99_ms is not None:
            p99 = window.p99_ms()
            if p99 is not None and p99 > checks.max_p99_ms:
                return f"p99 {p99:.1f} ms > {checks.max_p99_ms:g} ms"
        return None

    def _act(self, step: Step, weight: int, reason: str) -> Action:
        self.canary_weight = weight
        self.reason = reason
        return Action(step, weight, reason)


def canary_routes(table: RouteTable | None, spec: RolloutSpec, canary_weight: int) -> RouteTable:
    """``table`` with the stable/canary split set to ``canary_weight`` percent.

    Every rule whose backends are the service's own stable subset (and the
    canary, if present) gets the two weighted; rules to other backends are
    left alone.  Without a table, one catch-all rule carries the split.
    """
    split = [
        Backend(subset=spec.stable, weight=100 - canary_weight),
        Backend(subset=spec.canary, weight=canary_weight),
    ]
    if table is None:
        return RouteTable(service=spec.service, rules=[Rule(backends=split)])
    rules = []
    touched = False
    for rule in table.rules:
        own = {b.subset for b in rule.backends if b.service in (None, spec.service)}
        if (
            rule.backends
            and own == {spec.stable} | ({spec.canary} & own)
            and all(b.service in (None, spec.service) for b in rule.backends)
        ):
            rules.append(rule.model_copy(update={"backends": split}))
            touched = True
        else:
            rules.append(rule)
    if not touched:
        raise RolloutError(
            f"no rule of the routes of {spec.service!r} sends traffic to subset {spec.stable!r} "
            "alone (or with the canary): nothing to split"
        )
    return table.model_copy(update={"rules": rules})
