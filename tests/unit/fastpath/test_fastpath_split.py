"""Split hashing in both fast-path twins: the pinned buckets every sidecar shares."""

from __future__ import annotations

import random
from types import ModuleType

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
