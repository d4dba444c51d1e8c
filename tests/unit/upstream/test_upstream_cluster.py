import random
from collections import Counter
from typing import Any

import pytest

from meshproxy.config.policy import Policy
from meshproxy.config.snapshot import Snapshot
from meshproxy.upstream import Cluster, EndpointState, Failure, Upstreams


def build_upstreams(
    n: int = 4,
    *,
    zones: list[str] | None = None,
    local_zone: str | None = None,
    seed: int = 1,
    **policy: Any,
) -> Upstreams:
    endpoints = [
        {"address": f"10.0.3.{i}", "port": 80, **({"zone": zones[i]} if zones else {})}
        for i in range(n)
    ]
    snapshot = Snapshot.model_validate(
        {
            "services": {"ratings": {"endpoints": endpoints}},
            "policies": [{"service": "ratings", **policy}],
        }
    )
    return Upstreams.from_snapshot(
        snapshot, now=0.0, local_zone=local_zone, rand=random.Random(seed).random
    )


def build(n: int = 4, **options: Any) -> Cluster:
    cluster = build_upstreams(n, **options).cluster("ratings")
    assert cluster is not None
    return cluster


def picks(cluster: Cluster, count: int, now: float = 0.0) -> Counter[EndpointState]:
    got: Counter[EndpointState] = Counter()
    for _ in range(count):
        ep = cluster.pick(None, now)
        assert ep is not None
        got[ep] += 1
    return got


def fail(cluster: Cluster, ep: EndpointState, times: int, now: float, status: int = 500) -> None:
    for _ in range(times):
        cluster.on_result(ep, status, now)


OUTLIER = {"consecutive_5xx": 3, "interval": "10s", "base_ejection_time": "30s"}


def test_an_ejected_endpoint_gets_no_traffic_until_it_returns() -> None:
    cluster = build(4, outlier_detection={**OUTLIER, "max_ejection_percent": 50})
    bad = cluster.endpoints[0]
    fail(cluster, bad, 3, now=1.0)
    assert bad not in picks(cluster, 100, now=2.0)
    assert bad not in picks(cluster, 100, now=30.9)
    assert picks(cluster, 100, now=31.0)[bad] == 25


def test_connection_failures_count_as_gateway_errors() -> None:
    cluster = build(4, outlier_detection={**OUTLIER, "consecutive_gateway_errors": 2})
    bad = cluster.endpoints[1]
    cluster.on_result(bad, Failure.CONNECT, 0.0)
    cluster.on_result(bad, Failure.TIMEOUT, 0.0)
    assert bad.ejected and bad.errors == 2


def test_a_success_resets_the_outlier_count() -> None:
    cluster = build(4, outlier_detection=OUTLIER)
    ep = cluster.endpoints[0]
    fail(cluster, ep, 2, 0.0)
    cluster.on_result(ep, 200, 0.0)
    fail(cluster, ep, 2, 0.0)
    assert not ep.ejected


def test_panic_mode_balances_over_all_endpoints_below_the_threshold() -> None:
    cluster = build(
        4,
        outlier_detection={**OUTLIER, "max_ejection_percent": 100},
        load_balancer={"healthy_panic_threshold": 50},
    )
    a, b, c, _ = cluster.endpoints
    fail(cluster, a, 3, 0.0)
    fail(cluster, b, 3, 0.0)  # 2 of 4 routable: 50% is not below 50%
    assert set(picks(cluster, 40)) == {c, cluster.endpoints[3]}
    assert not cluster.panic
    fail(cluster, c, 3, 0.0)  # 25% routable: panic
    assert set(picks(cluster, 40)) == set(cluster.endpoints)
    assert cluster.panic
    cluster.pick(None, 30.0)  # all three return
    assert not cluster.panic


def test_without_panic_no_routable_endpoint_means_no_pick() -> None:
    cluster = build(
        2,
        outlier_detection={**OUTLIER, "max_ejection_percent": 100},
        load_balancer={"healthy_panic_threshold": 0},
    )
    for ep in cluster.endpoints:
        fail(cluster, ep, 3, 0.0)
    assert cluster.pick(None, 1.0) is None
    assert not cluster.panic


def test_unhealthy_endpoints_from_health_checks_get_no_traffic() -> None:
    cluster = build(
        3, health_check={"interval": "5s", "timeout": "1s"}, load_balancer={"policy": "random"}
    )
    checker = cluster.service.health_checker
    assert checker is not None
    probes = checker.due(0.0)
    assert len(probes) == 3
    for probe in probes:
        checker.on_probe_result(probe, 503 if probe.endpoint is cluster.endpoints[2] else 200, 0.1)
    assert set(picks(cluster, 60, now=0.2)) == set(cluster.endpoints[:2])


def test_endpoint_breaker_opens_half_opens_with_one_trial_and_closes() -> None:
    cluster = build(3, endpoint_breaker={"consecutive_failures": 2, "open_timeout": "5s"})
    bad = cluster.endpoints[0]
    breaker = bad.breaker
    assert breaker is not None
    fail(cluster, bad, 2, 0.0, status=503)
    assert breaker.state == "open"
    assert bad not in picks(cluster, 30, now=4.9)
    # The first pick after the timeout is the trial; no second request meanwhile.
    assert cluster.pick(None, 5.0) is bad
    assert breaker.state == "half_open"
    assert bad not in picks(cluster, 30, now=5.1)
    cluster.on_result(bad, 200, 5.2)
    assert breaker.state == "closed"
    assert picks(cluster, 30, now=5.3)[bad] == 10


def test_a_failed_trial_reopens_the_endpoint_breaker() -> None:
    cluster = build(3, endpoint_breaker={"consecutive_failures": 1, "open_timeout": "5s"})
    bad = cluster.endpoints[0]
    cluster.on_result(bad, Failure.RESET, 0.0)
    assert cluster.pick(None, 5.0) is bad
    cluster.on_result(bad, 502, 5.5)
    assert bad.breaker is not None and bad.breaker.state == "open"
    assert bad not in picks(cluster, 30, now=10.4)
    assert cluster.pick(None, 10.5) is bad


ZONES = ["a", "a", "a", "b", "b", "b"]
LOCALITY = {"locality": {"enabled": True, "min_healthy_percent": 70, "min_cluster_size": 6}}


def test_locality_keeps_traffic_in_the_local_zone() -> None:
    cluster = build(6, zones=ZONES, local_zone="a", load_balancer=LOCALITY)
    assert set(picks(cluster, 60)) == set(cluster.endpoints[:3])


def test_locality_spills_the_shortfall_to_other_zones() -> None:
    cluster = build(
        6,
        zones=ZONES,
        local_zone="a",
        load_balancer=LOCALITY,
        outlier_detection={**OUTLIER, "max_ejection_percent": 50},
    )
    fail(cluster, cluster.endpoints[0], 3, 0.0)  # local zone 2/3 = 66.7% routable
    got = picks(cluster, 20000, now=1.0)
    local = sum(got[e] for e in cluster.endpoints[1:3])
    assert cluster.local_share == pytest.approx((2 / 3) / 0.7)
    assert local / 20000 == pytest.approx((2 / 3) / 0.7, abs=0.01)
    assert cluster.endpoints[0] not in got
    assert all(got[e] > 0 for e in cluster.endpoints[3:])


def test_locality_sends_everything_away_when_the_local_zone_is_down() -> None:
    cluster = build(
        6,
        zones=ZONES,
        local_zone="a",
        load_balancer={**LOCALITY, "healthy_panic_threshold": 0},
        outlier_detection={**OUTLIER, "max_ejection_percent": 50},
    )
    for ep in cluster.endpoints[:3]:
        fail(cluster, ep, 3, 0.0)
    assert set(picks(cluster, 60, now=1.0)) == set(cluster.endpoints[3:])


def test_locality_is_ignored_below_min_cluster_size_or_without_a_zone() -> None:
    small = build(
        6,
        zones=ZONES,
        local_zone="a",
        load_balancer={"locality": {"enabled": True, "min_cluster_size": 7}},
    )
    assert len(picks(small, 60)) == 6
    nozone = build(6, zones=ZONES, local_zone=None, load_balancer=LOCALITY)
    assert len(picks(nozone, 60)) == 6


def test_consistent_hash_sticks_and_moves_only_the_ejected_endpoints_keys() -> None:
    cluster = build(
        10,
        load_balancer={"policy": "consistent_hash", "hash_on": {"header": "X-User"}},
        outlier_detection={**OUTLIER, "max_ejection_percent": 10},
    )
    assert (cluster.hash_header, cluster.hash_cookie, cluster.hash_client) == (
        b"x-user",
        None,
        False,
    )
    keys = [f"u{i}".encode() for i in range(10000)]
    before = [cluster.pick(k, 0.0) for k in keys]
    gone = cluster.endpoints[4]
    fail(cluster, gone, 3, 0.0)
    after = [cluster.pick(k, 1.0) for k in keys]
    moved = [i for i in range(len(keys)) if before[i] is not after[i]]
    assert all(before[i] is gone for i in moved)
    assert 0.06 < len(moved) / len(keys) < 0.14
    assert [cluster.pick(k, 30.0) for k in keys] == before  # it comes back, keys return


def test_subset_clusters_share_endpoint_state_with_the_service() -> None:
    snapshot = Snapshot.model_validate(
        {
            "services": {
                "ratings": {
                    "endpoints": [
                        {"address": "10.0.4.1", "port": 80, "labels": {"version": "v1"}},
                        {"address": "10.0.4.2", "port": 80, "labels": {"version": "v2"}},
                        {"address": "10.0.4.3", "port": 80, "labels": {"version": "v2"}},
                    ]
                }
            },
            "policies": [
                {
                    "service": "ratings",
                    "subsets": {"v2": {"labels": {"version": "v2"}}},
                    "outlier_detection": {**OUTLIER, "max_ejection_percent": 50},
                }
            ],
        }
    )
    upstreams = Upstreams.from_snapshot(snapshot, now=0.0, rand=random.Random(2).random)
    v2 = upstreams.cluster("ratings", "v2")
    whole = upstreams.cluster("ratings")
    assert v2 is not None and whole is not None
    assert [e.address for e in v2.endpoints] == ["10.0.4.2", "10.0.4.3"]
    fail(v2, v2.endpoints[0], 3, 0.0)
    assert set(picks(whole, 30, now=1.0)) == {whole.endpoints[0], whole.endpoints[2]}
    assert upstreams.cluster("ratings", "v9") is None
    assert upstreams.cluster("nope") is None


def test_a_new_snapshot_keeps_live_state_of_endpoints_still_there() -> None:
    def snap(ports: list[int]) -> Snapshot:
        return Snapshot.model_validate(
            {
                "services": {
                    "ratings": {"endpoints": [{"address": "10.0.5.1", "port": p} for p in ports]}
                },
                "policies": [{"service": "ratings", "outlier_detection": OUTLIER}],
            }
        )

    first = Upstreams.from_snapshot(snap([80, 81, 82]), now=0.0, rand=random.Random(3).random)
    old = first.cluster("ratings")
    assert old is not None
    kept = old.endpoints[0]
    old.request_started(kept)
    fail(old, kept, 3, 1.0)
    second = Upstreams.from_snapshot(
        snap([80, 83]), now=2.0, rand=random.Random(3).random, previous=first
    )
    new = second.cluster("ratings")
    assert new is not None
    assert new.endpoints[0] is kept and kept.ejected and kept.active_requests == 1
    assert new.pick(None, 3.0) is new.endpoints[1]
    old.request_finished(kept)  # an in-flight request ends against the old view
    assert new.endpoints[0].active_requests == 0

    # Outcomes reported against the old view reach the live detector.
    survivor = new.endpoints[1]
    assert survivor not in old.endpoints
    back = new.pick(None, 31.0)
    assert not kept.ejected and back is not None
    fail(old, kept, 3, 32.0)
    assert kept.ejected
    assert {new.pick(None, 33.0) for _ in range(4)} == {survivor}


def test_services_without_a_policy_get_the_defaults() -> None:
    snapshot = Snapshot.model_validate(
        {"services": {"db": {"endpoints": [{"address": "10.0.6.1", "port": 5432}]}}}
    )
    cluster = Upstreams.from_snapshot(snapshot, now=0.0).cluster("db")
    assert cluster is not None and cluster.config.policy == "round_robin"
    assert cluster.pick(None, 0.0) is cluster.endpoints[0]


def test_counters_and_admin_view() -> None:
    cluster = build(2, outlier_detection=OUTLIER, endpoint_breaker={"consecutive_failures": 9})
    ep = cluster.endpoints[0]
    cluster.connection_opened(ep)
    cluster.request_started(ep)
    cluster.request_started(ep)
    cluster.on_result(ep, 200, 0.0)
    cluster.request_finished(ep)
    fail(cluster, ep, 3, 1.0, status=503)
    view = cluster.snapshot_for_admin(now=11.0)
    assert view[0] == {
        "address": "10.0.3.0",
        "port": 80,
        "zone": None,
        "labels": {},
        "weight": 1,
        "health": "healthy",
        "ejected": True,
        "ejection_remaining": 20.0,
        "times_ejected": 1,
        "breaker": "closed",
        "requests": 2,
        "errors": 3,
        "active_requests": 1,
        "active_connections": 1,
    }
    assert view[1]["ejected"] is False and "ejection_remaining" not in view[1]
    assert cluster.snapshot_for_admin(now=31.0)[0]["ejected"] is False


def test_upstreams_admin_view_has_breakers_and_outlier_counters() -> None:
    upstreams = build_upstreams(2, outlier_detection=OUTLIER)
    cluster = upstreams.cluster("ratings")
    assert cluster is not None
    cluster.breakers.try_request()
    view = upstreams.snapshot_for_admin()
    entry = view["ratings"]
    assert isinstance(entry, dict)
    assert entry["circuit_breakers"]["requests"] == [1, 1024]
    assert entry["outlier_detection"] == {
        "consecutive_5xx": 0,
        "consecutive_gateway_errors": 0,
        "overflow": 0,
    }
    assert entry["panic"] is False and len(entry["endpoints"]) == 2


def test_policy_for_unknown_endpoints_builds_an_empty_cluster() -> None:
    cluster = build(0)
    assert cluster.pick(None, 0.0) is None
    assert not cluster.panic
    assert isinstance(cluster.service.policy, Policy)


def test_a_new_snapshot_keeps_health_verdicts_and_unchanged_breakers() -> None:
    def snap(ports: list[int], open_timeout: str) -> Snapshot:
        return Snapshot.model_validate(
            {
                "services": {
                    "ratings": {"endpoints": [{"address": "10.0.7.1", "port": p} for p in ports]}
                },
                "policies": [
                    {
                        "service": "ratings",
                        "health_check": {"interval": "5s"},
                        "endpoint_breaker": {
                            "consecutive_failures": 1,
                            "open_timeout": open_timeout,
                        },
                    }
                ],
            }
        )

    first = Upstreams.from_snapshot(snap([80, 81], "5s"), now=0.0, rand=random.Random(4).random)
    (checker,) = first.health_checkers()
    for probe in checker.due(0.0):
        checker.on_probe_result(probe, 200 if probe.endpoint.port == 80 else None, 0.1)
    cluster = first.cluster("ratings")
    assert cluster is not None
    healthy, sick = cluster.endpoints
    healthy_breaker = healthy.breaker
    cluster.on_result(healthy, 503, 0.2)

    same = Upstreams.from_snapshot(snap([80, 81, 82], "5s"), now=1.0, previous=first)
    assert [e.health for e in same.services["ratings"].endpoints] == [
        "healthy",
        "unhealthy",
        "unknown",
    ]
    assert healthy.breaker is healthy_breaker and healthy_breaker is not None
    assert healthy_breaker.state == "open"

    changed = Upstreams.from_snapshot(snap([80, 81], "9s"), now=2.0, previous=same)
    assert healthy.breaker is not healthy_breaker
    assert healthy.breaker is not None and healthy.breaker.state == "closed"
    assert sick.health == "unhealthy"
    assert changed.cluster("ratings") is not None
