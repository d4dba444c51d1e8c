import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.config.policy import OutlierDetection
from meshproxy.upstream.endpoint import EndpointState
from meshproxy.upstream.outlier import OutlierDetector


def make(
    n: int = 10, now: float = 0.0, **config: object
) -> tuple[OutlierDetector, list[EndpointState]]:
    settings = {"interval": "10s", "base_ejection_time": "30s", **config}
    eps = [EndpointState(f"10.0.1.{i}", 80) for i in range(n)]
    return OutlierDetector(OutlierDetection.model_validate(settings), eps, now), eps


def fail(
    detector: OutlierDetector, ep: EndpointState, times: int, now: float, status: int = 500
) -> bool:
    return any([detector.record_error(ep, status, now) for _ in range(times)])


def test_ejects_at_the_consecutive_5xx_threshold_not_before() -> None:
    detector, eps = make(consecutive_5xx=5)
    assert not fail(detector, eps[0], 4, now=1.0)
    assert not eps[0].ejected
    assert detector.record_error(eps[0], 500, 1.0)
    assert eps[0].ejected and eps[0].ejected_until == 31.0
    assert detector.ejections["consecutive_5xx"] == 1


def test_a_success_in_between_resets_the_count() -> None:
    detector, eps = make(consecutive_5xx=3)
    fail(detector, eps[0], 2, now=1.0)
    eps[0].consecutive_5xx = 0  # what a success does (Cluster.on_result)
    assert not fail(detector, eps[0], 2, now=1.0)
    assert not eps[0].ejected


def test_consecutive_gateway_errors_eject_before_the_5xx_threshold() -> None:
    detector, eps = make(consecutive_5xx=10, consecutive_gateway_errors=3)
    assert fail(detector, eps[0], 3, now=0.0, status=503)
    assert detector.ejections["consecutive_gateway_errors"] == 1


def test_a_500_breaks_a_run_of_gateway_errors_but_counts_as_5xx() -> None:
    detector, eps = make(consecutive_5xx=5, consecutive_gateway_errors=3)
    fail(detector, eps[0], 2, now=0.0, status=502)
    detector.record_error(eps[0], 500, 0.0)
    assert not fail(detector, eps[0], 1, now=0.0, status=504)
    assert eps[0].consecutive_gateway == 1
    assert detector.record_error(eps[0], 504, 0.0)  # fifth 5xx in a row
    assert detector.ejections["consecutive_5xx"] == 1


def test_gateway_errors_are_not_enforced_unless_configured() -> None:
    detector, eps = make(consecutive_5xx=5)
    assert not fail(detector, eps[0], 4, now=0.0, status=503)


def test_returns_exactly_when_the_ejection_time_is_up() -> None:
    detector, eps = make(base_ejection_time="30s", interval="10s")
    fail(detector, eps[0], 5, now=2.0)
    assert detector.next_deadline == 10.0  # the first sweep comes first
    detector.advance(10.0)
    assert detector.next_deadline == 20.0
    detector.advance(31.9)
    assert eps[0].ejected
    assert detector.next_deadline == 32.0
    assert detector.advance(32.0)
    assert not eps[0].ejected and eps[0].last_unejected == 32.0
    assert detector.ejected_count == 0


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    detector, eps = make(base_ejection_time="30s", max_ejection_time="100s", interval="10s")
    ep = eps[0]
    now = 0.0
    durations = []
    for _ in range(5):
        fail(detector, ep, 5, now)
        durations.append(ep.ejected_until - now)
        now = ep.ejected_until
        detector.advance(now)
        assert not ep.ejected
        # Fails again straight away: no sweep had a chance to decay the multiplier.
    assert durations == [30.0, 60.0, 90.0, 100.0, 100.0]


def test_max_ejection_time_below_base_means_base() -> None:
    detector, eps = make(base_ejection_time="30s", max_ejection_time="10s")
    fail(detector, eps[0], 5, 0.0)
    assert eps[0].ejected_until == 30.0
    detector.advance(30.0)
    fail(detector, eps[0], 5, 30.0)
    assert eps[0].ejected_until == 60.0


def test_multiplier_decays_one_step_per_interval_while_back() -> None:
    detector, eps = make(base_ejection_time="30s", interval="10s")
    ep = eps[0]
    fail(detector, ep, 5, 0.0)  # out until 30
    detector.advance(30.0)
    fail(detector, ep, 5, 30.0)  # multiplier 2: out until 90
    assert ep.ejected_until == 90.0
    detector.advance(90.0)
    assert ep.eject_multiplier == 2
    # Sweeps at 100 and 110 are each at least one interval after 90.
    detector.advance(115.0)
    assert ep.eject_multiplier == 0
    fail(detector, ep, 5, 115.0)
    assert ep.ejected_until == 145.0  # back to base


def test_decay_is_the_same_however_late_advance_is_called() -> None:
    late, late_eps = make(base_ejection_time="30s", interval="10s")
    step, step_eps = make(base_ejection_time="30s", interval="10s")
    for detector, eps in ((late, late_eps), (step, step_eps)):
        for t in (0.0, 30.0, 90.0):
            fail(detector, eps[0], 5, t)
            detector.advance(eps[0].ejected_until)
    for t in range(100, 500, 10):
        step.advance(float(t))
    late.advance(495.0)
    assert late_eps[0].eject_multiplier == step_eps[0].eject_multiplier == 0
    assert late.next_sweep == step.next_sweep == 500.0


def test_max_ejection_percent_limits_ejections_and_counts_overflow() -> None:
    detector, eps = make(n=10, max_ejection_percent=20)
    assert fail(detector, eps[0], 5, 0.0)
    assert fail(detector, eps[1], 5, 0.0)
    assert not fail(detector, eps[2], 5, 0.0)  # 30% > 20%
    assert not eps[2].ejected
    assert detector.ejections["overflow"] == 1
    assert eps[2].consecutive_5xx == 0  # counter reset: next try after 5 more


def test_one_endpoint_can_always_be_ejected() -> None:
    detector, eps = make(n=3, max_ejection_percent=10)
    assert fail(detector, eps[0], 5, 0.0)
    assert not fail(detector, eps[1], 5, 0.0)


def test_room_frees_when_an_ejected_endpoint_returns() -> None:
    detector, eps = make(n=10, max_ejection_percent=10)
    fail(detector, eps[0], 5, 0.0)
    assert not fail(detector, eps[1], 5, 1.0)
    detector.advance(30.0)
    assert fail(detector, eps[1], 5, 31.0)


def test_errors_while_ejected_are_ignored_and_counts_restart_on_return() -> None:
    detector, eps = make(consecutive_5xx=3)
    fail(detector, eps[0], 3, 0.0)
    assert not fail(detector, eps[0], 10, 1.0)
    assert eps[0].times_ejected == 1
    detector.advance(30.0)
    assert not fail(detector, eps[0], 2, 31.0)
    assert fail(detector, eps[0], 1, 31.0)


def test_sweep_returns_due_endpoints_and_schedules_the_next() -> None:
    detector, eps = make()
    fail(detector, eps[0], 5, 0.0)
    assert not detector.sweep(10.0)
    assert detector.next_sweep == 20.0
    assert detector.sweep(40.0)
    assert not eps[0].ejected


@pytest.mark.parametrize("field", ["interval", "base_ejection_time"])
def test_zero_durations_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        OutlierDetection.model_validate({field: "0s"})


@settings(deadline=None, max_examples=150)
@given(
    n=st.integers(min_value=1, max_value=20),
    percent=st.integers(min_value=0, max_value=100),
    events=st.lists(
        st.tuples(st.integers(min_value=0, max_value=19), st.sampled_from([500, 503, 200])),
        max_size=300,
    ),
)
def test_ejected_share_never_passes_the_maximum_except_for_one(
    n: int, percent: int, events: list[tuple[int, int]]
) -> None:
    detector, eps = make(n=n, consecutive_5xx=2, max_ejection_percent=percent)
    now = 0.0
    for index, status in events:
        now += 0.5
        detector.advance(now)
        ep = eps[index % n]
        if status >= 500:
            detector.record_error(ep, status, now)
        else:
            ep.consecutive_5xx = 0
        ejected = sum(e.ejected for e in eps)
        assert ejected <= max(1, percent * n // 100)
        assert all(e.ejected_until - now <= 300.0 for e in eps if e.ejected)
