"""Split hashing and choice in both fast-path twins: the pinned buckets every sidecar shares."""

from __future__ import annotations

import random
from types import ModuleType

import pytest

from meshproxy.routing.split import BUCKETS, fnv1a_64

PINNED = {b"": 9367, b"user-1": 2563, b"user-2": 6638, b"10.0.0.7": 4252}


def reference_bucket(key: bytes) -> int:
    """The published steps, spelled out with Python integers."""
    mask = (1 << 64) - 1
    h = fnv1a_64(key)
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & mask
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & mask
    h ^= h >> 33
    return ((h >> 32) * BUCKETS) >> 32


def test_split_bucket_gives_the_pinned_values(fastpath: ModuleType) -> None:
    assert {key: fastpath.split_bucket(key) for key in PINNED} == PINNED


def test_split_bucket_agrees_with_the_reference_steps_on_random_keys(
    fastpath: ModuleType,
) -> None:
    rng = random.Random(5)
    keys = [rng.randbytes(rng.randint(0, 64)) for _ in range(3000)]
    keys.append(b"\xff" * 300)
    assert [fastpath.split_bucket(k) for k in keys] == [reference_bucket(k) for k in keys]


def test_split_bucket_is_exported_by_both_twins(fastpath: ModuleType) -> None:
    assert "split_bucket" in fastpath.__all__


def test_split_routes_pick_key_answers_the_backend_owning_the_keys_bucket(
    fastpath: ModuleType,
) -> None:
    bounds = (2500, 2500, 10000)  # the middle backend has weight 0
    split = fastpath.SplitRoutes(("a", "zero", "c"), bounds, random.Random(1).random)
    rng = random.Random(9)
    keys = [rng.randbytes(8) for _ in range(2000)]
    expected = ["a" if reference_bucket(k) < 2500 else "c" for k in keys]
    assert [split.pick_key(k) for k in keys] == expected


def test_split_routes_pick_draws_once_and_truncates_the_draw_to_a_bucket(
    fastpath: ModuleType,
) -> None:
    draws = iter([0.0, 0.8999, 0.9, 0.99999999, 1.0, -0.5])
    split = fastpath.SplitRoutes(("v1", "v2"), (9000, 10000), lambda: next(draws))
    # 0.8999 -> bucket 8999 (v1), 0.9 -> 9000 (v2); a draw at or past 1.0 is
    # the last bucket, a negative one the first.
    assert [split.pick() for _ in range(6)] == ["v1", "v1", "v2", "v2", "v2", "v1"]
    assert next(draws, None) is None


def test_split_routes_refuse_bounds_that_do_not_fit_the_routes(fastpath: ModuleType) -> None:
    rand = random.Random(2).random
    with pytest.raises(ValueError):
        fastpath.SplitRoutes(("a", "b"), (10000,), rand)
    with pytest.raises(ValueError):
        fastpath.SplitRoutes((), (), rand)
    with pytest.raises(ValueError):
        fastpath.SplitRoutes(("a",), (10000,), lambda: float("nan")).pick()
    short = fastpath.SplitRoutes(("a",), (5000,), lambda: 0.75)
    with pytest.raises(IndexError):
        short.pick()


def test_split_routes_are_exported_by_both_twins(fastpath: ModuleType) -> None:
    assert "SplitRoutes" in fastpath.__all__
