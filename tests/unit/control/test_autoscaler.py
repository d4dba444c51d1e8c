"""Deterministic simulations: an injected clock, synthetic load, replica counts over time.

Each simulated second every running instance reports its share of the load (the
activator reports it while there are none); every 2 s the autoscaler decides and the
decision takes effect at once.
"""

import json
import math
from collections.abc import Callable

import pytest

from control.autoscaler import (
    Autoscaler,
    AutoscalerConfig,
    AutoscalerError,
    PolicyKind,
    ScaleDecision,
    ScalingPolicy,
    SelectPolicy,
    samples_from_prometheus,
)

Load = Callable[[float], float]


def simulate(
    config: AutoscalerConfig, load: Load, until: int, replicas: int = 1, tick: int = 2
) -> tuple[dict[int, int], list[ScaleDecision]]:
    scaler = Autoscaler(config)
    timeline: dict[int, int] = {}
    decisions: list[ScaleDecision] = []
    for second in range(until + 1):
        now = float(second)
        total = load(now)
        if replicas:
            for i in range(replicas):
                scaler.observe(now, f"pod-{i}", total / replicas)
        else:
            scaler.observe(now, "activator", total)
        if second % tick == 0:
            decision = scaler.evaluate(now, replicas)
            decisions.append(decision)
            replicas = decision.desired
        timeline[second] = replicas
    return timeline, decisions


def at(decisions: list[ScaleDecision], time: float) -> ScaleDecision:
    return next(d for d in decisions if d.time == time)


DEFAULT = AutoscalerConfig(target=10)


# -- synthetic load --------------------------------------------------------------------


def test_step_up_panics_and_climbs_at_the_scale_up_policy_rate() -> None:
    timeline, decisions = simulate(DEFAULT, lambda t: 5 if t < 10 else 100, 300)
    assert timeline[9] == 1
    # Panic window (6 s) sees 20.8 concurrent: 3 pods, 3x the one ready -> panic.
    assert timeline[10] == 3 and at(decisions, 10).panicking
    # +4 pods or +100% per 15 s, counted from the 1 pod at the start of the period.
    assert timeline[12] == 5
    assert "scale-up policy allows 5 now" in at(decisions, 12).steps
    assert timeline[25] == 5
    assert timeline[26] == 7
    assert timeline[28] == 10
    assert all(timeline[t] == 10 for t in range(28, 301))


def test_step_down_waits_for_the_stabilisation_window_then_follows_it() -> None:
    timeline, decisions = simulate(DEFAULT, lambda t: 100 if t < 100 else 20, 600, replicas=10)
    assert all(timeline[t] == 10 for t in range(408))
    held = at(decisions, 300)
    assert held.desired == 10 and "scale-down stabilised" in held.reason
    # The stable window took ~60 s to fall; the 300 s stabilisation replays that fall.
    assert timeline[408] == 9
    assert timeline[438] == 5
    assert timeline[460] == 2
    assert all(timeline[t] == 2 for t in range(460, 601))


def test_ramp_is_followed_without_ever_scaling_down() -> None:
    timeline, decisions = simulate(DEFAULT, lambda t: min(t, 200.0), 400)
    counts = [timeline[t] for t in range(401)]
    assert counts == sorted(counts)
    assert timeline[64] == 7
    assert timeline[130] == 11
    # 200 concurrent on 19 pods is 5% over target: inside HPA's 10% tolerance.
    assert timeline[400] == 19
    assert "within tolerance" in at(decisions, 400).reason


def test_spike_panic_holds_the_peak_then_scales_down_after_stabilisation() -> None:
    timeline, decisions = simulate(DEFAULT, lambda t: 200 if 100 <= t < 110 else 10, 700)
    assert timeline[99] == 1
    assert timeline[100] == 5 and at(decisions, 100).panicking
    # Panic wanted 20, the default scale-up policy allowed +4; once the spike is over
    # nothing scales further up, and nothing scales down while panicking.
    assert max(timeline.values()) == 5
    assert all(timeline[t] == 5 for t in range(100, 474))
    # Last crossing at t=112 (105 concurrent wants 11 pods, 2.2x the 5 ready); panic
    # ends once more than a stable window (60 s) has passed since.
    assert [d.time for d in decisions if "panic over" in d.reason] == [174]
    assert all(d.panicking for d in decisions if 100 <= d.time < 174)
    assert timeline[474] == 2 and timeline[476] == 1
    assert all(timeline[t] == 1 for t in range(476, 701))


def test_spike_without_hpa_policies_follows_the_panic_window_within_seconds() -> None:
    knative = AutoscalerConfig(target=10, scale_up_policies=())
    timeline, _ = simulate(knative, lambda t: 200 if 100 <= t < 110 else 10, 700)
    assert [timeline[t] for t in (100, 102, 104, 106)] == [5, 11, 17, 20]
    assert all(timeline[t] == 20 for t in range(106, 464))
    # KPA's max scale-down rate halves at most per decision.
    assert [timeline[t] for t in (464, 466, 468, 470)] == [10, 5, 2, 1]


def test_scale_to_zero_waits_for_the_stable_window_and_grace_period() -> None:
    to_zero = AutoscalerConfig(target=10, min_replicas=0, scale_down_stabilization=0)
    timeline, decisions = simulate(to_zero, lambda t: 10 if t < 10 else 0, 200)
    # Last load at t=9; 60 s stable window + 30 s grace.
    assert all(timeline[t] == 1 for t in range(100))
    assert "keep 1" in at(decisions, 98).reason
    assert all(timeline[t] == 0 for t in range(100, 201))


def test_min_replicas_above_zero_never_scales_to_zero() -> None:
    timeline, _ = simulate(DEFAULT, lambda t: 10 if t < 10 else 0, 800)
    assert min(timeline.values()) == 1


def test_scale_from_zero_on_the_first_reported_load() -> None:
    from_zero = AutoscalerConfig(target=10, min_replicas=0, scale_down_stabilization=0)
    timeline, _ = simulate(from_zero, lambda t: 0 if t < 10 else 35, 60, replicas=0)
    assert timeline[9] == 0
    assert timeline[10] == 1
    assert timeline[16] == 4
    assert timeline[60] == 4


# -- single stages ---------------------------------------------------------------------


def one_decision(
    config: AutoscalerConfig, total: float, current: int, now: float = 0.0
) -> ScaleDecision:
    scaler = Autoscaler(config)
    for i in range(max(current, 1)):
        scaler.observe(now, f"pod-{i}", total / max(current, 1))
    return scaler.evaluate(now, current)


def test_usage_within_tolerance_keeps_the_count() -> None:
    assert one_decision(DEFAULT, 105, 10).desired == 10
    assert one_decision(DEFAULT, 95, 10).desired == 10
    assert one_decision(DEFAULT, 115, 10).desired == 12


def test_scale_up_policies_take_the_most_permissive_and_count_the_period() -> None:
    scaler = Autoscaler(DEFAULT)
    desired = {}
    replicas = 10
    for second in range(16):
        scaler.observe(second, "all", 1000)
        if second in (0, 5, 14, 15):
            replicas = desired[second] = scaler.evaluate(second, replicas).desired
    # Pods: 10 + 4 = 14, Percent: 10 * 2 = 20; MAX picks 20. The +10 made at t=0
    # counts against its 15 s period until t=15.
    assert desired == {0: 20, 5: 20, 14: 20, 15: 40}


def test_min_select_takes_the_most_restrictive_policy() -> None:
    config = AutoscalerConfig(target=10, scale_up_select=SelectPolicy.MIN)
    assert one_decision(config, 1000, 10).desired == 14


def test_disabled_scale_down_never_scales_down() -> None:
    config = AutoscalerConfig(
        target=10, scale_down_select=SelectPolicy.DISABLED, scale_down_stabilization=0
    )
    decision = one_decision(config, 0, 10)
    assert decision.desired == 10
    assert "scale-down policy allows 10 now" in decision.steps


def test_scale_down_policy_limits_pods_per_period() -> None:
    config = AutoscalerConfig(
        target=10,
        scale_down_stabilization=0,
        scale_down_policies=(ScalingPolicy(PolicyKind.PODS, 1, 60),),
    )
    scaler = Autoscaler(config)
    replicas = 10
    seen = {}
    for second in range(0, 181, 10):
        scaler.observe(second, "all", 0)
        replicas = scaler.evaluate(second, replicas).desired
        seen[second] = replicas
    assert [seen[t] for t in (0, 50, 60, 120, 180)] == [9, 9, 8, 7, 6]


def test_kpa_scale_down_rate_halves_at_most_per_decision() -> None:
    config = AutoscalerConfig(target=10, scale_down_stabilization=0)
    decision = one_decision(config, 0, 16)
    assert decision.desired == 8
    assert any(step.startswith("KPA rate bounds [8, ") for step in decision.steps)


def test_max_and_min_replicas_are_hard_bounds() -> None:
    capped = one_decision(
        AutoscalerConfig(target=10, max_replicas=5, scale_up_policies=()), 1000, 2
    )
    assert capped.desired == 5 and capped.steps[-1] == "capped at max_replicas 5"
    raised = one_decision(AutoscalerConfig(target=10, min_replicas=3), 0, 1)
    assert raised.desired == 3 and raised.steps[-1] == "raised to min_replicas 3"


def test_without_metrics_the_count_is_held_within_bounds() -> None:
    scaler = Autoscaler(AutoscalerConfig(target=10, min_replicas=2))
    held = scaler.evaluate(0, 4)
    assert held.desired == 4 and held.steps[0] == "no metrics yet: holding at 4"
    assert scaler.evaluate(2, 1).desired == 2


def test_reports_leave_the_stable_window_after_sixty_seconds() -> None:
    scaler = Autoscaler(DEFAULT)
    for second in range(60):
        scaler.observe(second, "pod-0", 0)
    scaler.observe(60, "pod-0", 600)
    assert scaler.evaluate(60, 1).stable_value == pytest.approx(10)
    assert scaler.evaluate(119, 1).stable_value == pytest.approx(10)
    assert scaler.evaluate(120, 1).stable_value == 0


def test_reports_without_evaluations_keep_only_one_stable_window() -> None:
    scaler = Autoscaler(DEFAULT)
    for second in range(1000):
        scaler.observe(second, "pod-0", 10)
    assert len(scaler._buckets) == 60
    assert scaler.evaluate(999, 1).stable_value == 10


def test_repeated_reports_in_one_second_replace_each_other() -> None:
    scaler = Autoscaler(DEFAULT)
    scaler.observe(0.1, "pod-0", 50)
    scaler.observe(0.9, "pod-0", 20)
    scaler.observe(0.5, "pod-1", 5)
    assert scaler.evaluate(0.9, 3).stable_value == 25


def test_late_reports_join_their_second_unless_older_than_the_window() -> None:
    scaler = Autoscaler(DEFAULT)
    scaler.observe(100, "pod-0", 10)
    scaler.observe(102, "pod-0", 10)
    scaler.observe(100.5, "pod-1", 30)  # joins second 100
    scaler.observe(101.5, "pod-1", 6)  # second 101 had no report yet
    scaler.observe(42, "pod-1", 1000)  # outside the 60 s window: dropped
    assert scaler.evaluate(102, 2).stable_value == pytest.approx((10 + 30 + 6 + 10) / 3)


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_bad_metric_values_are_refused(value: float) -> None:
    with pytest.raises(AutoscalerError):
        Autoscaler(DEFAULT).observe(0, "pod-0", value)


# -- records ---------------------------------------------------------------------------


def test_every_decision_is_recorded_and_serialisable() -> None:
    scaler = Autoscaler(AutoscalerConfig(target=10, history=3))
    replicas = 1
    for second in range(40):
        scaler.observe(second, "pod-0", 100)
        if second % 2 == 0:
            replicas = scaler.evaluate(second, replicas).desired
    assert [d.time for d in scaler.history] == [34, 36, 38]
    record = json.loads(json.dumps(scaler.history[-1].to_dict()))
    assert set(record) == {
        "time",
        "current",
        "desired",
        "stable_value",
        "panic_value",
        "panicking",
        "steps",
        "reason",
    }
    assert record["reason"] == "; ".join(record["steps"])
    assert scaler.actions == [d for d in scaler.history if d.changed]
    # 5 -> 7 -> 10 happened before the last three decisions; they all hold at 10.
    assert scaler.actions == []
    assert [d.desired for d in scaler.history] == [10, 10, 10]


def test_first_action_names_panic_and_the_policy_limit() -> None:
    scaler = Autoscaler(DEFAULT)
    scaler.observe(0, "pod-0", 100)
    decision = scaler.evaluate(0, 1)
    assert decision.changed and decision.desired == 5
    assert decision.steps[0].startswith("panic: 100 over 6s needs 10 pods")
    assert decision.steps[-1] == "scale-up policy allows 5 now"
    assert scaler.actions == [decision]


# -- prometheus and config -------------------------------------------------------------


def test_prometheus_vector_becomes_instance_samples() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"instance": "10.0.0.1:15000"}, "value": [1700000000.0, "3.5"]},
                {"metric": {"instance": "10.0.0.2:15000"}, "value": [1700000000.0, "0"]},
            ],
        },
    }
    assert samples_from_prometheus(body) == [("10.0.0.1:15000", 3.5), ("10.0.0.2:15000", 0.0)]


@pytest.mark.parametrize(
    "body",
    [
        {"status": "error", "error": "bad query"},
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "NaN"]}]},
        },
    ],
)
def test_prometheus_errors_and_malformed_answers_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(AutoscalerError):
        samples_from_prometheus(body)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": 0},
        {"target": 10, "min_replicas": 5, "max_replicas": 4},
        {"target": 10, "panic_threshold": 1.0},
        {"target": 10, "tolerance": -0.1},
        {"target": 10, "stable_window": 5},
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(AutoscalerError):
        AutoscalerConfig(**kwargs)  # type: ignore[arg-type]
