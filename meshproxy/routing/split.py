"""Weighted, sticky traffic splits: a key -> a bucket in [0, 10000) -> a backend.

How it works.  A split key (a header, a cookie, the client address) is hashed
with 64-bit FNV-1a and then through MurmurHash3's 64-bit finaliser: FNV alone
spreads short, similar keys (``user-1``, ``user-2``) poorly in its high bits,
and the finaliser makes every input bit reach every output bit.  The top 32
bits are scaled to a bucket by a multiply and shift (no modulo bias, no float).

Backends are laid out on [0, 10000) by cumulative weight in the order they are
declared, each owning one interval.  A key keeps its bucket forever, so it
keeps its backend while the weights stand still; when weight moves between two
neighbours only the boundary between their intervals moves, and only the keys
in the strip between the old and the new boundary change backend, all in the
same direction (10% -> 20% on v2 moves the keys of [8000, 9000) from v1 to v2
and none back).  Moving weight between backends that are not neighbours also
shifts the ones in between; declare canary pairs next to each other.

The bucket grain is 1/10000: a backend whose share is below 0.01% gets no key.

``split_bucket`` lives in ``_fastpath`` (the Cython module and its Python
twin, integer-only); ``fnv1a_64`` stays here as the reference of its first
step.  Every sidecar must compute the same bucket for the same key, so the
constants and the steps are part of the wire contract: do not change them.  Nothing in
this module reads a clock or a random source; callers pass randomness in.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence

from meshproxy import fastpath

BUCKETS = 10000

_MASK = 0xFFFFFFFFFFFFFFFF
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a_64(key: bytes) -> int:
    """64-bit FNV-1a of ``key``."""
    h = _FNV_OFFSET
    for byte in key:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


# The bucket of a key in [0, BUCKETS), stable across processes and hosts: the
# fast path's (Cython, or its Python twin), which runs the steps described above.
split_bucket: Callable[[bytes], int] = fastpath.split_bucket


def fastest_split_bucket() -> Callable[[bytes], int]:
    """The ``split_bucket`` in force (kept for callers that look it up)."""
    return split_bucket


def random_bucket(rand: float) -> int:
    """The bucket for a request without a split key; ``rand`` is in [0, 1)."""
    bucket = int(rand * BUCKETS)
    return bucket if bucket < BUCKETS else BUCKETS - 1


def split_bounds(weights: Sequence[int]) -> tuple[int, ...]:
    """The exclusive upper bucket of each backend, in declared order.

    Rounding is done on the cumulative sums, not per backend, so the intervals
    tile [0, BUCKETS) exactly and changing one pair of weights leaves every
    other boundary where it was.
    """
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative with a positive sum")
    bounds = []
    running = 0
    for weight in weights:
        running += weight
        bounds.append(running * BUCKETS // total)
    return tuple(bounds)


def backend_index(bounds: Sequence[int], bucket: int) -> int:
    """The backend owning ``bucket``; backends of weight 0 own no bucket."""
    return bisect_right(bounds, bucket)
