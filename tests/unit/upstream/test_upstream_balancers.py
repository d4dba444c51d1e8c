import random
from collections import Counter

import pytest

from meshproxy.upstream.balancers import (
    LeastRequest,
    RandomPick,
    RingHash,
    RoundRobin,
    edf_schedule,
    points_per_weight,
)
from meshproxy.upstream.endpoint import EndpointState


def endpoints(n: int, weights: list[int] | None = None) -> list[EndpointState]:
    weights = weights or [1] * n
    return [EndpointState(f"10.0.0.{i}", 8080, weight=w) for i, w in enumerate(weights)]


def test_round_robin_visits_every_endpoint_once_per_turn() -> None:
    eps = endpoints(4)
    rr = RoundRobin(random.Random(1).random)
    rr.rebuild(eps)
    picks = [rr.pick(None) for _ in range(12)]
    for turn in range(3):
        assert set(picks[turn * 4 : turn * 4 + 4]) == set(eps)


def test_round_robin_starts_at_a_random_offset() -> None:
    eps = endpoints(8)
    firsts = set()
    for seed in range(20):
        rr = RoundRobin(random.Random(seed).random)
        rr.rebuild(eps)
        firsts.add(rr.pick(None))
    assert len(firsts) > 3


def test_weighted_round_robin_sends_in_proportion_to_weights() -> None:
    eps = endpoints(3, [5, 3, 1])
    rr = RoundRobin(random.Random(2).random)
    rr.rebuild(eps)
    counts = Counter(rr.pick(None) for _ in range(9 * 100))
    assert [counts[e] for e in eps] == [500, 300, 100]


def test_weighted_round_robin_interleaves_instead_of_bursting() -> None:
    # Smooth: with weights 5:1 the light endpoint never waits more than one turn,
    # and the heavy one is never sent more than five in a row.
    order = edf_schedule([5, 1])
    assert sorted(order) == [0, 0, 0, 0, 0, 1]
    doubled = order + order
    longest = max(len(run) for run in "".join(map(str, doubled)).split("1"))
    assert longest <= 5
    assert edf_schedule([4, 2, 2]) == edf_schedule([2, 1, 1])


def test_empty_balancers_pick_nothing() -> None:
    rand = random.Random(0).random
    for balancer in (RoundRobin(rand), RandomPick(rand), LeastRequest(rand), RingHash(rand, 8)):
        balancer.rebuild([])
        assert balancer.pick(b"k") is None


def test_random_pick_spreads_uniformly_and_by_weight() -> None:
    eps = endpoints(4)
    rp = RandomPick(random.Random(3).random)
    rp.rebuild(eps)
    counts = Counter(rp.pick(None) for _ in range(40000))
    assert all(9000 < counts[e] < 11000 for e in eps)

    weighted = endpoints(2, [3, 1])
    rp.rebuild(weighted)
    counts = Counter(rp.pick(None) for _ in range(40000))
    assert counts[weighted[0]] / 40000 == pytest.approx(0.75, abs=0.02)


def test_least_request_prefers_the_endpoint_with_fewer_active_requests() -> None:
    eps = endpoints(2)
    lr = LeastRequest(random.Random(4).random)
    lr.rebuild(eps)
    eps[0].active_requests = 5
    assert {lr.pick(None) for _ in range(50)} == {eps[1]}


def test_least_request_sends_less_to_a_slow_endpoint() -> None:
    # Discrete simulation: 4 requests arrive per tick; the slow endpoint holds
    # a request for 20 ticks, the others for 1.  Requests pile up on the slow
    # one, and the two choices steer around it.
    eps = endpoints(5)
    slow = eps[0]
    lr = LeastRequest(random.Random(5).random)
    lr.rebuild(eps)
    in_flight: list[tuple[int, EndpointState]] = []
    sent: Counter[EndpointState] = Counter()
    for tick in range(2000):
        still = []
        for done_at, ep in in_flight:
            if done_at <= tick:
                ep.active_requests -= 1
            else:
                still.append((done_at, ep))
        in_flight = still
        for _ in range(4):
            ep = lr.pick(None)
            assert ep is not None
            ep.active_requests += 1
            sent[ep] += 1
            in_flight.append((tick + (20 if ep is slow else 1), ep))
    share = sent[slow] / sum(sent.values())
    assert share < 0.08  # a fair share would be 0.20
    assert all(sent[e] > sent[slow] * 2 for e in eps[1:])


def test_round_robin_does_not_steer_around_a_slow_endpoint() -> None:
    # The contrast with least_request: round robin keeps the fair share.
    eps = endpoints(5)
    rr = RoundRobin(random.Random(5).random)
    rr.rebuild(eps)
    eps[0].active_requests = 50
    counts = Counter(rr.pick(None) for _ in range(1000))
    assert counts[eps[0]] == 200


@pytest.mark.parametrize("n", [2, 4, 16, 17, 20])
def test_least_request_draws_one_ordered_pair_of_distinct_endpoints(n: int) -> None:
    # One draw per pick, each of the n * (n - 1) ordered pairs owning an equal
    # slice of [0, 1).  With endpoint i holding i active requests, the pick is
    # the pair's lower index: i wins the 2 * (n - 1 - i) pairs it is in with a
    # higher one.  Clusters listed at rebuild and those computed per pick agree.
    eps = endpoints(n)
    for i, e in enumerate(eps):
        e.active_requests = i
    span = n * (n - 1)
    draws = iter([(k + 0.5) / span for k in range(span)])
    lr = LeastRequest(lambda: next(draws))
    lr.rebuild(eps)
    counts = Counter(lr.pick(None) for _ in range(span))
    assert next(draws, None) is None
    assert [counts[e] for e in eps] == [2 * (n - 1 - i) for i in range(n)]


def test_least_request_ties_go_to_the_first_choice_evenly() -> None:
    eps = endpoints(3)
    draws = iter([(k + 0.5) / 6 for k in range(6)])
    lr = LeastRequest(lambda: next(draws))
    lr.rebuild(eps)
    assert Counter(lr.pick(None) for _ in range(6)) == Counter({e: 2 for e in eps})


def test_weighted_least_request_divides_active_by_weight() -> None:
    eps = endpoints(2, [4, 1])
    lr = LeastRequest(random.Random(6).random)
    lr.rebuild(eps)
    eps[0].active_requests = 3  # (3+1)/4 = 1 beats (1+1)/1 = 2
    eps[1].active_requests = 1
    assert {lr.pick(None) for _ in range(20)} == {eps[0]}


def keys(n: int) -> list[bytes]:
    return [f"user-{i}".encode() for i in range(n)]


def ring_for(eps: list[EndpointState], total_weight: int) -> RingHash:
    ring = RingHash(random.Random(7).random, points_per_weight(total_weight, 1024))
    ring.rebuild(eps)
    return ring


def test_consistent_hash_same_key_same_endpoint() -> None:
    eps = endpoints(5)
    ring = ring_for(eps, 5)
    assert all(ring.pick(k) is ring.pick(k) for k in keys(200))
    rebuilt = ring_for(list(reversed(eps)), 5)
    assert all(ring.pick(k) is rebuilt.pick(k) for k in keys(200))


def test_consistent_hash_spreads_keys_evenly_enough() -> None:
    eps = endpoints(10)
    ring = ring_for(eps, 10)
    counts = Counter(ring.pick(k) for k in keys(10000))
    assert all(600 < counts[e] < 1400 for e in eps)


def test_removing_one_of_n_endpoints_moves_only_its_keys() -> None:
    eps = endpoints(10)
    before = ring_for(eps, 10)
    gone = eps[3]
    after = ring_for([e for e in eps if e is not gone], 10)
    all_keys = keys(10000)
    moved = [k for k in all_keys if before.pick(k) is not after.pick(k)]
    assert all(before.pick(k) is gone for k in moved)
    assert len(moved) == sum(1 for k in all_keys if before.pick(k) is gone)
    assert 0.06 < len(moved) / len(all_keys) < 0.14  # about 1/10


def test_adding_an_endpoint_moves_about_one_nth_of_keys_all_to_it() -> None:
    eps = endpoints(11)
    before = ring_for(eps[:10], 11)
    after = ring_for(eps, 11)
    all_keys = keys(10000)
    moved = [k for k in all_keys if before.pick(k) is not after.pick(k)]
    assert all(after.pick(k) is eps[10] for k in moved)
    assert 0.05 < len(moved) / len(all_keys) < 0.13  # about 1/11


def test_ring_points_per_weight_are_stable_for_small_size_changes() -> None:
    assert points_per_weight(9, 1024) == points_per_weight(10, 1024) == 128
    assert points_per_weight(11, 1024) == 128
    assert points_per_weight(2000, 1024) == 1


def test_consistent_hash_weight_gives_a_bigger_share() -> None:
    eps = endpoints(2, [3, 1])
    ring = ring_for(eps, 4)
    counts = Counter(ring.pick(k) for k in keys(10000))
    assert counts[eps[0]] / 10000 == pytest.approx(0.75, abs=0.05)


def test_consistent_hash_without_a_key_picks_at_random() -> None:
    eps = endpoints(4)
    ring = ring_for(eps, 4)
    assert len({ring.pick(None) for _ in range(200)}) == 4
