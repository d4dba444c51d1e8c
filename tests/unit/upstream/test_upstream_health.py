import random

import pytest

from meshproxy.config.policy import HealthCheck
from meshproxy.upstream.endpoint import EndpointState
from meshproxy.upstream.health import HealthChecker


def make(
    n: int = 1, now: float = 0.0, seed: int = 1, **config: object
) -> tuple[HealthChecker, list[EndpointState], list[float]]:
    settings = {"interval": "10s", "timeout": "1s", **config}
    eps = [EndpointState(f"10.0.2.{i}", 80) for i in range(n)]
    changes: list[float] = []
    checker = HealthChecker(
        HealthCheck.model_validate(settings),
        eps,
        host="ratings",
        now=now,
        rand=random.Random(seed).random,
        on_change=changes.append,
    )
    return checker, eps, changes


def probe_once(checker: HealthChecker, now: float, status: int | None, after: float = 0.1) -> None:
    probes = checker.due(now)
    assert len(probes) == 1
    checker.on_probe_result(probes[0], status, now + after)


def test_probe_names_endpoint_path_host_and_timeout() -> None:
    checker, eps, _ = make(path="/ready", timeout="2s")
    (probe,) = checker.due(0.0)
    assert (probe.endpoint, probe.host, probe.path, probe.timeout) == (
        eps[0],
        "ratings",
        "/ready",
        2.0,
    )
    assert probe.deadline == 2.0
    assert checker.due(0.5) == []  # one probe in flight per endpoint


def test_endpoints_start_unknown_and_the_first_result_decides() -> None:
    checker, eps, changes = make(healthy_threshold=3)
    assert eps[0].health == "unknown"
    probe_once(checker, 0.0, 200)
    assert eps[0].health == "healthy"
    assert changes == [0.1]

    checker, eps, _ = make(unhealthy_threshold=3)
    probe_once(checker, 0.0, None)
    assert eps[0].health == "unhealthy"


def test_healthy_turns_unhealthy_only_at_the_unhealthy_threshold() -> None:
    checker, eps, changes = make(unhealthy_threshold=3)
    probe_once(checker, 0.0, 200)
    now = 0.0
    for _ in range(2):
        now = checker.next_deadline
        probe_once(checker, now, 503)
        assert eps[0].health == "healthy"
    now = checker.next_deadline
    probe_once(checker, now, 503)
    assert eps[0].health == "unhealthy"
    assert len(changes) == 2


def test_unhealthy_turns_healthy_only_at_the_healthy_threshold() -> None:
    checker, eps, _ = make(healthy_threshold=2)
    probe_once(checker, 0.0, None)
    probe_once(checker, checker.next_deadline, 200)
    assert eps[0].health == "unhealthy"
    probe_once(checker, checker.next_deadline, 200)
    assert eps[0].health == "healthy"


def test_a_failure_breaks_a_run_of_successes() -> None:
    checker, eps, _ = make(healthy_threshold=2)
    probe_once(checker, 0.0, None)
    probe_once(checker, checker.next_deadline, 200)
    probe_once(checker, checker.next_deadline, 500)
    probe_once(checker, checker.next_deadline, 200)
    assert eps[0].health == "unhealthy"


def test_only_expected_statuses_pass() -> None:
    checker, eps, _ = make(expected_statuses=[200, 204])
    probe_once(checker, 0.0, 204)
    assert eps[0].health == "healthy"
    checker, eps, _ = make()
    probe_once(checker, 0.0, 301)
    assert eps[0].health == "unhealthy"


def test_next_probe_is_interval_plus_jitter_after_the_last_result() -> None:
    checker, _, _ = make(interval="10s", jitter="2s")
    probe_once(checker, checker.next_deadline, 200, after=0.5)
    gaps = []
    for _ in range(200):
        start = checker.next_deadline
        (probe,) = checker.due(start)
        end = start + 0.5
        checker.on_probe_result(probe, 200, end)
        gaps.append(checker.next_deadline - end)
    assert all(10.0 <= g < 12.0 for g in gaps)
    assert max(gaps) - min(gaps) > 1.5  # the jitter is used, not a constant offset


def test_first_probes_are_spread_over_the_jitter() -> None:
    checker, _, _ = make(n=50, jitter="5s")
    assert len(checker.due(0.0)) < 5
    assert len(checker.due(5.0)) + len(checker.due(0.0)) >= 45


def test_a_probe_past_its_deadline_fails_and_its_late_result_is_ignored() -> None:
    checker, eps, changes = make(timeout="1s", unhealthy_threshold=1)
    (probe,) = checker.due(0.0)
    assert checker.next_deadline == 1.0
    assert checker.due(1.0) == []  # timed out; next probe an interval later
    assert eps[0].health == "unhealthy"
    assert not checker.on_probe_result(probe, 200, 1.2)
    assert eps[0].health == "unhealthy"
    assert checker.next_deadline == 11.0
    assert changes == [1.0]


def test_a_result_reported_after_the_timeout_counts_as_failed() -> None:
    checker, eps, _ = make(timeout="1s")
    (probe,) = checker.due(0.0)
    assert checker.on_probe_result(probe, 200, 1.5)
    assert eps[0].health == "unhealthy"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"path": "healthz"}, "must start with '/'"),
        ({"interval": "0s"}, "must be positive"),
        ({"expected_statuses": [42]}, "HTTP statuses"),
        ({"expected_statuses": []}, "HTTP statuses"),
    ],
)
def test_bad_health_check_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HealthCheck.model_validate(settings)
