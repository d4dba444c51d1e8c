"""Desired replica counts from observed load: Knative's windows, Kubernetes HPA's damping.

The sidecars report, per instance, their in-flight requests (concurrency) or requests/s;
the same numbers may come from Prometheus (`samples_from_prometheus`). `evaluate(now,
current)` turns the window averages into a replica count, one stage after another, and
returns a `ScaleDecision` that records every stage that changed the number:

1. Windows (Knative KPA). Reports land in 1 s buckets (latest value per instance per
   second, summed over instances). The stable window (60 s) and the panic window (10% of
   it, 6 s) average the buckets; before a window has filled, over the seconds seen so far.
   Wanted pods = ceil(window average / target per instance).
2. Panic (KPA). When the panic count reaches 2x the ready pods (panic threshold 200%),
   the autoscaler panics: it follows the panic window and never goes below the highest
   count it decided while panicking; the mode lasts until a full stable window passes
   without the threshold being crossed again.
3. Tolerance (HPA). Outside panic, a usage ratio within 10% of 1 keeps the count.
4. Scale to zero (KPA's rule, off unless min_replicas is 0): zero is reached only after
   no load for a full stable window plus a 30 s grace period; until then one pod stays.
5. Stabilisation (HPA). Recommendations are remembered; a scale-down goes no lower than
   the highest recommendation of the last 300 s (scale-up: the lowest over its window,
   0 s by default).
6. Rate limits. KPA's, per decision: at most 1000x the ready pods up, at least half of
   them down. Then HPA's policies, per direction: each (`+4 pods per 15 s`, `+100% per
   15 s`) bounds the change relative to the count at the start of its period, and
   `select=MAX` takes the policy allowing the most change. Panic is limited too.
7. min_replicas / max_replicas are hard bounds, applied last.

Sans-IO: time is the `now` argument (seconds, any epoch); nothing here reads a clock,
talks to Prometheus, or starts an instance. The caller executes and tells us `current`,
which serves both as KPA's ready count and as HPA's current replicas: an executor whose
instances take long to become ready should report the count it runs, not the ready one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class AutoscalerError(ValueError):
    """A malformed configuration or metric sample."""


class Metric(StrEnum):
    CONCURRENCY = "concurrency"
    RPS = "rps"


class PolicyKind(StrEnum):
    PODS = "Pods"
    PERCENT = "Percent"


class SelectPolicy(StrEnum):
    MAX = "Max"
    MIN = "Min"
    DISABLED = "Disabled"


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """HPA HPAScalingPolicy: change by `value` pods or percent per `period` seconds."""

    kind: PolicyKind
    value: int
    period: float

    def __post_init__(self) -> None:
        if self.value <= 0 or self.period <= 0:
            raise AutoscalerError("a scaling policy needs a positive value and period")

    def __str__(self) -> str:
        unit = "%" if self.kind is PolicyKind.PERCENT else " pods"
        return f"{self.value}{unit} per {self.period:g}s"


_HPA_UP = (ScalingPolicy(PolicyKind.PODS, 4, 15.0), ScalingPolicy(PolicyKind.PERCENT, 100, 15.0))
_HPA_DOWN = (ScalingPolicy(PolicyKind.PERCENT, 100, 15.0),)


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    """Defaults are Knative's KPA and Kubernetes' HPA defaults; `target` is per instance."""

    target: float
    metric: Metric = Metric.CONCURRENCY
    min_replicas: int = 1
    max_replicas: int = 100
    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    tolerance: float = 0.1
    scale_up_stabilization: float = 0.0
    scale_down_stabilization: float = 300.0
    scale_up_policies: tuple[ScalingPolicy, ...] = _HPA_UP
    scale_up_select: SelectPolicy = SelectPolicy.MAX
    scale_down_policies: tuple[ScalingPolicy, ...] = _HPA_DOWN
    scale_down_select: SelectPolicy = SelectPolicy.MAX
    scale_to_zero_grace: float = 30.0
    history: int = 1024

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise AutoscalerError("target must be positive")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise AutoscalerError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.stable_window < 6 or not 1 <= self.panic_window_percentage <= 100:
            raise AutoscalerError("stable_window >= 6s, panic_window_percentage in 1..100")
        if (
            self.panic_threshold <= 1
            or self.max_scale_up_rate <= 1
            or self.max_scale_down_rate <= 1
        ):
            raise AutoscalerError("panic threshold and max scale rates must exceed 1")
        if (
            self.tolerance < 0
            or self.scale_up_stabilization < 0
            or self.scale_down_stabilization < 0
        ):
            raise AutoscalerError("tolerance and stabilisation windows must not be negative")
        if self.scale_to_zero_grace < 0 or self.history < 1:
            raise AutoscalerError("scale_to_zero_grace >= 0 and history >= 1")

    @property
    def panic_window(self) -> float:
        return self.stable_window * self.panic_window_percentage / 100


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """One evaluation: the count asked for and every stage that shaped it, in order.

    `stable_value` and `panic_value` are the window averages of the metric summed over
    instances (total concurrency or total requests/s).
    """

    time: float
    current: int
    desired: int
    stable_value: float
    panic_value: float
    panicking: bool
    steps: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return self.desired != self.current

    @property
    def reason(self) -> str:
        return "; ".join(self.steps)

    def to_dict(self) -> dict[str, object]:
        return {
            "time": self.time,
            "current": self.current,
            "desired": self.desired,
            "stable_value": self.stable_value,
            "panic_value": self.panic_value,
            "panicking": self.panicking,
            "steps": list(self.steps),
            "reason": self.reason,
        }


class Autoscaler:
    def __init__(self, config: AutoscalerConfig) -> None:
        self.config = config
        # (second, {instance: latest value in that second}), oldest first.
        self._buckets: deque[tuple[int, dict[str, float]]] = deque()
        self._first_second: int | None = None
        self._last_load: float | None = None
        self._panic_since: float | None = None
        self._max_panic_pods = 0
        self._recommendations: deque[tuple[float, int]] = deque()
        self._scale_events: deque[tuple[float, int]] = deque()
        self.history: deque[ScaleDecision] = deque(maxlen=config.history)

    # -- input -----------------------------------------------------------------------

    def observe(self, now: float, instance: str, value: float) -> None:
        """One report: `instance`'s concurrency (or requests/s) at time `now`."""
        if not (value >= 0 and math.isfinite(value)):
            raise AutoscalerError(f"bad metric value {value!r} from {instance!r}")
        second = math.floor(now)
        if not self._buckets or self._buckets[-1][0] < second:
            self._buckets.append((second, {instance: value}))
            # Reports may arrive without evaluations; keep only what a window can use.
            oldest = second - max(int(self.config.stable_window), 1) + 1
            while self._buckets[0][0] < oldest:
                self._buckets.popleft()
        else:
            # A late report joins its second, which is added if no report made it yet;
            # one older than the kept window is of no use and dropped.
            if second < self._buckets[-1][0] - max(int(self.config.stable_window), 1) + 1:
                return
            index = len(self._buckets)
            while index > 0 and self._buckets[index - 1][0] > second:
                index -= 1
            if index > 0 and self._buckets[index - 1][0] == second:
                self._buckets[index - 1][1][instance] = value
            else:
                self._buckets.insert(index, (second, {instance: value}))
        if self._first_second is None or second < self._first_second:
            self._first_second = second
        if value > 0 and (self._last_load is None or now > self._last_load):
            self._last_load = now

    # -- decision --------------------------------------------------------------------

    def evaluate(self, now: float, current: int) -> ScaleDecision:
        """The replica count to run now, given `current` ready instances."""
        if current < 0:
            raise AutoscalerError("current replicas must not be negative")
        cfg = self.config
        self._forget(now)
        steps: list[str] = []
        if self._first_second is None:
            want = current
            steps.append(f"no metrics yet: holding at {current}")
            stable = panic = 0.0
        else:
            stable = self._average(now, cfg.stable_window)
            panic = self._average(now, cfg.panic_window)
            want = self._kpa(now, current, stable, panic, steps)
            want = self._scale_to_zero(now, current, want, steps)
        want = self._stabilise(now, current, want, steps)
        want = self._rate_limit(now, current, want, steps)
        if want > cfg.max_replicas:
            want = cfg.max_replicas
            steps.append(f"capped at max_replicas {want}")
        elif want < cfg.min_replicas:
            want = cfg.min_replicas
            steps.append(f"raised to min_replicas {want}")
        if want != current:
            self._scale_events.append((now, want - current))
        if self._panic_since is not None:
            self._max_panic_pods = max(self._max_panic_pods, want)
        decision = ScaleDecision(
            now, current, want, stable, panic, self._panic_since is not None, tuple(steps)
        )
        self.history.append(decision)
        return decision

    @property
    def actions(self) -> list[ScaleDecision]:
        """The remembered decisions that changed the replica count."""
        return [d for d in self.history if d.changed]

    # -- stages ----------------------------------------------------------------------

    def _kpa(self, now: float, current: int, stable: float, panic: float, steps: list[str]) -> int:
        cfg = self.config
        ready = max(current, 1)
        stable_pods = math.ceil(stable / cfg.target)
        panic_pods = math.ceil(panic / cfg.target)
        if panic_pods / ready >= cfg.panic_threshold:
            if self._panic_since is None:
                steps.append(
                    f"panic: {panic:g} over {cfg.panic_window:g}s needs {panic_pods} pods, "
                    f">= {cfg.panic_threshold:g}x the {ready} ready"
                )
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since > cfg.stable_window:
            steps.append(f"panic over: threshold not crossed for {cfg.stable_window:g}s")
            self._panic_since = None
            self._max_panic_pods = 0

        if self._panic_since is not None:
            steps.append(f"panic window {panic:g} / target {cfg.target:g} -> {panic_pods}")
            if panic_pods < self._max_panic_pods:
                steps.append(f"no scale-down while panicking: holding at {self._max_panic_pods}")
                return self._max_panic_pods
            return panic_pods

        steps.append(f"stable window {stable:g} / target {cfg.target:g} -> {stable_pods}")
        if current > 0 and stable_pods != current:
            ratio = stable / (current * cfg.target)
            if abs(ratio - 1) <= cfg.tolerance:
                steps.append(f"usage ratio {ratio:.3f} within tolerance {cfg.tolerance:g}")
                return current
        return stable_pods

    def _scale_to_zero(self, now: float, current: int, want: int, steps: list[str]) -> int:
        cfg = self.config
        if want > 0 or cfg.min_replicas > 0:
            return want
        idle_needed = cfg.stable_window + cfg.scale_to_zero_grace
        since = self._last_load if self._last_load is not None else self._first_second
        idle = now - (since if since is not None else now)
        if idle >= idle_needed or current == 0:
            return 0
        steps.append(f"scale to zero after {idle_needed:g}s idle (idle {idle:g}s): keep 1")
        return 1

    def _stabilise(self, now: float, current: int, want: int, steps: list[str]) -> int:
        cfg = self.config
        self._recommendations.append((now, want))
        up = min(r for t, r in self._recommendations if now - t <= cfg.scale_up_stabilization)
        down = max(r for t, r in self._recommendations if now - t <= cfg.scale_down_stabilization)
        result = current
        if result < up:
            result = up
        if result > down:
            result = down
        if result != want:
            if want < current:
                window = cfg.scale_down_stabilization
                steps.append(f"scale-down stabilised: highest in last {window:g}s is {result}")
            else:
                window = cfg.scale_up_stabilization
                steps.append(f"scale-up stabilised: lowest in last {window:g}s is {result}")
        return result

    def _rate_limit(self, now: float, current: int, want: int, steps: list[str]) -> int:
        cfg = self.config
        # KPA's bounds per decision, relative to the ready pods (at least one).
        ready = max(current, 1)
        up_bound = math.ceil(ready * cfg.max_scale_up_rate)
        down_bound = math.floor(ready / cfg.max_scale_down_rate)
        if not down_bound <= want <= up_bound:
            want = min(max(want, down_bound), up_bound)
            steps.append(f"KPA rate bounds [{down_bound}, {up_bound}] for {ready} ready -> {want}")
        if want > current:
            limit = self._limit(now, current, cfg.scale_up_policies, cfg.scale_up_select, +1)
            if want > limit:
                steps.append(f"scale-up policy allows {limit} now")
                return limit
        elif want < current:
            limit = self._limit(now, current, cfg.scale_down_policies, cfg.scale_down_select, -1)
            if want < limit:
                steps.append(f"scale-down policy allows {limit} now")
                return limit
        return want

    def _limit(
        self,
        now: float,
        current: int,
        policies: tuple[ScalingPolicy, ...],
        select: SelectPolicy,
        direction: int,
    ) -> int:
        """HPA's calculateScale{Up,Down}LimitWithScalingRules."""
        if select is SelectPolicy.DISABLED or not policies:
            return current if select is SelectPolicy.DISABLED else (2**31 - 1) * direction
        proposals = []
        for policy in policies:
            added = sum(c for t, c in self._scale_events if c > 0 and now - t < policy.period)
            deleted = -sum(c for t, c in self._scale_events if c < 0 and now - t < policy.period)
            start = current - added + deleted
            if policy.kind is PolicyKind.PODS:
                proposals.append(start + direction * policy.value)
            elif direction > 0:
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
            else:
                proposals.append(math.floor(start * (1 - policy.value / 100)))
        # The most permissive policy for MAX: the highest bound up, the lowest bound down.
        most_change = max if (select is SelectPolicy.MAX) == (direction > 0) else min
        return max(most_change(proposals), 0)

    # -- windows ---------------------------------------------------------------------

    def _average(self, now: float, window: float) -> float:
        newest = math.floor(now)
        span = max(int(window), 1)
        oldest = newest - span + 1
        total = 0.0
        for second, bucket in reversed(self._buckets):
            if second < oldest:
                break
            if second <= newest:
                total += sum(bucket.values())
        first = self._first_second if self._first_second is not None else newest
        seen = max(min(span, newest - first + 1), 1)
        return total / seen

    def _forget(self, now: float) -> None:
        cfg = self.config
        oldest = math.floor(now) - max(int(cfg.stable_window), 1) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()
        keep = max(cfg.scale_up_stabilization, cfg.scale_down_stabilization)
        while self._recommendations and now - self._recommendations[0][0] > keep:
            self._recommendations.popleft()
        longest = max(
            (p.period for p in cfg.scale_up_policies + cfg.scale_down_policies), default=0
        )
        while self._scale_events and now - self._scale_events[0][0] >= longest:
            self._scale_events.popleft()


def samples_from_prometheus(
    body: Mapping[str, object], label: str = "instance"
) -> list[tuple[str, float]]:
    """(instance, value) pairs from a Prometheus instant-query answer (a `vector` result),
    e.g. of `sum by (instance) (...)`; feed them to `Autoscaler.observe`."""
    data = body.get("data")
    if body.get("status") != "success" or not isinstance(data, Mapping):
        raise AutoscalerError(f"prometheus query failed: {body.get('error', 'no data')}")
    result = data.get("result")
    if data.get("resultType") != "vector" or not isinstance(result, list):
        raise AutoscalerError("prometheus answer is not an instant vector")
    samples: list[tuple[str, float]] = []
    for item in result:
        try:
            metric = item["metric"]
            _, raw = item["value"]
            value = float(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise AutoscalerError(f"malformed prometheus sample {item!r}") from exc
        if not isinstance(metric, Mapping) or not math.isfinite(value) or value < 0:
            raise AutoscalerError(f"malformed prometheus sample {item!r}")
        samples.append((str(metric.get(label, "")), value))
    return samples
