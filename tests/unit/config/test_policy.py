from pathlib import Path

import pytest
from pydantic import ValidationError

from meshproxy.config import load_bootstrap
from meshproxy.config.policy import LoadBalancer, Policy

EXAMPLE = Path(__file__).parents[3] / "config" / "examples" / "reviews.yaml"


def test_design_example_policy_keeps_its_values_and_gets_the_new_defaults() -> None:
    policy = load_bootstrap(EXAMPLE).snapshot.policies[0]
    assert policy.load_balancer.policy == "least_request"
    assert policy.load_balancer.healthy_panic_threshold == 50
    assert policy.load_balancer.locality.enabled is False
    outlier = policy.outlier_detection
    assert outlier is not None
    assert (outlier.consecutive_5xx, outlier.interval, outlier.base_ejection_time) == (
        5,
        10.0,
        30.0,
    )
    assert outlier.max_ejection_time == 300.0 and outlier.consecutive_gateway_errors is None
    assert policy.circuit_breakers.max_retries == 3
    assert policy.health_check is None and policy.endpoint_breaker is None


def test_full_policy_parses_durations_and_nested_settings() -> None:
    policy = Policy.model_validate(
        {
            "service": "ratings",
            "load_balancer": {
                "policy": "consistent_hash",
                "hash_on": {"cookie": "session"},
                "locality": {"enabled": True, "min_healthy_percent": 80},
                "healthy_panic_threshold": 30,
            },
            "health_check": {
                "path": "/ready",
                "interval": "5s",
                "jitter": "500ms",
                "timeout": "1s",
                "healthy_threshold": 1,
                "unhealthy_threshold": 2,
            },
            "outlier_detection": {"consecutive_gateway_errors": 3, "max_ejection_time": "2m"},
            "endpoint_breaker": {"consecutive_failures": 4, "open_timeout": "15s"},
        }
    )
    assert policy.load_balancer.hash_on is not None
    assert policy.load_balancer.hash_on.cookie == "session"
    assert policy.health_check is not None and policy.health_check.jitter == 0.5
    assert policy.outlier_detection is not None
    assert policy.outlier_detection.max_ejection_time == 120.0
    assert policy.endpoint_breaker is not None and policy.endpoint_breaker.open_timeout == 15.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"policy": "consistent_hash"}, "needs hash_on"),
        ({"policy": "random", "hash_on": {"header": "x"}}, "only used by policy consistent_hash"),
        (
            {"policy": "consistent_hash", "hash_on": {"header": "x", "cookie": "y"}},
            "exactly one of",
        ),
        ({"policy": "consistent_hash", "hash_on": {"client_address": False}}, "exactly one of"),
        ({"healthy_panic_threshold": 101}, "less than or equal to 100"),
        ({"locality": {"min_healthy_percent": 0}}, "greater than or equal to 1"),
        ({"policy": "maglev"}, "round_robin"),
    ],
)
def test_bad_load_balancer_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LoadBalancer.model_validate(settings)


def test_endpoint_breaker_needs_a_positive_timeout_and_a_unit() -> None:
    with pytest.raises(ValidationError, match="must be positive"):
        Policy.model_validate({"service": "s", "endpoint_breaker": {"open_timeout": "0s"}})
    with pytest.raises(ValidationError, match="needs a unit"):
        Policy.model_validate({"service": "s", "endpoint_breaker": {"open_timeout": 5}})


def test_unknown_policy_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Policy.model_validate({"service": "s", "outlier_detection": {"consecutive_500": 1}})
