"""Compiling a snapshot: cross-references checked with exact field paths."""

from __future__ import annotations

from typing import Any

import pytest

from meshproxy.config import ConfigError
from meshproxy.routing import CompiledRoutes
from tests.unit.routing.snapshots import snapshot


def problems_of(routes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        CompiledRoutes.from_snapshot(snapshot(routes))
    return err.value.problems


def test_unknown_subset_is_refused_with_its_field_path() -> None:
    problems = problems_of(
        [
            {
                "service": "ratings",
                "rules": [
                    {"backends": [{"subset": "v1"}]},
                    {"backends": [{"subset": "v1"}, {"subset": "v9"}]},
                ],
            }
        ]
    )
    assert [p for p, _ in problems] == ["snapshot.routes.0.rules.1.backends.1.subset"]
    assert "unknown subset 'v9' of service 'ratings' (known: v1, v2, v3)" in problems[0][1]


def test_subset_of_a_service_without_policy_is_unknown() -> None:
    problems = problems_of(
        [{"service": "ratings", "rules": [{"backends": [{"service": "reviews", "subset": "v1"}]}]}]
    )
    assert problems == [
        (
            "snapshot.routes.0.rules.0.backends.0.subset",
            "unknown subset 'v1' of service 'reviews' (known: none)",
        )
    ]


def test_unknown_backend_service_is_refused() -> None:
    problems = problems_of([{"service": "ratings", "rules": [{"backends": [{"service": "nope"}]}]}])
    assert problems == [
        ("snapshot.routes.0.rules.0.backends.0.service", "unknown service 'nope': not in services")
    ]


def test_table_for_a_virtual_service_needs_backends_that_exist() -> None:
    problems = problems_of([{"service": "virtual", "rules": [{"backends": [{"weight": 3}]}, {}]}])
    assert [p for p, _ in problems] == [
        "snapshot.routes.0.rules.0.backends.0",
        "snapshot.routes.0.rules.1.backends",
    ]


def test_virtual_service_routing_to_real_ones_is_accepted() -> None:
    routes = CompiledRoutes.from_snapshot(
        snapshot([{"service": "front", "rules": [{"backends": [{"service": "reviews"}]}]}])
    )
    decision = routes.select("front", b"front", b"GET", b"/", [], "")
    assert decision is not None and decision.backend.service == "reviews"


def test_unknown_mirror_subset_is_refused() -> None:
    problems = problems_of(
        [{"service": "ratings", "rules": [{"mirror": {"subset": "shadow", "percent": 5}}]}]
    )
    assert [p for p, _ in problems] == ["snapshot.routes.0.rules.0.mirror.subset"]


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        [
            {"service": "ratings", "rules": [{"backends": [{"subset": "x"}]}]},
            {"service": "ratings", "rules": [{"backends": [{"subset": "y"}]}]},
        ]
    )
    assert [p for p, _ in problems] == [
        "snapshot.routes.0.rules.0.backends.0.subset",
        "snapshot.routes.1.rules.0.backends.0.subset",
        "snapshot.routes.1.hosts",
    ]
    assert "already routed by routes.0" in problems[2][1]


def test_a_host_routed_by_two_tables_of_one_service_is_refused() -> None:
    problems = problems_of(
        [
            {"service": "ratings", "hosts": ["a.example.com"], "rules": [{}]},
            {"service": "ratings", "hosts": ["b.example.com", "a.example.com"], "rules": [{}]},
        ]
    )
    assert problems == [
        (
            "snapshot.routes.1.hosts.1",
            "host 'a.example.com' of service 'ratings' is already routed by routes.0",
        )
    ]


def test_where_prefix_names_the_snapshot_in_problem_paths() -> None:
    snap = snapshot([{"service": "ratings", "rules": [{"backends": [{"subset": "x"}]}]}])
    with pytest.raises(ConfigError) as err:
        CompiledRoutes.from_snapshot(snap, where="bootstrap.snapshot")
    assert err.value.problems[0][0] == "bootstrap.snapshot.routes.0.rules.0.backends.0.subset"


def test_subset_endpoints_follow_the_policy_label_selectors() -> None:
    routes = CompiledRoutes.from_snapshot(snapshot([]))
    assert [e.port for e in routes.subset_endpoints("ratings", "v2")] == [9002]
    assert [e.port for e in routes.subset_endpoints("ratings")] == [9001, 9002, 9003]
    assert {(t.service, t.subset) for t in routes.targets()} == {
        ("ratings", None),
        ("ratings", "v1"),
        ("ratings", "v2"),
        ("ratings", "v3"),
        ("reviews", None),
    }
    with pytest.raises(KeyError):
        routes.subset_endpoints("ratings", "v9")


def test_a_rule_with_faults_is_never_retried() -> None:
    retries = {"attempts": 3, "retry_on": ["5xx"]}
    routes = CompiledRoutes.from_snapshot(
        snapshot(
            [
                {
                    "service": "ratings",
                    "rules": [
                        {
                            "match": [{"method": "POST"}],
                            "retries": retries,
                            "fault": {"abort": {"status": 503, "percent": 10}},
                        },
                        {"retries": retries},
                    ],
                }
            ]
        )
    )
    faulty = routes.select("ratings", None, b"POST", b"/", [], "")
    plain = routes.select("ratings", None, b"GET", b"/", [], "")
    assert faulty is not None and faulty.rule.retry is None and faulty.rule.fault is not None
    assert plain is not None and plain.rule.retry is not None and plain.rule.retry.attempts == 3


def test_design_example_compiles() -> None:
    from pathlib import Path

    from meshproxy.config import load_bootstrap

    example = Path(__file__).parents[3] / "config" / "examples" / "reviews.yaml"
    routes = CompiledRoutes.from_snapshot(load_bootstrap(example).snapshot)
    decision = routes.select("ratings", b"ratings", b"GET", b"/r", [(b"x-user", b"ann")], "")
    assert decision is not None and decision.backend.subset in {"v1", "v2"}
    assert decision.rule.timeout == 2.0
    assert decision.rule.retry is not None and decision.rule.retry.on_gateway_error
