"""The demo's rollout body, its following of a rollout, and its traffic counts."""

import asyncio
from collections import Counter
from typing import Any

import pytest

from control.rollout import RolloutSpec
from meshproxy.config.routes import RouteTable
from meshproxy.demo.__main__ import only, parse_args
from meshproxy.demo.origin import start_origin
from meshproxy.demo.rollout import RolloutStep, follow_rollout, rollout_spec
from meshproxy.demo.traffic import SteadyTraffic, Traffic


def test_the_rollout_body_is_a_valid_spec_judged_on_the_client_sidecars_metrics() -> None:
    body = rollout_spec("v1", "v2", "http://127.0.0.1:15000/metrics")
    spec = RolloutSpec.model_validate({"service": "ratings", **body})
    assert (spec.stable, spec.canary) == ("v1", "v2")
    assert (spec.step_weight, spec.max_weight, spec.interval) == (20, 80, 2.0)
    assert spec.metrics is not None and spec.metrics.kind == "sidecars"
    assert spec.metrics.urls == ["http://127.0.0.1:15000/metrics"]
    assert spec.checks.min_success_rate == 99.0 and spec.checks.min_requests == 10


def test_the_stable_route_sends_everything_to_one_subset() -> None:
    table = RouteTable.model_validate({"service": "ratings", **only("v2")})
    (rule,) = table.rules
    assert [b.subset for b in rule.backends] == ["v2"]


def test_rollouts_run_unless_switched_off() -> None:
    assert not parse_args([]).no_rollout
    assert parse_args(["--no-rollout"]).no_rollout


class ScriptedApi:
    """Answers GET /v1/rollouts/ratings with the next view of a script, the last one forever."""

    def __init__(self, views: list[dict[str, Any]]) -> None:
        self.views = views
        self.calls = 0

    async def call(self, method: str, path: str, body: object = None) -> Any:
        assert (method, path) == ("GET", "/v1/rollouts/ratings")
        view = self.views[min(self.calls, len(self.views) - 1)]
        self.calls += 1
        return view


class CountingTraffic:
    def __init__(self) -> None:
        self.takes = 0

    def take(self) -> Traffic:
        self.takes += 1
        return Traffic(Counter(v1=8, v2=2), Counter(), 1.0)


def _view(phase: str, weight: int, reason: str) -> dict[str, Any]:
    return {"phase": phase, "canary_weight": weight, "reason": reason}


async def test_following_prints_each_change_once_with_the_traffic_of_the_step_before() -> None:
    api = ScriptedApi(
        [
            _view("progressing", 20, "canary started at 20%"),
            _view("progressing", 20, "canary started at 20%"),
            _view("progressing", 40, "checks passed: 20% -> 40%"),
            _view("progressing", 40, "check failed (1/2): success rate 90.00% < 99%"),
            _view("promoted", 100, "checks passed at 40%: promoted"),
        ]
    )
    lines: list[str] = []
    steps = await follow_rollout(
        api, "ratings", "v2", CountingTraffic(), frozenset({"v1", "v2"}), 5.0, lines.append,
        settle_s=0.0,
    )  # fmt: skip
    assert [(s.phase, s.weight) for s in steps] == [
        ("progressing", 20),
        ("progressing", 40),
        ("progressing", 40),
        ("promoted", 100),
    ]
    assert steps[-1] == RolloutStep("promoted", 100, "checks passed at 40%: promoted")
    step_lines = [line for line in lines if "rollout step" in line]
    assert step_lines[1] == (
        "demo: rollout step 2: v2 at 40% (progressing) - reason: checks passed: 20% -> 40%"
    )
    assert len(step_lines) == 4
    # a traffic line between steps, and one after the end
    assert [("rollout step" in line) for line in lines] == [True, False] * 3 + [True, False]
    assert lines[-1].startswith("demo:   traffic after it")
    assert "v1 80.0% (8), v2 20.0% (2); errors 0" in lines[1]


async def test_following_a_rollout_that_never_ends_times_out() -> None:
    api = ScriptedApi([_view("progressing", 20, "canary started at 20%")])
    with pytest.raises(TimeoutError):
        await follow_rollout(
            api, "ratings", "v2", CountingTraffic(), frozenset(), 0.3, lambda _: None
        )
    assert api.calls >= 2


def test_shares_name_the_versions_asked_for_and_the_errors() -> None:
    traffic = Traffic(Counter(v2=30), Counter({"status 500 from v3": 5}), 1.0)
    assert traffic.shares(frozenset({"v2", "v3"})) == (
        "v2 100.0% (30), v3 0.0% (0); errors 5 {'status 500 from v3': 5}"
    )


async def _take_some(port: int, wanted: int) -> Traffic:
    async with SteadyTraffic(port, connections=2, pause_s=0.0) as traffic:
        for _ in range(200):  # bounded: 10 s at most
            await asyncio.sleep(0.05)
            if traffic.counted >= wanted:
                break
        return traffic.take()


async def test_steady_traffic_counts_answers_and_names_the_version_of_an_error() -> None:
    good, bad = await start_origin("v1"), await start_origin("v3", status=500)
    try:
        ok = await _take_some(good.port, 5)
        failed = await _take_some(bad.port, 5)
    finally:
        await good.close()
        await bad.close()
    assert ok.versions["v1"] >= 5 and not ok.errors
    assert not failed.versions and failed.errors["status 500 from v3"] >= 5
    assert set(failed.errors) == {"status 500 from v3"}
