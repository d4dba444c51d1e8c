"""Retry policy: what is retried, idempotency, backoff, budget arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from meshproxy.config.routes import Retries
from meshproxy.routing import (
    CONNECT_FAILURE,
    RESET,
    Outcome,
    RetryBudget,
    RetryPolicy,
    backoff,
    should_retry,
    try_timeout,
)


def policy(**spec: Any) -> RetryPolicy:
    return RetryPolicy(Retries.model_validate({"attempts": 3, **spec}))


def retried(p: RetryPolicy | None, outcome: Outcome, **kw: Any) -> bool:
    args: dict[str, Any] = {"retries_done": 0, "method": b"GET", "request_sent": True}
    args.update(kw)
    return should_retry(p, outcome, **args)


def test_gateway_error_covers_502_503_504_only() -> None:
    p = policy(retry_on=["gateway-error"])
    assert [s for s in (500, 501, 502, 503, 504, 505, 429) if retried(p, s)] == [502, 503, 504]
    assert not retried(p, CONNECT_FAILURE)


def test_5xx_covers_every_server_error() -> None:
    p = policy(retry_on=["5xx"])
    assert all(retried(p, s) for s in (500, 502, 503, 599))
    assert not any(retried(p, s) for s in (200, 404, 429))
    assert not retried(p, RESET)


def test_listed_status_codes_are_retried() -> None:
    p = policy(retry_on=["retriable-status-codes"], retriable_status_codes=[409, 429])
    assert retried(p, 409) and retried(p, 429)
    assert not retried(p, 503)


def test_connect_failure_and_reset_follow_retry_on() -> None:
    assert retried(policy(retry_on=["connect-failure"]), CONNECT_FAILURE)
    assert not retried(policy(retry_on=["connect-failure"]), RESET)
    assert retried(policy(retry_on=["reset"]), RESET)


def test_attempts_count_retries_after_the_first_try() -> None:
    p = policy(retry_on=["5xx"])
    assert [retried(p, 503, retries_done=n) for n in range(5)] == [True, True, True, False, False]
    assert not retried(policy(attempts=0, retry_on=["5xx"]), 503)


def test_no_policy_means_no_retry() -> None:
    assert not retried(None, CONNECT_FAILURE)


def test_post_that_reached_the_upstream_is_not_retried_unless_allowed() -> None:
    p = policy(retry_on=["5xx", "reset", "connect-failure"])
    assert not retried(p, 503, method=b"POST")
    assert not retried(p, RESET, method=b"POST", request_sent=True)
    assert not retried(p, 503, method=b"PATCH")
    allowed = policy(retry_on=["5xx", "reset"], retry_non_idempotent=True)
    assert retried(allowed, 503, method=b"POST")
    assert retried(allowed, RESET, method=b"POST")


def test_post_that_never_left_the_proxy_is_retried() -> None:
    p = policy(retry_on=["reset", "connect-failure"])
    assert retried(p, CONNECT_FAILURE, method=b"POST", request_sent=True)
    assert retried(p, RESET, method=b"POST", request_sent=False)


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])
def test_idempotent_methods_are_retried_after_reaching_the_upstream(method: bytes) -> None:
    assert retried(policy(retry_on=["reset"]), RESET, method=method, request_sent=True)


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    base, cap = 0.025, 0.25
    assert backoff(1, base, cap, 0.999) == pytest.approx(0.999 * 0.025)
    assert backoff(2, base, cap, 0.5) == pytest.approx(0.5 * 3 * 0.025)
    assert backoff(3, base, cap, 1 - 1e-9) == pytest.approx(7 * 0.025, rel=1e-6)
    assert backoff(4, base, cap, 0.5) == pytest.approx(0.125)  # 15 * base capped at 10 * base
    assert backoff(60, base, cap, 0.5) == pytest.approx(0.125)
    assert backoff(3, base, cap, 0.0) == 0.0
    assert backoff(0, base, cap, 0.7) == 0.0


def test_backoff_defaults_to_envoy_base_and_ten_times_cap() -> None:
    p = policy()
    assert p.backoff_base == 0.025 and p.backoff_max == pytest.approx(0.25)


def test_try_timeout_is_cut_to_what_is_left_of_the_route_timeout() -> None:
    assert try_timeout(2.0, 0.5, elapsed=0.0) == 0.5
    assert try_timeout(2.0, 0.5, elapsed=1.8) == pytest.approx(0.2)
    assert try_timeout(2.0, 0.5, elapsed=2.5) == 0.0
    assert try_timeout(2.0, None, elapsed=0.5) == 1.5
    assert try_timeout(None, 0.5, elapsed=9.0) == 0.5
    assert try_timeout(None, None, elapsed=9.0) is None


@pytest.mark.parametrize(
    ("active", "limit"),
    [(0, 3), (10, 3), (15, 3), (16, 4), (20, 4), (21, 5), (100, 20), (1000, 200)],
)
def test_retry_budget_is_20_percent_of_active_with_a_floor_of_3(active: int, limit: int) -> None:
    budget = RetryBudget()
    for _ in range(active):
        budget.request_started()
    taken = 0
    while budget.try_start_retry():
        taken += 1
        assert taken <= active + 3
    assert taken == limit == budget.limit()


def test_retry_budget_frees_a_slot_when_a_retry_finishes() -> None:
    budget = RetryBudget(percent=20, min_concurrency=3)
    assert [budget.try_start_retry() for _ in range(4)] == [True, True, True, False]
    budget.retry_finished()
    assert budget.allows_retry() and budget.try_start_retry()
    assert not budget.allows_retry()


def test_retry_budget_shrinks_as_requests_finish() -> None:
    budget = RetryBudget(percent=50, min_concurrency=1)
    for _ in range(10):
        budget.request_started()
    assert budget.limit() == 5
    for _ in range(8):
        budget.request_finished()
    assert budget.limit() == 1
    for _ in range(5):
        budget.request_finished()
    assert budget.active_requests == 0  # never negative


def test_retry_budget_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        RetryBudget(percent=120)
