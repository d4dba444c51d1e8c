import math

from meshproxy.config.policy import CircuitBreakers
from meshproxy.config.policy import EndpointBreaker as EndpointBreakerConfig
from meshproxy.upstream.breakers import CLOSED, HALF_OPEN, OPEN, ClusterBreakers, EndpointBreaker


def test_each_cluster_limit_overflows_with_its_reason_and_stat() -> None:
    breakers = ClusterBreakers(
        CircuitBreakers(max_connections=2, max_pending_requests=1, max_requests=3, max_retries=0)
    )
    assert breakers.try_connection() is None
    assert breakers.try_connection() is None
    cx = breakers.try_connection()
    assert cx is not None and cx.status == 503
    assert cx.reason == "upstream overflow: max_connections (2) reached"

    assert breakers.try_pending() is None
    pending = breakers.try_pending()
    assert pending is not None and pending.stat == "rq_pending_overflow"

    assert [breakers.try_request() for _ in range(3)] == [None, None, None]
    rq = breakers.try_request()
    assert rq is not None and rq.limit == "max_requests"

    retry = breakers.try_retry()
    assert retry is not None and retry.reason == "upstream overflow: max_retries (0) reached"

    assert breakers.overflows == {
        "cx_overflow": 1,
        "rq_pending_overflow": 1,
        "rq_overflow": 1,
        "rq_retry_overflow": 1,
    }


def test_an_overflow_changes_no_counter_and_release_makes_room() -> None:
    breakers = ClusterBreakers(CircuitBreakers(max_requests=1))
    assert breakers.try_request() is None
    assert breakers.try_request() is not None
    assert breakers.requests == 1
    breakers.release_request()
    assert breakers.try_request() is None
    assert breakers.overflows["rq_overflow"] == 1


def test_release_never_goes_below_zero() -> None:
    breakers = ClusterBreakers(CircuitBreakers(max_retries=1))
    breakers.release_retry()
    breakers.release_connection()
    assert breakers.retries == 0 and breakers.connections == 0
    assert breakers.try_retry() is None
    assert breakers.try_retry() is not None


def test_snapshot_shows_use_limits_and_overflows() -> None:
    breakers = ClusterBreakers(CircuitBreakers(max_connections=5))
    breakers.try_connection()
    snap = breakers.snapshot()
    assert snap["connections"] == [1, 5]
    assert snap["overflows"] == dict.fromkeys(
        ["cx_overflow", "rq_pending_overflow", "rq_overflow", "rq_retry_overflow"], 0
    )


def breaker(failures: int = 3, timeout: str = "10s") -> EndpointBreaker:
    return EndpointBreaker(
        EndpointBreakerConfig.model_validate(
            {"consecutive_failures": failures, "open_timeout": timeout}
        )
    )


def test_opens_after_consecutive_failures() -> None:
    b = breaker(failures=3)
    assert not b.on_failure(1.0)
    assert not b.on_failure(1.0)
    assert b.on_failure(2.0)
    assert b.state == OPEN and b.next_deadline == 12.0


def test_a_success_resets_the_failure_count_while_closed() -> None:
    b = breaker(failures=2)
    b.on_failure(0.0)
    b.on_success(0.0)
    assert not b.on_failure(0.0)
    assert b.state == CLOSED


def test_half_opens_after_the_timeout_then_closes_on_a_successful_trial() -> None:
    b = breaker(failures=1, timeout="10s")
    b.on_failure(0.0)
    assert not b.advance(9.9)
    assert b.advance(10.0)
    assert b.state == HALF_OPEN and b.wants_trial
    b.start_trial(10.0)
    assert not b.wants_trial
    assert b.on_success(10.5)
    assert b.state == CLOSED and b.next_deadline == math.inf


def test_a_failed_trial_opens_again_for_another_timeout() -> None:
    b = breaker(failures=1, timeout="10s")
    b.on_failure(0.0)
    b.advance(10.0)
    b.start_trial(10.0)
    assert b.on_failure(11.0)
    assert b.state == OPEN and b.next_deadline == 21.0
    assert b.times_opened == 2


def test_outcomes_while_open_change_nothing() -> None:
    b = breaker(failures=1, timeout="10s")
    b.on_failure(0.0)
    assert not b.on_success(1.0)
    assert not b.on_failure(2.0)
    assert b.state == OPEN and b.next_deadline == 10.0


def test_a_lost_trial_is_given_up_after_the_timeout() -> None:
    b = breaker(failures=1, timeout="10s")
    b.on_failure(0.0)
    b.advance(10.0)
    b.start_trial(10.0)
    assert not b.advance(19.0)
    assert b.advance(20.0)
    assert b.state == HALF_OPEN and b.wants_trial
