"""The canary state machine, driven by an injected clock and synthetic load."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from control.rollout import (
    Action,
    CanaryChecks,
    CanarySample,
    Phase,
    Rollout,
    RolloutError,
    RolloutSpec,
    Step,
    canary_routes,
)
from meshproxy.config.routes import RouteTable

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf)


@dataclass
class SyntheticCanary:
    """Cumulative counters of a canary that gets ``weight`` percent of ``rps``."""

    rps: float = 200.0
    error_rate: float = 0.0
    latency_s: float = 0.004
    requests: float = 0.0
    failures: float = 0.0
    counts: dict[float, float] = field(default_factory=lambda: dict.fromkeys(BOUNDS, 0.0))

    def run(self, seconds: float, weight: int) -> None:
        n = self.rps * seconds * weight / 100
        self.requests += n
        self.failures += n * self.error_rate
        for le in BOUNDS:
            if self.latency_s <= le:
                self.counts[le] += n

    def sample(self) -> CanarySample:
        return CanarySample(self.requests, self.failures, tuple(self.counts.items()))


def spec(**kw: object) -> RolloutSpec:
    base: dict[str, object] = {
        "service": "ratings",
        "stable": "v1",
        "canary": "v2",
        "step_weight": 10,
        "max_weight": 50,
        "interval": "10s",
        "failure_threshold": 2,
        "error_budget": 50,
    }
    base.update(kw)
    return RolloutSpec.model_validate(base)


def drive(rollout: Rollout, load: SyntheticCanary, seconds: int) -> list[tuple[int, Action]]:
    """One call per simulated second; the traffic of each second follows the weight."""
    acted = [(0, rollout.advance(0.0, load.sample()))]
    for t in range(1, seconds + 1):
        load.run(1.0, rollout.canary_weight)
        action = rollout.advance(float(t), load.sample())
        if action.writes:
            acted.append((t, action))
        if rollout.finished:
            break
    return acted


def test_a_healthy_canary_steps_up_every_interval_then_is_promoted() -> None:
    rollout = Rollout(spec())
    acted = drive(rollout, SyntheticCanary(), 120)
    assert [(t, a.step, a.canary_weight) for t, a in acted] == [
        (0, Step.SET_WEIGHT, 10),
        (10, Step.SET_WEIGHT, 20),
        (20, Step.SET_WEIGHT, 30),
        (30, Step.SET_WEIGHT, 40),
        (40, Step.SET_WEIGHT, 50),
        (50, Step.PROMOTE, 100),
    ]
    assert rollout.phase is Phase.PROMOTED
    assert "promoted" in acted[-1][1].reason


def test_a_canary_whose_v2_returns_errors_is_rolled_back_within_its_error_budget() -> None:
    load = SyntheticCanary(rps=200, error_rate=1.0)
    rollout = Rollout(spec(error_budget=50))
    acted = drive(rollout, load, 120)
    last_t, last = acted[-1]
    assert last.step is Step.ROLLBACK and last.canary_weight == 0
    assert rollout.phase is Phase.ROLLED_BACK
    # 10% of 200 rps all failing: 20 failures a second, the budget is reached at 3 s
    # (60 >= 50), before the first interval ends; nothing reaches v2 afterwards.
    assert last_t == 3
    assert "error budget" in last.reason
    spent_at_rollback = load.failures
    load.run(30.0, rollout.canary_weight)
    assert load.failures == spent_at_rollback
    assert rollout.advance(40.0, load.sample()).step is Step.WAIT


@pytest.mark.parametrize("rps", [20, 100, 400])
def test_the_budget_is_never_exceeded_by_more_than_one_tick_of_failures(rps: int) -> None:
    load = SyntheticCanary(rps=rps, error_rate=0.3)
    rollout = Rollout(spec(error_budget=40, failure_threshold=100, checks={"min_success_rate": 0}))
    drive(rollout, load, 600)
    assert rollout.phase is Phase.ROLLED_BACK
    per_tick = rps * 0.3 * rollout.spec.max_weight / 100
    assert 40 <= load.failures <= 40 + per_tick


def test_a_low_success_rate_holds_the_weight_then_rolls_back_at_the_threshold() -> None:
    load = SyntheticCanary(error_rate=0.05)
    rollout = Rollout(spec(error_budget=10_000, failure_threshold=3))
    acted = drive(rollout, load, 200)
    assert [(t, a.step, a.canary_weight) for t, a in acted] == [
        (0, Step.SET_WEIGHT, 10),
        (30, Step.ROLLBACK, 0),
    ]
    assert "success rate 95.00% < 99%" in acted[-1][1].reason
    assert rollout.failed_checks == 3


def test_a_slow_canary_fails_the_p99_check() -> None:
    load = SyntheticCanary(latency_s=0.3)
    rollout = Rollout(spec(checks={"max_p99_ms": 200}, failure_threshold=1))
    acted = drive(rollout, load, 60)
    assert acted[-1][1].step is Step.ROLLBACK
    assert "p99" in acted[-1][1].reason and "> 200 ms" in acted[-1][1].reason


def test_an_interval_without_canary_traffic_or_metrics_counts_as_failed() -> None:
    rollout = Rollout(spec(failure_threshold=2, checks={"min_requests": 5}))
    rollout.advance(0.0, CanarySample())
    held = rollout.advance(10.0, CanarySample(requests=3))
    assert held.step is Step.WAIT and "3 canary requests" in held.reason
    assert rollout.canary_weight == 10
    gone = rollout.advance(20.0, None)
    assert gone.step is Step.ROLLBACK and "no canary metrics" in gone.reason


def test_a_counter_reset_is_a_new_start_not_negative_traffic() -> None:
    rollout = Rollout(spec(error_budget=10))
    rollout.advance(0.0, CanarySample(1000, 8))
    assert rollout.advance(5.0, CanarySample(1100, 8)).step is Step.WAIT
    # The sidecar restarted: its counters start again from small numbers.
    assert rollout.advance(6.0, CanarySample(50, 1)).step is Step.WAIT
    assert rollout.spent == 1
    passed = rollout.advance(10.0, CanarySample(150, 1))
    assert passed.step is Step.SET_WEIGHT and passed.canary_weight == 20


def test_an_explicit_rollback_ends_the_rollout_once() -> None:
    rollout = Rollout(spec())
    rollout.advance(0.0, CanarySample())
    first = rollout.rollback("alert CanaryErrors firing")
    assert first.step is Step.ROLLBACK and first.reason == "rolled back: alert CanaryErrors firing"
    assert rollout.rollback("again").step is Step.WAIT


def test_p99_interpolates_within_the_bucket_like_histogram_quantile() -> None:
    sample = CanarySample(100, 0, ((0.1, 0.0), (0.2, 100.0), (math.inf, 100.0)))
    assert sample.p99_ms() == pytest.approx(199.0)
    assert CanarySample().p99_ms() is None
    beyond = CanarySample(10, 0, ((0.1, 0.0), (math.inf, 10.0)))
    assert beyond.p99_ms() == pytest.approx(100.0)


def test_the_spec_refuses_the_same_subset_twice_and_bad_weights() -> None:
    with pytest.raises(ValidationError, match="different subsets"):
        spec(canary="v1")
    with pytest.raises(ValidationError, match="step_weight"):
        spec(step_weight=0)
    assert spec(metrics={"kind": "prometheus", "url": "http://127.0.0.1:9090"}).metrics


def test_canary_routes_splits_the_rules_to_the_stable_subset_only() -> None:
    table = RouteTable.model_validate(
        {
            "service": "ratings",
            "rules": [
                {"match": [{"path": {"prefix": "/admin"}}], "backends": [{"service": "admin"}]},
                {"backends": [{"subset": "v1"}], "timeout": "2s"},
            ],
        }
    )
    routed = canary_routes(table, spec(), 30)
    assert routed.rules[0] == table.rules[0]
    assert [(b.subset, b.weight) for b in routed.rules[1].backends] == [("v1", 70), ("v2", 30)]
    assert routed.rules[1].timeout == 2.0
    again = canary_routes(routed, spec(), 0)
    assert [(b.subset, b.weight) for b in again.rules[1].backends] == [("v1", 100), ("v2", 0)]
    fresh = canary_routes(None, spec(), 10)
    assert fresh.service == "ratings" and len(fresh.rules) == 1


def test_canary_routes_refuses_a_table_with_nothing_to_split() -> None:
    table = RouteTable.model_validate(
        {"service": "ratings", "rules": [{"backends": [{"subset": "v3"}]}]}
    )
    with pytest.raises(RolloutError, match="nothing to split"):
        canary_routes(table, spec(), 10)


def test_checks_default_to_a_99_percent_success_rate() -> None:
    assert CanaryChecks().min_success_rate == 99.0
