"""Local rate limits: the token bucket, the bounded key table, the 429 answer."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from meshproxy.config.policy import RateLimit
from meshproxy.policy import LocalReply, RequestContext
from meshproxy.policy.ratelimit import BucketTable, LocalRateLimit, TokenBucket


def limit(**kw: Any) -> RateLimit:
    base: dict[str, Any] = {"key": "client_address", "requests_per_second": 10, "burst": 3}
    base.update(kw)
    return RateLimit.model_validate(base)


def ctx(now: float, ip: str = "10.0.0.1", **kw: Any) -> RequestContext:
    headers = kw.pop("headers", [])
    return RequestContext(b"GET", b"/", headers, client_ip=ip, now=now, **kw)


def test_bucket_admits_its_capacity_then_refuses_with_the_wait_for_one_token() -> None:
    bucket = TokenBucket(rate=2.0, capacity=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [(True, 0.0, 2), (True, 0.0, 1), (True, 0.0, 0)]
    allowed, retry_after, remaining = bucket.take(0.0)
    assert (allowed, remaining) == (False, 0)
    assert retry_after == pytest.approx(0.5)
    allowed, retry_after, _ = bucket.take(0.25)
    assert not allowed and retry_after == pytest.approx(0.25)
    assert bucket.take(0.5)[0]


def test_bucket_refills_at_its_rate_up_to_capacity_only() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5, now=0.0)
    for _ in range(5):
        bucket.take(0.0)
    assert bucket.take(1000.0) == (True, 0.0, 4)  # full again, not 10000 tokens


def test_bucket_ignores_a_clock_that_goes_backwards() -> None:
    bucket = TokenBucket(rate=1.0, capacity=1, now=10.0)
    assert bucket.take(10.0)[0]
    assert not bucket.take(5.0)[0]
    assert bucket.take(11.0)[0]


@given(
    st.floats(min_value=0.5, max_value=1000),
    st.integers(min_value=1, max_value=50),
    st.lists(st.floats(min_value=0, max_value=0.2), min_size=1, max_size=200),
)
def test_bucket_never_admits_more_than_capacity_plus_rate_times_elapsed(
    rate: float, capacity: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, capacity, 0.0)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += bucket.take(now)[0]
    assert admitted <= capacity + rate * now + 1e-6


def test_table_keeps_one_bucket_per_key() -> None:
    table = BucketTable(rate=1.0, capacity=1)
    assert table.take("a", 0.0)[0]
    assert not table.take("a", 0.0)[0]
    assert table.take("b", 0.0)[0]


def test_table_at_its_cap_evicts_full_buckets_before_busy_ones() -> None:
    table = BucketTable(rate=1.0, capacity=2, max_keys=10)
    for i in range(5):  # busy: emptied at t=9.9, not full again at t=10
        table.take(f"busy{i}", 9.9)
        table.take(f"busy{i}", 9.9)
    for i in range(5):  # idle since t=0: full again by t=10
        table.take(f"idle{i}", 0.0)
    table.take("new", 10.0)
    assert len(table) <= 10
    assert all(f"busy{i}" in table for i in range(5))
    assert "new" in table
    assert sum(f"idle{i}" in table for i in range(5)) < 5


def test_table_at_its_cap_with_no_full_bucket_evicts_the_least_recently_used() -> None:
    table = BucketTable(rate=0.001, capacity=1, max_keys=10)
    for i in range(10):
        table.take(i, 0.0)
    table.take(0, 1.0)  # key 0 used again: now the most recent
    table.take("new", 1.0)
    assert len(table) == 10  # one evicted to make room
    assert 0 in table and "new" in table
    assert 1 not in table


def test_table_keeps_a_key_used_in_a_run_the_most_recent() -> None:
    table = BucketTable(rate=0.001, capacity=3, max_keys=3)
    for key in ("a", "b", "c", "a", "a"):  # "a" twice in a row, then new keys
        table.take(key, 0.0)
    table.take("d", 1.0)
    assert "a" in table and "d" in table
    assert "b" not in table
    assert not table.take("a", 1.0)[0]  # still the bucket that gave its 3 tokens


def test_table_stays_bounded_under_a_key_flood() -> None:
    table = BucketTable(rate=1.0, capacity=1, max_keys=1000)
    for i in range(20_000):
        table.take(i, i * 0.0001)
    assert len(table) <= 1000


def test_filter_answers_429_with_retry_after_and_ratelimit_headers() -> None:
    f = LocalRateLimit([limit(requests_per_second=2, burst=4)])
    assert all(f.on_request(ctx(0.0)) is None for _ in range(4))
    reply = f.on_request(ctx(0.0))
    assert isinstance(reply, LocalReply)
    assert reply.status == 429
    assert reply.header(b"retry-after") == b"1"
    assert reply.header(b"ratelimit-policy") == b'"client_address";q=4;w=2'
    assert reply.header(b"ratelimit") == b'"client_address";r=0;t=1'
    assert f.counters.get("ratelimit_denied", "client_address") == 1


def test_retry_after_rounds_the_wait_up_to_whole_seconds() -> None:
    f = LocalRateLimit([limit(requests_per_second=0.2, burst=1, name="slow")])
    assert f.on_request(ctx(0.0)) is None
    reply = f.on_request(ctx(0.5))
    assert isinstance(reply, LocalReply)
    assert reply.header(b"retry-after") == b"5"
    assert reply.header(b"ratelimit") == b'"slow";r=0;t=5'


def test_clients_have_separate_buckets() -> None:
    f = LocalRateLimit([limit(burst=1)])
    assert f.on_request(ctx(0.0, ip="10.0.0.1")) is None
    assert f.on_request(ctx(0.0, ip="10.0.0.2")) is None
    assert f.on_request(ctx(0.0, ip="10.0.0.1")) is not None


def test_header_key_limits_per_value_and_ignores_requests_without_it() -> None:
    f = LocalRateLimit([limit(key="header", header="X-User", burst=1)])
    ann = [(b"X-User", b"ann")]
    assert f.on_request(ctx(0.0, headers=ann)) is None
    assert f.on_request(ctx(0.0, headers=ann)) is not None
    assert f.on_request(ctx(0.0, headers=[(b"x-user", b"bob")])) is None
    assert all(f.on_request(ctx(0.0)) is None for _ in range(5))


def test_route_peer_and_service_keys() -> None:
    by_route = LocalRateLimit([limit(key="route", burst=1)])
    assert by_route.on_request(ctx(0.0, route="r1")) is None
    assert by_route.on_request(ctx(0.0, route="r2")) is None
    assert by_route.on_request(ctx(0.0, route="r1")) is not None
    by_peer = LocalRateLimit([limit(key="peer", burst=1)])
    assert by_peer.on_request(ctx(0.0, peer="spiffe://a")) is None
    assert by_peer.on_request(ctx(0.0, peer="spiffe://a")) is not None
    assert by_peer.on_request(ctx(0.0)) is None  # no identity yet: not limited
    whole = LocalRateLimit([limit(key="service", burst=2)])
    assert whole.on_request(ctx(0.0, ip="1.1.1.1")) is None
    assert whole.on_request(ctx(0.0, ip="2.2.2.2")) is None
    assert whole.on_request(ctx(0.0, ip="3.3.3.3")) is not None


def test_every_limit_applies_and_the_first_empty_one_answers() -> None:
    f = LocalRateLimit(
        [limit(burst=10, name="per-client"), limit(key="service", burst=2, name="total")]
    )
    assert f.on_request(ctx(0.0, ip="a")) is None
    assert f.on_request(ctx(0.0, ip="b")) is None
    reply = f.on_request(ctx(0.0, ip="c"))
    assert isinstance(reply, LocalReply)
    assert reply.header(b"ratelimit") == b'"total";r=0;t=1'


def test_burst_zero_means_one_second_of_requests() -> None:
    f = LocalRateLimit([limit(requests_per_second=3, burst=0)])
    assert [f.on_request(ctx(0.0)) is None for _ in range(4)] == [True, True, True, False]


def test_config_refuses_inconsistent_limits() -> None:
    with pytest.raises(ValidationError, match="needs 'header'"):
        limit(key="header")
    with pytest.raises(ValidationError, match="needs 'header'"):
        limit(header="x-user")
    with pytest.raises(ValidationError, match="needs 'redis'"):
        limit(scope="global")
    with pytest.raises(ValidationError, match="only used by scope: global"):
        limit(redis={"url": "redis://127.0.0.1:1/0"})
    with pytest.raises(ValidationError):
        limit(key="cookie")
    with pytest.raises(ValidationError):
        limit(requests_per_second=0)
