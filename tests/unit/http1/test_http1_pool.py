"""Idle connection bookkeeping per endpoint."""

from __future__ import annotations

from meshproxy.http1.pool import IdlePool

A = ("10.0.0.1", 80)
B = ("10.0.0.2", 80)


def test_take_returns_the_most_recently_parked_connection() -> None:
    pool: IdlePool[str] = IdlePool()
    assert pool.put(A, "old") and pool.put(A, "new")
    assert pool.take(A) == "new"
    assert pool.take(A) == "old"
    assert pool.take(A) is None


def test_endpoints_do_not_share_connections() -> None:
    pool: IdlePool[str] = IdlePool()
    pool.put(A, "a1")
    assert pool.take(B) is None
    assert pool.idle_count(A) == 1 and pool.idle_count(B) == 0


def test_discard_forgets_a_closed_connection_and_ignores_unknown_ones() -> None:
    pool: IdlePool[str] = IdlePool()
    pool.put(A, "a1")
    pool.put(A, "a2")
    pool.discard(A, "a1")
    pool.discard(A, "never-parked")
    pool.discard(B, "a2")
    assert pool.take(A) == "a2"
    assert pool.take(A) is None


def test_put_refuses_past_the_per_endpoint_limit() -> None:
    pool: IdlePool[int] = IdlePool(max_idle_per_key=2)
    assert pool.put(A, 1) and pool.put(A, 2)
    assert not pool.put(A, 3)
    assert pool.put(B, 4)
    assert pool.idle_count(A) == 2


def test_take_all_empties_the_pool() -> None:
    pool: IdlePool[int] = IdlePool()
    pool.put(A, 1)
    pool.put(B, 2)
    assert sorted(pool.take_all()) == [1, 2]
    assert pool.take(A) is None and pool.take(B) is None
